//! The bubble side of the network: the bridge, forwarding, and the firewall rules.
//! Everything here is idempotent: a restart adopts what is already in place.

pub mod antispoof;
pub mod bridge;
pub mod firewall;
pub mod ipam;

use anyhow::Result;
use tracing::info;

use self::bridge::{enable_forwarding, ensure_bridge};
use self::firewall::bubble_chains;
use crate::subnet::SubnetEnv;
use crate::sys::firewall::Firewall;

/// Sets up everything the bubble needs before containers attach.
pub fn prepare(
    env: &SubnetEnv,
    bridge: &str,
    masquerade: bool,
    antispoof: bool,
    firewall: &dyn Firewall,
) -> Result<()> {
    enable_forwarding()?;
    ensure_bridge(bridge, env.gateway, env.subnet, env.mtu)?;
    if antispoof {
        antispoof::run(&antispoof::reset_script())?;
    }
    firewall.apply(&bubble_chains(env.subnet, env.network, masquerade))?;
    info!(
        bridge,
        gateway = %env.gateway,
        subnet = %env.subnet,
        mtu = env.mtu,
        masquerade,
        "bubble network ready"
    );
    Ok(())
}
