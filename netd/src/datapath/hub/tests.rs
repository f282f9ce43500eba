//! The hub served in-process: its slots, its answers, its exit.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{
    bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};

use super::pairs::Hub;
use super::token::{Token, ROLE_EXIT};
use super::{receive_message, send_message, serve, HubReply, HubRequest};
use crate::sys::process::start_time;
use crate::sys::tap::{Tap, TapOptions};

fn call(path: &std::path::Path, request: &[u8], fds: &[RawFd]) -> HubReply {
    let conn = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    connect(conn.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    send_message(conn.as_fd(), request, fds).unwrap();
    let (answer, _) = receive_message(conn.as_fd()).unwrap();
    serde_json::from_slice(&answer).unwrap()
}

/// A slot freed and taken again within one batch of events: the old pair's exit,
/// handled after, leaves the new pair alone; the new pair's own exit removes it.
#[test]
fn an_old_pairs_exit_leaves_the_next_pair_in_its_slot_alone() {
    std::thread::spawn(|| {
        // Taps of the test's own, in a namespace of its own.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let (control, _) = nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let mut hub = Hub::new(control).unwrap();
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        let taps = |name: &str| -> Vec<OwnedFd> {
            let opts = TapOptions { vnet_hdr: false };
            [format!("{name}c"), format!("{name}b")]
                .iter()
                .map(|n| Tap::create(n, opts).unwrap().into())
                .collect()
        };
        let (mut buf, mut answer_buf) = (vec![0u8; 2048], vec![0u8; 2048]);
        hub.add("old".into(), me, start, None, taps("hgold"))
            .unwrap();
        assert!(hub.remove("old"));
        hub.add("new".into(), me, start, None, taps("hgnew"))
            .unwrap();
        let exit = |generation| Token {
            slot: 0,
            generation,
            role: ROLE_EXIT,
        };
        hub.forward(exit(0), &mut buf, &mut answer_buf);
        assert!(
            hub.by_id.contains_key("new"),
            "the old pair's exit removed the new one"
        );
        hub.forward(exit(1), &mut buf, &mut answer_buf);
        assert!(
            hub.by_id.is_empty(),
            "the new pair's exit did not remove it"
        );
    })
    .join()
    .unwrap();
}

/// Bad requests get an answer that says what is wrong, and the hub serves on; a hub
/// that never got an endpoint exits after its linger all the same.
#[test]
fn bad_requests_are_answered_and_leave_the_hub_serving() {
    let dir = std::env::temp_dir().join(format!("hpk-hub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hub.sock");
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(listener.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
    listen(&listener, Backlog::new(8).unwrap()).unwrap();
    let (exited, hub_exit) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited.send(serve(listener, Duration::ZERO, Duration::from_secs(2)));
    });

    let error = |reply: HubReply| match reply {
        HubReply::Error { message } => message,
        other => panic!("accepted: {other:?}"),
    };
    assert!(error(call(&path, b"{\"op\":\"fly\"}", &[])).contains("not a hub request"));
    assert!(error(call(&path, b"\xff\x00", &[])).contains("not a hub request"));
    let add = |pid: i32| {
        serde_json::to_vec(&HubRequest::Add {
            id: "c1".into(),
            pid,
            start: start_time(pid).unwrap_or(0),
            identity: None,
        })
        .unwrap()
    };
    let me = std::process::id() as i32;
    assert!(error(call(&path, &add(me), &[])).contains("needs two tap fds, got 0"));
    let (r, w) = nix::unistd::pipe().unwrap();
    let message = error(call(&path, &add(me), &[r.as_raw_fd(), w.as_raw_fd()]));
    assert!(message.contains("container-side fd"), "{message}");
    assert_eq!(
        call(&path, br#"{"op":"remove","id":"nobody"}"#, &[]),
        HubReply::Done
    );
    assert_eq!(
        call(&path, br#"{"op":"list"}"#, &[]),
        HubReply::Ids { ids: vec![] }
    );
    let exit = hub_exit.recv_timeout(Duration::from_secs(30));
    assert!(
        matches!(exit, Ok(Ok(()))),
        "a hub without endpoints stays: {exit:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
