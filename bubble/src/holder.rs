//! What holds the bubble's namespaces: `unshare` (user + network + mount + PID, the
//! caller mapped to root), or an Apptainer instance of the hpk-bubble image started the
//! way the original tool started it. Either way `hpk-bubble init` is PID 1 inside.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hpk_netd::sys::process::ProcId;

use crate::child::{self, Service};
use crate::tools;

/// The process tree of a bubble, seen from the host.
pub enum Holder {
    Unshare(Service),
    Apptainer(ApptainerInstance),
}

pub struct ApptainerInstance {
    pub apptainer: PathBuf,
    /// `bubbleID`, as the original named its instances.
    pub name: String,
}

/// How to start the bubble's PID 1.
pub struct Launch<'a> {
    /// `hpk-bubble` itself (it is the entrypoint too).
    pub exe: &'a Path,
    pub init_args: Vec<String>,
    /// Directories bound into an Apptainer instance (shared and state dirs).
    pub binds: Vec<&'a Path>,
    pub log: &'a Path,
}

impl Holder {
    pub fn unshare(launch: &Launch) -> Result<Holder> {
        let mut cmd = Command::new(tools::require("unshare", "util-linux")?);
        cmd.args(unshare_args())
            .arg("--")
            .arg(launch.exe)
            .args(&launch.init_args);
        Ok(Holder::Unshare(Service::spawn(
            "the bubble (unshare)",
            &mut cmd,
            launch.log,
        )?))
    }

    /// `apptainer instance run` of `image`; returns once the instance is started.
    pub fn apptainer(image: &Path, name: String, launch: &Launch) -> Result<Holder> {
        let apptainer = tools::require("apptainer", "apptainer (from apptainer.org)")?;
        let mut cmd = Command::new(&apptainer);
        cmd.args(apptainer_args(image, &name, &launch.binds))
            .args(&launch.init_args);
        let mut run = Service::spawn("apptainer instance run", &mut cmd, launch.log)?;
        let status = run.child.wait()?;
        if !status.success() {
            return Err(run.exit_report(status));
        }
        Ok(Holder::Apptainer(ApptainerInstance { apptainer, name }))
    }

    /// The host PID of the bubble's PID 1, once it runs.
    pub fn init_pid(&mut self) -> Result<Option<i32>> {
        match self {
            Holder::Unshare(unshare) => {
                let pid = unshare.pid();
                let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                    .unwrap_or_default();
                Ok(children
                    .split_whitespace()
                    .next()
                    .and_then(|p| p.parse().ok()))
            }
            Holder::Apptainer(i) => i.pid(),
        }
    }

    /// Why the holder is gone, if it is.
    pub fn gone(&mut self, init: Option<ProcId>) -> Option<anyhow::Error> {
        match self {
            Holder::Unshare(unshare) => unshare.exited().map(|s| unshare.exit_report(s)),
            Holder::Apptainer(i) => init
                .filter(|p| !p.alive())
                .map(|_| anyhow::anyhow!("the Apptainer instance {} ended", i.name)),
        }
    }

    /// Stops PID 1 with SIGTERM (it stops its services in order), then the holder.
    pub fn stop(&mut self, init: Option<ProcId>, grace: Duration) {
        match self {
            Holder::Unshare(unshare) => {
                if let Some(init) = init {
                    child::stop_pid(init.pid, grace, &mut || !init.alive());
                }
                unshare.stop(Duration::from_secs(1));
            }
            Holder::Apptainer(i) => {
                let _ = Command::new(&i.apptainer)
                    .args(["instance", "stop", "--timeout"])
                    .arg(grace.as_secs().max(1).to_string())
                    .arg(&i.name)
                    .status();
            }
        }
    }
}

fn unshare_args() -> [&'static str; 8] {
    [
        "--user",
        "--map-root-user",
        "--net",
        "--mount",
        "--pid",
        "--fork",
        "--mount-proc",
        // PID 1 (and with it the whole PID namespace) dies with unshare.
        "--kill-child",
    ]
}

/// The original's instance: fakeroot, no network (the uplink plugs in), nothing of the
/// host's home or cwd, a writable tmpfs overlay, the shared and state dirs bound in.
fn apptainer_args(image: &Path, name: &str, binds: &[&Path]) -> Vec<String> {
    let mut args: Vec<String> = [
        "instance",
        "run",
        "--fakeroot",
        "--network=none",
        "--pid",
        "--no-home",
        "--no-mount=hostfs,cwd",
        "--writable-tmpfs",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for b in binds {
        args.push("--bind".into());
        args.push(b.display().to_string());
    }
    args.push(image.display().to_string());
    args.push(name.to_owned());
    args
}

impl ApptainerInstance {
    /// The instance's PID from `apptainer instance list --json NAME`.
    fn pid(&self) -> Result<Option<i32>> {
        let out = Command::new(&self.apptainer)
            .args(["instance", "list", "--json", &self.name])
            .output()
            .context("apptainer instance list")?;
        if !out.status.success() {
            bail!(
                "apptainer instance list failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(instance_pid(&out.stdout, &self.name))
    }
}

fn instance_pid(json: &[u8], name: &str) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    v.get("instances")?
        .as_array()?
        .iter()
        .find(|i| i.get("instance").and_then(|n| n.as_str()) == Some(name))?
        .get("pid")?
        .as_i64()
        .map(|p| p as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apptainer_instance_as_the_original_started_it() {
        let args = apptainer_args(
            Path::new("/images/hpk-bubble.sif"),
            "bubble2",
            &[
                Path::new("/home/u/job"),
                Path::new("/tmp/hpk-bubble-1000-7-2"),
            ],
        );
        assert_eq!(
            args.join(" "),
            "instance run --fakeroot --network=none --pid --no-home --no-mount=hostfs,cwd \
             --writable-tmpfs --bind /home/u/job --bind /tmp/hpk-bubble-1000-7-2 \
             /images/hpk-bubble.sif bubble2"
        );
    }

    #[test]
    fn instance_list_json() {
        let json = br#"{"instances":[{"instance":"bubble1","pid":4242,"img":"/x.sif"},{"instance":"bubble2","pid":5151}]}"#;
        assert_eq!(instance_pid(json, "bubble2"), Some(5151));
        assert_eq!(instance_pid(json, "bubble3"), None);
        assert_eq!(instance_pid(b"garbage", "bubble1"), None);
    }
}
