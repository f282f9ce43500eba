//! Where a bubble's subnet comes from: flannel's `subnet.env` format, and the sources
//! behind one trait (a real flanneld's file, or our own agent over etcd).

pub mod etcd;
pub mod flannel_file;

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::Path;
use std::pin::Pin;

use anyhow::{anyhow, bail, Result};
use ipnet::Ipv4Net;

pub use self::flannel_file::FlannelFile;
use crate::sys::tap::MAX_TAP_MTU;

/// What flannel's `subnet.env` says: the overlay network and this node's share of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The whole overlay (`FLANNEL_NETWORK`).
    pub network: Ipv4Net,
    /// This node's subnet, network address form (from `FLANNEL_SUBNET`).
    pub subnet: Ipv4Net,
    /// The bridge's address: `FLANNEL_SUBNET`'s address (the subnet's .1).
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// Whether flanneld already masquerades traffic leaving the network.
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// Parses the file's text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<SubnetEnv> {
        let (mut network, mut subnet, mut mtu, mut ipmasq) = (None, None, None, None);
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: String| anyhow!("{} line {}: {why}: {raw:?}", origin.display(), n + 1);
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad("expected KEY=VALUE".into()))?;
            let value = value.trim().trim_matches('"');
            match key.trim() {
                "FLANNEL_NETWORK" => {
                    network = Some(
                        value
                            .parse::<Ipv4Net>()
                            .map_err(|e| bad(format!("bad network: {e}")))?,
                    )
                }
                "FLANNEL_SUBNET" => {
                    subnet = Some(
                        value
                            .parse::<Ipv4Net>()
                            .map_err(|e| bad(format!("bad subnet: {e}")))?,
                    )
                }
                "FLANNEL_MTU" => {
                    let m: u32 = value.parse().map_err(|e| bad(format!("bad MTU: {e}")))?;
                    if !(576..=MAX_TAP_MTU).contains(&m) {
                        return Err(bad(format!("MTU {m} is outside 576..={MAX_TAP_MTU}")));
                    }
                    mtu = Some(m);
                }
                "FLANNEL_IPMASQ" => {
                    ipmasq = Some(match value {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad("expected true or false".into())),
                    })
                }
                _ => {} // IPv6 keys and anything newer: not ours to judge
            }
        }
        let missing = |key: &str| anyhow!("{} has no {key}", origin.display());
        let network = network.ok_or_else(|| missing("FLANNEL_NETWORK"))?;
        let with_gw = subnet.ok_or_else(|| missing("FLANNEL_SUBNET"))?;
        let subnet = with_gw.trunc();
        if !network.contains(&subnet) {
            bail!(
                "{}: FLANNEL_SUBNET {with_gw} is not inside FLANNEL_NETWORK {network}",
                origin.display()
            );
        }
        if subnet.prefix_len() > 30
            || with_gw.addr() == subnet.network()
            || with_gw.addr() == subnet.broadcast()
        {
            bail!(
                "{}: FLANNEL_SUBNET {with_gw} must be a host address in a subnet of /30 or larger",
                origin.display()
            );
        }
        Ok(SubnetEnv {
            network,
            subnet,
            gateway: with_gw.addr(),
            mtu: mtu.ok_or_else(|| missing("FLANNEL_MTU"))?,
            ipmasq: ipmasq.unwrap_or(false),
        })
    }

    /// The file as flanneld writes it.
    pub fn render(&self) -> String {
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            self.gateway,
            self.subnet.prefix_len(),
            self.mtu,
            self.ipmasq
        )
    }
}

/// A source of this bubble's subnet.
pub trait SubnetSource: Send {
    /// For logs and status, e.g. `flannel subnet.env at /run/flannel/subnet.env`.
    fn describe(&self) -> String;

    /// Waits until the subnet is known and returns it.
    fn acquire(&mut self) -> Pin<Box<dyn Future<Output = Result<SubnetEnv>> + Send + '_>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn flanneld_file_parses_and_renders_back() {
        let env = SubnetEnv::parse(GOOD, Path::new("s.env")).unwrap();
        assert_eq!(env.subnet, "10.244.3.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(env.gateway, Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(env.mtu, 1450);
        assert!(env.ipmasq);
        assert_eq!(env.render(), GOOD);
    }

    #[test]
    fn garbled_files_name_the_line() {
        let cases = [
            ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET 10.244.3.1/24\n", "line 2"),
            ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=big\n", "line 3: bad MTU"),
            ("FLANNEL_NETWORK=10.244.0.0/33\n", "line 1: bad network"),
            ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.245.3.1/24\nFLANNEL_MTU=1450\n", "not inside"),
            ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1450\n", "no FLANNEL_SUBNET"),
            ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=yes\n", "line 4"),
            ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.0/24\nFLANNEL_MTU=1450\n", "host address"),
        ];
        for (text, expect) in cases {
            let err = SubnetEnv::parse(text, Path::new("/run/flannel/subnet.env"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expect) && err.contains("subnet.env"),
                "{expect:?} not in {err:?}"
            );
        }
    }
}
