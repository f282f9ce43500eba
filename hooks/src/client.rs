//! A blocking client for hpk-netd's control socket.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::proto::{Request, Response, Status, DEFAULT_SOCKET, MAX_MESSAGE, SOCKET_ENV};

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
    Refused(String),
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
            Response::Error { message } => Err(ClientError::Refused(message)),
            other => Err(ClientError::BadResponse(format!("{other:?}"))),
        }
    }

    /// Sends one request and returns hpk-netd's answer.
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
        let mut line = serde_json::to_vec(request).expect("requests serialize");
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
