//! A soak across three bubbles: a container in bubble 1 pings one in bubble 3 every
//! 100 ms and fetches a file from it over TCP again and again, while containers start and
//! stop in every bubble, etcd is SIGKILLed (its bubble restarts it) and bubble 2's
//! launcher is SIGKILLed twice and started again in place, as `hpk.slurm` does. It
//! reports the pings lost (and when), the transfers and starts that failed, hpk-netd's
//! memory and descriptors per bubble after each round, and what is left after SIGTERM.
//!
//! `make test` runs the short version (two rounds); `HPK_BUBBLE_SOAK_SECS=1800` makes it
//! run rounds for that long, etcd killed every two minutes and bubble 2 at a third and at
//! two thirds of the time.

mod inplace;
mod support;

use std::time::{Duration, Instant};

use inplace::*;
use nix::sys::signal::Signal;
use support::*;
use testkit::wait_until;

/// hpk-netd of the bubble on `host_ip`: (RSS in KiB, open descriptors).
fn netd_usage(c: &Cluster, host_ip: &str) -> Option<(u64, usize)> {
    let pid: i32 = c
        .bubble_processes()
        .iter()
        .find(|p| p.contains("hpk-netd run") && p.contains(&format!("--public-ip {host_ip} ")))?
        .split(':')
        .next()?
        .parse()
        .ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

fn etcd_pid(c: &Cluster) -> Option<i32> {
    c.bubble_processes()
        .iter()
        .find(|p| p.contains("etcd --name"))?
        .split(':')
        .next()?
        .parse()
        .ok()
}

/// Sequence numbers as runs: "12-19, 40".
fn runs(seqs: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let mut j = i;
        while j + 1 < seqs.len() && seqs[j + 1] == seqs[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            seqs[i].to_string()
        } else {
            format!("{}-{}", seqs[i], seqs[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

#[test]
fn three_bubbles_under_churn_and_kills() {
    let secs: u64 = std::env::var("HPK_BUBBLE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut c = cluster(3);
    let rootfs = c.rootfs.to_str().unwrap().to_owned();
    let a3 = c.container(3, "web", &["httpd", "-f", "-p", "8080", "-h", "/"]);
    let pinger = Pinger::named(&c, "pinger", 1, a3);
    // Transfers of busybox from bubble 3, two a second (paced so as not to fill the
    // VTEPs' queues, where a ping could be dropped for load, not for a fault); each says
    // how it went.
    c.shell_ok(
        1,
        &[
            "hpktainer",
            "run",
            "-d",
            "--name",
            "stream",
            &rootfs,
            "sh",
            "-c",
            &format!(
                "while true; do if wget -q -O /dev/null http://{a3}:8080/bin/busybox; \
                 then echo ok; else echo failed; fi; sleep 0.5; done"
            ),
        ],
    );
    let transfers = |c: &Cluster| {
        let log = c.shell_ok(1, &["hpktainer", "logs", "stream"]);
        (
            log.lines().filter(|l| *l == "ok").count(),
            log.lines().filter(|l| *l == "failed").count(),
        )
    };
    wait_until("the first transfer", Duration::from_secs(30), || {
        transfers(&c).0 > 0
    });

    let start = Instant::now();
    let deadline = Duration::from_secs(secs);
    let (mut round, mut started, mut failed_starts, mut etcd_kills, mut bubble_kills) =
        (0u32, 0u32, Vec::new(), 0u32, 0u32);
    let mut samples = Vec::new();
    let mut last_etcd_kill = Instant::now();
    let mut last_sample = Instant::now();
    loop {
        round += 1;
        // Churn: a container started, checked for its address and removed, in each bubble.
        for id in 1..=3u32 {
            let name = format!("churn-{round}-{id}");
            let out = c.shell(
                id,
                &[
                    "hpktainer",
                    "run",
                    "--name",
                    &name,
                    &rootfs,
                    "ip",
                    "-4",
                    "addr",
                    "show",
                    "tap0",
                ],
            );
            started += 1;
            if !out.status.success() || !stdout(&out).contains("inet 10.244.") {
                failed_starts.push(format!("round {round} bubble {id}: {}", stderr(&out)));
            }
        }
        let elapsed = start.elapsed();
        let third = deadline / 3;
        // Short: in round 1; long: every two minutes (PID 1 restarts it five times a
        // minute at most).
        let etcd_due = if secs == 0 {
            round == 1
        } else {
            last_etcd_kill.elapsed() >= Duration::from_secs(120)
        };
        if etcd_due {
            last_etcd_kill = Instant::now();
            let old = etcd_pid(&c).expect("etcd runs");
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), Signal::SIGKILL).unwrap();
            wait_until("etcd restarted", Duration::from_secs(30), || {
                etcd_pid(&c).is_some_and(|p| p != old)
            });
            etcd_kills += 1;
        }
        // Short: rounds 1 and 2; long: at a third and two thirds of the time.
        let kill_now = bubble_kills < 2 && (secs == 0 || elapsed >= third * (bubble_kills + 1));
        if kill_now {
            let before = record(&c, 2);
            c.launcher(2).stop_with(Signal::SIGKILL);
            c.launch_with(1, 2, "node", &[], &[NAMES_TTL]);
            wait_restarted(&mut c, 2, &before);
            bubble_kills += 1;
        }
        let done = bubble_kills >= 2 && start.elapsed() >= deadline;
        // A sample a minute (each round of the short version, and the last).
        if secs == 0 || done || last_sample.elapsed() >= Duration::from_secs(60) {
            last_sample = Instant::now();
            let usage: Vec<_> = (1..=3)
                .map(|id| netd_usage(&c, &format!("192.0.2.1{id}")))
                .collect();
            eprintln!(
                "soak: round {round} at {:.0} s: hpk-netd (RSS KiB, fds) per bubble {usage:?}",
                start.elapsed().as_secs_f64()
            );
            samples.push(usage);
        }
        if done {
            break;
        }
    }
    let (ok, failed) = transfers(&c);
    c.shell_ok(1, &["hpktainer", "rm", "--force", "stream"]);
    // The echoes came back (finish waits for them).
    let (sent, lost) = pinger.finish(&c, 10);
    eprintln!(
        "soak: {round} rounds in {:.0} s; {started} starts, {} failed; etcd SIGKILLed {etcd_kills} times, \
         bubble 2's launcher {bubble_kills} times; pings {sent} sent, lost {} (seq, 10 a second: {}); \
         transfers {ok} ok, {failed} failed",
        start.elapsed().as_secs_f64(),
        failed_starts.len(),
        lost.len(),
        runs(&lost)
    );

    // Bubbles 1 and 3 were never touched: nothing between them may be lost.
    assert!(
        lost.is_empty(),
        "pings lost between bubbles 1 and 3: {}",
        runs(&lost)
    );
    assert_eq!(failed, 0, "transfers between bubbles 1 and 3 failed");

    for id in [3, 2, 1] {
        let (code, err) = c.stop_launcher(id, Signal::SIGTERM);
        assert_eq!(code, Some(0), "bubble {id}: {err}");
    }
    let left = c.bubble_processes();
    eprintln!("soak: left after SIGTERM: {left:?}");
    assert_eq!(left, Vec::<String>::new());
    for id in 1..=3 {
        assert!(!c.state_dir(id).exists(), "bubble {id}'s state dir");
        assert!(!c.shared.join(format!("bubble-{id}.json")).exists());
    }
    assert!(!c.shared.join("pki").exists());
    assert_eq!(failed_starts, Vec::<String>::new());
    // Transfers that failed are reported with the pings: the same outages end them.
    assert!(ok > 0, "no transfer went through ({failed} failed)");
    assert!(samples.iter().flatten().all(|s| s.is_some()), "{samples:?}");
}
