//! A real etcd (Debian's etcd-server) in a test host's namespace, and etcdctl.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::{wait_until, Netns, Proc};

pub struct Etcd {
    pub proc: Option<Proc>,
    pub url: String,
    ns: PathBuf,
    data: PathBuf,
    listen: String,
}

impl Etcd {
    /// Starts etcd in `ns`, serving clients on `addr`:2379, data under `dir`.
    pub fn start(ns: &Netns, addr: std::net::Ipv4Addr, dir: &Path) -> Etcd {
        let mut etcd = Etcd {
            proc: None,
            url: format!("http://{addr}:2379"),
            ns: ns.path(),
            data: dir.join("etcd"),
            listen: addr.to_string(),
        };
        etcd.restart();
        etcd
    }

    /// Starts (again) with the same data.
    pub fn restart(&mut self) {
        let log = std::fs::File::create(self.data.with_extension("log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns.display()))
            .arg("etcd")
            .args(["--name", "n1", "--data-dir"])
            .arg(&self.data)
            .args([
                "--listen-client-urls",
                &self.url,
                "--advertise-client-urls",
                &self.url,
            ])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-cluster", "n1=http://127.0.0.1:2380"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd-server is installed");
        self.proc = Some(Proc {
            child,
            what: format!("etcd on {}", self.listen),
        });
        wait_until("etcd to serve", Duration::from_secs(20), || {
            self.ctl(&["endpoint", "health"]).status.success()
        });
    }

    /// Stops etcd (SIGTERM), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop_with(nix::sys::signal::Signal::SIGTERM);
        }
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.ns.display()))
            .arg("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.url,
                "--dial-timeout",
                "2s",
                "--command-timeout",
                "3s",
            ])
            .args(args)
            .output()
            .unwrap()
    }

    pub fn put(&self, key: &str, value: &str) {
        let out = self.ctl(&["put", key, value]);
        assert!(
            out.status.success(),
            "etcdctl put: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Key/value pairs under `prefix`.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.ctl(&["get", "--prefix", prefix]);
        assert!(
            out.status.success(),
            "etcdctl get: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .map(|kv| (kv[0].to_owned(), kv.get(1).unwrap_or(&"").to_string()))
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
