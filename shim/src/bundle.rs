//! The OCI bundle of a container: its config.json, built with oci-spec's types, and the
//! edit that adds our hooks and a network namespace to someone else's config.json.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxNamespace, LinuxNamespaceType, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use crate::hookset::HookSet;
use crate::rootless::IdMappings;

/// A bind mount asked for with `-v SRC:DST[:ro]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

impl Bind {
    /// Parses `SRC:DST[:ro|rw]`; the source must exist (a clear error instead of the
    /// runtime's).
    pub fn parse(text: &str) -> Result<Bind> {
        let parts: Vec<&str> = text.split(':').collect();
        let (src, dst, mode) = match parts.as_slice() {
            [s, d] => (*s, *d, None),
            [s, d, m] => (*s, *d, Some(*m)),
            _ => bail!("bind mount {text:?}: expected SRC:DST or SRC:DST:ro"),
        };
        let readonly = match mode {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(other) => bail!("bind mount {text:?}: unknown mode {other:?} (use ro or rw)"),
        };
        if !dst.starts_with('/') {
            bail!("bind mount {text:?}: the destination {dst:?} must be an absolute path");
        }
        let source = std::fs::canonicalize(src).map_err(|e| {
            anyhow::anyhow!(
                "bind mount {text:?}: the source {src} does not exist or is unreadable ({e})"
            )
        })?;
        Ok(Bind {
            source,
            destination: dst.to_string(),
            readonly,
        })
    }

    fn mount(&self) -> Mount {
        let mut options = vec!["rbind".to_string(), "nosuid".into(), "nodev".into()];
        options.push(if self.readonly { "ro" } else { "rw" }.into());
        MountBuilder::default()
            .destination(&self.destination)
            .typ("bind")
            .source(&self.source)
            .options(options)
            .build()
            .expect("a bind mount builds")
    }
}

/// Everything a container's config.json says, decided by `run`.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub rootfs: PathBuf,
    pub readonly_root: bool,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    pub terminal: bool,
    pub binds: Vec<Bind>,
    pub annotations: HashMap<String, String>,
    pub hooks: Option<HookSet>,
    /// Not real root: a user namespace with these id mappings, no cgroup resources, /sys
    /// bound rather than mounted.
    pub rootless: Option<IdMappings>,
    /// A tmpfs on /tmp (when the root is read-only).
    pub tmpfs_tmp: bool,
}

/// What containers may do by default: Podman's default set, plus NET_RAW so `ping` works.
fn capabilities() -> oci_spec::runtime::LinuxCapabilities {
    use Capability::*;
    let set: oci_spec::runtime::Capabilities = [
        Chown,
        DacOverride,
        Fowner,
        Fsetid,
        Kill,
        NetBindService,
        NetRaw,
        Setfcap,
        Setgid,
        Setpcap,
        Setuid,
        SysChroot,
        AuditWrite,
    ]
    .into_iter()
    .collect();
    LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .build()
        .expect("capabilities build")
}

/// Adds a private network namespace unless the spec has one (a `path` entry joins an
/// existing one, which we leave alone).
pub fn ensure_network_namespace(spec: &mut Spec) {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    if !namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::Network)
    {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(LinuxNamespaceType::Network);
        namespaces.push(ns);
    }
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
}

/// Our hooks and a network namespace, added to an existing spec; idempotent.
pub fn add_hooks_and_netns(spec: &mut Spec, hooks: &HookSet) {
    spec.set_hooks(Some(hooks.merge_into(spec.hooks().clone())));
    ensure_network_namespace(spec);
}

/// Edits `bundle/config.json` in place (the runtime shim and Apptainer bundles).
pub fn edit_config(bundle: &Path, hooks: &HookSet) -> Result<()> {
    edit_config_with(bundle, |spec| add_hooks_and_netns(spec, hooks))
}

/// Edits someone else's config.json through oci-spec's types, writing back only what the
/// edit changed (two levels deep: `hooks.createRuntime`, `linux.namespaces`, `process.env`,
/// ...), so fields this library does not know survive. Nothing changed: nothing written.
pub fn edit_config_with(bundle: &Path, edit: impl FnOnce(&mut Spec)) -> Result<()> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut original: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let mut spec: Spec = serde_json::from_value(original.clone())
        .with_context(|| format!("{} is not an OCI runtime config", path.display()))?;
    let before = serde_json::to_value(&spec)?;
    edit(&mut spec);
    let after = serde_json::to_value(&spec)?;
    if after == before {
        return Ok(());
    }
    merge_changes(&mut original, &before, &after, 2);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&original)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// Copies into `target` the keys whose value differs between `before` and `after`,
/// descending `depth` levels into objects present in all three.
fn merge_changes(
    target: &mut serde_json::Value,
    before: &serde_json::Value,
    after: &serde_json::Value,
    depth: usize,
) {
    use serde_json::Value;
    let (Some(b), Some(a)) = (before.as_object(), after.as_object()) else {
        *target = after.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    for (key, new) in a {
        let old = b.get(key).unwrap_or(&Value::Null);
        if old == new {
            continue;
        }
        let slot = &mut target[key.as_str()];
        if depth > 1 && new.is_object() && old.is_object() && slot.is_object() {
            merge_changes(slot, old, new, depth - 1);
        } else {
            *slot = new.clone();
        }
    }
    if let Some(t) = target.as_object_mut() {
        for key in b.keys().filter(|k| !a.contains_key(*k)) {
            t.remove(key);
        }
    }
}

/// Writes config.json atomically: a runtime never reads half a file.
pub fn save(spec: &Spec, path: &Path) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    spec.save(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

pub fn build(plan: &Plan) -> Result<Spec> {
    let mut spec = if let Some(ids) = &plan.rootless {
        let mut spec = Spec::rootless(plan.uid, plan.gid);
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_uid_mappings(Some(ids.uids.clone()));
        linux.set_gid_mappings(Some(ids.gids.clone()));
        spec.set_linux(Some(linux));
        spec
    } else {
        Spec::default()
    };
    let user = UserBuilder::default()
        .uid(plan.uid)
        .gid(plan.gid)
        .build()
        .expect("a user builds");
    let mut process = ProcessBuilder::default()
        .terminal(plan.terminal)
        .user(user)
        .args(plan.args.clone())
        .env(plan.env.clone())
        .cwd(&plan.cwd)
        .capabilities(capabilities())
        .no_new_privileges(true)
        .build()
        .context("building the container's process")?;
    // Keep the default rlimits (nofile 1024) from oci-spec's defaults.
    process.set_rlimits(
        Spec::default()
            .process()
            .as_ref()
            .and_then(|p| p.rlimits().clone()),
    );
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path(&plan.rootfs)
            .readonly(plan.readonly_root)
            .build()
            .expect("a root builds"),
    ));
    spec.set_hostname(Some(plan.hostname.clone()));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    if plan.rootless.is_some() {
        // Cgroup limits need a delegated cgroup we do not have; /sys/fs/cgroup stays out.
        mounts.retain(|m| m.typ().as_deref() != Some("cgroup"));
    }
    if plan.tmpfs_tmp {
        mounts.push(
            MountBuilder::default()
                .destination("/tmp")
                .typ("tmpfs")
                .source("tmpfs")
                .options(vec!["nosuid".into(), "nodev".into(), "mode=1777".into()])
                .build()
                .expect("a tmpfs builds"),
        );
    }
    mounts.extend(plan.binds.iter().map(Bind::mount));
    spec.set_mounts(Some(mounts));
    if !plan.annotations.is_empty() {
        spec.set_annotations(Some(plan.annotations.clone()));
    }
    ensure_network_namespace(&mut spec);
    if let Some(hooks) = &plan.hooks {
        spec.set_hooks(Some(hooks.oci_hooks()));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_keep_fields_oci_spec_does_not_know() {
        let scratch = crate::testutil::TempDir::new("edit");
        let dir = scratch.path();
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "x-vendor": 1},
            "linux": {"namespaces": [{"type": "pid"}], "x-future": {"a": true}},
            "x-top": "kept"
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let hooks = HookSet::new("/usr/local/bin/hpk-hook".into(), Path::new("/s"));
        edit_config(dir, &hooks).unwrap();
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["x-top"], "kept");
        assert_eq!(v["linux"]["x-future"]["a"], true);
        assert_eq!(v["process"]["x-vendor"], 1);
        assert_eq!(v["linux"]["namespaces"][1]["type"], "network");
        assert_eq!(v["hooks"]["poststop"][0]["args"][1], "poststop");
        // A second edit changes nothing, not even the bytes.
        edit_config(dir, &hooks).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("config.json")).unwrap(),
            text
        );
    }

    #[test]
    fn binds_parse() {
        let b = Bind::parse("/tmp:/data:ro").unwrap();
        assert!(b.readonly);
        assert_eq!(b.destination, "/data");
        assert!(!Bind::parse("/tmp:/data").unwrap().readonly);
        let missing = Bind::parse("/no/such/dir:/x").unwrap_err().to_string();
        assert!(missing.contains("does not exist"), "{missing}");
        assert!(Bind::parse("/tmp").is_err());
        assert!(Bind::parse("/tmp:rel").is_err());
        assert!(Bind::parse("/tmp:/x:zz").is_err());
    }

    #[test]
    fn rootless_specs_have_user_and_network_namespaces_and_no_cgroups() {
        let plan = Plan {
            rootfs: "/r".into(),
            args: vec!["true".into()],
            cwd: "/".into(),
            hostname: "h".into(),
            rootless: Some(
                crate::rootless::Ids {
                    euid: 1000,
                    egid: 1000,
                    uid_map: Vec::new(),
                    gid_map: Vec::new(),
                }
                .mappings(),
            ),
            ..Plan::default()
        };
        let spec = build(&plan).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let types: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(types.contains(&LinuxNamespaceType::User));
        let uids = linux.uid_mappings().as_ref().unwrap();
        assert_eq!((uids[0].container_id(), uids[0].host_id()), (0, 1000));
        assert!(types.contains(&LinuxNamespaceType::Network));
        assert!(linux.resources().is_none());
        assert!(!spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.typ().as_deref() == Some("cgroup")));
        // Adding twice keeps one network namespace.
        let mut again = spec.clone();
        ensure_network_namespace(&mut again);
        assert_eq!(again, spec);
    }
}
