//! hpk-netd's configuration: a TOML file (`config/hpk-netd.toml` documents every key),
//! each key overridable by a flag or an `HPK_NETD_*` environment variable.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::tap::validate_ifname;

/// Whether hpk-netd masquerades traffic that leaves the overlay network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Masquerade {
    /// Only when the subnet source does not already (FLANNEL_IPMASQ=false).
    #[default]
    Auto,
    On,
    Off,
}

impl Masquerade {
    /// Whether we add the rule, given what the subnet source does.
    pub fn ours(self, source_masquerades: bool) -> bool {
        match self {
            Masquerade::Auto => !source_masquerades,
            Masquerade::On => true,
            Masquerade::Off => false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A real flanneld writes subnet.env; hpk-netd reads it.
    #[default]
    Flannel,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubnetConfig {
    pub source: SourceKind,
    /// flanneld's subnet file.
    pub subnet_file: PathBuf,
}

impl Default for SubnetConfig {
    fn default() -> Self {
        SubnetConfig {
            source: SourceKind::Flannel,
            subnet_file: PathBuf::from("/run/flannel/subnet.env"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Addresses and endpoint records live here; they survive restarts.
    pub state_dir: PathBuf,
    /// The control socket hooks and the CLI talk to.
    pub socket: PathBuf,
    /// Permission bits of the control socket, octal.
    pub socket_mode: String,
    /// Group owning the control socket (name or number); empty: hpk-netd's own.
    pub socket_group: String,
    /// Peers (by uid, from SO_PEERCRED) allowed to use the control socket.
    pub allowed_uids: Vec<u32>,
    /// The bubble's bridge.
    pub bridge: String,
    pub masquerade: Masquerade,
    /// Name of the tap inside each container.
    pub container_tap: String,
    /// The forwarder binary; empty: next to hpk-netd, else on PATH.
    pub net_daemon: String,
    pub subnet: SubnetConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("/var/lib/hpktainer"),
            socket: PathBuf::from(hpk_hook::proto::DEFAULT_SOCKET),
            socket_mode: "0660".into(),
            socket_group: String::new(),
            allowed_uids: vec![0],
            bridge: "hpk-bridge".into(),
            masquerade: Masquerade::Auto,
            container_tap: "tap0".into(),
            net_daemon: String::new(),
            subnet: SubnetConfig::default(),
        }
    }
}

impl Config {
    /// Reads `path`; a missing file is an error only when it was asked for explicitly.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow!("config file {}: {e}", path.display()))
    }

    pub fn socket_mode_bits(&self) -> Result<u32> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                anyhow!(
                    "socket_mode {:?} is not an octal mode like \"0660\"",
                    self.socket_mode
                )
            })
    }

    /// Checks values a type cannot.
    pub fn validate(&self) -> Result<()> {
        validate_ifname(&self.bridge).context("bridge")?;
        validate_ifname(&self.container_tap).context("container_tap")?;
        self.socket_mode_bits()?;
        if self.allowed_uids.is_empty() {
            bail!("allowed_uids is empty: nobody could use the control socket");
        }
        Ok(())
    }

    /// The forwarder to start for each container.
    pub fn net_daemon_path(&self) -> PathBuf {
        if !self.net_daemon.is_empty() {
            return PathBuf::from(&self.net_daemon);
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("hpk-net-daemon")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("hpk-net-daemon"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_is_the_default() {
        let text = include_str!("../../config/hpk-netd.toml");
        let parsed: Config = toml::from_str(text).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn bad_configs_are_explained() {
        let err = toml::from_str::<Config>("bridg = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `bridg`"), "{err}");
        let err = toml::from_str::<Config>("masquerade = \"sometimes\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sometimes"), "{err}");
        let cfg = Config {
            bridge: "a-very-long-bridge-name".into(),
            ..Config::default()
        };
        assert!(cfg.validate().is_err());
        let cfg = Config {
            socket_mode: "rw".into(),
            ..Config::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("octal"));
    }

    #[test]
    fn masquerade_follows_the_source() {
        assert!(Masquerade::Auto.ours(false));
        assert!(!Masquerade::Auto.ours(true));
        assert!(Masquerade::On.ours(true));
        assert!(!Masquerade::Off.ours(false));
    }
}
