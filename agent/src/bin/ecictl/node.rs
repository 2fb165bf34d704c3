//! `ecictl node`.

use std::process::ExitCode;

use anyhow::Result;
use eci_api::v1::{NodeInfoRequest, Resources, node_client::NodeClient};
use tonic::transport::Channel;

use crate::output::{self, Format, Table};

pub async fn node(ch: Channel, format: Option<Format>) -> Result<ExitCode> {
    let info = NodeClient::new(ch)
        .info(NodeInfoRequest {})
        .await?
        .into_inner();
    if let Some(f @ (Format::Json | Format::Yaml)) = format {
        output::print_structured(&info, f)?;
        return Ok(ExitCode::SUCCESS);
    }
    let r = |x: &Option<Resources>| x.unwrap_or_default();
    let mut t = Table::new(&["RESOURCE", "CAPACITY", "ALLOCATABLE", "IN USE"]);
    let (c, a, u) = (r(&info.capacity), r(&info.allocatable), r(&info.in_use));
    t.row(vec![
        "cpu".into(),
        output::cpu(c.cpu_millis),
        output::cpu(a.cpu_millis),
        output::cpu(u.cpu_millis),
    ]);
    t.row(vec![
        "memory".into(),
        output::bytes(c.memory_bytes),
        output::bytes(a.memory_bytes),
        output::bytes(u.memory_bytes),
    ]);
    println!("Hostname:       {}", info.hostname);
    println!("Health:         {}", info.health);
    println!("Agent version:  {}", info.agent_version);
    println!(
        "Kernel:         {} ({}/{})",
        info.kernel_version, info.os, info.architecture
    );
    println!("Cgroup mode:    {}", info.cgroup_mode);
    println!("Sandbox kinds:  {}", info.sandbox_kinds.join(", "));
    if let Some(vm) = &info.vm {
        let line = if vm.available {
            format!(
                "{}{}, guest kernel {}",
                vm.accelerator,
                if vm.emulated { " (emulated)" } else { "" },
                vm.guest_kernel_release
            )
        } else {
            format!("not available: {}", vm.reason)
        };
        println!("VM sandbox:     {line}");
    }
    if let Some(u) = &info.user_namespaces {
        let mut line = format!(
            "{} ({} of {} id ranges free from host id {})",
            u.mode, u.ranges_free, u.ranges_total, u.first_host_id
        );
        if !u.reason.is_empty() {
            line.push_str(&format!(": {}", u.reason));
        }
        println!("User namespaces: {line}");
        if !u.enforced {
            println!("                 not enforced: {}", u.enforced_reason);
        }
    }
    println!("Dev bridge:     {}", info.dev_bridge);
    println!(
        "Groups:         {} ({} running)",
        info.groups_total, info.groups_running
    );
    println!(
        "Started:        {} ({} ago)",
        info.started_at,
        output::age(&info.started_at)
    );
    println!();
    print!("{}", t.render());
    if !info.enis.is_empty() {
        let mut e = Table::new(&["ENI", "MAC", "KIND", "GROUP"]);
        for n in &info.enis {
            e.row(vec![
                n.name.clone(),
                n.mac_address.clone(),
                if n.kind.is_empty() {
                    "physical".into()
                } else {
                    n.kind.clone()
                },
                if n.group.is_empty() {
                    "-".into()
                } else {
                    n.group.clone()
                },
            ]);
        }
        println!();
        print!("{}", e.render());
    }
    if !info.conditions.is_empty() {
        let mut c = Table::new(&["CONDITION", "STATUS", "REASON", "SINCE", "MESSAGE"]);
        for k in &info.conditions {
            c.row(vec![
                k.r#type.clone(),
                k.status.clone(),
                k.reason.clone(),
                output::age(&k.last_transition_time),
                k.message.clone(),
            ]);
        }
        println!();
        print!("{}", c.render());
    }
    Ok(ExitCode::SUCCESS)
}
