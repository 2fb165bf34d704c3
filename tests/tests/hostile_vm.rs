//! `sandbox: vm` is refused where the node cannot run it (here: no guest image in the
//! agent's state directory): running it in namespaces would be a false claim of
//! isolation. The node advertises only what really runs, and the refusal says why.

use eci_api::v1::container_groups_client::ContainerGroupsClient;
use eci_api::v1::node_client::NodeClient;
use eci_api::v1::{Container, CreateGroupRequest, GroupSpec, NodeInfoRequest};
use eci_tests::{Agent, channel, text};

#[tokio::test]
async fn a_vm_request_is_refused_and_not_advertised() {
    let agent = Agent::start("").expect("agent");
    let ch = channel(&agent.socket()).await.expect("channel");
    let info = NodeClient::new(ch.clone())
        .info(NodeInfoRequest {})
        .await
        .expect("node info")
        .into_inner();
    assert_eq!(info.sandbox_kinds, vec!["namespaced".to_string()]);
    let vm = info.vm.expect("vm facts");
    assert!(
        !vm.available && !vm.emulated && vm.accelerator.is_empty(),
        "{vm:?}"
    );
    assert!(
        vm.reason.starts_with("no guest image at ") && vm.reason.contains("guest-image.sh"),
        "{vm:?}"
    );
    let err = ContainerGroupsClient::new(ch)
        .create(CreateGroupRequest {
            spec: Some(GroupSpec {
                name: "hard".into(),
                sandbox: "vm".into(),
                containers: vec![Container {
                    name: "app".into(),
                    image: "busybox:1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        })
        .await
        .expect_err("a vm group must be refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("sandbox") && err.message().contains("vm"),
        "{err:?}"
    );
    // The refusal names the missing image and how to make it.
    assert!(
        err.message().contains("no guest image at ")
            && err.message().contains("/var/lib/eci/guest")
            && err.message().contains("scripts/guest-image.sh"),
        "{err:?}"
    );
    assert!(!agent.ctl(&["get", "hard"]).status.success());
    let out = text(&agent.ctl(&["node"]));
    let kinds = out
        .lines()
        .find(|l| l.starts_with("Sandbox kinds:"))
        .unwrap_or_default();
    assert!(kinds.ends_with(" namespaced"), "{out}");
}

/// With a guest image (`scripts/guest-image.sh`) on a host where only TCG boots it
/// (this one: `/dev/kvm` is nested `kvm_pvm`), `vm` stays off until `[vm] allow_tcg`
/// says otherwise, and the refusal says so. Skipped without the image, or where KVM
/// boots the guest.
#[tokio::test]
async fn tcg_needs_the_opt_in() {
    let image = std::path::Path::new("/var/lib/eci/guest");
    if !image.join("manifest.json").is_file() {
        eprintln!("skipped: no guest image at {}", image.display());
        return;
    }
    let agent = Agent::start("[vm]\nguest_dir = \"/var/lib/eci/guest\"\n").expect("agent");
    let ch = channel(&agent.socket()).await.expect("channel");
    let mut node = NodeClient::new(ch.clone());
    let mut vm = None;
    for _ in 0..180 {
        let info = node
            .info(NodeInfoRequest {})
            .await
            .expect("node info")
            .into_inner();
        let v = info.vm.clone().expect("vm facts");
        if v.reason != "probing" {
            vm = Some((v, info.sandbox_kinds));
            break;
        }
        // Never advertised while the probe runs.
        assert_eq!(info.sandbox_kinds, vec!["namespaced".to_string()]);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let (vm, kinds) = vm.expect("the probe ends within 90 s");
    if vm.available && vm.accelerator == "kvm" {
        eprintln!("skipped: KVM boots the guest on this host");
        return;
    }
    assert!(!vm.available, "{vm:?}");
    assert!(
        vm.reason
            .starts_with("only TCG emulation boots a guest here and [vm] allow_tcg is false"),
        "{vm:?}"
    );
    assert!(!vm.guest_kernel_release.is_empty(), "{vm:?}");
    assert_eq!(kinds, vec!["namespaced".to_string()]);
    let err = ContainerGroupsClient::new(ch)
        .create(CreateGroupRequest {
            spec: Some(GroupSpec {
                name: "emulated".into(),
                sandbox: "vm".into(),
                containers: vec![Container {
                    name: "app".into(),
                    image: "busybox:1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        })
        .await
        .expect_err("TCG is an opt-in");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("allow_tcg is false"), "{err:?}");
    // The verdict is cached beside the state, keyed by kernel, QEMU and image.
    let cache = agent.root().join("var/lib/eci/vm-accel.json");
    let text = std::fs::read_to_string(&cache).expect("vm-accel.json");
    assert!(
        text.contains("\"tcg\"") && text.contains("qemu_version"),
        "{text}"
    );
}
