//! `--user UID[:GID]` or a name from the image's /etc/passwd (and /etc/group).

use std::path::Path;

use anyhow::{bail, Result};

/// Resolves `spec` against the rootfs; a numeric uid without a group takes the passwd
/// entry's group, else the same number.
pub fn resolve(spec: &str, rootfs: &Path) -> Result<(u32, u32)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && (f[0] == user || f[2] == user))
            .then(|| (f[2].parse::<u32>().ok(), f[3].parse::<u32>().ok()))
    });
    let uid = match (user.parse::<u32>(), entry) {
        (Ok(n), _) => n,
        (Err(_), Some((Some(n), _))) => n,
        _ => bail!(
            "--user {spec}: no user {user:?} in the image's /etc/passwd (use a numeric UID[:GID])"
        ),
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_id(g, rootfs).ok_or_else(|| {
                anyhow::anyhow!(
                    "--user {spec}: no group {g:?} in the image's /etc/group (use a numeric GID)"
                )
            })?,
        },
        None => entry.and_then(|(_, g)| g).unwrap_or(uid),
    };
    Ok((uid, gid))
}

/// The home directory of `uid` in the image's /etc/passwd.
pub fn home_of(uid: u32, rootfs: &Path) -> Option<String> {
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[2].parse() == Ok(uid)).then(|| f[5].to_string())
    })
}

fn group_id(name: &str, rootfs: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(rootfs.join("etc/group")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve() {
        let scratch = crate::testutil::TempDir::new("user");
        let dir = scratch.path();
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:33:44::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve("1000", dir).unwrap(), (1000, 1000));
        assert_eq!(resolve("1000:7", dir).unwrap(), (1000, 7));
        assert_eq!(resolve("web", dir).unwrap(), (33, 44));
        assert_eq!(resolve("33", dir).unwrap(), (33, 44));
        assert_eq!(resolve("web:staff", dir).unwrap(), (33, 50));
        assert!(resolve("nobody", dir).is_err());
        assert!(resolve("web:nogroup", dir).is_err());
        assert_eq!(home_of(0, dir).as_deref(), Some("/root"));
        assert_eq!(home_of(7, dir), None);
    }
}
