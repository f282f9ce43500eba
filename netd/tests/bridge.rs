//! The bubble's bridge keeps one MAC while containers come and go: its containers' ARP
//! entries for the gateway stay right.

use testkit::cluster::Site;

#[test]
fn the_bridges_mac_stays_while_ports_come_and_go() {
    let s = Site::flannel("10.244.7.1/24");
    let mac = || {
        s.host.ns.link_json("hpk-bridge").expect("hpk-bridge")["address"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        mac(),
        "0a:58:0a:f4:07:01",
        "derived from the gateway's address"
    );
    let c1 = s
        .host
        .runc
        .run("brmac1", &s.host.bundle)
        .expect("c1 starts");
    // A port whose MAC is below every other: a bridge whose MAC was never set takes it.
    let port = s.host.netd().status().endpoints[0].bubble_tap.clone();
    let out = s
        .host
        .ns
        .ip(&["link", "set", "dev", &port, "address", "02:00:00:00:00:01"]);
    assert!(out.status.success(), "{out:?}");
    let c2 = s
        .host
        .runc
        .run("brmac2", &s.host.bundle)
        .expect("c2 starts");
    assert_eq!(mac(), "0a:58:0a:f4:07:01");
    c2.stop();
    assert_eq!(mac(), "0a:58:0a:f4:07:01");
    assert!(
        c1.ping("10.244.7.1"),
        "the gateway answers at the MAC c1 knows"
    );
    // The gateway's MAC as the container has it.
    let neigh = String::from_utf8_lossy(&c1.exec(&["ip", "neigh", "show", "10.244.7.1"]).stdout)
        .into_owned();
    assert!(neigh.contains("0a:58:0a:f4:07:01"), "{neigh}");
}
