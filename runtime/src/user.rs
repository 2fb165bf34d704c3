//! Resolving a container user ("name", "uid", "name:group", "uid:gid") against the
//! container's own /etc/passwd and /etc/group, after pivot_root, as Docker does.

/// Errors resolving a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} is not in the container's /etc/passwd")]
    NoUser(String),
    #[error("group {0:?} is not in the container's /etc/group")]
    NoGroup(String),
}

/// Who the process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    pub additional: Vec<u32>,
    pub home: String,
}

/// Resolves `user` and optional `group` given the texts of /etc/passwd and /etc/group
/// (empty when absent: numeric ids still work).
pub fn resolve(
    user: &str,
    group: Option<&str>,
    passwd: &str,
    groups: &str,
) -> Result<Ids, UserError> {
    let pw: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 7)
        .collect();
    let gr: Vec<Vec<&str>> = groups
        .lines()
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 4)
        .collect();
    let entry = pw
        .iter()
        .find(|f| f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user));
    let (uid, mut gid, name, home) = match (entry, user.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse().map_err(|_| UserError::NoUser(user.into()))?,
            f[3].parse().map_err(|_| UserError::NoUser(user.into()))?,
            f[0].to_string(),
            f[5].to_string(),
        ),
        (None, Ok(uid)) => (uid, uid, String::new(), "/".to_string()),
        (None, Err(_)) => return Err(UserError::NoUser(user.into())),
    };
    if let Some(g) = group {
        gid = match (gr.iter().find(|f| f[0] == g), g.parse::<u32>()) {
            (_, Ok(n)) => n,
            (Some(f), Err(_)) => f[2].parse().map_err(|_| UserError::NoGroup(g.into()))?,
            (None, Err(_)) => return Err(UserError::NoGroup(g.into())),
        };
    }
    let mut additional: Vec<u32> = if name.is_empty() {
        Vec::new()
    } else {
        gr.iter()
            .filter(|f| f[3].split(',').any(|m| m == name))
            .filter_map(|f| f[2].parse().ok())
            .collect()
    };
    additional.retain(|g| *g != gid);
    Ok(Ids {
        uid,
        gid,
        additional,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nstaff:x:50:app\n";

    #[test]
    fn resolves() {
        assert_eq!(
            resolve("0", None, PASSWD, GROUP).expect("root").home,
            "/root"
        );
        let app = resolve("app", None, PASSWD, GROUP).expect("app");
        assert_eq!(
            (app.uid, app.gid, app.additional.clone()),
            (1000, 1000, vec![50])
        );
        assert_eq!(
            resolve("app", Some("staff"), PASSWD, GROUP)
                .expect("app")
                .gid,
            50
        );
        assert_eq!(
            resolve("4242", Some("7"), "", "").expect("numeric").uid,
            4242
        );
        assert!(resolve("ghost", None, PASSWD, GROUP).is_err());
    }
}
