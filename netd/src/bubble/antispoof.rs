//! Per-endpoint anti-spoofing on the bubble's bridge, in nftables' bridge family: frames
//! entering the bridge from a container's port must carry that container's MAC (derived
//! from its address) and, for IPv4 and ARP, its address. A container cannot take over a
//! neighbour's address or MAC (the bridge would otherwise learn it on the wrong port).
//!
//! One table `bridge hpk`: a prerouting chain dispatching on the input port through a
//! verdict map, and a chain per endpoint named after its port.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tracing::warn;

const TABLE: &str = "bridge hpk";

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The table, empty: made afresh at start-up (endpoints adopted then are guarded again).
pub fn reset_script() -> String {
    format!(
        "add table {TABLE}\ndelete table {TABLE}\nadd table {TABLE}\n\
         add chain {TABLE} prerouting {{ type filter hook prerouting priority -300; policy accept; }}\n\
         add map {TABLE} ports {{ type ifname : verdict; }}\n\
         add rule {TABLE} prerouting iifname vmap @ports\n"
    )
}

/// The rules of the endpoint on `port` (replacing any it had).
pub fn guard_script(port: &str, container_mac: [u8; 6], address: Ipv4Addr) -> String {
    let m = mac(container_mac);
    format!(
        "add chain {TABLE} {port}\nflush chain {TABLE} {port}\n\
         add rule {TABLE} {port} ether saddr != {m} counter drop\n\
         add rule {TABLE} {port} ether type arp arp saddr ether != {m} counter drop\n\
         add rule {TABLE} {port} ether type arp arp saddr ip != {address} counter drop\n\
         add rule {TABLE} {port} ether type ip ip saddr != {address} counter drop\n\
         add rule {TABLE} {port} ether type ip6 counter drop\n\
         add element {TABLE} ports {{ \"{port}\" : jump {port} }}\n"
    )
}

/// Removes the endpoint's rules (its map entry first, then its chain).
pub fn unguard_script(port: &str) -> String {
    format!("delete element {TABLE} ports {{ \"{port}\" }}\ndelete chain {TABLE} {port}\n")
}

/// nft with `args`, its input and errors piped to us.
fn spawn_nft(args: &[&str], stdout: Stdio) -> Result<Child> {
    Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft (install nftables; without it set antispoof = false)")
}

/// Runs an nft script atomically (all of it or none).
pub fn run(script: &str) -> Result<()> {
    run_nft(script, "the anti-spoofing rules")
}

/// Runs an nft script atomically; `what` names the rules in the error.
pub fn run_nft(script: &str, what: &str) -> Result<()> {
    let mut child = spawn_nft(&["-f", "-"], Stdio::null())?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .context("cannot talk to nft")?;
    let out = child.wait_with_output().context("nft")?;
    if !out.status.success() {
        bail!(
            "nft refused {what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Applies scripts through one `nft -i` kept for the daemon's life: a script then costs
/// a write and a read (about 0.4 ms here) instead of starting nft (about 6 ms, most of it
/// loading its view of the ruleset), which was most of an attach. Each script goes as one
/// line, which nft applies as one transaction; a `describe` after it (no kernel state)
/// marks where nft's answer ends. A session that breaks is dropped and the script run by
/// a fresh `nft -f -`; the next script starts a new session.
#[derive(Default)]
pub struct Nft {
    session: Mutex<Option<Session>>,
}

/// What `describe ct mark` prints, first words.
const MARKER: &str = "ct expression, datatype mark";
/// Longest wait for nft's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: ChildStderr,
}

impl Nft {
    pub fn run(&self, script: &str) -> Result<()> {
        let mut session = self.session.lock().unwrap();
        if session.is_none() {
            match Session::start() {
                Ok(s) => *session = Some(s),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "no nft session; running nft once per change");
                    return run(script);
                }
            }
        }
        let s = session.as_mut().expect("just set");
        match s.apply(script) {
            Ok(errors) if errors.is_empty() => Ok(()),
            Ok(errors) => bail!("nft refused the anti-spoofing rules: {}", errors.trim()),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "the nft session broke; starting another");
                *session = None;
                run(script)
            }
        }
    }
}

impl Session {
    fn start() -> Result<Session> {
        let mut child = spawn_nft(&["-i"], Stdio::piped())?;
        let (stdin, stdout, stderr) = (
            child.stdin.take().expect("piped"),
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        nonblocking(&stdout)?;
        nonblocking(&stderr)?;
        Ok(Session {
            child,
            stdin,
            stdout,
            stderr,
        })
    }

    /// Sends `script` as one transaction; returns what nft printed on stderr (its errors).
    fn apply(&mut self, script: &str) -> Result<String> {
        let line = script
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        self.stdin
            .write_all(format!("{line}\ndescribe ct mark\n").as_bytes())
            .context("cannot write to nft")?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + ANSWER_WAIT;
        while !String::from_utf8_lossy(&out).contains(MARKER) || !out.ends_with(b"\n") {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(anyhow!("nft did not answer in {ANSWER_WAIT:?}"));
            }
            crate::sys::poll::readable(
                &[self.stdout.as_raw_fd(), self.stderr.as_raw_fd()],
                left.as_millis() as i32,
            )?;
            drain(&mut self.stdout, &mut out)?;
            drain(&mut self.stderr, &mut err)?;
        }
        // nft writes an error before it reads the next line: it is in the pipe by now.
        drain(&mut self.stderr, &mut err)?;
        Ok(String::from_utf8_lossy(&err).into_owned())
    }
}

fn nonblocking(fd: &impl std::os::fd::AsFd) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Reads what `pipe` holds now; an error when nft has gone.
fn drain(pipe: &mut impl Read, into: &mut Vec<u8>) -> Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => bail!("nft exited"),
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading nft's answer"),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> String {
        let out = Command::new("nft")
            .args(["list", "table", "bridge", "hpk"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// In a network namespace of the test's own (a thread's, which nft inherits).
    #[test]
    fn a_session_applies_whole_scripts_reports_refusals_and_outlives_nft() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            run(&reset_script()).unwrap();
            let nft = Nft::default();
            let (mac, ip) = ([0x0a, 0x58, 10, 244, 3, 2], Ipv4Addr::new(10, 244, 3, 2));
            nft.run(&guard_script("hpkport1", mac, ip)).unwrap();
            assert!(table().contains("chain hpkport1"), "{}", table());
            // A script with a bad command is refused whole, with nft's reason.
            let err = nft
                .run("add chain bridge hpk x\nadd rule bridge hpk nochain drop\n")
                .unwrap_err();
            assert!(
                format!("{err:#}").contains("No such file or directory"),
                "{err:#}"
            );
            assert!(!table().contains("chain x"), "{}", table());
            // nft killed behind the session's back: the change still lands, and the next
            // one goes through a new session.
            let first = {
                let mut s = nft.session.lock().unwrap();
                let child = &mut s.as_mut().unwrap().child;
                child.kill().unwrap();
                child.id()
            };
            nft.run(&unguard_script("hpkport1")).unwrap();
            assert!(!table().contains("hpkport1"), "{}", table());
            nft.run(&guard_script("hpkport2", mac, ip)).unwrap();
            assert!(table().contains("chain hpkport2"), "{}", table());
            let second = nft.session.lock().unwrap().as_ref().unwrap().child.id();
            assert_ne!(first, second);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn an_endpoint_may_send_only_as_itself() {
        let s = guard_script(
            "hpk0123456789ab",
            [0x0a, 0x58, 10, 244, 3, 2],
            Ipv4Addr::new(10, 244, 3, 2),
        );
        assert!(
            s.contains("ether saddr != 0a:58:0a:f4:03:02 counter drop"),
            "{s}"
        );
        assert!(s.contains("arp saddr ip != 10.244.3.2 counter drop"), "{s}");
        assert!(s.contains("ip saddr != 10.244.3.2 counter drop"), "{s}");
        assert!(s.ends_with(
            "add element bridge hpk ports { \"hpk0123456789ab\" : jump hpk0123456789ab }\n"
        ));
        assert_eq!(
            unguard_script("hpkx"),
            "delete element bridge hpk ports { \"hpkx\" }\ndelete chain bridge hpk hpkx\n"
        );
    }
}
