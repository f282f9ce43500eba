//! The control protocol's errors as hpk-netd makes them: each failure gets the code a
//! client acts on (see `hpk_hook::proto::ErrorCode`) and keeps the message people read.

use std::time::Duration;

use hpk_hook::proto::{ControlError, ErrorCode, MAX_REQUEST};

use super::MAX_CONNECTIONS;
use crate::bubble::ipam::IpamError;
use crate::endpoint::build::VethNotPossible;

/// A request hpk-netd turns down before serving it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("cannot identify the peer: {0}")]
    Unidentified(std::io::Error),
    #[error("permission denied: uid {uid} may not use hpk-netd (allowed_uids: {allowed:?})")]
    NotPermitted { uid: u32, allowed: Vec<u32> },
    #[error("hpk-netd is busy ({MAX_CONNECTIONS} connections open); retry")]
    Busy,
    #[error("no request within {0:?}")]
    NoRequest(Duration),
    #[error("cannot read the request: {0}")]
    Unreadable(std::io::Error),
    #[error("request longer than {MAX_REQUEST} bytes")]
    TooLong,
    /// A detach of a container this hpk-netd does not hold (any more).
    #[error("container {0} is not attached to this bubble")]
    NotAttached(String),
}

impl Refusal {
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::Unidentified(_) => ErrorCode::Internal,
            Refusal::Busy => ErrorCode::Unavailable,
            Refusal::NotAttached(_) => ErrorCode::NotFound,
            Refusal::NotPermitted { .. }
            | Refusal::NoRequest(_)
            | Refusal::Unreadable(_)
            | Refusal::TooLong => ErrorCode::BadRequest,
        }
    }
}

impl From<Refusal> for ControlError {
    fn from(r: Refusal) -> ControlError {
        ControlError::new(r.code(), r.to_string())
    }
}

/// A failure of an attach or detach, its message the whole chain as before codes.
pub fn failed(e: &anyhow::Error) -> ControlError {
    ControlError::new(code_of(e), format!("{e:#}"))
}

/// Failures known by their message, where the code that raises them has no type of its
/// own for them: a fragment, where it comes from, its code. Checked in order (a
/// conflict under etcd's context is still a conflict).
const BY_MESSAGE: &[(&str, ErrorCode)] = &[
    // endpoint::table: the id is attached, or being attached or detached.
    ("is already attached", ErrorCode::Conflict),
    ("is being attached right now", ErrorCode::Conflict),
    ("is being detached by another request", ErrorCode::Conflict),
    // endpoint::build: an interface of the container has our name.
    ("is already taken in the container", ErrorCode::Conflict),
    // hpk_hook::names::taken, and names::store when two claims race.
    ("is taken: container", ErrorCode::Conflict),
    ("changed hands while it was claimed", ErrorCode::Conflict),
    // ports::handover: the host port.
    (
        "is in use (by another program or container)",
        ErrorCode::Conflict,
    ),
    (
        "needs privileges the job's user does not have",
        ErrorCode::BadRequest,
    ),
    ("the host has no address", ErrorCode::BadRequest),
    // endpoint::table and build: the container's process, its namespace.
    ("is gone (the container exited", ErrorCode::NotFound),
    (
        "shares the bubble's network namespace",
        ErrorCode::BadRequest,
    ),
    ("invalid container id", ErrorCode::BadRequest),
    // names: etcd away.
    ("in the cluster's etcd", ErrorCode::Unavailable),
    ("etcd did not answer", ErrorCode::Unavailable),
];

/// The code of a failure: by the types in its chain, else by its known messages, else
/// internal.
pub fn code_of(e: &anyhow::Error) -> ErrorCode {
    for cause in e.chain() {
        if let Some(ipam) = cause.downcast_ref::<IpamError>() {
            return match ipam {
                IpamError::OutOfRange { .. } => ErrorCode::BadRequest,
                IpamError::Taken { .. } | IpamError::Exhausted { .. } => ErrorCode::Conflict,
                IpamError::Io { .. } => ErrorCode::Internal,
            };
        }
        // Asked for a veth where hpk-netd cannot make one.
        if cause.is::<VethNotPossible>() {
            return ErrorCode::BadRequest;
        }
    }
    let text = format!("{e:#}");
    if let Some((_, code)) = BY_MESSAGE.iter().find(|(m, _)| text.contains(m)) {
        return *code;
    }
    if e.chain().any(|c| c.is::<etcd_client::Error>()) {
        return ErrorCode::Unavailable;
    }
    ErrorCode::Internal
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use anyhow::anyhow;

    use super::*;

    #[test]
    fn refusals_keep_their_messages_and_get_codes() {
        let cases: [(Refusal, ErrorCode, &str); 6] = [
            (
                Refusal::NotPermitted {
                    uid: 65534,
                    allowed: vec![0],
                },
                ErrorCode::BadRequest,
                "permission denied: uid 65534 may not use hpk-netd (allowed_uids: [0])",
            ),
            (
                Refusal::Busy,
                ErrorCode::Unavailable,
                "hpk-netd is busy (256 connections open); retry",
            ),
            (
                Refusal::NoRequest(Duration::from_secs(5)),
                ErrorCode::BadRequest,
                "no request within 5s",
            ),
            (
                Refusal::TooLong,
                ErrorCode::BadRequest,
                "request longer than 65536 bytes",
            ),
            (
                Refusal::NotAttached("c1".into()),
                ErrorCode::NotFound,
                "container c1 is not attached to this bubble",
            ),
            (
                Refusal::Unidentified(std::io::Error::from_raw_os_error(libc::EBADF)),
                ErrorCode::Internal,
                "cannot identify the peer: Bad file descriptor (os error 9)",
            ),
        ];
        for (refusal, code, message) in cases {
            assert_eq!(
                ControlError::from(refusal),
                ControlError::new(code, message)
            );
        }
    }

    #[test]
    fn typed_failures_get_their_codes_under_any_context() {
        let net = "10.244.3.0/29".parse().unwrap();
        let addr = Ipv4Addr::new(10, 244, 3, 2);
        for (e, code) in [
            (
                IpamError::Exhausted {
                    subnet: net,
                    in_use: 5,
                },
                ErrorCode::Conflict,
            ),
            (
                IpamError::Taken {
                    addr,
                    owner: "c0".into(),
                },
                ErrorCode::Conflict,
            ),
            (
                IpamError::OutOfRange {
                    addr,
                    subnet: net,
                    gateway: Ipv4Addr::new(10, 244, 3, 1),
                },
                ErrorCode::BadRequest,
            ),
            (
                IpamError::Io {
                    path: "/x".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                },
                ErrorCode::Internal,
            ),
        ] {
            let message = e.to_string();
            let e = anyhow::Error::new(e).context("attaching c1");
            let got = failed(&e);
            assert_eq!(got.code, code, "{message}");
            // The whole chain, as before codes.
            assert_eq!(got.message, format!("{e:#}"));
            assert!(got.message.starts_with(&format!("attaching c1: {message}")));
        }
    }

    #[test]
    fn known_messages_get_their_codes() {
        let taken = hpk_hook::names::taken("web", "c1", Ipv4Addr::new(10, 244, 3, 2), "h1");
        for (e, code) in [
            (anyhow!(taken), ErrorCode::Conflict),
            (
                anyhow!("container id c1 is already attached (process 7); detach it first"),
                ErrorCode::Conflict,
            ),
            (
                anyhow!("container process 7 is gone (the container exited before its network was attached)"),
                ErrorCode::NotFound,
            ),
            (
                anyhow!("etcd did not answer within 5 s")
                    .context("cannot register name web in the cluster's etcd; retry when it is back"),
                ErrorCode::Unavailable,
            ),
            (
                anyhow!("name web changed hands while it was claimed; retry").context(
                    "cannot register name web in the cluster's etcd; retry when it is back",
                ),
                ErrorCode::Conflict,
            ),
            (
                anyhow!("host port 0.0.0.0:80/tcp is in use (by another program or container): choose another host port")
                    .context("cannot publish -p 80:80"),
                ErrorCode::Conflict,
            ),
            (anyhow!("the hub closed the connection without an answer"), ErrorCode::Internal),
        ] {
            assert_eq!(code_of(&e), code, "{e:#}");
        }
    }
}
