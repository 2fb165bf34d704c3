//! The rules of a group's status, each written once: the restart policy's decision,
//! every container-state transition (Waiting → Running → Terminated), and the group's
//! observed conditions. The supervisor's tasks decide *when*; these functions say *what*
//! the status becomes, so the same event always reads the same way in the status.

use eci_api::phase;
use eci_api::v1::{
    ContainerGroup, ContainerLastState, ContainerStatus, GroupCondition, GroupStatus,
};

/// Container states as the API shows them.
pub(crate) const WAITING: &str = "Waiting";
pub(crate) const RUNNING: &str = "Running";
pub(crate) const TERMINATED: &str = "Terminated";

/// Whether a container that ended with `exit_code` is started again under `policy`
/// (`Always`, the default when empty; `OnFailure`; `Never`).
pub(crate) fn wants_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// How a container run ended, as the status records it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ended {
    pub code: i32,
    pub oom: bool,
    /// The group's VM was OOM-killed on the host (not the container's own limit).
    pub vm_oom: bool,
    pub started_at: String,
    pub finished_at: String,
    pub message: String,
}

impl Ended {
    /// The Terminated reason: OOMKilled (the container's limit), VMOOMKilled (the vm
    /// group's QEMU was killed by the host's OOM killer), Completed or Error.
    pub(crate) fn reason(&self) -> &'static str {
        if self.vm_oom {
            "VMOOMKilled"
        } else if self.oom {
            "OOMKilled"
        } else if self.code == 0 {
            "Completed"
        } else {
            "Error"
        }
    }
}

/// The status of container `name` (app or init) in `g`.
pub(crate) fn status_of<'a>(
    g: &'a mut ContainerGroup,
    name: &str,
) -> Option<&'a mut ContainerStatus> {
    let st = g.status.get_or_insert_with(Default::default);
    st.container_statuses
        .iter_mut()
        .chain(st.init_container_statuses.iter_mut())
        .find(|c| c.name == name)
}

/// → Waiting, with why.
pub(crate) fn to_waiting(s: &mut ContainerStatus, reason: &str, message: &str) {
    s.state = WAITING.into();
    s.reason = reason.into();
    s.message = message.into();
}

/// → Running since `now` (run number `restarts`). Without a readiness probe a running
/// container is ready (Kubernetes).
pub(crate) fn to_running(
    s: &mut ContainerStatus,
    now: &str,
    restarts: u32,
    ready: bool,
    container_id: String,
) {
    s.state = RUNNING.into();
    s.ready = ready;
    s.reason.clear();
    s.message.clear();
    s.exit_code = 0;
    s.restart_count = restarts;
    s.started_at = now.into();
    s.finished_at.clear();
    s.container_id = container_id;
}

/// Waiting reason of a container whose restart is backing off.
pub(crate) const CRASH_LOOP: &str = "CrashLoopBackOff";

/// A terminated container is to be started again after `delay`: its run becomes its
/// `lastState`, and it waits in `CrashLoopBackOff` (as kubelet shows it).
pub(crate) fn to_crash_loop(s: &mut ContainerStatus, delay: &str) {
    if s.state == TERMINATED {
        s.last_state = Some(ContainerLastState {
            exit_code: s.exit_code,
            reason: s.reason.clone(),
            message: s.message.clone(),
            started_at: s.started_at.clone(),
            finished_at: s.finished_at.clone(),
        });
    }
    let msg = format!("back-off {delay} restarting failed container={}", s.name);
    to_waiting(s, CRASH_LOOP, &msg);
}

/// The group's health from its containers': `unhealthy` when any is, else `checking`
/// when any probe has no verdict yet, else `healthy`; empty when no container is probed.
pub(crate) fn group_health(st: &mut GroupStatus) {
    let hs: Vec<&str> = st
        .container_statuses
        .iter()
        .map(|c| c.health.as_str())
        .filter(|h| !h.is_empty())
        .collect();
    st.health = if hs.is_empty() {
        ""
    } else if hs.contains(&"unhealthy") {
        "unhealthy"
    } else if hs.contains(&"checking") {
        "checking"
    } else {
        "healthy"
    }
    .into();
}

/// → Terminated as `ended` says.
pub(crate) fn to_terminated(s: &mut ContainerStatus, ended: &Ended) {
    s.state = TERMINATED.into();
    s.health.clear();
    s.reason = ended.reason().into();
    s.message = ended.message.clone();
    s.exit_code = ended.code;
    s.ready = false;
    if !ended.started_at.is_empty() {
        s.started_at = ended.started_at.clone();
    }
    s.finished_at = ended.finished_at.clone();
}

/// The group is Running once all its app containers are.
pub(crate) fn maybe_running(st: &mut GroupStatus, now: &str) {
    if st.container_statuses.iter().all(|s| s.state == RUNNING) {
        st.phase = phase::RUNNING.into();
        st.reason = "Started".into();
        st.message = "all containers are running".into();
        if st.started_at.is_empty() {
            st.started_at = now.into();
        }
    }
}

/// Whether every app container has terminated for good under `policy`: then the group
/// is finished (Some(true) when all succeeded).
pub(crate) fn group_outcome(st: &GroupStatus, policy: &str) -> Option<bool> {
    let cs = &st.container_statuses;
    if cs.iter().any(|s| s.state != TERMINATED) {
        return None;
    }
    if cs.iter().any(|s| wants_restart(policy, s.exit_code)) {
        return None;
    }
    Some(cs.iter().all(|s| s.exit_code == 0))
}

/// Condition type: whether the group's shim answers.
pub(crate) const SHIM_RESPONSIVE: &str = "ShimResponsive";
/// Reason of a container whose state is unknown because its shim does not answer.
pub(crate) const SHIM_UNRESPONSIVE: &str = "ShimUnresponsive";

/// Sets condition `kind`; returns whether its status changed (the transition time
/// moves only then).
pub(crate) fn set_condition(
    st: &mut GroupStatus,
    kind: &str,
    ok: bool,
    reason: &str,
    message: &str,
    now: &str,
) -> bool {
    let status = if ok { "True" } else { "False" };
    let at = match st.conditions.iter().position(|c| c.r#type == kind) {
        Some(at) => at,
        None => {
            st.conditions.push(GroupCondition {
                r#type: kind.into(),
                ..Default::default()
            });
            st.conditions.len() - 1
        }
    };
    let c = &mut st.conditions[at];
    let changed = c.status != status;
    if changed {
        c.last_transition_time = now.into();
    }
    c.status = status.into();
    c.reason = reason.into();
    c.message = message.into();
    changed
}

/// The shim stopped answering: running containers' states are unknown from now on, so
/// they are shown as not ready with why, never as a current fact.
pub(crate) fn shim_unresponsive(st: &mut GroupStatus, message: &str, now: &str) -> bool {
    let changed = set_condition(st, SHIM_RESPONSIVE, false, SHIM_UNRESPONSIVE, message, now);
    for s in st.container_statuses.iter_mut() {
        if s.state == RUNNING {
            s.ready = false;
            s.reason = SHIM_UNRESPONSIVE.into();
            s.message = format!(
                "state unknown since {now}: the group's shim does not answer; last seen Running"
            );
        }
    }
    changed
}

/// The shim answers again: what [`shim_unresponsive`] marked is cleared (`ready` back
/// for containers without a readiness probe, as [`to_running`] sets it).
pub(crate) fn shim_responsive(
    st: &mut GroupStatus,
    ready_without_probe: impl Fn(&str) -> bool,
    now: &str,
) -> bool {
    let changed = set_condition(
        st,
        SHIM_RESPONSIVE,
        true,
        "ShimAnswers",
        "the group's shim answers",
        now,
    );
    for s in st.container_statuses.iter_mut() {
        if s.reason == SHIM_UNRESPONSIVE {
            s.reason.clear();
            s.message.clear();
            s.ready = s.state == RUNNING && ready_without_probe(&s.name);
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_oom_is_its_own_reason() {
        let ended = |oom, vm_oom, code| Ended {
            code,
            oom,
            vm_oom,
            ..Default::default()
        };
        assert_eq!(ended(true, false, 137).reason(), "OOMKilled");
        assert_eq!(ended(false, true, 137).reason(), "VMOOMKilled");
        assert_eq!(ended(false, false, 137).reason(), "Error");
        assert_eq!(ended(false, false, 0).reason(), "Completed");
    }

    #[test]
    fn restart_policy_decides_once() {
        assert!(wants_restart("", 0));
        assert!(wants_restart("Always", 0));
        assert!(wants_restart("OnFailure", 1));
        assert!(!wants_restart("OnFailure", 0));
        assert!(!wants_restart("Never", 1));
    }

    #[test]
    fn a_silent_shim_makes_running_unknown_and_recovery_restores_it() {
        let mut st = GroupStatus {
            container_statuses: vec![ContainerStatus {
                name: "a".into(),
                state: RUNNING.into(),
                ready: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(shim_unresponsive(&mut st, "no answer", "t1"));
        assert!(!shim_unresponsive(&mut st, "no answer", "t2"));
        assert_eq!(st.conditions[0].status, "False");
        assert_eq!(st.conditions[0].last_transition_time, "t1");
        assert!(!st.container_statuses[0].ready);
        assert_eq!(st.container_statuses[0].reason, SHIM_UNRESPONSIVE);
        assert!(shim_responsive(&mut st, |_| true, "t3"));
        assert_eq!(st.conditions[0].status, "True");
        assert!(st.container_statuses[0].ready);
        assert!(st.container_statuses[0].reason.is_empty());
    }

    #[test]
    fn a_restart_keeps_the_last_run_and_waits_in_crash_loop() {
        let mut s = ContainerStatus {
            name: "a".into(),
            ..Default::default()
        };
        let ended = Ended {
            code: 1,
            started_at: "t0".into(),
            finished_at: "t1".into(),
            ..Default::default()
        };
        to_terminated(&mut s, &ended);
        to_crash_loop(&mut s, "200ms");
        assert_eq!(s.state, WAITING);
        assert_eq!(s.reason, CRASH_LOOP);
        assert!(s.message.contains("200ms"), "{}", s.message);
        let last = s.last_state.clone().expect("last state");
        assert_eq!((last.exit_code, last.reason.as_str()), (1, "Error"));
        assert_eq!(
            (last.started_at.as_str(), last.finished_at.as_str()),
            ("t0", "t1")
        );
        to_running(&mut s, "t2", 1, true, "id".into());
        assert_eq!(s.last_state, Some(last), "kept while running");
    }

    #[test]
    fn group_health_is_the_worst_of_its_containers() {
        let st = |hs: &[&str]| {
            let mut st = GroupStatus {
                container_statuses: hs
                    .iter()
                    .map(|h| ContainerStatus {
                        health: h.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            group_health(&mut st);
            st.health
        };
        assert_eq!(st(&["", ""]), "");
        assert_eq!(st(&["healthy", ""]), "healthy");
        assert_eq!(st(&["healthy", "checking"]), "checking");
        assert_eq!(st(&["unhealthy", "checking"]), "unhealthy");
    }

    #[test]
    fn a_group_ends_only_when_nothing_restarts() {
        let st = |codes: &[i32]| GroupStatus {
            container_statuses: codes
                .iter()
                .map(|c| ContainerStatus {
                    state: TERMINATED.into(),
                    exit_code: *c,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        assert_eq!(group_outcome(&st(&[0, 0]), "OnFailure"), Some(true));
        assert_eq!(group_outcome(&st(&[0, 1]), "OnFailure"), None);
        assert_eq!(group_outcome(&st(&[0, 1]), "Never"), Some(false));
        assert_eq!(group_outcome(&st(&[0]), "Always"), None);
    }
}
