//! What a container runs: the image's ENTRYPOINT / CMD / ENV / WORKDIR / USER merged with
//! the container spec, with Kubernetes semantics.

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
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let name = entry.split('=').next().unwrap_or_default().to_string();
        match env
            .iter_mut()
            .find(|e| e.split('=').next() == Some(name.as_str()))
        {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    };
    for e in &image.env {
        set(e.clone());
    }
    for e in &c.env {
        set(format!("{}={}", e.name, e.value));
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
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
}
