//! A blocking client for hpk-netd's control socket.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::proto::{
    AttachRequest, Attachment, ControlError, Envelope, ErrorCode, Request, Response, Status,
    DEFAULT_SOCKET, MAX_MESSAGE, SOCKET_ENV,
};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("hpk-netd is not running: no socket at {0} (start it with `hpk-netd run`, or set {SOCKET_ENV})")]
    NoSocket(PathBuf),
    #[error("hpk-netd is not running: nothing listens on {0} (a stale socket; restart hpk-netd)")]
    NotListening(PathBuf),
    #[error("permission denied on {0}: hpk-netd's socket is for root (or its configured group)")]
    PermissionDenied(PathBuf),
    #[error("hpk-netd did not answer within {1:?} on {0}")]
    Timeout(PathBuf, Duration),
    #[error("hpk-netd did not answer on {0}: the connection closed first (hpk-netd stopped?)")]
    NoAnswer(PathBuf),
    #[error("talking to hpk-netd on {0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("hpk-netd sent an answer this client does not understand: {0}")]
    BadResponse(String),
    #[error("hpk-netd refused the request: {0}")]
    Refused(ControlError),
}

/// The socket path: the explicit one, else `$HPK_NETD_SOCKET`, else the default.
pub fn socket_path(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(SOCKET_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(path: impl Into<PathBuf>) -> Client {
        Client {
            path: path.into(),
            timeout: Duration::from_secs(30),
        }
    }

    /// The bubble's status.
    pub fn status(&self) -> Result<Status, ClientError> {
        match self.call(&Request::Status)? {
            Response::Status(s) => Ok(*s),
            Response::Error(e) => Err(ClientError::Refused(e)),
            other => Err(ClientError::BadResponse(format!("{other:?}"))),
        }
    }

    /// Attaches a container.
    pub fn attach(&self, request: AttachRequest) -> Result<Attachment, ClientError> {
        match self.call(&Request::Attach(request))? {
            Response::Attached(a) => Ok(a),
            Response::Error(e) => Err(ClientError::Refused(e)),
            other => Err(ClientError::BadResponse(format!("{other:?}"))),
        }
    }

    /// Detaches a container; `false` when it was not attached (a detach is idempotent:
    /// hpk-netd's not_found is no failure here).
    pub fn detach(&self, id: &str) -> Result<bool, ClientError> {
        match self.call(&Request::Detach { id: id.to_owned() })? {
            Response::Detached { was_attached, .. } => Ok(was_attached),
            Response::Error(e) if e.code == ErrorCode::NotFound => Ok(false),
            Response::Error(e) => Err(ClientError::Refused(e)),
            other => Err(ClientError::BadResponse(format!("{other:?}"))),
        }
    }

    /// Sends one request, in this release's protocol version, and returns hpk-netd's
    /// answer.
    pub fn call(&self, request: &Request) -> Result<Response, ClientError> {
        let io_err = |e: io::Error| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ClientError::Timeout(self.path.clone(), self.timeout)
            }
            // The other end went away with our request unanswered.
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                ClientError::NoAnswer(self.path.clone())
            }
            _ => ClientError::Io(self.path.clone(), e),
        };
        let mut stream = UnixStream::connect(&self.path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ClientError::NoSocket(self.path.clone()),
            io::ErrorKind::ConnectionRefused => ClientError::NotListening(self.path.clone()),
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(self.path.clone()),
            _ => ClientError::Io(self.path.clone(), e),
        })?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(io_err)?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(io_err)?;
        let envelope = Envelope::new(request.clone());
        let mut line = serde_json::to_vec(&envelope).expect("requests serialize");
        line.push(b'\n');
        // A server that refuses us may answer and close before our write is done: keep
        // its answer rather than the broken pipe.
        let written = stream.write_all(&line);
        let mut answer = Vec::new();
        let read = BufReader::new(stream.take(MAX_MESSAGE as u64)).read_until(b'\n', &mut answer);
        if answer.is_empty() {
            written.map_err(io_err)?;
            read.map_err(io_err)?;
        }
        if answer.is_empty() {
            return Err(ClientError::NoAnswer(self.path.clone()));
        }
        serde_json::from_slice(&answer).map_err(|e| {
            ClientError::BadResponse(format!("{e}: {}", String::from_utf8_lossy(&answer).trim()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server at `dir/netd.sock` that answers one request with `answer`; it returns
    /// the request line it got.
    fn answering_once(dir: &Path, answer: &'static str) -> std::thread::JoinHandle<String> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.join("netd.sock")).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = String::new();
            BufReader::new(&stream).read_line(&mut request).unwrap();
            stream.write_all(answer.as_bytes()).unwrap();
            stream.write_all(b"\n").unwrap();
            request
        })
    }

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("hpk-client-{name}-{}", std::process::id()))
    }

    #[test]
    fn requests_carry_the_protocol_version() {
        let dir = scratch("version");
        let server = answering_once(
            &dir,
            r#"{"result":"detached","id":"c1","was_attached":true}"#,
        );
        assert!(Client::new(dir.join("netd.sock")).detach("c1").unwrap());
        let line = server.join().unwrap();
        assert!(line.starts_with(r#"{"version":1,"op":"detach""#), "{line}");
        assert_eq!(
            crate::proto::parse_request(line.as_bytes()).unwrap(),
            Request::Detach { id: "c1".into() }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A poststop may come for a container hpk-netd never attached: done, not failed.
    #[test]
    fn a_detach_of_an_unknown_container_is_done() {
        let dir = scratch("unknown");
        let server = answering_once(
            &dir,
            r#"{"result":"error","code":"not_found","message":"container c1 is not attached to this bubble"}"#,
        );
        assert!(!Client::new(dir.join("netd.sock")).detach("c1").unwrap());
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refusals_carry_the_code_and_say_what_to_do() {
        let dir = scratch("busy");
        let server = answering_once(
            &dir,
            r#"{"result":"error","code":"unavailable","message":"hpk-netd is busy (256 connections open); retry"}"#,
        );
        let err = Client::new(dir.join("netd.sock")).status().unwrap_err();
        server.join().unwrap();
        let ClientError::Refused(refusal) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(refusal.code, ErrorCode::Unavailable);
        assert_eq!(
            err.to_string(),
            "hpk-netd refused the request: hpk-netd is busy (256 connections open); retry \
             (hpk-netd is starting, busy or cannot reach etcd: retry, or see its log)"
        );
        // hpk-netd of a release before codes: its message, whole.
        let server = answering_once(&dir, r#"{"result":"error","message":"address in use"}"#);
        let err = Client::new(dir.join("netd.sock")).detach("c1").unwrap_err();
        server.join().unwrap();
        assert!(
            matches!(&err, ClientError::Refused(e) if e.message == "address in use"),
            "{err:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A server that takes the request and closes without answering (one killed in the
    /// middle of it) did not answer: not a garbled answer, not a refusal.
    #[test]
    fn a_connection_closed_unanswered_is_no_answer() {
        let dir = std::env::temp_dir().join(format!("hpk-client-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("netd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut request = String::new();
            BufReader::new(&stream).read_line(&mut request).unwrap();
            request
        });
        let err = Client::new(&path).call(&Request::Status).unwrap_err();
        assert!(server.join().unwrap().contains("status"));
        assert!(matches!(err, ClientError::NoAnswer(_)), "{err:?}");
        assert!(
            err.to_string().starts_with("hpk-netd did not answer on"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
