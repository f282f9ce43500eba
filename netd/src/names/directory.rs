//! The names every bubble knows, in memory: what the DNS server answers from. Filled from
//! the cluster's etcd (or only this bubble's containers, without one).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Where a name points: the record stored in etcd (and in the state directory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub address: Ipv4Addr,
    /// The container's id, as its runtime names it.
    pub container: String,
    /// The public address of the bubble it runs in (`local` without etcd).
    pub bubble: String,
}

#[derive(Debug, Default)]
pub struct Directory {
    by_name: HashMap<String, Entry>,
    by_address: HashMap<Ipv4Addr, String>,
}

impl Directory {
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name)
    }

    /// The name of `address`, for reverse lookups.
    pub fn name_of(&self, address: Ipv4Addr) -> Option<&str> {
        self.by_address.get(&address).map(String::as_str)
    }

    pub fn insert(&mut self, name: &str, entry: Entry) {
        self.remove(name);
        self.by_address.insert(entry.address, name.to_string());
        self.by_name.insert(name.to_string(), entry);
    }

    pub fn remove(&mut self, name: &str) -> Option<Entry> {
        let old = self.by_name.remove(name)?;
        if self.by_address.get(&old.address).map(String::as_str) == Some(name) {
            self.by_address.remove(&old.address);
        }
        Some(old)
    }

    /// Replaces everything (after a fresh list of the store).
    pub fn replace_all(&mut self, entries: impl IntoIterator<Item = (String, Entry)>) {
        self.by_name.clear();
        self.by_address.clear();
        for (name, entry) in entries {
            self.insert(&name, entry);
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.by_name.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(last: u8, id: &str) -> Entry {
        Entry {
            address: Ipv4Addr::new(10, 244, 3, last),
            container: id.into(),
            bubble: "192.0.2.13".into(),
        }
    }

    #[test]
    fn names_and_addresses_stay_in_step() {
        let mut d = Directory::default();
        d.insert("web", entry(5, "a"));
        assert_eq!(d.name_of(Ipv4Addr::new(10, 244, 3, 5)), Some("web"));
        // A name that moves releases its old address.
        d.insert("web", entry(6, "b"));
        assert_eq!(d.name_of(Ipv4Addr::new(10, 244, 3, 5)), None);
        assert_eq!(d.get("web").unwrap().container, "b");
        // An address taken over by another name is not removed with the first one.
        d.insert("db", entry(6, "c"));
        d.remove("web");
        assert_eq!(d.name_of(Ipv4Addr::new(10, 244, 3, 6)), Some("db"));
        d.replace_all([("x".to_string(), entry(9, "d"))]);
        assert_eq!(d.len(), 1);
        assert_eq!(d.get("db"), None);
    }
}
