//! Property tests with hostile specs: a valid spec mutated at random (hostile strings
//! and numbers in any field, lists blown up past their limits, fields removed) goes
//! through the API's JSON mapping, validation and, when it passes, the OCI spec
//! builder. Whatever the input, nothing panics; what passes validation obeys the
//! product's limits. Bounded to a few seconds.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};

use super::{admit, limits, validate};

fn base() -> Value {
    json!({
        "name": "web",
        "cpu": "1",
        "memory": "2Gi",
        "restartPolicy": "Always",
        "labels": {"app": "web"},
        "securityContext": {"sysctls": [{"name": "net.ipv4.ip_forward", "value": "1"}]},
        "volumes": [{"name": "v", "emptyDir": {}}, {"name": "m", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}],
        "initContainers": [{"name": "init", "image": "busybox:1", "command": ["true"]}],
        "containers": [{
            "name": "app",
            "image": "busybox:1",
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c"],
            "args": ["sleep 1"],
            "workingDir": "/srv",
            "env": [{"name": "A", "value": "b"}],
            "resources": {"cpu": "500m", "memory": "1Gi"},
            "volumeMounts": [{"name": "v", "mountPath": "/data", "subPath": "x"}],
            "securityContext": {"capabilities": {"add": ["NET_RAW"], "drop": ["MKNOD"]}, "runAsUser": 1000}
        }]
    })
}

/// Values an attacker would put anywhere.
fn hostile() -> impl Strategy<Value = Value> {
    prop_oneof![
        select(vec![
            "",
            "..",
            "/",
            "../../etc",
            "/proc/self/root",
            "a/../../b",
            "\u{0}",
            "ALL",
            "SYS_ADMIN",
            "NET_ADMIN",
            "vm",
            "Memory",
            "-1",
            "0",
            "1e309",
            "9999999999999999999Gi",
            "64",
            "65",
            "0.0001",
            "sha256:/",
            "busybox@sha256:../../x",
            "é",
            "Always",
        ])
        .prop_map(|s| Value::String(s.to_string())),
        "[ -~]{0,300}".prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        Just(json!({})),
        Just(json!([])),
    ]
}

/// Every JSON pointer of `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, c)| pointers(c, format!("{at}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, c)| pointers(c, format!("{at}/{i}"), out)),
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the node at pointer index `usize` with a hostile value.
    Set(usize, Value),
    /// Repeat the first element of an array `n` times (past every limit).
    Grow(usize, usize),
    /// Remove the node.
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<usize>(), hostile()).prop_map(|(i, v)| Mutation::Set(i, v)),
        2 => (any::<usize>(), 1usize..120).prop_map(|(i, n)| Mutation::Grow(i, n)),
        1 => any::<usize>().prop_map(Mutation::Remove),
    ]
}

fn apply(spec: &mut Value, m: &Mutation) {
    let mut ptrs = Vec::new();
    pointers(spec, String::new(), &mut ptrs);
    let pick = |i: usize| ptrs[i % ptrs.len()].clone();
    match m {
        Mutation::Set(i, v) => {
            if let Some(node) = spec.pointer_mut(&pick(*i)) {
                *node = v.clone();
            }
        }
        Mutation::Grow(i, n) => {
            if let Some(Value::Array(a)) = spec.pointer_mut(&pick(*i))
                && let Some(first) = a.first().cloned()
            {
                a.extend(std::iter::repeat_n(first, *n));
            }
        }
        Mutation::Remove(i) => {
            let p = pick(*i);
            if let Some((parent, key)) = p.rsplit_once('/') {
                match spec.pointer_mut(parent) {
                    Some(Value::Object(m)) => {
                        m.remove(key);
                    }
                    Some(Value::Array(a)) => {
                        if let Ok(k) = key.parse::<usize>()
                            && k < a.len()
                        {
                            a.remove(k);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn hostile_specs_are_refused_or_within_limits(muts in vec(mutation(), 1..8)) {
        let mut spec = base();
        for m in &muts {
            apply(&mut spec, m);
        }
        // The API's own JSON mapping: what does not parse never reaches validation.
        let Ok(parsed) = serde_json::from_value::<eci_api::v1::GroupSpec>(spec) else {
            return Ok(());
        };
        // Admission is stricter than the rules alone (kernel, unbuilt fields).
        if admit(&parsed).is_ok() {
            prop_assert!(validate(&parsed).is_ok());
            for c in parsed.init_containers.iter().chain(&parsed.containers) {
                prop_assert!(build_config(&parsed, c).is_ok(), "admitted but not buildable: {c:?}");
            }
        }
        if let Ok(valid) = validate(&parsed) {
            prop_assert!(parsed.containers.len() <= limits::MAX_CONTAINERS);
            prop_assert!(parsed.volumes.len() <= limits::MAX_VOLUMES);
            prop_assert!(parsed.labels.len() <= limits::MAX_LABELS);
            prop_assert!(valid.normalized.cpu_millis <= 64_000);
            for c in &parsed.containers {
                if let Some(caps) = c.security_context.as_ref().and_then(|s| s.capabilities.as_ref()) {
                    for a in &caps.add {
                        let bare = a.strip_prefix("CAP_").unwrap_or(a);
                        prop_assert!(
                            super::container::ADDABLE_CAPABILITIES.contains(&bare),
                            "{a} passed validation"
                        );
                    }
                }
                for m in &c.volume_mounts {
                    prop_assert!(!m.sub_path.starts_with('/') && !m.sub_path.split('/').any(|p| p == ".."));
                }
            }
        }
    }
}

/// The mutations start from a spec that passes, so many cases reach the checks above.
#[test]
fn the_base_spec_is_valid() {
    let spec: eci_api::v1::GroupSpec = serde_json::from_value(base()).expect("parses");
    validate(&spec).expect("valid");
}

/// The OCI spec of an admitted container, as the supervisor builds it.
fn build_config(
    group: &eci_api::v1::GroupSpec,
    container: &eci_api::v1::Container,
) -> Result<oci_spec::runtime::Spec, crate::sandbox::spec::BuildError> {
    let volumes = group
        .volumes
        .iter()
        .map(|v| {
            (
                v.name.clone(),
                std::path::PathBuf::from("/run/eci/v").join(&v.name),
            )
        })
        .collect();
    let process = crate::images::process::Process {
        args: container
            .command
            .iter()
            .chain(&container.args)
            .cloned()
            .collect(),
        env: container
            .env
            .iter()
            .map(|e| format!("{}={}", e.name, e.value))
            .collect(),
        cwd: "/".into(),
        user: "0".into(),
        group: None,
    };
    crate::sandbox::spec::build(&crate::sandbox::spec::SpecInputs {
        group_id: "id",
        cgroup_parent: "eci",
        group,
        container,
        process: &process,
        shm_bytes: 64 << 20,
        shm_dir: None,
        etc_dir: std::path::Path::new("/run/eci/etc"),
        volumes: &volumes,
        oom_score_adj: 0,
        userns: None,
    })
}
