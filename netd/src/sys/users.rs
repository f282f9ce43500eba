//! Users, groups and permission bits as people write them on command lines and in
//! config files.

use anyhow::{anyhow, Result};
use nix::unistd::{Gid, Group, Uid, User};

/// A user by number or name.
pub fn uid(user: &str) -> Result<Uid> {
    if let Ok(n) = user.parse::<u32>() {
        return Ok(Uid::from_raw(n));
    }
    Ok(User::from_name(user)?
        .ok_or_else(|| anyhow!("no user named {user:?}"))?
        .uid)
}

/// A group by number or name.
pub fn gid(group: &str) -> Result<Gid> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(Gid::from_raw(n));
    }
    Ok(Group::from_name(group)?
        .ok_or_else(|| anyhow!("no group named {group:?}"))?
        .gid)
}

/// Who owns a socket file: `USER[:GROUP]`, each a number or a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: Uid,
    pub gid: Option<Gid>,
}

impl std::str::FromStr for Owner {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Owner> {
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        Ok(Owner {
            uid: uid(user)?,
            gid: group.map(gid).transpose()?,
        })
    }
}

/// Permission bits in octal (`660`, `0660`, `0o660`), at most `777`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode like 600 or 0660"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_modes_parse() {
        let o: Owner = "0:0".parse().unwrap();
        assert_eq!((o.uid.as_raw(), o.gid.map(|g| g.as_raw())), (0, Some(0)));
        let o: Owner = "root".parse().unwrap();
        assert_eq!((o.uid.as_raw(), o.gid), (0, None));
        assert!("no-such-user-here".parse::<Owner>().is_err());
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("1777").is_err());
    }
}
