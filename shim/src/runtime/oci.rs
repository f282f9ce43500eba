//! runc and crun (and anything with runc's command line), driven as subprocesses: their
//! command line is the stable interface, and they do the namespace work we should not.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Result;
use oci_spec::runtime::State;

use super::Runtime;
use crate::tool;

#[derive(Clone, Debug)]
pub struct Oci {
    pub runtime: Runtime,
    /// The runtime's state directory (`--root`): ours, so `list` shows only our containers.
    pub root: PathBuf,
}

impl Oci {
    pub fn new(runtime: Runtime, state_dir: &Path) -> Oci {
        let root = state_dir.join(runtime.name());
        Oci { runtime, root }
    }

    /// The runtime with `--root`; crun on a hybrid cgroup host gets a mount namespace that
    /// hides the cgroup2 hierarchy (see [`hide_hybrid_cgroup2`]).
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(&self.runtime.path);
        cmd.arg("--root").arg(&self.root);
        prepare_runtime_command(&mut cmd, &self.runtime);
        cmd
    }

    /// `run`, in the foreground (the runtime forwards signals and, with a terminal in the
    /// spec, handles the pty itself; it deletes the container when it exits) or with
    /// `detach` (`run -d`: the container keeps the stdio we give, a log file).
    pub fn run(&self, id: &str, bundle: &Path, pid_file: &Path, detach: bool) -> Command {
        let mut cmd = self.cmd();
        cmd.arg("run");
        if detach {
            cmd.arg("-d");
        }
        cmd.arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id);
        cmd
    }

    pub fn exec(
        &self,
        id: &str,
        tty: bool,
        env: &[String],
        cwd: Option<&str>,
        args: &[String],
    ) -> Command {
        let mut cmd = self.cmd();
        cmd.arg("exec");
        if tty {
            cmd.arg("--tty");
        }
        for e in env {
            cmd.arg("--env").arg(e);
        }
        if let Some(c) = cwd {
            cmd.arg("--cwd").arg(c);
        }
        cmd.arg(id).args(args);
        cmd
    }

    pub fn kill(&self, id: &str, signal: &str) -> Result<()> {
        let mut cmd = self.cmd();
        cmd.args(["kill", id, signal]);
        tool::output(cmd, &format!("cannot signal container {id}")).map(drop)
    }

    /// `delete --force`: kills a running container; runs the poststop hooks.
    pub fn delete(&self, id: &str) -> Result<()> {
        let mut cmd = self.cmd();
        cmd.args(["delete", "--force", id]);
        tool::output(cmd, &format!("cannot delete container {id}")).map(drop)
    }

    /// The runtime's view of the container, or None when it does not know it.
    pub fn state(&self, id: &str) -> Option<State> {
        let out = self
            .cmd()
            .args(["state", id])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }
}

const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// What a runtime's command needs on this host (crun: see [`hide_hybrid_cgroup2`]).
pub fn prepare_runtime_command(cmd: &mut Command, runtime: &Runtime) {
    if runtime.is_crun() && crun_needs_v1_view() {
        tracing::debug!(
            "hybrid cgroups with cgroup2 controllers: crun runs without the cgroup2 mount"
        );
        let target = CString::new(UNIFIED).expect("no NUL");
        let tmpfs = CString::new("tmpfs").expect("no NUL");
        let root = CString::new("/").expect("no NUL");
        // SAFETY: only async-signal-safe syscalls on memory prepared before fork.
        unsafe {
            cmd.pre_exec(move || hide_hybrid_cgroup2(&root, &target, &tmpfs));
        }
    }
}

/// crun 1.8 refuses hybrid cgroup hosts whose cgroup2 hierarchy has controllers ("cgroups
/// in hybrid mode not supported, drop all controllers from cgroupv2"); these VMs have
/// hugetlb there. Without the cgroup2 mount crun sees a plain v1 host and works.
fn crun_needs_v1_view() -> bool {
    std::fs::read_to_string(format!("{UNIFIED}/cgroup.controllers"))
        .map(|c| !c.trim().is_empty())
        .unwrap_or(false)
}

/// In the child before exec: a private mount namespace where the cgroup2 mount is gone
/// (real root) or covered by an empty tmpfs (root of a user namespace, where the mount is
/// locked). Failures are left for crun to report.
fn hide_hybrid_cgroup2(root: &CString, target: &CString, tmpfs: &CString) -> std::io::Result<()> {
    // SAFETY: plain syscalls with valid NUL-terminated strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Ok(());
        }
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        );
        if libc::umount2(target.as_ptr(), libc::MNT_DETACH) != 0 {
            libc::mount(
                tmpfs.as_ptr(),
                target.as_ptr(),
                tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            );
        }
    }
    Ok(())
}
