//! Churn under faults: many containers started and stopped by real runc through our hooks,
//! in parallel, every endpoint kind; the same while hpk-netd is SIGKILLed at random
//! moments; etcd killed and restarted while leases renew and a node comes and goes.
//! Afterwards nothing may be left (links, addresses, records, processes, descriptors).
//!
//! `make test` runs short versions; `make soak` runs them long (`HPK_SOAK_CYCLES`,
//! default there 1000) and prints the figures these tests print on stderr.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use testkit::cluster::{Cluster, Site};
use testkit::runc::{bundle, BundleSpec, Container, Runc};
use testkit::*;

const KINDS: [&str; 3] = ["veth", "tap", "socket"];
/// Containers started and stopped at once.
const STREAMS: usize = 4;

fn cycles(short: usize) -> usize {
    std::env::var("HPK_SOAK_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(short)
}

/// A small, seedable generator for fault timings (repeatable from the printed seed).
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        let seed = std::env::var("HPK_SOAK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("soak: seed {seed} (HPK_SOAK_SEED repeats it)");
        Dice(seed | 1)
    }

    /// Milliseconds in `lo..hi`.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo + self.0 % (hi - lo))
    }
}

/// Open descriptors and resident memory of a process.
fn usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    (fds, rss)
}

/// The sleeper bundle of each endpoint kind, pointing at `socket`.
fn bundles(dir: &Path, socket: &Path) -> Vec<PathBuf> {
    KINDS
        .iter()
        .map(|kind| {
            bundle(
                dir,
                &format!("soak-{kind}"),
                &BundleSpec {
                    args: &["sleep", "600"],
                    socket,
                    annotations: &[(hpk_hook::proto::ANNOTATION_ENDPOINT, kind)],
                    rootless: false,
                    no_hooks: false,
                },
            )
        })
        .collect()
}

/// The container's overlay address, as its own namespace shows it on tap0.
fn address_inside(c: &Container) -> Option<Ipv4Addr> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", c.netns().display()))
        .args(["ip", "-4", "-o", "addr", "show", "dev", "tap0"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    cidr.split('/').next()?.parse().ok()
}

/// What the hook says when hpk-netd is away (hooks/src/client.rs): no socket, nothing
/// listening on it, or the connection closed (or timed out) before an answer. Any other
/// refusal is a failure.
const AWAY: [&str; 2] = ["hpk-netd is not running", "hpk-netd did not answer"];

/// What the streams saw.
#[derive(Default)]
struct Tally {
    started: usize,
    refused: usize,
    /// Refusals by the message of [`AWAY`] they carried.
    refused_as: [usize; AWAY.len()],
    /// Addresses of running containers, to catch one handed out twice.
    live: HashMap<Ipv4Addr, String>,
}

/// `per_stream` cycles in each of [`STREAMS`] threads: start a container (the kinds in
/// turn), check it has its network, stop it. A start may be refused (hpk-netd away); a
/// container that runs must have an address no other running container has.
/// Container ids are `TAG-STREAM-N`: runc names cgroups after ids, and tests run at once.
fn churn(
    tag: &str,
    runc: &Runc,
    bundles: &[PathBuf],
    per_stream: usize,
    tally: &Arc<Mutex<Tally>>,
) {
    let streams: Vec<_> = (0..STREAMS)
        .map(|s| {
            let (runc, bundles, tally) = (runc.clone(), bundles.to_vec(), tally.clone());
            let tag = tag.to_owned();
            std::thread::spawn(move || {
                for i in 0..per_stream {
                    let id = format!("{tag}-{s}-{i}");
                    let c = match runc.run(&id, &bundles[(s + i) % bundles.len()]) {
                        Ok(c) => c,
                        Err(e) => {
                            let Some(why) = AWAY.iter().position(|m| e.contains(m)) else {
                                panic!(
                                    "{id} refused for another reason than hpk-netd's absence: {e}"
                                );
                            };
                            let mut t = tally.lock().unwrap();
                            t.refused += 1;
                            t.refused_as[why] += 1;
                            continue;
                        }
                    };
                    let addr = address_inside(&c)
                        .unwrap_or_else(|| panic!("{id} runs without its network"));
                    {
                        let mut t = tally.lock().unwrap();
                        t.started += 1;
                        if let Some(other) = t.live.insert(addr, id.clone()) {
                            panic!("{addr} handed out to {id} while {other} holds it");
                        }
                    }
                    // Held a moment, so that the containers of the streams overlap.
                    std::thread::sleep(Duration::from_millis(20));
                    tally.lock().unwrap().live.remove(&addr);
                    c.stop();
                }
            })
        })
        .collect();
    for s in streams {
        s.join().unwrap();
    }
}

#[test]
fn churn_of_every_endpoint_kind_leaks_nothing() {
    let s = Site::flannel("10.244.3.1/24");
    let bundles = bundles(&s.scratch.0, &s.host.netd().socket);
    let tally = Arc::new(Mutex::new(Tally::default()));
    // One round first: what hpk-netd makes once (threads, the anti-spoofing table) is not a leak.
    churn("churn", &s.host.runc, &bundles, KINDS.len(), &tally);
    let warm = tally.lock().unwrap().started;
    let pid = s.host.netd().proc.child.id();
    let before = usage(pid);
    let n = cycles(60);
    let started = Instant::now();
    // In quarters, hpk-netd's memory sampled after each: growth that goes on is a leak,
    // a step that levels off is the allocator settling.
    let mut rss = Vec::new();
    for _ in 0..4 {
        churn(
            "churn",
            &s.host.runc,
            &bundles,
            n.div_ceil(4 * STREAMS),
            &tally,
        );
        rss.push(usage(pid).1);
    }
    let secs = started.elapsed().as_secs_f64();
    s.host.netd().assert_empty(&s.host.ns, &[]);
    let t = tally.lock().unwrap();
    assert_eq!(t.refused, 0, "starts refused with hpk-netd up");
    let mut after = usage(pid);
    // A descriptor of a connection just closed may take a moment to go.
    let deadline = Instant::now() + Duration::from_secs(5);
    while after.0 > before.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = usage(pid);
    }
    eprintln!(
        "soak churn: {} cycles ({} kinds) in {secs:.1} s ({:.1}/s, {STREAMS} at once); hpk-netd descriptors {} -> {}, RSS {} KiB, after each quarter {rss:?} KiB; left: no endpoint, address, record, bubble link or forwarder",
        t.started - warm,
        KINDS.len(),
        (t.started - warm) as f64 / secs,
        before.0,
        after.0,
        before.1,
    );
    assert!(
        after.0 <= before.0,
        "hpk-netd leaks descriptors: {} before, {} after",
        before.0,
        after.0
    );
    assert!(
        rss[3] <= rss[1] + 2 * 1024,
        "hpk-netd keeps growing: {rss:?} KiB after each quarter"
    );
    assert!(no_daemons_left(&s.host.dir), "forwarders left");
}

/// Whether no hpk-net-daemon of this host's hpk-netd (its state dir in the command line)
/// still runs.
fn no_daemons_left(dir: &Path) -> bool {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .all(|c| !(c.contains("hpk-net-daemon") && c.contains(&needle)))
}

#[test]
fn churn_while_netd_is_killed_at_random_leaks_nothing() {
    let mut s = Site::flannel("10.244.3.1/24");
    let bundles = bundles(&s.scratch.0, &s.host.netd().socket);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let n = cycles(60);
    let mut dice = Dice::new();
    let runc = s.host.runc.clone();
    let (b, t) = (bundles.clone(), tally.clone());
    let started = Instant::now();
    let streams = std::thread::spawn(move || churn("kills", &runc, &b, n.div_ceil(STREAMS), &t));
    let mut kills = 0;
    while !streams.is_finished() {
        std::thread::sleep(dice.ms(100, 900));
        let (code, _) = s.host.netd_mut().proc.stop_with(Signal::SIGKILL);
        assert_eq!(code, None, "hpk-netd had exited by itself");
        kills += 1;
        if kills == 1 {
            // The first outage lasts until a start meets it: refusals surely happen.
            wait_until(
                "a start to be refused while hpk-netd is away",
                Duration::from_secs(30),
                || tally.lock().unwrap().refused > 0 || streams.is_finished(),
            );
        } else {
            std::thread::sleep(dice.ms(0, 300));
        }
        s.host.start_netd(&[]);
    }
    streams.join().unwrap();
    let secs = started.elapsed().as_secs_f64();
    // Endpoints of containers that died while hpk-netd was away go at its next start.
    s.host.netd().assert_empty(&s.host.ns, &[]);
    assert!(no_daemons_left(&s.host.dir), "forwarders left");
    let t = tally.lock().unwrap();
    eprintln!(
        "soak netd kills: {} cycles in {secs:.1} s, hpk-netd SIGKILLed {kills} times; {} containers ran (each with its own address), {} starts refused while it was away ({} \"{}\", {} \"{}\"); left: nothing",
        t.started + t.refused,
        t.started,
        t.refused,
        t.refused_as[0],
        AWAY[0],
        t.refused_as[1],
        AWAY[1],
    );
    assert!(t.started > 0, "no container ever started");
    assert!(
        t.refused > 0,
        "no start met hpk-netd away: the faults tested nothing"
    );
}

/// The refusal the soak counts, one at a time: a start while hpk-netd is away fails with
/// the hook's message (no socket after a clean stop, nothing listening after a kill), and
/// the next start after hpk-netd's return works.
#[test]
fn a_start_while_netd_is_away_is_refused_and_works_once_it_is_back() {
    let mut s = Site::flannel("10.244.3.1/24");
    for (signal, says) in [
        (Signal::SIGTERM, "hpk-netd is not running: no socket at"),
        (
            Signal::SIGKILL,
            "hpk-netd is not running: nothing listens on",
        ),
    ] {
        s.host.netd_mut().proc.stop_with(signal);
        let away = format!("away-{}", signal.as_str().to_lowercase());
        let err = s
            .host
            .runc
            .run(&away, &s.host.bundle)
            .expect_err("a container started with hpk-netd away");
        assert!(err.contains(says), "{away}: {err}");
        assert!(AWAY.iter().any(|m| err.contains(m)), "{err}");
        s.host.start_netd(&[]);
        let back = format!("back-{}", signal.as_str().to_lowercase());
        let c = s
            .host
            .runc
            .run(&back, &s.host.bundle)
            .expect("a start once hpk-netd is back");
        assert_eq!(address_inside(&c), Some(s.host.address_of(&back)));
        c.stop();
        assert_eq!(s.host.netd().wait_detached(&back), "poststop");
    }
    s.host.netd().assert_empty(&s.host.ns, &[]);
}

#[test]
fn etcd_restarts_while_leases_renew_and_a_node_comes_and_goes() {
    let mut cl = Cluster::new(4);
    let ttl = ["--etcd-lease-ttl", "8"];
    for h in 0..3 {
        cl.hosts[h].start_netd_etcd(&cl.etcd, &ttl);
    }
    let subnets: Vec<String> = (0..3).map(|h| cl.hosts[h].subnet()).collect();
    let (c0, _) = cl.hosts[0].container("e0");
    let (_c2, a2) = cl.hosts[2].container("e2");
    let rounds = cycles(60).div_ceil(20);
    let mut dice = Dice::new();
    let mut slowest = Duration::ZERO;
    for round in 0..rounds {
        cl.etcd.kill();
        // The fourth node joins or leaves during the outage or right after it.
        std::thread::sleep(dice.ms(200, 2500));
        let joining = cl.hosts[3].netd.is_none();
        if !joining {
            cl.hosts[3].netd_mut().proc.stop_with(Signal::SIGTERM);
            cl.hosts[3].netd = None;
        }
        cl.etcd.restart();
        // Convergence counts from etcd's return, a joining node's start included.
        let t = Instant::now();
        if joining {
            cl.hosts[3].start_netd_etcd(&cl.etcd, &ttl);
        }
        let mut running: Vec<usize> = vec![0, 1, 2];
        if joining {
            running.push(3);
        }
        wait_until(
            &format!("round {round}: routes to converge"),
            Duration::from_secs(30),
            || {
                let now: Vec<String> = running.iter().map(|&h| cl.hosts[h].subnet()).collect();
                let distinct: std::collections::HashSet<_> = now.iter().collect();
                distinct.len() == now.len()
                    && running.iter().enumerate().all(|(i, &h)| {
                        (0..now.len()).all(|j| i == j || cl.hosts[h].routes_to(&now[j]))
                    })
            },
        );
        slowest = slowest.max(t.elapsed());
        for (h, subnet) in subnets.iter().enumerate() {
            assert_eq!(
                &cl.hosts[h].subnet(),
                subnet,
                "round {round}: h{h} lost its subnet"
            );
        }
        assert!(
            c0.ping(&a2.to_string()),
            "round {round}: traffic between the nodes that stayed"
        );
    }
    eprintln!(
        "soak etcd: {rounds} rounds of etcd SIGKILL + restart with a node joining or leaving; no node lost its subnet, none shared one; routes converged within {:.1} s at worst",
        slowest.as_secs_f64()
    );
}
