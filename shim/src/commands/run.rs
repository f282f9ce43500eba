//! `hpktainer run`: image, bundle, network check, runtime; the container's exit code is
//! ours.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use hpk_hook::names::ANNOTATION_NAME;
use hpk_hook::ports::{PortMapping, ANNOTATION_PORTS};
use hpk_hook::proto::{ANNOTATION_IP, ANNOTATION_NETWORK};
use tracing::debug;

use super::{exit_code, run_in_foreground, Ctx};
use crate::bundle::{self, Bind, Plan};
use crate::cli::{NetworkMode, RunOpts};
use crate::devices;
use crate::environment;
use crate::hookset::{find_hook, HookSet};
use crate::image;
use crate::runtime::{self, oci::Oci, Kind};
use crate::state::{self, ContainerDir, Record};
use crate::{netd, rootfs, sweep, userspec};

/// What was checked before anything was created.
pub struct Checked {
    pub name: String,
    pub runtime: runtime::Runtime,
    pub env: Vec<String>,
    pub binds: Vec<Bind>,
    pub hooks: Option<HookSet>,
    pub annotations: HashMap<String, String>,
    /// The bubble's DNS server and cluster domain, when hpk-netd serves names.
    pub dns: Option<(std::net::Ipv4Addr, String)>,
    /// Devices and limits, checked against this host.
    pub devices: devices::Resolved,
}

/// Checks the user's input and the network before pulling or creating anything, so bad
/// input leaves nothing behind.
pub fn check(ctx: &Ctx, opts: &RunOpts) -> Result<Checked> {
    let name = opts.name.clone().unwrap_or_else(state::generate_name);
    state::check_name(&name)?;
    let runtime = runtime::select(opts.runtime.as_deref())?;
    ctx.paths.ensure()?;
    sweep::sweep(&ctx.paths.containers, &ctx.paths.runtime_state, false);
    if ctx.paths.containers.join(&name).exists() {
        return Err(state::name_in_use(&name));
    }
    let mut env = Vec::new();
    for f in &opts.env_file {
        env.extend(environment::read_file(f)?);
    }
    for e in &opts.env {
        env.extend(environment::parse_arg(e)?);
    }
    let binds = opts
        .bind
        .iter()
        .map(|b| Bind::parse(b))
        .collect::<Result<Vec<_>>>()?;
    let devices = devices::resolve(opts, !ctx.ids.is_real_root())?;
    let mut annotations = HashMap::new();
    let mut dns = None;
    let hooks = match opts.network {
        NetworkMode::None => {
            annotations.insert(ANNOTATION_NETWORK.to_string(), "none".to_string());
            None
        }
        NetworkMode::Hpk => {
            let status = netd::status(&ctx.socket)?;
            debug!(subnet = %status.subnet, "hpk-netd answers");
            if let Some(ip) = opts.ip {
                netd::check_address(&status, ip)?;
                annotations.insert(ANNOTATION_IP.to_string(), ip.to_string());
            }
            hpk_hook::ports::check_distinct(&opts.publish).map_err(anyhow::Error::msg)?;
            if !opts.publish.is_empty() {
                annotations.insert(
                    ANNOTATION_PORTS.to_string(),
                    PortMapping::format_list(&opts.publish),
                );
            }
            if let Some(served) = &status.names {
                if let Some(explicit) = &opts.name {
                    netd::check_dns_name(served, explicit)?;
                    annotations.insert(ANNOTATION_NAME.to_string(), explicit.clone());
                }
                dns = Some((served.server, served.domain.clone()));
            }
            Some(HookSet::new(find_hook(opts.hook.as_deref())?, &ctx.socket))
        }
    };
    if opts.ip.is_some() && opts.network == NetworkMode::None {
        bail!("--ip and --network none contradict each other: drop one");
    }
    if !opts.publish.is_empty() && opts.network == NetworkMode::None {
        bail!("-p and --network none contradict each other: a port needs the network");
    }
    Ok(Checked {
        name,
        runtime,
        env,
        binds,
        hooks,
        annotations,
        dns,
        devices,
    })
}

pub fn insecure_registries(opts: &RunOpts) -> Vec<String> {
    let mut list = opts.insecure_registry.clone();
    if let Ok(v) = std::env::var("HPKTAINER_INSECURE_REGISTRIES") {
        list.extend(
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
    }
    list
}

/// Runs a container; returns the exit code hpktainer exits with.
pub fn run(ctx: &Ctx, opts: &RunOpts, image_ref: &str, command: &[String]) -> Result<i32> {
    let checked = check(ctx, opts)?;
    match checked.runtime.kind {
        Kind::Oci => run_oci(ctx, opts, checked, image_ref, command),
        Kind::Apptainer => super::run_other::apptainer(ctx, opts, checked, image_ref, command),
        Kind::Singularity => super::run_other::singularity(ctx, opts, checked, image_ref, command),
    }
}

/// Removes the container's directory unless disarmed (every failure path of a start).
struct Cleanup {
    dir: Option<ContainerDir>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = rootfs::remove_dir(&dir);
        }
    }
}

fn run_oci(
    ctx: &Ctx,
    opts: &RunOpts,
    c: Checked,
    image_ref: &str,
    command: &[String],
) -> Result<i32> {
    let rootless = !ctx.ids.is_real_root();
    let img = image::resolve(
        image_ref,
        &ctx.paths.images,
        &image::Options {
            pull: opts.pull,
            insecure: &insecure_registries(opts),
            rootless,
        },
    )?;
    let args: Vec<String> = if !command.is_empty() {
        command.to_vec()
    } else if !img.defaults.args.is_empty() {
        img.defaults.args.clone()
    } else {
        vec!["/bin/sh".into()]
    };
    let record = Record {
        name: c.name.clone(),
        runtime: c.runtime.clone(),
        image: image_ref.to_string(),
        digest: img.digest.clone(),
        command: args.clone(),
        created: state::now(),
        detached: opts.detach,
        remove: opts.rm || !opts.detach,
        exited: false,
    };
    let (dir, lock) = ContainerDir::create(&ctx.paths.containers, &record)?;
    let mut cleanup = Cleanup {
        dir: Some(dir.clone()),
    };
    let prepared = rootfs::prepare(&dir, &img.rootfs, img.cached)?;

    let (uid, gid) = match &opts.user {
        Some(u) => userspec::resolve(u, &img.rootfs)?,
        None => (img.defaults.uid, img.defaults.gid),
    };
    let stdin_tty = std::io::stdin().is_terminal();
    let terminal = !opts.detach && stdin_tty && (opts.tty || std::io::stdout().is_terminal());
    if opts.tty && !stdin_tty {
        debug!("-t without a terminal on stdin: running without one");
    }
    let hostname = opts.hostname.clone().unwrap_or_else(|| c.name.clone());
    let env = container_env(&img, &c.env, &hostname, terminal, uid);
    let mut binds = c.binds.clone();
    binds.extend(name_files(
        &dir,
        &prepared,
        &hostname,
        c.dns.as_ref(),
        &c.binds,
    )?);
    let plan = Plan {
        rootfs: prepared.rootfs.clone(),
        readonly_root: prepared.readonly,
        args,
        env,
        cwd: opts
            .workdir
            .clone()
            .or(img.defaults.cwd.clone())
            .unwrap_or_else(|| "/".into()),
        uid,
        gid,
        hostname,
        terminal,
        binds,
        annotations: c.annotations.clone(),
        hooks: c.hooks.clone(),
        rootless: rootless.then(|| ctx.ids.mappings()),
        tmpfs_tmp: prepared.tmpfs_tmp,
    };
    let mut spec = bundle::build(&plan)?;
    c.devices
        .apply(&mut spec, plan.rootless.as_ref())
        .context("applying the devices to the container's config.json")?;
    bundle::save(&spec, &dir.bundle().join("config.json"))?;
    let oci = Oci::new(c.runtime.clone(), &ctx.paths.runtime_state);
    std::fs::create_dir_all(&oci.root)
        .with_context(|| format!("cannot create {}", oci.root.display()))?;

    if opts.detach {
        let code = start_detached(&oci, &dir, &record)?;
        cleanup.dir = None;
        drop(lock);
        println!("{}", record.name);
        return Ok(code);
    }
    debug!(container = %record.name, runtime = %c.runtime.name(), "starting");
    // The runtime passes the signals we pass it on to the container.
    let status =
        run_in_foreground(&mut oci.run(record.id(), &dir.bundle(), &dir.pid_file(), false))?;
    // `run` in the foreground deletes the container (poststop included) unless the
    // runtime itself was killed: only then is there something to delete.
    if std::os::unix::process::ExitStatusExt::signal(&status).is_some()
        && oci.state(record.id()).is_some()
    {
        let _ = oci.delete(record.id());
    }
    // The runtime writes the pid file once the container runs: without it, the start
    // failed (the runtime said why on stderr) and the failure is ours, not the container's.
    let started = dir.pid_file().exists();
    drop(cleanup);
    drop(lock);
    if !status.success() && !started {
        bail!(
            "{} could not start the container (its message is above)",
            c.runtime.name()
        );
    }
    Ok(exit_code(status))
}

/// `run -d` with the container's output in its log (its pid: the runtime's pid file).
fn start_detached(oci: &Oci, dir: &ContainerDir, record: &Record) -> Result<i32> {
    let log = std::fs::File::create(dir.log())
        .with_context(|| format!("cannot create {}", dir.log().display()))?;
    let mut cmd = oci.run(record.id(), &dir.bundle(), &dir.pid_file(), true);
    // The runtime's own complaint lands in the log too: the container inherits its stdio.
    let status = cmd
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .with_context(|| format!("cannot open {}", dir.log().display()))?,
        )
        .stderr(log)
        .status()
        .with_context(|| format!("cannot run {}", oci.runtime.path.display()))?;
    if !status.success() {
        let text = std::fs::read(dir.log()).unwrap_or_default();
        if oci.state(record.id()).is_some() {
            let _ = oci.delete(record.id());
        }
        bail!(
            "{} could not start the container: {}",
            oci.runtime.name(),
            crate::tool::last_line(&text)
        );
    }
    Ok(0)
}

/// `/etc/hosts` naming the container and a `/etc/resolv.conf` (the bubble's DNS server
/// for container names when hpk-netd serves them, else the bubble's own file), bound
/// read-only where the runtime can put them (a writable root, or the files exist) and the
/// user did not bind their own.
fn name_files(
    dir: &ContainerDir,
    prepared: &rootfs::Prepared,
    hostname: &str,
    dns: Option<&(std::net::Ipv4Addr, String)>,
    user: &[Bind],
) -> Result<Vec<Bind>> {
    let mut out = Vec::new();
    let hosts = dir.dir.join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.1.1\t{hostname}\n"),
    )
    .with_context(|| format!("cannot write {}", hosts.display()))?;
    let resolv_conf = match dns {
        Some((server, domain)) => {
            let path = dir.dir.join("resolv.conf");
            std::fs::write(&path, format!("search {domain}\nnameserver {server}\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
            path
        }
        None => PathBuf::from("/etc/resolv.conf"),
    };
    let candidates = [(hosts, "/etc/hosts"), (resolv_conf, "/etc/resolv.conf")];
    for (source, dest) in candidates {
        let target = prepared.rootfs.join(&dest[1..]);
        let placeable = target.is_file()
            || (!prepared.readonly && prepared.overlay && prepared.rootfs.join("etc").is_dir());
        if source.is_file() && placeable && !user.iter().any(|b| b.destination == dest) {
            out.push(Bind {
                source,
                destination: dest.to_string(),
                readonly: true,
            });
        }
    }
    Ok(out)
}

/// The image's environment with PATH, HOSTNAME, HOME (from the image's passwd), TERM on a
/// terminal, then the user's `-e`/`--env-file`, later ones winning.
fn container_env(
    img: &image::Image,
    user_env: &[String],
    hostname: &str,
    terminal: bool,
    uid: u32,
) -> Vec<String> {
    let mut env = img.defaults.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, environment::DEFAULT_PATH.into());
    }
    environment::merge(&mut env, [format!("HOSTNAME={hostname}")]);
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let home = userspec::home_of(uid, &img.rootfs).unwrap_or_else(|| "/".into());
        env.push(format!("HOME={home}"));
    }
    if terminal {
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        environment::merge(&mut env, [format!("TERM={term}")]);
    }
    environment::merge(&mut env, user_env.iter().cloned());
    env
}
