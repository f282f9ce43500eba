//! hpk-netd's control protocol over its real socket: every request carries the protocol's
//! version (a client of another release is told what to do and changes nothing), and real
//! failures are answered with their codes. Needs root: each test builds its own namespace.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hpk_hook::client::{Client, ClientError};
use hpk_hook::proto::{AttachRequest, ControlError, ErrorCode, Response};
use testkit::netd::{subnet_env, Netd};
use testkit::*;

/// A bubble with hpk-netd on a subnet of its own (names served, this bubble's only).
fn bubble() -> (Scratch, Netns, Netd) {
    let p = prefix();
    let scratch = Scratch::new(&p);
    let ns = Netns::new(format!("{p}-b"));
    std::fs::write(
        scratch.0.join("subnet.env"),
        subnet_env("10.244.7.1/24", 1450, false),
    )
    .unwrap();
    let netd = Netd::start(&ns, &scratch.0, &[]);
    (scratch, ns, netd)
}

/// A process in a network namespace of its own: what hpk-netd attaches, without a runtime.
fn sleeper() -> Proc {
    let mut cmd = Command::new("sleep");
    cmd.arg("600");
    // SAFETY: unshare(2) is async-signal-safe, and nothing else runs before the exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    Proc::spawn("a sleeper in its own netns", &mut cmd)
}

fn request(id: &str, pid: i32, name: Option<&str>) -> AttachRequest {
    AttachRequest {
        id: id.into(),
        pid,
        address: None,
        endpoint: None,
        name: name.map(Into::into),
        ports: Vec::new(),
    }
}

/// Sends `line` as it is (a client of any release) and returns hpk-netd's answer line.
fn send_raw(socket: &Path, line: &str) -> String {
    let mut c = UnixStream::connect(socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    answer
}

fn error_of(answer: &str) -> ControlError {
    match serde_json::from_str(answer) {
        Ok(Response::Error(e)) => e,
        other => panic!("not an error: {other:?} ({answer})"),
    }
}

fn refusal<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ControlError {
    match result {
        Err(ClientError::Refused(e)) => e,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_request_of_another_version_is_refused_with_the_remedy_and_changes_nothing() {
    let (_s, ns, netd) = bubble();
    let c = sleeper();
    let links_before = ns.links();
    let attach = serde_json::json!({"op": "attach", "id": "c1", "pid": c.pid(), "name": "web"});
    let remedy = "hpk-netd speaks 1: use the hpk-hook/hpktainer of the same release";
    let mut later = attach.clone();
    later["version"] = 2.into();
    for (line, speaks) in [
        // A client of a release before versions.
        (
            attach.to_string(),
            "protocol 0 (no version: an older release)",
        ),
        (later.to_string(), "protocol 2"),
    ] {
        let answer = send_raw(&netd.socket, &line);
        let e = error_of(&answer);
        assert_eq!(e.code, ErrorCode::BadRequest, "{answer}");
        assert_eq!(e.message, format!("this client speaks {speaks}, {remedy}"));
        // A client of a release before codes reads it as the error it knows.
        let old: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(old["result"], "error");
        assert_eq!(old["message"], e.message.as_str());
    }
    // Nothing was attached, allocated, named or built.
    let status = netd.status();
    assert!(status.endpoints.is_empty(), "{:?}", status.endpoints);
    assert_eq!(status.addresses_in_use, 0);
    assert!(status.names.unwrap().records.is_empty());
    assert_eq!(ns.links(), links_before);
    // This release's client, same request: served.
    let client = Client::new(&netd.socket);
    let att = client.attach(request("c1", c.pid(), Some("web"))).unwrap();
    assert_eq!(att.id, "c1");
    assert!(client.detach("c1").unwrap());
    netd.assert_empty(&ns, &[]);
}

#[test]
fn real_failures_are_answered_with_their_codes() {
    let (_s, ns, netd) = bubble();
    let client = Client::new(&netd.socket);
    let (first, second) = (sleeper(), sleeper());
    let held = client
        .attach(request("web-1", first.pid(), Some("web")))
        .unwrap();

    // A name another container has: conflict, before anything is built.
    let e = refusal(client.attach(request("web-2", second.pid(), Some("web"))));
    assert_eq!(e.code, ErrorCode::Conflict, "{e}");
    assert!(
        e.message
            .contains("name web is taken: container web-1 at 10.244.7."),
        "{e}"
    );
    // An address another container has, an id attached to another process: conflict.
    let e = refusal(client.attach(AttachRequest {
        address: Some(held.address),
        ..request("web-2", second.pid(), None)
    }));
    assert_eq!(e.code, ErrorCode::Conflict, "{e}");
    assert_eq!(
        e.message,
        format!("address {} is in use by web-1", held.address)
    );
    let e = refusal(client.attach(request("web-1", second.pid(), None)));
    assert_eq!(e.code, ErrorCode::Conflict, "{e}");
    assert!(e.message.contains("is already attached"), "{e}");

    // A detach of an unknown id: not_found, which the client takes as done.
    let answer = send_raw(
        &netd.socket,
        r#"{"version":1,"op":"detach","id":"never-attached"}"#,
    );
    assert_eq!(
        error_of(&answer),
        ControlError::new(
            ErrorCode::NotFound,
            "container never-attached is not attached to this bubble"
        )
    );
    assert!(!client.detach("never-attached").unwrap());
    // A container whose process is gone: not_found.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id() as i32;
    gone.wait().unwrap();
    let e = refusal(client.attach(request("gone", gone_pid, None)));
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
    assert!(e.message.contains("is gone"), "{e}");

    // Bad input: bad_request, the message as before.
    let e = refusal(client.attach(request("../etc", second.pid(), None)));
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
    assert!(e.message.starts_with("invalid container id"), "{e}");
    let e = refusal(client.attach(AttachRequest {
        address: Some(Ipv4Addr::new(10, 244, 8, 9)),
        ..request("web-2", second.pid(), None)
    }));
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
    assert!(e.message.contains("is not a container address"), "{e}");
    let e = refusal(client.attach(request("web-2", second.pid(), Some("my_web"))));
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
    assert!(e.message.contains("cannot be a DNS name"), "{e}");

    // None of it left anything: web-1 alone, with its name.
    let status = netd.status();
    let ids: Vec<_> = status.endpoints.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["web-1"]);
    assert_eq!(status.addresses_in_use, 1);
    let names: Vec<_> = status.names.unwrap().records;
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(client.detach("web-1").unwrap());
    netd.assert_empty(&ns, &[]);
}
