//! What a container runs: the image's ENTRYPOINT / CMD / ENV / WORKDIR / USER merged with
//! the container spec, with Kubernetes semantics.

use std::collections::HashMap;

use eci_api::v1::Container;

use super::ImageDefaults;

/// The process a container starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub args: Vec<String>,
    /// `NAME=value`, image entries first, spec entries overriding by name.
    pub env: Vec<String>,
    pub cwd: String,
    /// User as the image or spec states it: a name or number, resolved against the
    /// container's own /etc/passwd when it starts.
    pub user: String,
    /// Group, when stated.
    pub group: Option<String>,
}

/// Why no process could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("container {container:?}: neither the spec nor the image gives a command to run")]
pub struct NoCommand {
    pub container: String,
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Merges image defaults and the container spec.
///
/// - `command` replaces ENTRYPOINT (and then the image CMD is ignored);
/// - `args` replaces CMD;
/// - `env` adds to the image ENV, later names winning; PATH defaults as in Docker;
/// - `workingDir` replaces WORKDIR (default `/`);
/// - `securityContext.runAsUser/runAsGroup` replace USER.
pub fn merge(image: &ImageDefaults, c: &Container) -> Result<Process, NoCommand> {
    let args: Vec<String> = match (c.command.is_empty(), c.args.is_empty()) {
        (true, true) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
        (true, false) => image.entrypoint.iter().chain(&c.args).cloned().collect(),
        (false, _) => c.command.iter().chain(&c.args).cloned().collect(),
    };
    if args.is_empty() {
        return Err(NoCommand {
            container: c.name.clone(),
        });
    }
    let env = merge_env(
        image.env.iter().cloned(),
        c.env.iter().map(|e| format!("{}={}", e.name, e.value)),
    );
    let cwd = [&c.working_dir, &image.working_dir]
        .into_iter()
        .find(|d| !d.is_empty())
        .cloned()
        .unwrap_or_else(|| "/".into());
    let (image_user, image_group) = match image.user.split_once(':') {
        Some((u, g)) => (u.to_string(), Some(g.to_string())),
        None => (image.user.clone(), None),
    };
    let sc = c.security_context.clone().unwrap_or_default();
    let user = match sc.run_as_user {
        Some(uid) => uid.to_string(),
        None if image_user.is_empty() => "0".into(),
        None => image_user,
    };
    let group = sc.run_as_group.map(|g| g.to_string()).or(image_group);
    Ok(Process {
        args,
        env,
        cwd,
        user,
        group,
    })
}

/// The name of a `NAME=value` entry (all of it when there is no `=`).
fn env_name(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(n, _)| n)
}

/// Image entries first, then spec entries; a later entry replaces an earlier one of the
/// same name in its place (Docker and Kubernetes keep the first position). PATH defaults
/// as in Docker when nobody sets it.
///
/// Linear in the number of entries: one hash lookup per entry, so a spec at the env
/// limit (or far over it, should a caller skip validation) costs milliseconds, where a
/// scan of the list per entry cost seconds and grew with the square.
fn merge_env(
    image: impl IntoIterator<Item = String>,
    spec: impl IntoIterator<Item = String>,
) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    // Name → index in `env`. Keys are owned copies of the names: entries are replaced
    // in place, so borrowing from `env` is not possible.
    let mut at: HashMap<String, usize> = HashMap::new();
    for entry in image.into_iter().chain(spec) {
        match at.get(env_name(&entry)) {
            Some(&i) => env[i] = entry,
            None => {
                at.insert(env_name(&entry).to_string(), env.len());
                env.push(entry);
            }
        }
    }
    if !at.contains_key("PATH") {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    env
}

#[cfg(test)]
mod tests {
    use eci_api::v1::{EnvVar, SecurityContext};

    use super::*;

    fn image() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            working_dir: "/srv".into(),
            user: "app:staff".into(),
        }
    }

    #[test]
    fn docker_semantics() {
        let c = Container {
            name: "c".into(),
            ..Default::default()
        };
        let p = merge(&image(), &c).expect("merge");
        assert_eq!(p.args, ["/entry", "serve"]);
        assert_eq!(
            (p.cwd.as_str(), p.user.as_str(), p.group.as_deref()),
            ("/srv", "app", Some("staff"))
        );

        let c = Container {
            name: "c".into(),
            args: vec!["debug".into()],
            ..Default::default()
        };
        assert_eq!(
            merge(&image(), &c).expect("merge").args,
            ["/entry", "debug"]
        );

        let c = Container {
            name: "c".into(),
            command: vec!["/bin/sh".into()],
            ..Default::default()
        };
        assert_eq!(
            merge(&image(), &c).expect("merge").args,
            ["/bin/sh"],
            "CMD is dropped with command"
        );

        let c = Container {
            name: "c".into(),
            env: vec![
                EnvVar {
                    name: "A".into(),
                    value: "2".into(),
                },
                EnvVar {
                    name: "B".into(),
                    value: "x=y".into(),
                },
            ],
            working_dir: "/w".into(),
            security_context: Some(SecurityContext {
                run_as_user: Some(1000),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = merge(&image(), &c).expect("merge");
        assert_eq!(p.env, ["PATH=/bin", "A=2", "B=x=y"]);
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/w", "1000"));
    }

    #[test]
    fn defaults_and_errors() {
        let bare = ImageDefaults::default();
        let c = Container {
            name: "c".into(),
            ..Default::default()
        };
        assert_eq!(
            merge(&bare, &c),
            Err(NoCommand {
                container: "c".into()
            })
        );
        let c = Container {
            name: "c".into(),
            command: vec!["x".into()],
            ..Default::default()
        };
        let p = merge(&bare, &c).expect("merge");
        assert!(p.env[0].starts_with("PATH=/usr/local/sbin"));
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/", "0"));
    }

    #[test]
    fn env_later_names_win_in_place() {
        let env = merge_env(
            ["A=1", "B=2", "NOEQ"].map(String::from),
            ["B=3", "C=x=y", "A=4", "C=5", "NOEQ=now"].map(String::from),
        );
        assert_eq!(
            env,
            [DEFAULT_PATH, "A=4", "B=3", "NOEQ=now", "C=5"],
            "PATH first, each name once at its first position with its last value"
        );
        let env = merge_env(["X=1".into()], ["PATH=/p".into()]);
        assert_eq!(
            env,
            ["X=1", "PATH=/p"],
            "a PATH from the spec is kept as is"
        );
    }

    /// The merge is one hash lookup per entry. 100,000 entries (ten times the env limit
    /// validation enforces) with every name given twice must come out with each name
    /// once, in first-seen order, carrying its last value; the time is the benchmark's
    /// business (`eci-apibench`), not this test's.
    #[test]
    fn env_merge_of_a_huge_spec() {
        const N: usize = 100_000;
        let image: Vec<String> = (0..N / 2).map(|i| format!("V{i}=image")).collect();
        let spec: Vec<String> = (0..N)
            .map(|i| format!("V{}=spec{i}", i % (N / 2)))
            .collect();
        let env = merge_env(image, spec);
        assert_eq!(env.len(), N / 2 + 1);
        assert_eq!(env[0], DEFAULT_PATH);
        for (i, e) in env[1..].iter().enumerate() {
            assert_eq!(e, &format!("V{i}=spec{}", i + N / 2));
        }
    }
}
