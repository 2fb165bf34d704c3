//! Group commands: apply, get, describe, delete, restart, wait.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use eci_api::v1::container_groups_client::ContainerGroupsClient;
use eci_api::v1::node_client::NodeClient;
use eci_api::v1::*;
use serde_json::Value;
use tonic::Code;
use tonic::transport::Channel;

use crate::output::{self, Format, Table};

/// Keys whose values are quantities: a bare YAML number (`cpu: 1`) is taken as its string.
const QUANTITY_KEYS: &[&str] = &["cpu", "memory", "shmSize", "ephemeralStorage", "sizeLimit"];

fn quantities_to_strings(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if QUANTITY_KEYS.contains(&k.as_str())
                    && let Value::Number(n) = val
                {
                    *val = Value::String(n.to_string());
                } else {
                    quantities_to_strings(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(quantities_to_strings),
        _ => {}
    }
}

/// Reads a spec file: YAML (JSON is YAML too), camelCase keys, unknown keys refused.
pub fn read_spec(file: &Path) -> Result<GroupSpec> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    // Through the YAML value first: it refuses a key given twice (a repeated label would
    // otherwise silently keep the last value).
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{} is not valid YAML or JSON", file.display()))?;
    let mut value: Value = serde_json::to_value(yaml)
        .with_context(|| format!("{} has keys that are not strings", file.display()))?;
    quantities_to_strings(&mut value);
    serde_json::from_value(value).with_context(|| format!("{} is not a group spec", file.display()))
}

pub async fn apply(ch: Channel, file: &Path) -> Result<ExitCode> {
    let spec = read_spec(file)?;
    let name = spec.name.clone();
    let mut c = ContainerGroupsClient::new(ch);
    let exists = match c.get(GetGroupRequest { name: name.clone() }).await {
        Ok(_) => true,
        Err(s) if s.code() == Code::NotFound => false,
        Err(s) => return Err(s.into()),
    };
    let group = if exists {
        c.update(UpdateGroupRequest { spec: Some(spec) })
            .await?
            .into_inner()
    } else {
        c.create(CreateGroupRequest { spec: Some(spec) })
            .await?
            .into_inner()
    };
    let st = group.status.unwrap_or_default();
    println!(
        "group/{name} {} ({})",
        if exists { "configured" } else { "created" },
        st.phase
    );
    Ok(ExitCode::SUCCESS)
}

/// "k1=v1,k2=v2" sorted by key, or "<none>".
fn labels_text(spec: &GroupSpec, sep: &str) -> String {
    let mut labels: Vec<String> = spec
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    labels.sort();
    if labels.is_empty() {
        "<none>".into()
    } else {
        labels.join(sep)
    }
}

fn ready_count(st: &GroupStatus) -> String {
    let ready = st.container_statuses.iter().filter(|c| c.ready).count();
    format!("{ready}/{}", st.container_statuses.len())
}

fn group_row(g: &ContainerGroup, wide: bool) -> Vec<String> {
    let spec = g.spec.clone().unwrap_or_default();
    let st = g.status.clone().unwrap_or_default();
    let size = st.normalized_resources.clone().unwrap_or_default();
    let restarts: u32 = st.container_statuses.iter().map(|c| c.restart_count).sum();
    let ip = st
        .ip_addresses
        .first()
        .cloned()
        .unwrap_or_else(|| "<none>".into());
    let mut row = vec![
        spec.name.clone(),
        st.phase.clone(),
        ready_count(&st),
        restarts.to_string(),
        size.cpu,
        size.memory,
        ip,
        output::age(&g.created_at),
    ];
    if wide {
        let labels = labels_text(&spec, ",");
        row.push(if spec.sandbox.is_empty() {
            "namespaced".into()
        } else {
            spec.sandbox
        });
        row.push(st.reason);
        row.push(labels);
    }
    row
}

fn table(wide: bool) -> Table {
    let mut h = vec![
        "NAME", "PHASE", "READY", "RESTARTS", "CPU", "MEMORY", "IP", "AGE",
    ];
    if wide {
        h.extend(["SANDBOX", "REASON", "LABELS"]);
    }
    Table::new(&h)
}

pub async fn get(
    ch: Channel,
    name: Option<String>,
    format: Option<Format>,
    selector: &str,
    watch: bool,
) -> Result<ExitCode> {
    let mut c = ContainerGroupsClient::new(ch);
    let wide = format == Some(Format::Wide);
    let structured = matches!(format, Some(Format::Json | Format::Yaml));
    let revision = match &name {
        Some(n) => {
            let g = c
                .get(GetGroupRequest { name: n.clone() })
                .await?
                .into_inner();
            let rev = g.revision;
            if let (true, Some(f)) = (structured, format) {
                output::print_structured(&g, f)?;
            } else {
                let mut t = table(wide);
                t.row(group_row(&g, wide));
                print!("{}", t.render());
            }
            rev
        }
        None => {
            let list = c
                .list(ListGroupsRequest {
                    label_selector: selector.into(),
                })
                .await?
                .into_inner();
            let rev = list.revision;
            if let (true, Some(f)) = (structured, format) {
                output::print_structured(&list, f)?;
            } else if list.groups.is_empty() && !watch {
                eprintln!("No groups found.");
            } else {
                let mut t = table(wide);
                list.groups.iter().for_each(|g| t.row(group_row(g, wide)));
                print!("{}", t.render());
            }
            rev
        }
    };
    if !watch {
        return Ok(ExitCode::SUCCESS);
    }
    let req = WatchRequest {
        from_revision: revision.max(1),
        label_selector: selector.into(),
        name: name.unwrap_or_default(),
        events: false,
    };
    let mut stream = c.watch(req).await?.into_inner();
    while let Some(ev) = stream.message().await? {
        let Some(g) = ev.group else { continue };
        if structured {
            output::print_structured(
                &WatchEvent {
                    group: Some(g),
                    ..ev
                },
                format.unwrap_or(Format::Json),
            )?;
        } else {
            let mut t = table(wide);
            let mut row = group_row(&g, wide);
            if ev.r#type == "DELETED" {
                row[1] = "Deleted".into();
            }
            t.row(row);
            print!("{}", t.render_body());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn describe(ch: Channel, name: &str) -> Result<ExitCode> {
    let g = ContainerGroupsClient::new(ch.clone())
        .get(GetGroupRequest { name: name.into() })
        .await?
        .into_inner();
    let spec = g.spec.clone().unwrap_or_default();
    let st = g.status.clone().unwrap_or_default();
    let size = st.normalized_resources.clone().unwrap_or_default();
    println!("Name:            {}", spec.name);
    println!("ID:              {}", g.id);
    println!("Labels:          {}", labels_text(&spec, ", "));
    println!(
        "Created:         {} ({} ago)",
        g.created_at,
        output::age(&g.created_at)
    );
    println!("Phase:           {}", st.phase);
    println!("Reason:          {}", st.reason);
    println!("Message:         {}", st.message);
    if !st.health.is_empty() {
        println!("Health:          {}", st.health);
    }
    println!(
        "Requested:       cpu {:?}, memory {:?}",
        spec.cpu, spec.memory
    );
    println!("Size:            {} vCPU / {}", size.cpu, size.memory);
    let accel = if st.accelerator.is_empty() {
        String::new()
    } else if st.accelerator == "tcg" {
        " (tcg, emulated)".to_string()
    } else {
        format!(" ({})", st.accelerator)
    };
    println!(
        "Sandbox:         {}{accel}",
        if spec.sandbox.is_empty() {
            "namespaced"
        } else {
            &spec.sandbox
        }
    );
    println!(
        "Restart policy:  {}",
        if spec.restart_policy.is_empty() {
            "Always"
        } else {
            &spec.restart_policy
        }
    );
    println!("IP:              {}", st.ip_addresses.join(", "));
    if let Some(n) = &st.network {
        let mut line = n.mode.clone();
        if !n.mac_address.is_empty() {
            line.push_str(&format!(", MAC {}", n.mac_address));
        }
        if !n.host_link.is_empty() {
            line.push_str(&format!(", host link {}", n.host_link));
        }
        println!(
            "Network:         {line} (set up in {:.1} ms)",
            n.setup_micros as f64 / 1000.0
        );
    }
    // Counters are live (the group's nftables table), so they come from Metrics.
    if st.phase == "Running"
        && !spec
            .network
            .as_ref()
            .is_none_or(|n| n.security_group_rules.is_empty())
        && let Ok(m) = eci_api::v1::metrics_client::MetricsClient::new(ch.clone())
            .get_metrics(eci_api::v1::GetMetricsRequest { group: name.into() })
            .await
    {
        println!("Security group:");
        let mut t = Table::new(&["#", "RULE", "PACKETS", "BYTES"]);
        for r in &m.into_inner().security_group_rules {
            t.row(vec![
                r.index.to_string(),
                r.rule.clone(),
                r.packets.to_string(),
                r.bytes.to_string(),
            ]);
        }
        for line in t.render().lines() {
            println!("  {line}");
        }
    }
    if let Some(u) = &st.user_namespace {
        println!(
            "Host id range:   {}-{} (user namespace: root inside is host uid {})",
            u.host_id_base,
            u64::from(u.host_id_base) + u64::from(u.size) - 1,
            u.host_id_base
        );
    }
    println!(
        "Generation:      {} (observed {})",
        g.generation, st.observed_generation
    );
    if !st.conditions.is_empty() {
        println!("Conditions:");
        for c in &st.conditions {
            println!(
                "  {:<16} {:<6} {:<18} {}",
                c.r#type, c.status, c.reason, c.message
            );
        }
    }
    for (title, list, statuses) in [
        (
            "Init containers",
            &spec.init_containers,
            &st.init_container_statuses,
        ),
        ("Containers", &spec.containers, &st.container_statuses),
    ] {
        if list.is_empty() {
            continue;
        }
        println!("{title}:");
        for c in list {
            let s = statuses
                .iter()
                .find(|s| s.name == c.name)
                .cloned()
                .unwrap_or_default();
            println!("  {}:", c.name);
            println!("    Image:          {}", c.image);
            println!("    State:          {} {}", s.state, s.reason);
            if !s.message.is_empty() {
                println!("    Message:        {}", s.message);
            }
            if s.state == "Terminated" {
                println!("    Exit code:      {}", s.exit_code);
            }
            if let Some(l) = &s.last_state {
                println!("    Last state:     Terminated {}", l.reason);
                println!("      Exit code:    {}", l.exit_code);
                println!("      Started:      {}", l.started_at);
                println!("      Finished:     {}", l.finished_at);
            }
            println!("    Ready:          {}", s.ready);
            if !s.health.is_empty() {
                println!("    Health:         {}", s.health);
            }
            println!("    Restart count:  {}", s.restart_count);
        }
    }
    let mut events = NodeClient::new(ch)
        .events(EventsRequest {
            group: name.into(),
            follow: false,
        })
        .await?
        .into_inner();
    let mut t = Table::new(&["TYPE", "REASON", "AGE", "COUNT", "MESSAGE"]);
    let mut any = false;
    while let Some(e) = events.message().await? {
        any = true;
        t.row(vec![
            e.r#type,
            e.reason,
            output::age(&e.last_timestamp),
            e.count.to_string(),
            e.message,
        ]);
    }
    println!("Events:");
    if any {
        for line in t.render().lines() {
            println!("  {line}");
        }
    } else {
        println!("  <none>");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(
    ch: Channel,
    name: &str,
    grace: Option<i64>,
    force: bool,
    wait: Option<Duration>,
) -> Result<ExitCode> {
    let mut c = ContainerGroupsClient::new(ch);
    c.delete(DeleteGroupRequest {
        name: name.into(),
        grace_period_seconds: grace,
        force,
    })
    .await?;
    if let Some(timeout) = wait {
        wait_gone(&mut c, name, timeout).await?;
        println!("group/{name} deleted");
    } else {
        println!("group/{name} deleting");
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_gone(
    c: &mut ContainerGroupsClient<Channel>,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match c.get(GetGroupRequest { name: name.into() }).await {
            Err(s) if s.code() == Code::NotFound => return Ok(()),
            Err(s) => return Err(s.into()),
            Ok(_) if tokio::time::Instant::now() >= deadline => {
                bail!(
                    "timed out after {} waiting for group {name:?} to be deleted",
                    humantime::format_duration(timeout)
                )
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub async fn restart(ch: Channel, name: &str) -> Result<ExitCode> {
    let g = ContainerGroupsClient::new(ch)
        .restart(RestartGroupRequest { name: name.into() })
        .await?
        .into_inner();
    println!(
        "group/{name} restarting ({})",
        g.status.unwrap_or_default().phase
    );
    Ok(ExitCode::SUCCESS)
}

/// `--for phase=Running` or `--for delete`.
pub async fn wait(ch: Channel, name: &str, condition: &str, timeout: Duration) -> Result<ExitCode> {
    let mut c = ContainerGroupsClient::new(ch);
    if condition == "delete" {
        wait_gone(&mut c, name, timeout).await?;
        println!("group/{name} deleted");
        return Ok(ExitCode::SUCCESS);
    }
    let Some(want) = condition.strip_prefix("phase=") else {
        bail!("--for {condition:?}: expected phase=PHASE or delete");
    };
    let watch = async {
        // Read the current state, then follow changes from exactly that revision.
        let g = c
            .get(GetGroupRequest { name: name.into() })
            .await?
            .into_inner();
        let mut last = g.status.unwrap_or_default().phase;
        if last == want {
            return Ok(());
        }
        let req = WatchRequest {
            from_revision: g.revision,
            name: name.into(),
            ..Default::default()
        };
        let mut stream = c.watch(req).await?.into_inner();
        while let Some(ev) = stream.message().await? {
            let Some(g) = ev.group else { continue };
            if ev.r#type == "DELETED" {
                bail!("group {name:?} was deleted while waiting for phase {want} (it was {last})");
            }
            last = g.status.unwrap_or_default().phase;
            if last == want {
                return Ok(());
            }
        }
        bail!("the agent closed the watch (phase is {last})")
    };
    match tokio::time::timeout(timeout, watch).await {
        Ok(Ok(())) => {
            println!("group/{name} condition met (phase={want})");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => bail!(
            "timed out after {} waiting for group {name:?} to reach {condition}",
            humantime::format_duration(timeout)
        ),
    }
}
