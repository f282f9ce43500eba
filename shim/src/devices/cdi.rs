//! CDI specs (Container Device Interface, versions 0.3.0 to 1.1.0): the files vendors put in
//! /etc/cdi and /var/run/cdi (JSON or YAML), read strictly (an unknown field is an error,
//! as the reference Go library does) and checked against the version they declare.
//!
//! A small serde parser rather than the `container-device-interface` crate: that crate's
//! JSON schema check pulls an HTTP client and a TLS stack (reqwest, hyper, aws-lc-sys: about
//! 220 crates and a C build) into a tool that never goes online, reads YAML through the
//! deprecated serde_yaml, prints to stdout from its library, and keeps its errors in a cache
//! map instead of returning them; and a rootless bubble needs device nodes turned into bind
//! mounts, so the edits are ours to apply anyway.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

/// The spec versions this reader knows (CDI's own list, oldest usable first).
const VERSIONS: [&str; 8] = [
    "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
];

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub devices: Vec<Device>,
    #[serde(default)]
    pub container_edits: Edits,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub container_edits: Edits,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Edits {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    pub hooks: Vec<Hook>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Parsed so that specs using them read; refused when applied (see [`Edits::check`]).
    #[serde(default)]
    pub intel_rdt: Option<serde_json::Value>,
    #[serde(default)]
    pub net_devices: Vec<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    #[serde(default)]
    pub host_path: Option<String>,
    #[serde(default, rename = "type")]
    pub typ: Option<String>,
    #[serde(default)]
    pub major: Option<i64>,
    #[serde(default)]
    pub minor: Option<i64>,
    #[serde(default)]
    pub file_mode: Option<u32>,
    #[serde(default)]
    pub permissions: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, rename = "type")]
    pub typ: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Hook {
    pub hook_name: String,
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub timeout: Option<i64>,
}

impl Edits {
    /// What this reader cannot apply, and values the spec forbids.
    pub fn check(&self) -> Result<()> {
        if let Some(e) = self
            .env
            .iter()
            .find(|e| e.split_once('=').is_none_or(|(n, _)| n.is_empty()))
        {
            bail!("env entry {e:?} is not NAME=VALUE");
        }
        for d in &self.device_nodes {
            if !d.path.starts_with('/') {
                bail!("device node path {:?} is not absolute", d.path);
            }
            if let Some(p) = &d.permissions {
                if p.is_empty() || !p.chars().all(|c| "rwm".contains(c)) {
                    bail!(
                        "device node {}: permissions {p:?} are not a subset of rwm",
                        d.path
                    );
                }
            }
            if let Some(t) = &d.typ {
                if !["b", "c", "u", "p", ""].contains(&t.as_str()) {
                    bail!("device node {}: type {t:?} is not b, c, u or p", d.path);
                }
            }
        }
        for m in &self.mounts {
            if !m.container_path.starts_with('/') {
                bail!("mount containerPath {:?} is not absolute", m.container_path);
            }
        }
        for h in &self.hooks {
            if !HOOK_NAMES.contains(&h.hook_name.as_str()) {
                bail!(
                    "hook {:?}: hookName {:?} is not one of {HOOK_NAMES:?}",
                    h.path,
                    h.hook_name
                );
            }
            if !h.path.starts_with('/') {
                bail!("hook path {:?} is not absolute", h.path);
            }
        }
        if self.intel_rdt.is_some() {
            bail!("intelRdt edits are not supported by hpktainer");
        }
        if !self.net_devices.is_empty() {
            bail!("netDevices edits are not supported: hpktainer gives containers their network");
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        *self == Edits::default()
    }
}

pub const HOOK_NAMES: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// `VENDOR/CLASS=NAME` split into kind and name, checked as CDI names them.
pub fn parse_name(text: &str) -> Result<(String, String)> {
    let (kind, name) = text.split_once('=').ok_or_else(|| {
        anyhow!("{text:?} is not a CDI device name: expected VENDOR/CLASS=NAME (e.g. nvidia.com/gpu=0, or =all)")
    })?;
    check_kind(kind)
        .and_then(|()| check_device_name(name))
        .map_err(|e| anyhow!("{text:?} is not a CDI device name: {e}"))?;
    Ok((kind.to_string(), name.to_string()))
}

fn check_kind(kind: &str) -> Result<()> {
    let (vendor, class) = kind
        .split_once('/')
        .ok_or_else(|| anyhow!("kind {kind:?} is not VENDOR/CLASS"))?;
    for (what, part) in [("vendor", vendor), ("class", class)] {
        let ok = part
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && part
                .chars()
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok {
            bail!("{what} {part:?} of kind {kind:?}: letters, digits, '.', '_', '-', starting and ending with a letter or digit");
        }
    }
    Ok(())
}

fn check_device_name(name: &str) -> Result<()> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c));
    if !ok {
        bail!("device name {name:?}: letters, digits, '.', '_', '-', ':', starting and ending with a letter or digit");
    }
    Ok(())
}

fn version_index(v: &str) -> Option<usize> {
    VERSIONS
        .iter()
        .position(|k| *k == v.trim_start_matches('v'))
}

/// The lowest version whose schema has every field this spec uses (CDI's rules).
fn required_version(spec: &Spec) -> &'static str {
    let all_edits = || {
        std::iter::once(&spec.container_edits)
            .chain(spec.devices.iter().map(|d| &d.container_edits))
    };
    if all_edits().any(|e| !e.net_devices.is_empty()) {
        return "1.1.0";
    }
    if all_edits().any(|e| e.intel_rdt.is_some() || !e.additional_gids.is_empty()) {
        return "0.7.0";
    }
    let class_has_dot = spec
        .kind
        .split_once('/')
        .is_some_and(|(_, c)| c.contains('.'));
    if !spec.annotations.is_empty()
        || spec.devices.iter().any(|d| !d.annotations.is_empty())
        || class_has_dot
    {
        return "0.6.0";
    }
    if spec
        .devices
        .iter()
        .any(|d| !d.name.starts_with(|c: char| c.is_ascii_alphabetic()))
        || all_edits().any(|e| {
            e.device_nodes
                .iter()
                .any(|n| n.host_path.as_ref().is_some_and(|p| !p.is_empty()))
        })
    {
        return "0.5.0";
    }
    if all_edits().any(|e| {
        e.mounts
            .iter()
            .any(|m| m.typ.as_ref().is_some_and(|t| !t.is_empty()))
    }) {
        return "0.4.0";
    }
    "0.3.0"
}

impl Spec {
    /// Parses and checks one file's text (YAML is a superset of JSON: one parser reads both).
    pub fn parse(text: &str) -> Result<Spec> {
        let spec: Spec = serde_yaml_ng::from_str(text)?;
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<()> {
        let declared = version_index(&self.cdi_version).ok_or_else(|| {
            anyhow!(
                "cdiVersion {:?} is not one this hpktainer reads ({})",
                self.cdi_version,
                VERSIONS.join(", ")
            )
        })?;
        let required = required_version(self);
        if version_index(required).unwrap_or(0) > declared {
            bail!(
                "cdiVersion {} is too old for the fields it uses: they need {required}",
                self.cdi_version
            );
        }
        check_kind(&self.kind)?;
        if self.devices.is_empty() {
            bail!("no devices");
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.devices {
            check_device_name(&d.name)?;
            if !seen.insert(&d.name) {
                bail!("device {:?} is defined twice", d.name);
            }
            if d.container_edits.is_empty() {
                bail!("device {:?} has no containerEdits", d.name);
            }
            d.container_edits
                .check()
                .with_context(|| format!("device {:?}", d.name))?;
        }
        self.container_edits.check().context("containerEdits")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
cdiVersion: "0.5.0"
kind: example.test/dev
devices:
  - name: a
    containerEdits:
      deviceNodes:
        - path: /dev/a
          hostPath: /dev/null
  - name: "1"
    containerEdits:
      env: ["ONE=1"]
containerEdits:
  mounts:
    - hostPath: /tmp
      containerPath: /data
      options: [ro, bind]
"#;

    #[test]
    fn yaml_and_json_parse() {
        let spec = Spec::parse(YAML).unwrap();
        assert_eq!(spec.devices.len(), 2);
        assert_eq!(
            spec.devices[0].container_edits.device_nodes[0]
                .host_path
                .as_deref(),
            Some("/dev/null")
        );
        let json = r#"{"cdiVersion":"0.3.0","kind":"x.io/c","devices":[{"name":"d","containerEdits":{"env":["A=1"]}}]}"#;
        assert_eq!(Spec::parse(json).unwrap().kind, "x.io/c");
    }

    #[test]
    fn versions_are_checked_against_the_fields() {
        // hostPath and a device named "1" need 0.5.0.
        let old = YAML.replace("0.5.0", "0.4.0");
        let e = format!("{:#}", Spec::parse(&old).unwrap_err());
        assert!(e.contains("need 0.5.0"), "{e}");
        for v in ["0.6.0", "0.8.0", "1.0.0", "1.1.0"] {
            Spec::parse(&YAML.replace("0.5.0", v)).unwrap();
        }
        let e = format!(
            "{:#}",
            Spec::parse(&YAML.replace("0.5.0", "9.9.9")).unwrap_err()
        );
        assert!(e.contains("9.9.9"), "{e}");
        let unknown = YAML.replace(
            "hostPath: /dev/null",
            "hostPath: /dev/null\n          colour: red",
        );
        assert!(Spec::parse(&unknown).is_err());
        let gids = r#"{"cdiVersion":"0.6.0","kind":"x.io/c","devices":[{"name":"d","containerEdits":{"additionalGids":[44]}}]}"#;
        assert!(format!("{:#}", Spec::parse(gids).unwrap_err()).contains("0.7.0"));
    }

    #[test]
    fn names_parse() {
        assert_eq!(
            parse_name("nvidia.com/gpu=0").unwrap(),
            ("nvidia.com/gpu".to_string(), "0".to_string())
        );
        assert!(parse_name("nvidia.com/gpu=all").is_ok());
        for bad in [
            "gpu=0",
            "nvidia.com/gpu",
            "nvidia.com/gpu=",
            "/gpu=1",
            "a/b=c d",
        ] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }
}
