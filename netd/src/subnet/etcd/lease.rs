//! Subnet leases in etcd: keys and values byte-compatible with flanneld's.

use std::net::Ipv4Addr;

use anyhow::{anyhow, bail, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// flanneld's default etcd prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

pub fn config_key(prefix: &str) -> String {
    format!("{}/config", prefix.trim_end_matches('/'))
}

pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets/", prefix.trim_end_matches('/'))
}

/// `<prefix>/subnets/10.244.1.0-24`.
pub fn subnet_key(prefix: &str, subnet: Ipv4Net) -> String {
    format!(
        "{}{}-{}",
        subnets_prefix(prefix),
        subnet.network(),
        subnet.prefix_len()
    )
}

/// The IPv4 subnet of a lease key; a dual-stack key carries `&<ipv6>-<len>` after it.
pub fn parse_subnet_key(prefix: &str, key: &str) -> Option<Ipv4Net> {
    let rest = key.strip_prefix(&subnets_prefix(prefix))?;
    let v4 = rest.split('&').next()?;
    let (addr, len) = v4.split_once('-')?;
    let net = Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    // flanneld writes network addresses only; `10.244.2.5-24` or `10.244.2.0-2` is garbled
    // (the second would route a quarter of the address space).
    (net == net.trunc()).then_some(net)
}

/// A lease's value, fields in flanneld's order; `PublicIPv6` is written as `null`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<String>,
    #[serde(rename = "BackendType", default)]
    pub backend_type: String,
    #[serde(rename = "BackendData", default)]
    pub backend_data: Value,
}

/// flannel's vxlan `BackendData`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanData {
    #[serde(rename = "VNI")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: String,
    #[serde(rename = "HpkVtep", default, skip_serializing_if = "Option::is_none")]
    pub hpk: Option<HpkVtep>,
}

/// What an hpk-netd VTEP adds to flannel's vxlan `BackendData` (flanneld reads only the
/// fields it knows): the port it sends from, and whether its datagrams are sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HpkVtep {
    #[serde(rename = "Port")]
    pub port: u16,
    #[serde(rename = "Sealed")]
    pub sealed: bool,
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for o in &mut out {
        *o = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Our lease value, exactly as flanneld would write it (and, from our own VTEP, `hpk`).
pub fn lease_value(public_ip: Ipv4Addr, vni: u32, mac: [u8; 6], hpk: Option<HpkVtep>) -> String {
    let attrs = LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: serde_json::to_value(VxlanData {
            vni,
            vtep_mac: format_mac(mac),
            hpk,
        })
        .expect("serializes"),
    };
    serde_json::to_string(&attrs).expect("serializes")
}

/// Another node, as its lease describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: [u8; 6],
    /// Set when the peer is an hpk-netd VTEP.
    pub hpk: Option<HpkVtep>,
}

/// What a value under `subnets/` turned out to be.
#[derive(Debug)]
pub enum Parsed {
    Vxlan(Peer),
    /// A valid lease of another backend: not ours to route.
    OtherBackend(String),
}

/// Reads a lease; an error means the value is garbled (to be logged and ignored).
pub fn parse_lease(subnet: Ipv4Net, value: &[u8]) -> Result<Parsed> {
    let attrs: LeaseAttrs =
        serde_json::from_slice(value).map_err(|e| anyhow!("not a flannel lease: {e}"))?;
    if !attrs.backend_type.eq_ignore_ascii_case("vxlan") {
        return Ok(Parsed::OtherBackend(attrs.backend_type));
    }
    let data: VxlanData = serde_json::from_value(attrs.backend_data)
        .map_err(|e| anyhow!("vxlan BackendData unreadable: {e}"))?;
    let Some(vtep_mac) = parse_mac(&data.vtep_mac) else {
        bail!("VtepMAC {:?} is not a MAC address", data.vtep_mac);
    };
    Ok(Parsed::Vxlan(Peer {
        subnet,
        public_ip: attrs.public_ip,
        vtep_mac,
        hpk: data.hpk,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let s: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let k = subnet_key(DEFAULT_PREFIX, s);
        assert_eq!(k, "/coreos.com/network/subnets/10.244.1.0-24");
        assert_eq!(parse_subnet_key(DEFAULT_PREFIX, &k), Some(s));
        assert_eq!(
            parse_subnet_key(
                DEFAULT_PREFIX,
                "/coreos.com/network/subnets/10.244.2.0-24&fd00:0:0:2::-64"
            ),
            Some("10.244.2.0/24".parse().unwrap())
        );
        for garbled in ["10.244.2.5-24", "10.244.2.0-2"] {
            let key = format!("/coreos.com/network/subnets/{garbled}");
            assert_eq!(parse_subnet_key(DEFAULT_PREFIX, &key), None, "{key}");
        }
        assert_eq!(
            parse_subnet_key(DEFAULT_PREFIX, "/coreos.com/network/config"),
            None
        );
        assert_eq!(
            parse_subnet_key(DEFAULT_PREFIX, "/coreos.com/network/subnets/junk"),
            None
        );
    }

    #[test]
    fn values_are_flanneld_bytes() {
        let v = lease_value(
            Ipv4Addr::new(192, 0, 2, 11),
            1,
            [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44],
            None,
        );
        assert_eq!(
            v,
            r#"{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        let s: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        match parse_lease(s, v.as_bytes()).unwrap() {
            Parsed::Vxlan(p) => assert_eq!(p.vtep_mac, [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]),
            other => panic!("{other:?}"),
        }
    }

    /// flanneld's Go struct takes VNI and VtepMAC and skips the rest; we read ours back.
    #[test]
    fn an_hpk_vtep_says_so_after_flannels_fields() {
        let hpk = HpkVtep {
            port: 8472,
            sealed: true,
        };
        let v = lease_value(
            Ipv4Addr::new(192, 0, 2, 11),
            1,
            [2, 0, 0, 0, 0, 1],
            Some(hpk),
        );
        assert!(
            v.contains(r#""HpkVtep":{"Port":8472,"Sealed":true}"#)
                && v.contains(r#""VNI":1"#)
                && v.contains(r#""VtepMAC":"02:00:00:00:00:01""#),
            "{v}"
        );
        let s: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        match parse_lease(s, v.as_bytes()).unwrap() {
            Parsed::Vxlan(p) => assert_eq!(p.hpk, Some(hpk)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn foreign_and_garbled_values() {
        let s: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let udp = br#"{"PublicIP":"192.0.2.12","BackendType":"udp","BackendData":null,"Extra":1}"#;
        assert!(matches!(parse_lease(s, udp).unwrap(), Parsed::OtherBackend(t) if t == "udp"));
        for bad in [&b"garbage"[..], br#"{"PublicIP":"x"}"#, br#"{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"zz"}}"#] {
            assert!(parse_lease(s, bad).is_err());
        }
    }
}
