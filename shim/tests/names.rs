//! `hpktainer run --name`: the bubble's DNS serves the name to every container, whose
//! resolv.conf points at it; names that are no DNS label are refused before anything
//! starts.

mod support;

use support::{stderr, Env};

#[test]
fn containers_find_each_other_by_name() {
    let env = Env::new("10.244.41.1/24");
    let r = env.rootfs();
    // A plain directory as root: the file must exist for a bind mount onto it (an image's
    // root on an overlay gets one made).
    std::fs::write(std::path::Path::new(r).join("etc/resolv.conf"), "").unwrap();
    env.ok(&["run", "-d", "--name", "web", r, "sleep", "600"]);
    let web = env.address_of("web");
    let out = env.ok(&[
        "run",
        "--rm",
        r,
        "sh",
        "-c",
        "cat /etc/resolv.conf; nslookup web; ping -c 1 -W 2 web",
    ]);
    assert!(out.contains("search hpk.internal"), "{out}");
    assert!(out.contains("nameserver 10.244.41.1"), "{out}");
    assert!(out.contains(&format!("Address: {web}")), "{out}");
    assert!(out.contains(&format!("bytes from {web}")), "{out}");
    // Without hpk networking there is no name to serve: the bubble's resolv.conf.
    let out = env.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        r,
        "cat",
        "/etc/resolv.conf",
    ]);
    assert!(!out.contains("nameserver 10.244.41.1"), "{out}");

    // Names that DNS cannot carry are refused with the reason, and leave nothing.
    for (bad, why) in [
        ("my_db", "'_' is not allowed"),
        ("db.1", "'.' is not allowed"),
    ] {
        let out = env.out(&["run", "--name", bad, r, "true"]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains(&format!(
                "--name: container name \"{bad}\" cannot be a DNS name: {why}"
            )),
            "{}",
            stderr(&out)
        );
    }
    env.ok(&["rm", "--force", "web"]);
    let status = env.netd.status().names.expect("hpk-netd serves names");
    assert!(
        status.records.iter().all(|n| n.name != "web"),
        "{:?}",
        status.records
    );
    env.assert_clean();
}
