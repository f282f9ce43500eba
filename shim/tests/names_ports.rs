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

#[test]
fn published_ports_are_reachable_listed_and_released() {
    let env = Env::new("10.244.42.1/24");
    let r = env.rootfs();
    std::fs::create_dir_all(std::path::Path::new(r).join("srv")).unwrap();
    std::fs::write(
        std::path::Path::new(r).join("srv/index.html"),
        "published\n",
    )
    .unwrap();
    env.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "18090:8080",
        r,
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/srv",
    ]);
    let ps = env.ok(&["ps"]);
    assert!(ps.contains("0.0.0.0:18090->8080/tcp"), "{ps}");
    assert_eq!(env.ok(&["port", "web"]).trim(), "8080/tcp -> 0.0.0.0:18090");
    // From the outside of the bubble: the world's router, on the LAN.
    let url = format!("http://{}:18090/index.html", env.host);
    let page = env
        .world
        .lan
        .cmd("busybox")
        .args(["wget", "-q", "-O", "-", &url])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&page.stdout),
        "published\n",
        "{}",
        stderr(&page)
    );

    // A taken host port, a privileged one, a port twice: refused, nothing left.
    for (args, why) in [
        (
            vec!["-p", "18090:80"],
            "host port 0.0.0.0:18090/tcp is in use",
        ),
        (vec!["-p", "80:80"], "host port 80 is below 1024"),
        (
            vec!["-p", "18091:80", "-p", "18091:81"],
            "both publish host port 18091/tcp",
        ),
        (
            vec!["-p", "18092:80", "--network", "none"],
            "-p and --network none",
        ),
    ] {
        let mut full = vec!["run"];
        full.extend(args);
        full.extend([r, "true"]);
        let out = env.out(&full);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(why), "{full:?}: {}", stderr(&out));
    }
    let out = env.out(&["port", "nosuch"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no running container named nosuch"),
        "{}",
        stderr(&out)
    );

    env.ok(&["rm", "--force", "web"]);
    assert!(env.netd.status().published.is_empty());
    env.assert_clean();
}
