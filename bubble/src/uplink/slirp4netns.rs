//! slirp4netns, as the original tool used it: `--configure --mtu=65520`, readiness on a
//! pipe, and each port forward added through its API socket with the answer checked.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{UplinkPlan, TAP, TAP_MTU};
use crate::child::Service;
use crate::host::Forward;

/// The address slirp4netns gives the bubble (`--configure`, default CIDR 10.0.2.0/24).
const GUEST: &str = "10.0.2.100";
const READY_FD: i32 = 3;

pub fn start(plan: &UplinkPlan) -> Result<Service> {
    let api = plan.state_dir.join("slirp4netns.sock");
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut cmd = Command::new(super::require(crate::cli::UplinkKind::Slirp4netns)?);
    cmd.args([
        "--configure",
        &format!("--mtu={TAP_MTU}"),
        "--disable-host-loopback",
        "--api-socket",
    ])
    .arg(&api)
    .args(["--ready-fd", &READY_FD.to_string()])
    .args([plan.pid.to_string().as_str(), TAP]);
    let w = ready_w.as_raw_fd();
    // SAFETY: dup2 and umask are async-signal-safe; dup2 also clears close-on-exec on the
    // copy. The umask makes the API socket slirp4netns creates its owner's alone.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(0o077);
            if libc::dup2(w, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut slirp = Service::spawn("slirp4netns", &mut cmd, plan.log)?;
    drop(ready_w);
    if let Err(e) = wait_ready(ready_r, &mut slirp) {
        slirp.stop(Duration::from_secs(1));
        return Err(e);
    }
    for f in plan.forwards {
        if let Err(e) = add_hostfwd(&api, plan.host_ip.to_string(), f) {
            slirp.stop(Duration::from_secs(1));
            return Err(e);
        }
    }
    Ok(slirp)
}

/// slirp4netns writes "1" to the ready fd once tap0 is configured; EOF means it died.
fn wait_ready(ready: OwnedFd, slirp: &mut Service) -> Result<()> {
    let mut file = std::fs::File::from(ready);
    let readable =
        hpk_netd::sys::poll::readable(&[file.as_raw_fd()], 30_000).context("poll slirp4netns")?;
    let mut byte = [0u8; 1];
    let n = if readable { file.read(&mut byte)? } else { 0 };
    if n == 1 {
        return Ok(());
    }
    match slirp.exited() {
        Some(status) => Err(slirp.exit_report(status)),
        None => bail!(
            "slirp4netns did not become ready in 30s; its log: {}",
            slirp.log.display()
        ),
    }
}

fn add_hostfwd(api: &Path, host_addr: String, f: &Forward) -> Result<()> {
    let request = json!({
        "execute": "add_hostfwd",
        "arguments": {
            "proto": f.proto.to_string(),
            "host_addr": host_addr,
            "host_port": f.port,
            "guest_addr": GUEST,
            "guest_port": f.port,
        }
    });
    let answer = call(api, &request)
        .with_context(|| format!("slirp4netns API {}: add_hostfwd", api.display()))?;
    check_answer(&answer).with_context(|| {
        format!(
            "slirp4netns could not forward {} port {} on {host_addr}; {}",
            f.proto, f.port, f.purpose
        )
    })
}

fn call(api: &Path, request: &Value) -> Result<Value> {
    let mut conn = UnixStream::connect(api)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(request.to_string().as_bytes())?;
    conn.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    serde_json::from_str(&answer).with_context(|| format!("unexpected answer {answer:?}"))
}

/// `{"return": {...}}` is success; `{"error": {"desc": ...}}` says why not.
fn check_answer(answer: &Value) -> Result<()> {
    if answer.get("return").is_some() {
        return Ok(());
    }
    let why = answer
        .pointer("/error/desc")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| answer.to_string());
    bail!("{why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_answers() {
        assert!(check_answer(&json!({"return": {"id": 1}})).is_ok());
        let err = check_answer(
            &json!({"error": {"desc": "bad request: add_hostfwd: cannot expose port"}}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot expose port"));
        assert!(check_answer(&json!({})).is_err());
    }
}
