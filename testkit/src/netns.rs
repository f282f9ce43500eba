//! Throw-away network namespaces (`ip netns add`), removed with whatever runs in them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{pids_in_netns, run};

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: impl Into<String>) -> Netns {
        let name = name.into();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Names the network namespace of `pid` (`ip netns attach`), for inspection.
    pub fn attach(name: impl Into<String>, pid: i32) -> Netns {
        let name = name.into();
        run(Command::new("ip").args(["netns", "attach", &name, &pid.to_string()]));
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// A command in this namespace that keeps the host's /sys (runc needs its cgroups,
    /// which `ip netns exec` hides by remounting /sys).
    pub fn nsenter(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg(program);
        cmd
    }

    pub fn ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    pub fn has_link(&self, link: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", "dev", link])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Whether `link` exists and is administratively up.
    pub fn link_up(&self, link: &str) -> bool {
        self.link_json(link)
            .and_then(|j| j["flags"].as_array().cloned())
            .is_some_and(|flags| flags.iter().any(|f| f == "UP"))
    }

    pub fn link_json(&self, link: &str) -> Option<serde_json::Value> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-j", "-s", "link", "show", "dev", link])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.get(0).cloned()
    }

    /// Frames the kernel received on `link` (for a tap: frames userspace wrote to it).
    pub fn rx_packets(&self, link: &str) -> u64 {
        self.link_json(link).expect("link exists")["stats64"]["rx"]["packets"]
            .as_u64()
            .unwrap()
    }

    /// Names of the links in this namespace.
    pub fn links(&self) -> Vec<String> {
        let out = self.ip(&["-j", "link", "show"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn ping(&self, addr: &str) -> bool {
        self.cmd("ping")
            .args(["-c", "1", "-W", "2", addr])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let ns = std::fs::File::open(self.path()).unwrap();
        std::thread::spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs in the namespace was started by this test (forwarders of a
        // test that failed half-way): end it, by PID.
        for pid in pids_in_netns(&self.path()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
