//! Are we real root, or root of a user namespace that maps only part of the ids (a bubble),
//! or an unprivileged user? Rootless runs need a user namespace in the container's spec.

use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder};

/// One line of /proc/self/{uid,gid}_map: inside, outside, count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

pub fn parse_map(text: &str) -> Vec<Extent> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace().map(|w| w.parse::<u32>().ok());
            Some(Extent {
                inside: f.next()??,
                outside: f.next()??,
                count: f.next()??,
            })
        })
        .collect()
}

fn own_map(which: &str) -> Vec<Extent> {
    std::fs::read_to_string(format!("/proc/self/{which}_map"))
        .map(|t| parse_map(&t))
        .unwrap_or_default()
}

/// The initial user namespace maps every id onto itself.
fn is_full_map(map: &[Extent]) -> bool {
    map.len() == 1 && map[0].inside == 0 && map[0].outside == 0 && map[0].count == u32::MAX
}

/// The container's uid and gid mappings in a rootless spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMappings {
    pub uids: Vec<LinuxIdMapping>,
    pub gids: Vec<LinuxIdMapping>,
}

/// Who this process is: its effective ids and its user namespace's maps, read once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ids {
    pub euid: u32,
    pub egid: u32,
    pub uid_map: Vec<Extent>,
    pub gid_map: Vec<Extent>,
}

impl Ids {
    /// Reads /proc/self/{uid,gid}_map.
    pub fn current() -> Ids {
        Ids {
            euid: nix::unistd::geteuid().as_raw(),
            egid: nix::unistd::getegid().as_raw(),
            uid_map: own_map("uid"),
            gid_map: own_map("gid"),
        }
    }

    /// uid 0 in the initial user namespace: cgroups, any id mapping, real mounts.
    pub fn is_real_root(&self) -> bool {
        self.euid == 0 && is_full_map(&self.uid_map)
    }

    /// The container's id mappings for a rootless spec. As root of a user namespace (a
    /// bubble) we may map every id our namespace has, so `--user` works; an unprivileged
    /// user maps only its own ids onto container root.
    pub fn mappings(&self) -> IdMappings {
        if self.euid == 0 {
            let uids = identity(&self.uid_map);
            let gids = identity(&self.gid_map);
            if !uids.is_empty() && !gids.is_empty() {
                return IdMappings { uids, gids };
            }
        }
        IdMappings {
            uids: vec![single(self.euid)],
            gids: vec![single(self.egid)],
        }
    }
}

fn mapping(container: u32, host: u32, size: u32) -> LinuxIdMapping {
    LinuxIdMappingBuilder::default()
        .container_id(container)
        .host_id(host)
        .size(size)
        .build()
        .expect("an id mapping builds")
}

fn single(host: u32) -> LinuxIdMapping {
    mapping(0, host, 1)
}

/// Container id X is our id X, for every range our namespace has.
fn identity(map: &[Extent]) -> Vec<LinuxIdMapping> {
    map.iter()
        .map(|e| mapping(e.inside, e.inside, e.count))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_parse_and_classify() {
        let full = parse_map("         0          0 4294967295\n");
        assert!(is_full_map(&full));
        let bubble = parse_map("0 1000 1\n1 100000 65536\n");
        assert!(!is_full_map(&bubble));
        let ids = identity(&bubble);
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[1].container_id(), 1);
        assert_eq!(ids[1].host_id(), 1);
        assert_eq!(ids[1].size(), 65536);

        let in_bubble = Ids {
            euid: 0,
            egid: 0,
            uid_map: bubble.clone(),
            gid_map: bubble,
        };
        assert!(!in_bubble.is_real_root());
        assert_eq!(in_bubble.mappings().uids, ids);
        let real = Ids {
            uid_map: full.clone(),
            gid_map: full,
            ..in_bubble
        };
        assert!(real.is_real_root());
        let user = Ids {
            euid: 1000,
            egid: 100,
            ..real
        };
        assert!(!user.is_real_root());
        assert_eq!(user.mappings().uids, vec![single(1000)]);
        assert_eq!(user.mappings().gids, vec![single(100)]);
    }
}
