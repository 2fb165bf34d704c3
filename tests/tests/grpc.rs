//! The gRPC surface as a control plane sees it: health, reflection, codes, resumable watch.

use eci_api::v1::container_groups_client::ContainerGroupsClient;
use eci_api::v1::containers_client::ContainersClient;
use eci_api::v1::images_client::ImagesClient;
use eci_api::v1::metrics_client::MetricsClient;
use eci_api::v1::*;
use eci_tests::{Agent, channel};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

fn spec(name: &str) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        containers: vec![Container {
            name: "app".into(),
            image: "busybox:1".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let agent = Agent::start("").expect("agent");
    let ch = channel(&agent.socket()).await.expect("channel");
    for service in ["", "eci.v1.ContainerGroups", "eci.v1.Node"] {
        let r = HealthClient::new(ch.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health");
        assert_eq!(
            r.into_inner().status,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::once(req))
        .await
        .expect("reflection")
        .into_inner();
    let msg = resp.next().await.expect("one answer").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("{msg:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "eci.v1.ContainerGroups",
        "eci.v1.Containers",
        "eci.v1.Metrics",
        "eci.v1.Images",
        "eci.v1.ImageCaches",
        "eci.v1.Node",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
}

#[tokio::test]
async fn codes_name_what_went_wrong() {
    let agent = Agent::start("").expect("agent");
    let ch = channel(&agent.socket()).await.expect("channel");
    let mut groups = ContainerGroupsClient::new(ch.clone());
    let mut bad = spec("Bad_Name");
    bad.containers[0].resources = Some(ResourceRequirements {
        cpu: "lots".into(),
        ..Default::default()
    });
    let err = groups
        .create(CreateGroupRequest { spec: Some(bad) })
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("name:") && err.message().contains("containers[0].resources.cpu:"),
        "{}",
        err.message()
    );
    let err = groups
        .create(CreateGroupRequest { spec: None })
        .await
        .expect_err("no spec");
    assert_eq!(err.code(), Code::InvalidArgument);

    groups
        .create(CreateGroupRequest {
            spec: Some(spec("a")),
        })
        .await
        .expect("create");
    let err = groups
        .create(CreateGroupRequest {
            spec: Some(spec("a")),
        })
        .await
        .expect_err("dup");
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = groups
        .get(GetGroupRequest { name: "zzz".into() })
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    let mut vm = spec("a");
    vm.sandbox = "vm".into();
    let err = groups
        .update(UpdateGroupRequest { spec: Some(vm) })
        .await
        .expect_err("sandbox change");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().starts_with("sandbox:"), "{}", err.message());
    let err = groups
        .list(ListGroupsRequest {
            label_selector: "=x".into(),
        })
        .await
        .expect_err("selector");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Methods that later parts of the agent build say so; none pretends to succeed.
    let err = groups
        .restart(RestartGroupRequest { name: "zzz".into() })
        .await
        .expect_err("restart");
    assert_eq!(err.code(), Code::NotFound);
    let err = MetricsClient::new(ch.clone())
        .get_metrics(GetMetricsRequest { group: "a".into() })
        .await
        .expect_err("metrics");
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "a Pending group has no metrics"
    );
    assert!(!err.message().is_empty());
    let err = ContainersClient::new(ch.clone())
        .logs(LogsRequest {
            group: "a".into(),
            container: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("logs of an unknown container");
    assert_eq!(err.code(), Code::NotFound);
    let err = ImagesClient::new(ch)
        .pull(PullImageRequest {
            image: "Not/A Reference".into(),
            credentials: vec![],
        })
        .await
        .expect_err("pull");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
}

#[tokio::test]
async fn watch_resumes_from_a_revision_and_filters_by_label() {
    let agent = Agent::start("[node]\ncpu = \"8\"\nmemory = \"16Gi\"\n").expect("agent");
    let ch = channel(&agent.socket()).await.expect("channel");
    let mut groups = ContainerGroupsClient::new(ch);
    let a = groups
        .create(CreateGroupRequest {
            spec: Some(spec("a")),
        })
        .await
        .expect("a")
        .into_inner();
    let mut other = spec("b");
    other.labels.clear();
    groups
        .create(CreateGroupRequest { spec: Some(other) })
        .await
        .expect("b");
    groups
        .create(CreateGroupRequest {
            spec: Some(spec("c")),
        })
        .await
        .expect("c");
    groups
        .delete(DeleteGroupRequest {
            name: "a".into(),
            ..Default::default()
        })
        .await
        .expect("delete");

    // Everything after a's creation, for app=web only, with events.
    let req = WatchRequest {
        from_revision: a.revision,
        label_selector: "app=web".into(),
        name: String::new(),
        events: true,
    };
    let mut stream = groups.watch(req).await.expect("watch").into_inner();
    let mut seen = Vec::new();
    while seen.iter().all(|s: &String| s != "DELETED a") {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .expect("no timeout")
            .expect("open")
            .expect("ok");
        let who = ev
            .group
            .as_ref()
            .and_then(|g| g.spec.as_ref())
            .map(|s| s.name.clone());
        let what = match (&ev.r#type[..], who, ev.event) {
            ("EVENT", _, Some(e)) => format!("EVENT {} {}", e.group, e.reason),
            (t, Some(n), _) => format!("{t} {n}"),
            other => panic!("{other:?}"),
        };
        seen.push(what);
    }
    assert!(
        !seen.iter().any(|s| s.contains(" b")),
        "b is filtered out: {seen:?}"
    );
    assert!(seen.contains(&"ADDED c".to_string()), "{seen:?}");
    assert!(seen.contains(&"EVENT c Scheduled".to_string()), "{seen:?}");
    assert!(seen.contains(&"EVENT a Scheduled".to_string()), "{seen:?}");
    assert!(
        seen.contains(&"MODIFIED a".to_string()),
        "a turns Terminating first: {seen:?}"
    );
    assert!(
        !seen.contains(&"ADDED a".to_string()),
        "resumes after a's creation: {seen:?}"
    );
}
