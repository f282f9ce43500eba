//! Child processes that are always stopped and reaped.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::wait_until;

/// A child process that is stopped (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub what: String,
}

impl Proc {
    pub fn spawn(what: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc {
            child,
            what: what.to_owned(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends `sig` and waits for the exit; returns (exit code, stderr).
    pub fn stop_with(&mut self, sig: Signal) -> (Option<i32>, String) {
        let _ = kill(Pid::from_raw(self.pid()), sig);
        self.wait_exit(Duration::from_secs(10))
    }

    /// Waits for the process to exit by itself; returns (exit code, stderr).
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, String) {
        let what = format!("{} to exit", self.what);
        let mut status = None;
        wait_until(&what, timeout, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status.unwrap().code(), err)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
