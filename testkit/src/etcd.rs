//! A real etcd (Debian's etcd-server) in a test host's namespace, and etcdctl.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::{Netns, Proc};

pub struct Etcd {
    pub proc: Option<Proc>,
    pub url: String,
    ns: PathBuf,
    data: PathBuf,
    listen: String,
    pub tls: Option<Tls>,
}

/// PEM files for etcd with client-certificate authentication.
#[derive(Clone, Debug)]
pub struct Tls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Tls {
    /// A CA, a server certificate for `addr` and a client certificate, made with openssl.
    pub fn generate(dir: &Path, addr: std::net::Ipv4Addr) -> Tls {
        let p = |n: &str| dir.join(n);
        let sh =
            |script: String| crate::run(Command::new("sh").arg("-c").arg(script).current_dir(dir));
        sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
            -keyout ca.key -out ca.pem 2>/dev/null".into());
        for (name, ext) in [
            (
                "server",
                format!("subjectAltName=IP:{addr}\nextendedKeyUsage=serverAuth,clientAuth"),
            ),
            ("client", "extendedKeyUsage=clientAuth".to_string()),
        ] {
            sh(format!(
                "openssl req -newkey rsa:2048 -nodes -subj /CN={name} -keyout {name}.key -out {name}.csr 2>/dev/null && \
                 printf '{ext}\nbasicConstraints=CA:FALSE\n' > {name}.ext && \
                 openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
                 -extfile {name}.ext -out {name}.pem 2>/dev/null"
            ));
        }
        Tls {
            ca: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
        }
    }
}

impl Etcd {
    /// Starts etcd in `ns`, serving clients on `addr`:2379, data under `dir`.
    pub fn start(ns: &Netns, addr: std::net::Ipv4Addr, dir: &Path) -> Etcd {
        Self::start_with(ns, addr, dir, None)
    }

    /// Like `start`, serving https and requiring client certificates.
    pub fn start_tls(ns: &Netns, addr: std::net::Ipv4Addr, dir: &Path, tls: Tls) -> Etcd {
        Self::start_with(ns, addr, dir, Some(tls))
    }

    fn start_with(ns: &Netns, addr: std::net::Ipv4Addr, dir: &Path, tls: Option<Tls>) -> Etcd {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut etcd = Etcd {
            proc: None,
            url: format!("{scheme}://{addr}:2379"),
            ns: ns.path(),
            data: dir.join("etcd"),
            listen: addr.to_string(),
            tls,
        };
        etcd.restart();
        etcd
    }

    /// Starts (again) with the same data.
    pub fn restart(&mut self) {
        let log = std::fs::File::create(self.data.with_extension("log")).unwrap();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.ns.display()))
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
            .args(["--initial-cluster", "n1=http://127.0.0.1:2380"]);
        if let Some(t) = &self.tls {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&t.ca);
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key);
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd-server is installed");
        self.proc = Some(Proc {
            child,
            what: format!("etcd on {}", self.listen),
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.ctl(&["endpoint", "health"]);
            if out.status.success() {
                break;
            }
            let last = String::from_utf8_lossy(&out.stderr);
            assert!(
                std::time::Instant::now() < deadline,
                "etcd did not become healthy: {last}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops etcd (SIGTERM), keeping its data.
    /// Ends etcd at once, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop_with(nix::sys::signal::Signal::SIGKILL);
        }
    }

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
            .args(self.tls.iter().flat_map(|t| {
                [
                    format!("--cacert={}", t.ca.display()),
                    format!("--cert={}", t.client_cert.display()),
                    format!("--key={}", t.client_key.display()),
                ]
            }))
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
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .filter(|l| !l.contains("rejected connection"))
                .take(25)
                .collect();
            eprintln!("---- etcd log (last lines) ----");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        self.stop();
    }
}
