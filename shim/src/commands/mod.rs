//! One module per subcommand.

pub mod exec;
pub mod hooks;
pub mod logs;
pub mod prune;
pub mod ps;
pub mod run;
pub mod run_other;
pub mod shim;
pub mod status;
pub mod stop;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use nix::sys::signal::kill;
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use tracing::debug;

use crate::paths::Paths;
use crate::rootless::Ids;
use crate::signals;

/// What every command needs: who we are, where state lives and where hpk-netd listens.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub paths: Paths,
    /// hpk-netd's socket: --socket, else HPK_NETD_SOCKET, else the default.
    pub socket: PathBuf,
    /// Our ids and user namespace, read once.
    pub ids: Ids,
}

impl Ctx {
    pub fn new(root: Option<&Path>, socket: Option<&Path>) -> Ctx {
        let ids = Ids::current();
        Ctx {
            paths: Paths::new(root, ids.is_real_root()),
            socket: hpk_hook::client::socket_path(socket),
            ids,
        }
    }
}

/// Runs `cmd` in the foreground: the forwarded signals (Ctrl-C, SIGTERM, ...) are blocked
/// here and passed on to the child (runc, crun, Apptainer and SingularityCE pass them on to
/// the container); returns how the child ended.
pub fn run_in_foreground(cmd: &mut Command) -> Result<ExitStatus> {
    signals::block();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", cmd.get_program().to_string_lossy()))?;
    let pid = Pid::from_raw(child.id() as i32);
    // While `live` holds, the child is not reaped: its pid cannot name another process.
    let live = Arc::new(Mutex::new(true));
    let forwarding = Arc::clone(&live);
    signals::forward(move |sig| {
        let live = forwarding.lock().unwrap_or_else(|e| e.into_inner());
        if *live {
            debug!(?sig, "passing the signal on");
            let _ = kill(pid, sig);
        }
    });
    // Wait for the exit without reaping, stop forwarding, then reap.
    while let Err(nix::errno::Errno::EINTR) =
        waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
    {}
    *live.lock().unwrap_or_else(|e| e.into_inner()) = false;
    child
        .wait()
        .with_context(|| format!("waiting for {}", cmd.get_program().to_string_lossy()))
}

/// The exit code of a finished child: its code, or 128 + the signal that killed it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}
