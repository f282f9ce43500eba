//! Real runc containers with our hooks: a busybox-static rootfs and bundles written the
//! way users write them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use crate::{hook_binary, Netns};

/// A busybox rootfs under `dir/rootfs`.
pub fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
    for applet in [
        "sh", "sleep", "ping", "ip", "true", "cat", "nc", "ifconfig", "route", "arping", "nslookup",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    root
}

/// What goes into a bundle's config.json.
pub struct BundleSpec<'a> {
    pub args: &'a [&'a str],
    pub socket: &'a Path,
    pub annotations: &'a [(&'a str, &'a str)],
    /// `runc spec --rootless`, with a network namespace added.
    pub rootless: bool,
    /// Leave the hooks out.
    pub no_hooks: bool,
}

/// Writes `dir/<name>/config.json` pointing at the shared rootfs; returns the bundle dir.
pub fn bundle(dir: &Path, name: &str, spec: &BundleSpec) -> PathBuf {
    let bundle = dir.join(name);
    fs::create_dir_all(&bundle).unwrap();
    let mut cmd = Command::new("runc");
    cmd.arg("spec").arg("--bundle").arg(&bundle);
    if spec.rootless {
        cmd.arg("--rootless");
    }
    crate::run(&mut cmd);
    let path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    config["process"]["terminal"] = json!(false);
    config["process"]["args"] = json!(spec.args);
    config["root"] = json!({"path": dir.join("rootfs"), "readonly": true});
    // busybox ping opens a raw socket.
    for set in ["bounding", "effective", "permitted"] {
        if let Some(caps) = config["process"]["capabilities"][set].as_array_mut() {
            caps.push(json!("CAP_NET_RAW"));
        }
    }
    let namespaces = config["linux"]["namespaces"].as_array_mut().unwrap();
    if !namespaces.iter().any(|n| n["type"] == "network") {
        namespaces.push(json!({"type": "network"}));
    }
    if !spec.no_hooks {
        let hook = hook_binary();
        let sock = spec.socket.to_str().unwrap();
        config["hooks"] = json!({
            "createRuntime": [{"path": hook, "args": ["hpk-hook", "createRuntime", "--socket", sock], "timeout": 10}],
            "poststop": [{"path": hook, "args": ["hpk-hook", "poststop", "--socket", sock], "timeout": 10}],
        });
    }
    let annotations: serde_json::Map<String, Value> = spec
        .annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    config["annotations"] = Value::Object(annotations);
    fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    bundle
}

/// runc, run in a bubble namespace with its state under a test directory.
#[derive(Clone, Debug)]
pub struct Runc {
    pub bubble: PathBuf,
    pub root: PathBuf,
    /// A wrapper that runs runc as an unprivileged user in a user namespace, if any.
    pub prefix: Vec<String>,
}

impl Runc {
    pub fn new(bubble: &Netns, dir: &Path) -> Runc {
        Runc {
            bubble: bubble.path(),
            root: dir.join("runc"),
            prefix: Vec::new(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut cmd;
        if self.prefix.is_empty() {
            cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", self.bubble.display()))
                .arg("runc");
        } else {
            cmd = Command::new(&self.prefix[0]);
            cmd.args(&self.prefix[1..]).arg("runc");
        }
        cmd.arg("--root").arg(&self.root);
        cmd
    }

    /// A copy of `bundle` for container `id` with a cgroup named after this runc's root
    /// too: runc names cgroups after the id alone, and tests that run at once reuse ids
    /// (one's delete removed the other's cgroup under it).
    fn own_bundle(&self, id: &str, bundle: &Path) -> PathBuf {
        let mut config: Value =
            serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
        let tag = self
            .root
            .to_string_lossy()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        config["linux"]["cgroupsPath"] = json!(format!("/hpktest-{:08x}-{id}", tag >> 32));
        let dir = self.root.with_file_name(format!("bundle-{id}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("config.json"),
            serde_json::to_vec(&config).unwrap(),
        )
        .unwrap();
        dir
    }

    /// `runc run -d`; on failure returns runc's stderr (where a hook's error shows).
    pub fn run(&self, id: &str, bundle: &Path) -> Result<Container, String> {
        // Rootless runc makes no cgroups of its own here.
        let bundle = match self.prefix.is_empty() {
            true => self.own_bundle(id, bundle),
            false => bundle.to_path_buf(),
        };
        let err_path = self.root.with_file_name(format!("runc-{id}.err"));
        let err = fs::File::create(&err_path).unwrap();
        // The container inherits runc's stdio: never a pipe we would wait on.
        let status = self
            .cmd()
            .args(["run", "-d", "--bundle"])
            .arg(&bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .status()
            .unwrap();
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        let _ = fs::remove_file(&err_path);
        // Dropped on failure too: `delete --force` clears a half-made container.
        let mut container = Container {
            runc: self.clone(),
            id: id.to_owned(),
            pid: 0,
        };
        if !status.success() {
            return Err(stderr);
        }
        container.pid = container.state()["pid"].as_i64().unwrap() as i32;
        Ok(container)
    }
}

/// A container; force-deleted on drop.
#[derive(Debug)]
pub struct Container {
    pub runc: Runc,
    pub id: String,
    pub pid: i32,
}

impl Container {
    pub fn state(&self) -> Value {
        let out = self.runc.cmd().args(["state", &self.id]).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        self.runc
            .cmd()
            .args(["exec", &self.id])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn ping(&self, addr: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "2", addr])
            .status
            .success()
    }

    /// `runc kill` + `runc delete`: the way a runtime stops a container (runs poststop).
    pub fn stop(&self) {
        let _ = self.runc.cmd().args(["kill", &self.id, "KILL"]).output();
        crate::wait_until(
            "container to stop",
            std::time::Duration::from_secs(10),
            || self.state()["status"] != "running",
        );
        let out = self.runc.cmd().args(["delete", &self.id]).output().unwrap();
        assert!(
            out.status.success(),
            "runc delete: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self
            .runc
            .cmd()
            .args(["delete", "--force", &self.id])
            .output();
    }
}
