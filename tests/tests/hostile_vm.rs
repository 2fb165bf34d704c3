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
    assert!(!vm.available && !vm.emulated && vm.accelerator.is_empty(), "{vm:?}");
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
