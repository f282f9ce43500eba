//! The control socket: one JSON request line in, one JSON response line out.
//! Peers are identified by SO_PEERCRED; only configured uids are served.

use std::sync::Arc;
use std::time::Duration;

use hpk_hook::proto::{Request, Response, MAX_MESSAGE};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use super::{status, Daemon};

/// How long a peer may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>, allowed_uids: Arc<Vec<u32>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (daemon, allowed) = (daemon.clone(), allowed_uids.clone());
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, daemon, &allowed).await {
                        debug!(error = %e, "control connection ended badly");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accept on the control socket failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(
    mut stream: UnixStream,
    daemon: Arc<Daemon>,
    allowed: &[u32],
) -> std::io::Result<()> {
    // The request is read in every case, so a refused client gets our answer rather than
    // a broken pipe on its write.
    let request = read_request(&mut stream).await;
    let response = match (stream.peer_cred(), request) {
        (Err(e), _) => Response::Error {
            message: format!("cannot identify the peer: {e}"),
        },
        (Ok(cred), _) if !allowed.contains(&cred.uid()) => {
            warn!(uid = cred.uid(), pid = ?cred.pid(), "refused a control peer");
            Response::Error {
                message: format!(
                    "permission denied: uid {} may not use hpk-netd (allowed_uids: {allowed:?})",
                    cred.uid()
                ),
            }
        }
        (Ok(_), Ok(request)) => dispatch(request, &daemon).await,
        (Ok(_), Err(message)) => Response::Error { message },
    };
    let mut line = serde_json::to_vec(&response).expect("responses serialize");
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.shutdown().await
}

/// Reads one request line; the error is the message to send back.
async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream.take(MAX_MESSAGE as u64));
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => return Err(format!("no request within {REQUEST_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("cannot read the request: {e}")),
        Ok(Ok(_)) => {}
    }
    serde_json::from_slice(&line).map_err(|e| format!("malformed request: {e}"))
}

async fn dispatch(request: Request, daemon: &Arc<Daemon>) -> Response {
    let failed = |e: anyhow::Error| Response::Error {
        message: format!("{e:#}"),
    };
    match request {
        Request::Attach(req) => daemon
            .endpoints
            .attach(req)
            .await
            .map_or_else(failed, Response::Attached),
        Request::Detach { id } => {
            daemon
                .endpoints
                .detach(&id, "requested")
                .map_or_else(failed, |was_attached| Response::Detached {
                    id,
                    was_attached,
                })
        }
        // A netlink dump and a directory read: not on the async workers.
        Request::Status => {
            let daemon = daemon.clone();
            match tokio::task::spawn_blocking(move || status::status(&daemon)).await {
                Ok(status) => Response::Status(Box::new(status)),
                Err(e) => Response::Error {
                    message: format!("status failed: {e}"),
                },
            }
        }
    }
}
