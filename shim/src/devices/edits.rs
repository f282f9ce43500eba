//! Container edits applied to a bundle's config.json: device nodes (with their cgroup rule
//! when we are real root; bind-mounted when rootless, since a user namespace may not
//! mknod), mounts, environment, hooks and additional groups.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use oci_spec::runtime::{
    Hook, HookBuilder, Hooks, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, Mount, MountBuilder, Spec,
};

use super::cdi;
use crate::rootless::IdMappings;

/// A device node checked on this host: where it is, what it is, what the container gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub path: String,
    pub host: PathBuf,
    pub typ: LinuxDeviceType,
    pub major: i64,
    pub minor: i64,
    pub file_mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The cgroup access, a subset of "rwm".
    pub access: String,
}

/// The edits one device (or one spec's common part, or one `--device`) asks for, and
/// what to call it in messages.
#[derive(Clone, Debug, Default)]
pub struct Edit {
    pub origin: String,
    pub env: Vec<String>,
    pub nodes: Vec<Node>,
    pub mounts: Vec<cdi::Mount>,
    pub hooks: Vec<cdi::Hook>,
    pub gids: Vec<u32>,
}

fn type_of(ft: std::fs::FileType) -> Option<LinuxDeviceType> {
    if ft.is_char_device() {
        Some(LinuxDeviceType::C)
    } else if ft.is_block_device() {
        Some(LinuxDeviceType::B)
    } else if ft.is_fifo() {
        Some(LinuxDeviceType::P)
    } else {
        None
    }
}

fn parse_type(t: &str) -> Option<LinuxDeviceType> {
    match t {
        "c" | "u" => Some(LinuxDeviceType::C),
        "b" => Some(LinuxDeviceType::B),
        "p" => Some(LinuxDeviceType::P),
        _ => None,
    }
}

/// Checks a device node against this host. Rootless, the node is bind-mounted: it must
/// exist here and this user must be able to open it as asked, or the container could not.
pub fn node(n: &cdi::DeviceNode, origin: &str, rootless: bool) -> Result<Node> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let host = PathBuf::from(
        n.host_path
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(&n.path),
    );
    let access = n.permissions.clone().unwrap_or_else(|| "rwm".into());
    let declared = n.typ.as_deref().and_then(parse_type);
    let complete = declared.is_some_and(|t| t == LinuxDeviceType::P || n.major.is_some());
    let meta = if complete && !rootless {
        None
    } else {
        Some(std::fs::metadata(&host).map_err(|e| {
            anyhow!(
                "device node {} ({origin}) cannot be reached here: {e}",
                host.display()
            )
        })?)
    };
    let (typ, major, minor) = match &meta {
        Some(m) if !complete => {
            let typ = type_of(m.file_type())
                .ok_or_else(|| anyhow!("{} ({origin}) is not a device node", host.display()))?;
            if declared.is_some_and(|d| d != typ) {
                bail!(
                    "device node {} ({origin}): the spec says type {}, the host has {}",
                    host.display(),
                    n.typ.as_deref().unwrap_or(""),
                    typ.as_str()
                );
            }
            let rdev = m.rdev();
            (
                typ,
                nix::sys::stat::major(rdev) as i64,
                nix::sys::stat::minor(rdev) as i64,
            )
        }
        _ => (
            declared.expect("complete nodes declare their type"),
            n.major.unwrap_or(0),
            n.minor.unwrap_or(0),
        ),
    };
    if rootless {
        check_access(&host, &access, origin)?;
    }
    let file_mode = n
        .file_mode
        .or_else(|| meta.as_ref().map(|m| m.permissions().mode() & 0o7777));
    Ok(Node {
        path: n.path.clone(),
        host,
        typ,
        major,
        minor,
        file_mode,
        uid: n.uid,
        gid: n.gid,
        access,
    })
}

/// Whether this user may open `host` as `access` asks (r, w), with the reason when not.
fn check_access(host: &Path, access: &str, origin: &str) -> Result<()> {
    use nix::unistd::AccessFlags;
    use std::os::unix::fs::MetadataExt;
    let mut flags = AccessFlags::empty();
    if access.contains('r') {
        flags |= AccessFlags::R_OK;
    }
    if access.contains('w') {
        flags |= AccessFlags::W_OK;
    }
    if flags.is_empty() {
        return Ok(());
    }
    if let Err(e) = nix::unistd::access(host, flags) {
        let meta = std::fs::metadata(host).ok();
        let owner = meta
            .map(|m| {
                format!(
                    "mode {:o}, owner {}:{}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid()
                )
            })
            .unwrap_or_default();
        bail!(
            "device node {} ({origin}) cannot be opened for {access:?} by this user ({e}; {owner} as seen here): \
             a rootless container or bubble gets only the device nodes its user may open; \
             ask for the node's group (e.g. video, render, rdma) or a udev rule giving it to this user",
            host.display()
        );
    }
    Ok(())
}

fn oci_hook(h: &cdi::Hook) -> Hook {
    let mut b = HookBuilder::default().path(&h.path);
    if !h.args.is_empty() {
        b = b.args(h.args.clone());
    }
    if !h.env.is_empty() {
        b = b.env(h.env.clone());
    }
    if let Some(t) = h.timeout {
        b = b.timeout(t);
    }
    b.build().expect("a hook builds")
}

fn add_hook(hooks: &mut Hooks, h: &cdi::Hook) -> Result<()> {
    let stage = match h.hook_name.as_str() {
        #[allow(deprecated)]
        "prestart" => hooks.prestart_mut(),
        "createRuntime" => hooks.create_runtime_mut(),
        "createContainer" => hooks.create_container_mut(),
        "startContainer" => hooks.start_container_mut(),
        "poststart" => hooks.poststart_mut(),
        "poststop" => hooks.poststop_mut(),
        other => bail!("unknown hook stage {other:?}"),
    };
    stage.get_or_insert_with(Vec::new).push(oci_hook(h));
    Ok(())
}

fn cdi_mount(m: &cdi::Mount) -> Mount {
    let typ = m
        .typ
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "bind".into());
    let mut options = m.options.clone();
    if typ == "bind" && !options.iter().any(|o| o == "bind" || o == "rbind") {
        options.push("rbind".into());
    }
    MountBuilder::default()
        .destination(&m.container_path)
        .typ(typ)
        .source(&m.host_path)
        .options(options)
        .build()
        .expect("a mount builds")
}

/// A rootless container's device: the host's node bound over a file runc creates.
fn node_mount(n: &Node) -> Mount {
    let mut options = vec!["bind".to_string(), "nosuid".into()];
    if !n.access.contains('w') {
        options.push("ro".into());
    }
    MountBuilder::default()
        .destination(&n.path)
        .typ("bind")
        .source(&n.host)
        .options(options)
        .build()
        .expect("a mount builds")
}

fn depth(p: &Path) -> usize {
    p.components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .count()
}

fn mapped(gid: u32, ids: &IdMappings) -> bool {
    ids.gids
        .iter()
        .any(|m| gid >= m.container_id() && (gid - m.container_id()) < m.size())
}

/// Applies `edits` in order to `spec`; `rootless` holds the container's id mappings.
pub fn apply(spec: &mut Spec, edits: &[Edit], rootless: Option<&IdMappings>) -> Result<()> {
    let mut process = spec.process().clone().context("the spec has no process")?;
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let mut hooks = spec.hooks().clone().unwrap_or_default();
    let mut devices = linux.devices().clone().unwrap_or_default();
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut rules = resources.devices().clone().unwrap_or_default();
    let mut env = process.env().clone().unwrap_or_default();
    let mut user = process.user().clone();
    let mut gids = user.additional_gids().clone().unwrap_or_default();
    for e in edits {
        crate::environment::merge(&mut env, e.env.iter().cloned());
        for n in &e.nodes {
            if rootless.is_some() {
                mounts.retain(|m| m.destination() != Path::new(&n.path));
                mounts.push(node_mount(n));
                continue;
            }
            let mut dev: LinuxDevice = LinuxDeviceBuilder::default()
                .path(&n.path)
                .typ(n.typ)
                .major(n.major)
                .minor(n.minor)
                .build()
                .expect("a device builds");
            dev.set_file_mode(n.file_mode);
            // CDI's rule: a node without an owner belongs to the container's user.
            let (uid, gid) = (process.user().uid(), process.user().gid());
            dev.set_uid(n.uid.or((uid > 0).then_some(uid)));
            dev.set_gid(n.gid.or((gid > 0).then_some(gid)));
            devices.retain(|d| d.path() != Path::new(&n.path));
            devices.push(dev);
            if n.typ != LinuxDeviceType::P {
                rules.push(
                    LinuxDeviceCgroupBuilder::default()
                        .allow(true)
                        .typ(n.typ)
                        .major(n.major)
                        .minor(n.minor)
                        .access(n.access.clone())
                        .build()
                        .expect("a device rule builds"),
                );
            }
        }
        for m in &e.mounts {
            mounts.retain(|x| x.destination() != Path::new(&m.container_path));
            mounts.push(cdi_mount(m));
        }
        for h in &e.hooks {
            add_hook(&mut hooks, h).with_context(|| e.origin.clone())?;
        }
        for g in e.gids.iter().filter(|g| **g > 0) {
            if let Some(ids) = rootless {
                if !mapped(*g, ids) {
                    bail!("{}: additional group {g} has no id in this user namespace: a rootless container cannot join it", e.origin);
                }
            }
            if !gids.contains(g) {
                gids.push(*g);
            }
        }
    }
    // Parents before children, as CDI orders them; equal depths keep their order.
    mounts.sort_by_key(|m| depth(m.destination()));
    process.set_env(Some(env));
    if !gids.is_empty() {
        user.set_additional_gids(Some(gids));
        process.set_user(user);
    }
    spec.set_process(Some(process));
    if rootless.is_none() {
        if !devices.is_empty() {
            linux.set_devices(Some(devices));
        }
        if !rules.is_empty() {
            resources.set_devices(Some(rules));
            linux.set_resources(Some(resources));
        }
        spec.set_linux(Some(linux));
    }
    spec.set_mounts(Some(mounts));
    if hooks != Hooks::default() {
        spec.set_hooks(Some(hooks));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn null_as(path: &str) -> cdi::DeviceNode {
        cdi::DeviceNode {
            path: path.into(),
            host_path: Some("/dev/null".into()),
            ..Default::default()
        }
    }

    #[test]
    fn nodes_take_type_and_numbers_from_the_host() {
        let n = node(&null_as("/dev/x"), "t", false).unwrap();
        assert_eq!((n.typ, n.major, n.minor), (LinuxDeviceType::C, 1, 3));
        assert_eq!(n.access, "rwm");
        let e = format!(
            "{:#}",
            node(&null_as("/dev/x").clone_with_host("/no/such"), "t", false).unwrap_err()
        );
        assert!(
            e.contains("/no/such") && e.contains("cannot be reached"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            node(
                &null_as("/dev/x").clone_with_host("/etc/hostname"),
                "t",
                false
            )
            .unwrap_err()
        );
        assert!(e.contains("not a device node"), "{e}");
    }

    impl cdi::DeviceNode {
        fn clone_with_host(&self, host: &str) -> cdi::DeviceNode {
            cdi::DeviceNode {
                host_path: Some(host.into()),
                ..self.clone()
            }
        }
    }

    #[test]
    fn rootful_edits_add_nodes_rules_and_the_rest() {
        let mut spec = Spec::default();
        let edit = Edit {
            origin: "t".into(),
            env: vec!["A=1".into()],
            nodes: vec![node(&null_as("/dev/x"), "t", false).unwrap()],
            mounts: vec![cdi::Mount {
                host_path: "/tmp".into(),
                container_path: "/data".into(),
                ..Default::default()
            }],
            hooks: vec![cdi::Hook {
                hook_name: "createContainer".into(),
                path: "/bin/true".into(),
                ..Default::default()
            }],
            gids: vec![44],
        };
        apply(&mut spec, &[edit], None).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.devices().as_ref().unwrap()[0].path(),
            Path::new("/dev/x")
        );
        let rule = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(
            (rule.allow(), rule.major(), rule.minor()),
            (true, Some(1), Some(3))
        );
        let p = spec.process().as_ref().unwrap();
        assert!(p.env().as_ref().unwrap().contains(&"A=1".to_string()));
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &[44]);
        let m = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/data"))
            .unwrap();
        assert!(m.options().as_ref().unwrap().contains(&"rbind".to_string()));
        assert_eq!(
            spec.hooks()
                .as_ref()
                .unwrap()
                .create_container()
                .as_ref()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn rootless_nodes_are_bind_mounts() {
        let mut spec = Spec::rootless(1000, 1000);
        let before = spec.linux().clone();
        let ids = crate::rootless::Ids {
            euid: 1000,
            egid: 1000,
            uid_map: vec![],
            gid_map: vec![],
        }
        .mappings();
        let edit = Edit {
            origin: "t".into(),
            nodes: vec![node(&null_as("/dev/x"), "t", true).unwrap()],
            ..Default::default()
        };
        apply(&mut spec, std::slice::from_ref(&edit), Some(&ids)).unwrap();
        assert_eq!(spec.linux(), &before, "no devices, no cgroup rules");
        let m = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/dev/x"))
            .unwrap();
        assert_eq!(m.source().as_deref(), Some(Path::new("/dev/null")));
        let gid = Edit {
            gids: vec![44],
            ..edit
        };
        let e = apply(&mut spec, &[gid], Some(&ids))
            .unwrap_err()
            .to_string();
        assert!(e.contains("group 44"), "{e}");
    }
}
