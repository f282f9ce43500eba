//! The user's churn: `hpktainer run --rm` over and over, runc and crun in turn, two at
//! once, each container showing its overlay address on tap0; afterwards nothing is left
//! and hpk-netd holds no more descriptors than before. `make soak` makes it long
//! (`HPK_SOAK_CYCLES`).

mod support;

use std::time::Instant;

use support::*;

#[test]
fn run_rm_over_and_over_leaves_nothing() {
    let env = Env::new("10.244.7.1/24");
    let cycles: usize = std::env::var("HPK_SOAK_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", env.netd.proc.pid()))
            .unwrap()
            .count()
    };
    let r = env.rootfs().to_owned();
    // One run first: what hpk-netd keeps open after its first attach is not a leak.
    env.ok(&["run", "--rm", &r, "true"]);
    let before = fds();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for stream in 0..2 {
            let (env, r) = (&env, &r);
            scope.spawn(move || {
                for i in 0..cycles.div_ceil(2) {
                    let rt = ["runc", "crun"][(stream + i) % 2];
                    let args = ["run", "--rm", "--runtime", rt, r];
                    let out =
                        env.ok(&[&args[..], &["ip", "-4", "-o", "addr", "show", "tap0"]].concat());
                    assert!(out.contains("inet 10.244.7."), "{rt}, cycle {i}: {out}");
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    env.assert_clean();
    let after = fds();
    eprintln!(
        "soak hpktainer run --rm: {} runs (runc and crun, 2 at once) in {secs:.1} s; hpk-netd descriptors {before} -> {after}; left: nothing",
        2 * cycles.div_ceil(2)
    );
    assert!(
        after <= before,
        "hpk-netd leaks descriptors: {before} -> {after}"
    );
}
