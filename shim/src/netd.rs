//! Talking to hpk-netd before a container starts: a "netd down" is one clear line here
//! rather than a hook failure in the runtime's words.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use hpk_hook::client::Client;
use hpk_hook::proto::Status;
use ipnet::Ipv4Net;

/// hpk-netd's status, or why it cannot be had.
pub fn status(socket: &Path) -> Result<Status> {
    Ok(Client::new(socket).status()?)
}

/// Checks that `ip` can be a container's address in the bubble's subnet.
pub fn check_address(status: &Status, ip: Ipv4Addr) -> Result<()> {
    let subnet: Ipv4Net = status.subnet.parse().map_err(|_| {
        anyhow!(
            "hpk-netd reports a subnet {:?} that is not CIDR",
            status.subnet
        )
    })?;
    if !subnet.contains(&ip) {
        bail!("--ip {ip} is outside this bubble's subnet {subnet}: pick an address in it (see `hpktainer status`)");
    }
    if ip == subnet.network() || ip == subnet.broadcast() || ip == status.gateway {
        bail!("--ip {ip} is the network, broadcast or gateway address of {subnet}: pick another");
    }
    Ok(())
}

/// Checks that `name` can be served by the bubbles' DNS and that no container of the
/// cluster has it (as far as this bubble's hpk-netd knows: it checks again at attach).
pub fn check_dns_name(served: &hpk_hook::proto::NamesStatus, name: &str) -> Result<()> {
    hpk_hook::names::validate(name).map_err(|e| anyhow!("--name: {e}"))?;
    let lower = name.to_ascii_lowercase();
    if let Some(holder) = served.records.iter().find(|r| r.name == lower) {
        bail!(hpk_hook::names::taken(
            name,
            &holder.container,
            holder.address,
            &holder.bubble
        ));
    }
    Ok(())
}
