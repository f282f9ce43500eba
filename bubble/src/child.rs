//! Child processes of a bubble: started with their output in a log file, ended with the
//! process that started them, stopped politely then firmly.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

/// Makes `cmd`'s process get SIGKILL when its parent dies, and start with no blocked
/// signals (a blocked mask is inherited across exec, and ours blocks SIGTERM).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: only async-signal-safe calls (sigprocmask, prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            SigSet::all()
                .thread_unblock()
                .map_err(std::io::Error::from)?;
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A running child whose output goes to a log file.
pub struct Service {
    pub what: &'static str,
    pub log: PathBuf,
    pub child: Child,
}

impl Service {
    /// Starts `cmd` with stdin closed and stdout/stderr appended to `log`.
    pub fn spawn(what: &'static str, cmd: &mut Command, log: &Path) -> Result<Service> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log)
            .with_context(|| format!("cannot open the log {}", log.display()))?;
        let err = out.try_clone()?;
        let child = die_with_parent(cmd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {what} ({:?})", cmd.get_program()))?;
        tracing::debug!(what, pid = child.id(), "started");
        Ok(Service {
            what,
            log: log.to_path_buf(),
            child,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `Some(status)` once it has exited (and is reaped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The error to report when it exited on its own.
    pub fn exit_report(&self, status: ExitStatus) -> anyhow::Error {
        anyhow::anyhow!(
            "{} exited ({}); its log: {}{}",
            self.what,
            describe(status),
            self.log.display(),
            last_line(&self.log)
                .map(|l| format!(" (last line: {l})"))
                .unwrap_or_default()
        )
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        stop_pid(self.pid(), grace, &mut || self.exited().is_some());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM to `pid`, waits up to `grace` for `gone()`, then sends SIGKILL.
pub fn stop_pid(pid: i32, grace: Duration, gone: &mut dyn FnMut() -> bool) {
    if gone() {
        return;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if gone() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => Signal::try_from(sig)
            .map(|s| format!("killed by {s}"))
            .unwrap_or_else(|_| format!("signal {sig}")),
        _ => status.to_string(),
    }
}

/// The last non-empty line of a log, for error messages.
pub fn last_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
}

/// Polls `probe` until it returns `Ok(Some(_))`, with a deadline. `probe` returns an
/// error to give up early (the thing waited for died).
pub fn wait_for<T>(
    what: &str,
    hint: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let end = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if Instant::now() >= end {
            bail!(
                "timed out after {}s waiting for {what}{hint}",
                timeout.as_secs()
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
