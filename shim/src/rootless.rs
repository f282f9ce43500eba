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

/// uid 0 in the initial user namespace: cgroups, any id mapping, real mounts.
pub fn is_real_root() -> bool {
    nix::unistd::geteuid().is_root() && is_full_map(&own_map("uid"))
}

/// The container's id mappings for a rootless spec. As root of a user namespace (a
/// bubble) we may map every id our namespace has, so `--user` works; an unprivileged user
/// maps only its own ids onto container root.
pub fn id_mappings() -> (Vec<LinuxIdMapping>, Vec<LinuxIdMapping>) {
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    if euid == 0 {
        let uids = identity(&own_map("uid"));
        let gids = identity(&own_map("gid"));
        if !uids.is_empty() && !gids.is_empty() {
            return (uids, gids);
        }
    }
    (vec![single(euid)], vec![single(egid)])
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
    }
}
