//! hpk-netd under a guard: started in a bubble, asked for its status, its log shown when
//! a test fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hpk_hook::client::Client;
use hpk_hook::proto::Status;

use crate::{netd_binary, wait_until, Netns, Proc};

/// A flannel subnet.env as flanneld writes it.
pub fn subnet_env(subnet_with_gw: &str, mtu: u32, ipmasq: bool) -> String {
    format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={subnet_with_gw}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ipmasq}\n")
}

/// hpk-netd running in a bubble namespace with its files under `dir`.
pub struct Netd {
    pub proc: Proc,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// How to enter a rootless bubble (`nsenter -t PID -U -n -m`); empty: ask directly.
    pub enter: Vec<String>,
}

impl Netd {
    /// The command that starts hpk-netd in `bubble` with state, socket and subnet file in `dir`.
    pub fn command(bubble: &Netns, dir: &Path, extra: &[&str]) -> std::process::Command {
        let mut cmd = bubble.nsenter(netd_binary());
        cmd.arg("run")
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(dir.join("netd.sock"))
            .arg("--subnet-file")
            .arg(dir.join("subnet.env"))
            .args(extra);
        cmd
    }

    /// Starts hpk-netd (log in `dir/netd.log`) and waits until it answers.
    pub fn start(bubble: &Netns, dir: &Path, extra: &[&str]) -> Netd {
        Self::start_with(Self::command(bubble, dir, extra), dir, Vec::new())
    }

    /// Starts hpk-netd inside a rootless bubble: `enter` is the command that enters it.
    pub fn start_rootless(enter: Vec<String>, dir: &Path) -> Netd {
        let mut cmd = std::process::Command::new(&enter[0]);
        cmd.args(&enter[1..]).arg(netd_binary()).arg("run");
        cmd.arg("--state-dir").arg(dir.join("state"));
        cmd.arg("--socket").arg(dir.join("netd.sock"));
        cmd.arg("--subnet-file").arg(dir.join("subnet.env"));
        Self::start_with(cmd, dir, enter)
    }

    fn start_with(mut cmd: std::process::Command, dir: &Path, enter: Vec<String>) -> Netd {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("netd.log"))
            .unwrap();
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let netd = Netd {
            proc: Proc {
                child,
                what: "hpk-netd".into(),
            },
            dir: dir.to_owned(),
            socket: dir.join("netd.sock"),
            enter,
        };
        wait_until("hpk-netd to answer", Duration::from_secs(20), || {
            netd.try_status().is_some()
        });
        netd
    }

    fn try_status(&self) -> Option<Status> {
        if self.enter.is_empty() {
            return Client::new(&self.socket).status().ok();
        }
        // Our uid is not mapped in a rootless bubble: ask from inside, as its root.
        let out = std::process::Command::new(&self.enter[0])
            .args(&self.enter[1..])
            .arg(netd_binary())
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("netd.log")).unwrap_or_default()
    }

    pub fn status(&self) -> Status {
        self.try_status().expect("hpk-netd answers status")
    }

    /// Why hpk-netd detached container `id`, from the last line it logged for it:
    /// `detached id="ID" address=ADDR why="REASON"`. The reason is `poststop` when the
    /// hook's poststop detached it, `container exited, no poststop within 5s` when
    /// hpk-netd found the container dead and no poststop came, `container exited while
    /// hpk-netd was down` at a restart, `forwarder keeps dying` when it gave it up.
    pub fn detach_reason(&self, id: &str) -> Option<String> {
        let entry = format!(" detached id=\"{id}\" ");
        let log = self.log();
        let line = log.lines().rev().find(|l| l.contains(&entry))?;
        let why = &line[line.find(" why=\"")? + 6..];
        Some(why[..why.find('"')?].to_owned())
    }

    /// Waits until hpk-netd has detached `id` (a dead container's endpoint waits 5 s for
    /// its poststop) and returns why.
    pub fn wait_detached(&self, id: &str) -> String {
        let mut why = None;
        wait_until(
            &format!("hpk-netd to log {id}'s detach"),
            Duration::from_secs(20),
            || {
                why = self.detach_reason(id);
                why.is_some()
            },
        );
        why.unwrap()
    }

    /// Asserts that no endpoint, address, record or forwarder is left, once the
    /// background teardowns that detaches start have finished.
    pub fn assert_empty(&self, bubble: &Netns, forwarders: &[i32]) {
        wait_until(
            "detached endpoints to be torn down",
            Duration::from_secs(10),
            || self.status().endpoints.is_empty(),
        );
        let status = self.status();
        assert!(
            status.endpoints.is_empty(),
            "endpoints left: {:?}",
            status.endpoints
        );
        assert_eq!(status.addresses_in_use, 0, "addresses left in use");
        let taps: Vec<_> = bubble
            .links()
            .into_iter()
            .filter(|l| l.starts_with("hpk0") || (l.starts_with("hpk") && l.len() == 15))
            .collect();
        assert!(taps.is_empty(), "bubble taps left: {taps:?}");
        let records: Vec<_> = std::fs::read_dir(self.dir.join("state/endpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(records.is_empty(), "endpoint files left: {records:?}");
        // A zombie has released its taps and fds; reaping an orphan is the job of the
        // namespace's init (this machine's PID 1 does not), not hpk-netd's.
        let running = |pid: &i32| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|i| stat.get(i + 2..i + 3))
                .unwrap_or("");
            stat.contains("(hpk-net-daemon)") && state != "Z"
        };
        // The bubble's hub stays a moment after its last endpoint (LINGER).
        wait_until("the forwarders to exit", Duration::from_secs(10), || {
            !forwarders.iter().any(running)
        });
    }
}

impl Drop for Netd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- hpk-netd log ----\n{}", self.log());
            for e in std::fs::read_dir(self.dir.join("state/endpoints"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.path().extension().is_some_and(|x| x == "log") {
                    eprintln!(
                        "---- {} ----\n{}",
                        e.path().display(),
                        std::fs::read_to_string(e.path()).unwrap_or_default()
                    );
                }
            }
        }
    }
}
