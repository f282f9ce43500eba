//! flannel's network config (`<prefix>/config`), read the way flanneld reads it.

use std::net::Ipv4Addr;

use anyhow::{anyhow, bail, Result};
use ipnet::Ipv4Net;
use serde_json::{Map, Value};

/// Default vxlan UDP port (the kernel's and flannel's).
pub const VXLAN_PORT: u16 = 8472;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    /// First and last subnet that may be leased (network addresses).
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub vni: u32,
    pub port: u16,
    /// vxlan device MTU from `Backend.MTU`, if set.
    pub mtu: Option<u32>,
}

/// Go's JSON decoding matches field names case-insensitively: so do we.
fn lowercase_keys(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), lowercase_keys(v)))
                .collect::<Map<_, _>>(),
        ),
        other => other,
    }
}

fn field<'a>(obj: &'a Value, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

fn addr_field(obj: &Value, name: &str) -> Result<Option<Ipv4Addr>> {
    field(obj, name)
        .map(|v| {
            v.as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("{name} must be an IPv4 address, not {v}"))
        })
        .transpose()
}

fn uint_field(obj: &Value, name: &str) -> Result<Option<u64>> {
    field(obj, name)
        .map(|v| {
            v.as_u64()
                .ok_or_else(|| anyhow!("{name} must be a non-negative number, not {v}"))
        })
        .transpose()
}

impl NetworkConfig {
    pub fn parse(text: &str) -> Result<NetworkConfig> {
        let raw: Value = serde_json::from_str(text).map_err(|e| anyhow!("not JSON: {e}"))?;
        if !raw.is_object() {
            bail!("not a JSON object");
        }
        let cfg = lowercase_keys(raw);
        if field(&cfg, "enableipv4").and_then(Value::as_bool) == Some(false) {
            bail!("EnableIPv4 is false: hpk-netd needs an IPv4 network");
        }
        let network: Ipv4Net = field(&cfg, "network")
            .ok_or_else(|| anyhow!("no Network"))?
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("Network must be an IPv4 CIDR like \"10.244.0.0/16\""))?;
        let network = network.trunc();
        let prefix = network.prefix_len();
        let subnet_len = match uint_field(&cfg, "subnetlen")? {
            None | Some(0) if prefix <= 22 => 24,
            None | Some(0) if prefix <= 28 => prefix + 2,
            None | Some(0) => bail!("Network {network} is too small for subnets (/28 at most)"),
            Some(n) if n > 30 || (n as u8) < prefix + 2 => {
                bail!(
                    "SubnetLen {n} must be between {} and 30 for Network {network}",
                    prefix + 2
                )
            }
            Some(n) => n as u8,
        };
        let size = 1u32 << (32 - subnet_len);
        let first = u32::from(network.network()) + size;
        let last = u32::from(network.broadcast()) - size + 1;
        let mask = |a: Ipv4Addr| Ipv4Addr::from(u32::from(a) & !(size - 1));
        let subnet_min = addr_field(&cfg, "subnetmin")?.map_or(Ipv4Addr::from(first), mask);
        let subnet_max = addr_field(&cfg, "subnetmax")?.map_or(Ipv4Addr::from(last), mask);
        for (name, a) in [("SubnetMin", subnet_min), ("SubnetMax", subnet_max)] {
            if !network.contains(&a) {
                bail!("{name} {a} is outside Network {network}");
            }
        }
        if subnet_min > subnet_max {
            bail!("SubnetMin {subnet_min} is above SubnetMax {subnet_max}");
        }
        // flanneld's default backend when none is given is udp, which we do not speak.
        let backend = field(&cfg, "backend").cloned().unwrap_or(Value::Null);
        let kind = field(&backend, "type")
            .and_then(Value::as_str)
            .unwrap_or("udp");
        if !kind.eq_ignore_ascii_case("vxlan") {
            bail!("Backend.Type is {kind:?}{}: hpk-netd speaks flannel's vxlan backend only; set \"Backend\": {{\"Type\": \"vxlan\"}}",
                if field(&cfg, "backend").is_none() { " (flanneld's default when Backend is absent)" } else { "" });
        }
        let vni = uint_field(&backend, "vni")?.unwrap_or(1);
        if vni == 0 || vni >= 1 << 24 {
            bail!("Backend.VNI {vni} must be 1 to 16777215");
        }
        let port = match uint_field(&backend, "port")?.unwrap_or(0) {
            0 => VXLAN_PORT,
            p if p <= 65535 => p as u16,
            p => bail!("Backend.Port {p} is not a UDP port"),
        };
        let mtu = match uint_field(&backend, "mtu")? {
            None | Some(0) => None,
            Some(m) if (576..=u64::from(crate::sys::tap::MAX_TAP_MTU)).contains(&m) => {
                Some(m as u32)
            }
            Some(m) => bail!(
                "Backend.MTU {m} is out of range (576 to {}, a tap's limit)",
                crate::sys::tap::MAX_TAP_MTU
            ),
        };
        Ok(NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            vni: vni as u32,
            port,
            mtu,
        })
    }

    /// Whether `subnet` is one this network may lease.
    pub fn fits(&self, subnet: Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet.network() == subnet.addr()
            && self.subnet_min <= subnet.network()
            && subnet.network() <= self.subnet_max
    }

    /// Whether another node's lease for `subnet` may be routed: only subnets this network
    /// could have handed out, never one that covers a default route, our own subnet
    /// (`own`), or anything outside the overlay.
    pub fn routable(&self, subnet: Ipv4Net, own: Ipv4Net) -> bool {
        self.network.contains(&subnet)
            && subnet.prefix_len() == self.subnet_len
            && !subnet.contains(&own.network())
            && !own.contains(&subnet.network())
    }

    /// Every leasable subnet, lowest first.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let size = 1u32 << (32 - self.subnet_len);
        let (lo, hi) = (u32::from(self.subnet_min), u32::from(self.subnet_max));
        (0..=(hi - lo) / size)
            .map(move |i| Ipv4Net::new(Ipv4Addr::from(lo + i * size), self.subnet_len).unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_defaults() {
        let c = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!((c.vni, c.port, c.mtu), (1, 8472, None));
        assert_eq!(c.subnets().count(), 255);
        let small =
            NetworkConfig::parse(r#"{"Network":"10.10.0.0/24","Backend":{"Type":"vxlan"}}"#)
                .unwrap();
        assert_eq!(small.subnet_len, 26);
        let c = NetworkConfig::parse(r#"{"network":"10.1.0.0/16","subnetlen":26,"backend":{"type":"vxlan","vni":4,"port":4789}}"#).unwrap();
        assert_eq!((c.subnet_len, c.vni, c.port), (26, 4, 4789));
        assert!(c.fits("10.1.0.64/26".parse().unwrap()));
        assert!(
            !c.fits("10.1.0.0/26".parse().unwrap()),
            "the first subnet is skipped"
        );
        assert!(!c.fits("10.1.0.64/24".parse().unwrap()));
    }

    #[test]
    fn only_leases_of_this_network_are_routed() {
        let c = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        let own: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert!(c.routable(net("10.244.4.0/24"), own));
        for bad in [
            "0.0.0.0/0",
            "10.244.3.0/25",
            "10.244.0.0/16",
            "10.245.1.0/24",
            "10.244.3.0/24",
        ] {
            assert!(!c.routable(net(bad), own), "{bad} would be routed");
        }
    }

    #[test]
    fn bad_configs_are_explained() {
        for (text, expect) in [
            ("{", "not JSON"),
            (
                r#"{"Network":"10.244.0.0/16"}"#,
                "flanneld's default when Backend is absent",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
                "vxlan backend only",
            ),
            (r#"{"Backend":{"Type":"vxlan"}}"#, "no Network"),
            (
                r#"{"Network":"10.244.0.0","Backend":{"Type":"vxlan"}}"#,
                "IPv4 CIDR",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}"#,
                "SubnetLen 31",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0","Backend":{"Type":"vxlan"}}"#,
                "outside Network",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#,
                "VNI 0",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":65535}}"#,
                "Backend.MTU 65535",
            ),
        ] {
            let err = NetworkConfig::parse(text).unwrap_err().to_string();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }
}
