//! A cluster of real bubbles for tests: hosts on a LAN (testkit's World), `hpk-bubble
//! start` run on them as an unprivileged user, the shared directory, and helpers to run
//! commands and containers inside the bubbles.
#![allow(dead_code)]

use std::io::BufRead;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use testkit::rootless::{allow_rootless_tun, setpriv_args};
use testkit::world::World;
use testkit::*;

pub const HPK_BUBBLE: &str = env!("CARGO_BIN_EXE_hpk-bubble");

pub struct Cluster {
    pub hosts: Vec<(Netns, Ipv4Addr)>,
    /// Every bubble's launcher, by bubble id; stopped (SIGTERM) on drop.
    pub launchers: Vec<(u32, Proc)>,
    /// What each launcher wrote on stderr, read as it comes (by bubble id, like
    /// `launchers`), so tests can wait for what a running launcher says.
    pub launcher_logs: Vec<(u32, LauncherLog)>,
    pub shared: PathBuf,
    pub rootfs: PathBuf,
    pub dir: Scratch,
    pub world: World,
}

/// A directory the bubble user can write.
pub fn open_dir(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
}

impl Cluster {
    /// `n` hosts on a LAN with an outside server; no bubble yet.
    pub fn new(n: usize) -> Cluster {
        allow_rootless_tun();
        let p = prefix();
        let dir = Scratch::new(&p);
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        let shared = dir.0.join("shared");
        open_dir(&shared);
        open_dir(&dir.0.join("state"));
        let rootfs = testkit::runc::rootfs(&dir.0);
        for applet in ["httpd", "wget", "md5sum", "grep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let mut world = World::new(&p);
        let hosts = (1..=n).map(|i| world.host(&format!("h{i}"))).collect();
        Cluster {
            hosts,
            launchers: Vec::new(),
            launcher_logs: Vec::new(),
            shared,
            rootfs,
            dir,
            world,
        }
    }

    pub fn state_dir(&self, id: u32) -> PathBuf {
        self.dir.0.join("state").join(format!("b{id}"))
    }

    /// `hpk-bubble ARGS` as the bubble user in host `host` (0-based).
    pub fn command(&self, host: usize, args: &[&str]) -> Command {
        let mut cmd = self.hosts[host].0.nsenter("setpriv");
        // hpktainer and hpk-netd sit next to hpk-bubble.
        let bin = Path::new(HPK_BUBBLE).parent().unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.args(setpriv_args())
            .arg(HPK_BUBBLE)
            .args(args)
            .env("PATH", path)
            .env("HPK_SHARED_DIR", &self.shared)
            .env("HOME", &self.dir.0)
            .env_remove("SLURM_JOB_ID");
        cmd
    }

    /// Starts `hpk-bubble start ID ROLE` on host `host` with `extra` flags; does not wait.
    pub fn launch(&mut self, host: usize, id: u32, role: &str, extra: &[&str]) {
        self.launch_with(host, id, role, extra, &[]);
    }

    pub fn launch_with(
        &mut self,
        host: usize,
        id: u32,
        role: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) {
        let state = self.state_dir(id);
        let mut cmd = self.command(host, &["start", &id.to_string(), role]);
        cmd.arg("--state-dir").arg(&state).args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn(&format!("bubble {id}"), &mut cmd);
        let stderr = proc.child.stderr.take().expect("Proc pipes stderr");
        self.launcher_logs.push((id, LauncherLog::read(stderr)));
        self.launchers.push((id, proc));
    }

    fn log_of(&self, id: u32) -> &LauncherLog {
        &self
            .launcher_logs
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .expect("launched")
            .1
    }

    /// What bubble `id`'s launcher wrote on stderr so far.
    pub fn launcher_log(&self, id: u32) -> String {
        self.log_of(id).text()
    }

    /// Waits until bubble `id`'s launcher says `text`; panics with its log if it exits
    /// first.
    pub fn wait_for_log(&mut self, id: u32, text: &str) {
        let mut exited = false;
        wait_until(
            &format!("bubble {id}'s launcher to say {text:?}"),
            Duration::from_secs(60),
            || {
                exited = !self.launcher(id).alive();
                exited || self.launcher_log(id).contains(text)
            },
        );
        let log = self.launcher_log(id);
        assert!(
            log.contains(text),
            "bubble {id}'s launcher exited before saying {text:?}: {log}"
        );
    }

    /// Sends `sig` to bubble `id`'s launcher, waits for its exit; returns its exit code and
    /// everything it wrote on stderr.
    pub fn stop_launcher(
        &mut self,
        id: u32,
        sig: nix::sys::signal::Signal,
    ) -> (Option<i32>, String) {
        let (code, _) = self.launcher(id).stop_with(sig);
        (code, self.log_of(id).after_exit())
    }

    pub fn launcher(&mut self, id: u32) -> &mut Proc {
        &mut self
            .launchers
            .iter_mut()
            .rev()
            .find(|(i, _)| *i == id)
            .expect("launched")
            .1
    }

    /// Waits for bubble `id`'s record; panics with the launcher's stderr if it exits.
    pub fn wait_ready(&mut self, id: u32) -> Value {
        let record = self.shared.join(format!("bubble-{id}.json"));
        let mut failed = None;
        wait_until(
            &format!("bubble {id} to be ready"),
            Duration::from_secs(90),
            || {
                let launcher = self.launcher(id);
                if !launcher.alive() {
                    failed = Some(launcher.wait_exit(Duration::from_secs(1)).0);
                    return true;
                }
                record.exists()
            },
        );
        if let Some(code) = failed {
            panic!(
                "bubble {id} exited ({code:?}): {}",
                self.log_of(id).after_exit()
            );
        }
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap()
    }

    /// Starts and waits for a controller on host 0 and nodes on the others.
    pub fn start_all(&mut self, extra: &[&str]) {
        self.launch(0, 1, "controller", extra);
        self.wait_ready(1);
        for h in 1..self.hosts.len() {
            self.launch(h, h as u32 + 1, "node", extra);
        }
        for h in 1..self.hosts.len() {
            self.wait_ready(h as u32 + 1);
        }
    }

    /// `hpk-bubble shell ID -- ARGS` from bubble `id`'s host; returns its output.
    pub fn shell(&self, id: u32, args: &[&str]) -> Output {
        let host = self.host_of(id);
        let mut cmd = self.command(host, &["shell", &id.to_string(), "--"]);
        cmd.args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Like [`shell`](Self::shell), panicking on failure; returns stdout.
    pub fn shell_ok(&self, id: u32, args: &[&str]) -> String {
        let out = self.shell(id, args);
        assert!(
            out.status.success(),
            "in bubble {id}: {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn host_of(&self, id: u32) -> usize {
        let r: Value = serde_json::from_slice(
            &std::fs::read(self.shared.join(format!("bubble-{id}.json"))).unwrap(),
        )
        .unwrap();
        let ip: Ipv4Addr = r["host_ip"].as_str().unwrap().parse().unwrap();
        self.hosts.iter().position(|(_, a)| *a == ip).unwrap()
    }

    /// A detached container `name` in bubble `id` (sleeping, or `cmd`); returns its address.
    pub fn container(&self, id: u32, name: &str, cmd: &[&str]) -> Ipv4Addr {
        let rootfs = self.rootfs.to_str().unwrap();
        let mut args = vec!["hpktainer", "run", "-d", "--name", name, rootfs];
        if cmd.is_empty() {
            args.extend(["sleep", "600"]);
        } else {
            args.extend(cmd);
        }
        self.shell_ok(id, &args);
        let ps: Value =
            serde_json::from_str(&self.shell_ok(id, &["hpktainer", "ps", "--json"])).unwrap();
        ps.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["address"].as_str())
            .unwrap_or_else(|| panic!("no address for {name}: {ps}"))
            .parse()
            .unwrap()
    }

    /// Runs `sh -c script` in a new foreground container in bubble `id`.
    pub fn in_container(&self, id: u32, script: &str) -> Output {
        let rootfs = self.rootfs.to_str().unwrap();
        self.shell(id, &["hpktainer", "run", rootfs, "sh", "-c", script])
    }

    /// Host processes of the bubble user that are ours (launchers, uplinks, bubble PIDs).
    pub fn bubble_processes(&self) -> Vec<String> {
        let marker = self.dir.0.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                (cmdline.contains(&marker) && pid != std::process::id() as i32)
                    .then(|| format!("{pid}: {cmdline}"))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, p) in self.launchers.iter_mut().rev() {
            if p.alive() {
                p.stop_with(nix::sys::signal::Signal::SIGTERM);
            }
        }
    }
}

/// A launcher's stderr, collected by a thread as the launcher writes it.
pub struct LauncherLog {
    text: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
}

impl LauncherLog {
    fn read(stderr: std::process::ChildStderr) -> LauncherLog {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        LauncherLog { text, reader }
    }

    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// The whole log of a launcher that exited: once its last writer closed the pipe (as
    /// reading it to the end did), or what came within 10 s if a leftover holds it open.
    pub fn after_exit(&self) -> String {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while !self.reader.is_finished() && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.text()
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
