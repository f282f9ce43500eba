//! Address management: one file per address in use, created with `O_EXCL`.
//!
//! The file system is the lock: two attaches (threads or processes) can never both create
//! the same address file, and the files survive a restart, so an address in use is never
//! handed out again. Layout: `<state>/ipam/<subnet>/<address>` containing the owner's id.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use thiserror::Error;

/// Length of the `last` file: the longest address, padded, and a newline.
const CURSOR_LEN: u64 = 16;

#[derive(Debug, Error)]
pub enum IpamError {
    #[error("subnet {subnet} has no free address ({in_use} in use)")]
    Exhausted { subnet: Ipv4Net, in_use: usize },
    #[error("address {addr} is in use by {owner}")]
    Taken { addr: Ipv4Addr, owner: String },
    #[error("address {addr} is not a container address of subnet {subnet} (gateway {gateway}, network and broadcast addresses are reserved)")]
    OutOfRange {
        addr: Ipv4Addr,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
    },
    #[error("address store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Ipam {
    dir: PathBuf,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
}

impl Ipam {
    pub fn open(state_dir: &std::path::Path, subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<Ipam> {
        let dir =
            state_dir
                .join("ipam")
                .join(format!("{}-{}", subnet.network(), subnet.prefix_len()));
        crate::sys::fs::private_dir(&dir).context("address store")?;
        Ok(Ipam {
            dir,
            subnet,
            gateway,
        })
    }

    fn usable(&self, addr: Ipv4Addr) -> bool {
        self.subnet.contains(&addr)
            && addr != self.subnet.network()
            && addr != self.subnet.broadcast()
            && addr != self.gateway
    }

    /// How many container addresses the subnet has.
    pub fn capacity(&self) -> usize {
        self.subnet.hosts().filter(|a| *a != self.gateway).count()
    }

    fn io(&self, source: std::io::Error) -> IpamError {
        IpamError::Io {
            path: self.dir.clone(),
            source,
        }
    }

    /// Tries to claim `addr` for `owner`; `Ok(false)` when someone has it.
    fn claim(&self, addr: Ipv4Addr, owner: &str) -> Result<bool, IpamError> {
        let path = self.dir.join(addr.to_string());
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut f) => {
                if let Err(e) = f.write_all(owner.as_bytes()) {
                    // A full file system: an empty claim would hold the address forever.
                    let _ = fs::remove_file(&path);
                    return Err(self.io(e));
                }
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Claims an address for `owner`: `requested` if given, else the next free one after
    /// the last handed out (so a just-released address is not reused at once).
    pub fn allocate(
        &self,
        owner: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError> {
        if let Some(addr) = requested {
            if !self.usable(addr) {
                return Err(IpamError::OutOfRange {
                    addr,
                    subnet: self.subnet,
                    gateway: self.gateway,
                });
            }
            if self.claim(addr, owner)? {
                return Ok(addr);
            }
            let holder = self
                .owner(addr)
                .unwrap_or_else(|| "another container".into());
            if holder == owner {
                return Ok(addr);
            }
            return Err(IpamError::Taken {
                addr,
                owner: holder,
            });
        }
        let hosts: Vec<Ipv4Addr> = self.subnet.hosts().filter(|a| self.usable(*a)).collect();
        let last = self.last_handed_out();
        let start = hosts
            .iter()
            .position(|a| Some(*a) == last)
            .map_or(0, |i| i + 1);
        for addr in hosts[start..].iter().chain(&hosts[..start]) {
            if self.claim(*addr, owner)? {
                self.remember_last(*addr);
                return Ok(*addr);
            }
        }
        Err(IpamError::Exhausted {
            subnet: self.subnet,
            in_use: self.in_use().len(),
        })
    }

    /// Remembers `addr` as the last handed out, overwriting the cursor in place: a
    /// truncate-and-rewrite makes ext4 flush the file on close (`auto_da_alloc`), which
    /// was 0.4 ms of every attach. A best effort: a lost cursor only restarts the search.
    fn remember_last(&self, addr: Ipv4Addr) {
        let _ = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.dir.join("last"))
            .and_then(|f| {
                f.write_all_at(format!("{addr:<15}\n").as_bytes(), 0)?;
                if f.metadata()?.len() > CURSOR_LEN {
                    f.set_len(CURSOR_LEN)?;
                }
                Ok(())
            });
    }

    fn last_handed_out(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join("last"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Who holds `addr`; a garbled claim reads as garbage (lossily), never as an error.
    fn owner(&self, addr: Ipv4Addr) -> Option<String> {
        read_owner(&self.dir.join(addr.to_string()))
    }

    /// Releases `addr` if `owner` holds it.
    pub fn release(&self, addr: Ipv4Addr, owner: &str) -> Result<(), IpamError> {
        if self.owner(addr).as_deref() == Some(owner) {
            match fs::remove_file(self.dir.join(addr.to_string())) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(self.io(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Releases every address `owner` holds.
    pub fn release_owner(&self, owner: &str) {
        for (addr, o) in self.in_use() {
            if o == owner {
                let _ = self.release(addr, owner);
            }
        }
    }

    /// Releases `addr` of `owner` in another subnet's store (left from before the
    /// bubble's subnet changed).
    pub fn release_in(&self, subnet: Ipv4Net, addr: Ipv4Addr, owner: &str) {
        let Some(root) = self.dir.parent() else {
            return;
        };
        let file = root
            .join(format!("{}-{}", subnet.network(), subnet.prefix_len()))
            .join(addr.to_string());
        if read_owner(&file).is_some_and(|o| o == owner) {
            let _ = fs::remove_file(file);
        }
    }

    /// Every address in use, with its owner.
    pub fn in_use(&self) -> Vec<(Ipv4Addr, String)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| {
                let e = e.ok()?;
                let addr: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
                Some((addr, read_owner(&e.path()).unwrap_or_default()))
            })
            .collect()
    }
}

fn read_owner(path: &std::path::Path) -> Option<String> {
    fs::read(path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hpk-ipam-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn ipam(dir: &std::path::Path, cidr: &str) -> Ipam {
        let subnet: Ipv4Net = cidr.parse().unwrap();
        let gw = subnet.hosts().next().unwrap();
        Ipam::open(dir, subnet, gw).unwrap()
    }

    #[test]
    fn exhaustion_says_how_many_are_in_use() {
        let dir = scratch("full");
        let ipam = ipam(&dir, "10.244.3.0/29");
        assert_eq!(ipam.capacity(), 5);
        let got: HashSet<_> = (0..5)
            .map(|i| ipam.allocate(&format!("c{i}"), None).unwrap())
            .collect();
        assert_eq!(got.len(), 5);
        assert!(!got.contains(&Ipv4Addr::new(10, 244, 3, 1)));
        let err = ipam.allocate("c5", None).unwrap_err().to_string();
        assert_eq!(err, "subnet 10.244.3.0/29 has no free address (5 in use)");
        ipam.release(Ipv4Addr::new(10, 244, 3, 4), "c2").unwrap();
        assert_eq!(
            ipam.allocate("c6", None).unwrap(),
            Ipv4Addr::new(10, 244, 3, 4)
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn addresses_survive_a_restart_and_are_not_reused_at_once() {
        let dir = scratch("restart");
        let a = ipam(&dir, "10.244.3.0/24").allocate("a", None).unwrap();
        let b = ipam(&dir, "10.244.3.0/24").allocate("b", None).unwrap();
        assert_ne!(a, b);
        let again = ipam(&dir, "10.244.3.0/24");
        again.release(a, "a").unwrap();
        assert_ne!(
            again.allocate("c", None).unwrap(),
            a,
            "a released address came back at once"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_cursor_is_overwritten_in_place() {
        let dir = scratch("cursor");
        let ipam = ipam(&dir, "10.244.3.0/24");
        let cursor = ipam.dir.join("last");
        // A long address, then shorter ones: no tail of the longer one may survive.
        ipam.allocate("a", Some(Ipv4Addr::new(10, 244, 3, 200)))
            .unwrap();
        ipam.remember_last(Ipv4Addr::new(10, 244, 3, 200));
        assert_eq!(
            ipam.allocate("b", None).unwrap(),
            Ipv4Addr::new(10, 244, 3, 201)
        );
        ipam.remember_last(Ipv4Addr::new(10, 244, 3, 9));
        assert_eq!(ipam.last_handed_out(), Some(Ipv4Addr::new(10, 244, 3, 9)));
        assert_eq!(fs::metadata(&cursor).unwrap().len(), CURSOR_LEN);
        // A garbled cursor longer than a cursor is cut to size by the next allocation.
        fs::write(&cursor, "x".repeat(40)).unwrap();
        assert_eq!(ipam.last_handed_out(), None);
        let c = ipam.allocate("c", None).unwrap();
        assert_eq!(ipam.last_handed_out(), Some(c));
        assert_eq!(fs::metadata(&cursor).unwrap().len(), CURSOR_LEN);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn static_requests_and_foreign_releases() {
        let dir = scratch("static");
        let ipam = ipam(&dir, "10.244.3.0/24");
        let want = Ipv4Addr::new(10, 244, 3, 77);
        assert_eq!(ipam.allocate("a", Some(want)).unwrap(), want);
        assert!(ipam
            .allocate("b", Some(want))
            .unwrap_err()
            .to_string()
            .contains("in use by a"));
        for bad in [
            [10, 244, 3, 1],
            [10, 244, 3, 0],
            [10, 244, 3, 255],
            [10, 244, 4, 2],
        ] {
            assert!(matches!(
                ipam.allocate("b", Some(bad.into())),
                Err(IpamError::OutOfRange { .. })
            ));
        }
        ipam.release(want, "b").unwrap(); // not b's: kept
        assert_eq!(ipam.in_use(), vec![(want, "a".to_owned())]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_allocations_are_unique() {
        let dir = scratch("race");
        let ipam = Arc::new(ipam(&dir, "10.244.3.0/24"));
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let ipam = ipam.clone();
                std::thread::spawn(move || {
                    (0..30)
                        .map(|i| ipam.allocate(&format!("t{t}-{i}"), None).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), 240);
        fs::remove_dir_all(&dir).unwrap();
    }
}
