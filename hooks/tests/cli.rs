//! The hook binary's command line, without hpk-netd.

use std::io::Write;
use std::process::{Command, Stdio};

const HOOK: &str = env!("CARGO_BIN_EXE_hpk-hook");

fn run(args: &[&str], stdin: &str) -> (Option<i32>, String) {
    let mut child = Command::new(HOOK)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_names_the_stages_and_annotations() {
    let out = Command::new(HOOK).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for word in [
        "createRuntime",
        "prestart",
        "poststop",
        "io.hpktainer.network",
        "HPK_NETD_SOCKET",
    ] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
}

#[test]
fn unknown_stage_is_refused() {
    let (code, err) = run(&["poststart"], "");
    assert_eq!(code, Some(2));
    assert!(err.contains("invalid value 'poststart'"), "{err}");
}

#[test]
fn opted_out_container_needs_no_daemon() {
    let state = r#"{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":1,"bundle":"/nonexistent","annotations":{"io.hpktainer.network":"none"}}"#;
    let (code, err) = run(
        &["createRuntime", "--socket", "/nonexistent/netd.sock"],
        state,
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn bad_annotation_is_explained() {
    let state = r#"{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":1,"bundle":"/b","annotations":{"io.hpktainer.ip":"10.244.3"}}"#;
    let (code, err) = run(
        &["createRuntime", "--socket", "/nonexistent/netd.sock"],
        state,
    );
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with("hpk-hook: annotation io.hpktainer.ip=\"10.244.3\" is not an IPv4 address"),
        "{err}"
    );
}
