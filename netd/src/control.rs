//! The control socket: one JSON request line in, one JSON response line out.
//! Peers are identified by SO_PEERCRED; only configured uids are served.

use std::sync::Arc;
use std::time::Duration;

use hpk_hook::proto::{Request, Response, MAX_MESSAGE};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::service::Service;

/// How long a peer may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: UnixListener, service: Arc<Service>, allowed_uids: Arc<Vec<u32>>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (service, allowed) = (service.clone(), allowed_uids.clone());
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, service, &allowed).await {
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
    service: Arc<Service>,
    allowed: &[u32],
) -> std::io::Result<()> {
    let response = match stream.peer_cred() {
        Ok(cred) if allowed.contains(&cred.uid()) => read_and_dispatch(&mut stream, &service).await,
        Ok(cred) => {
            warn!(uid = cred.uid(), pid = ?cred.pid(), "refused a control peer");
            Response::Error {
                message: format!(
                    "permission denied: uid {} may not use hpk-netd (allowed_uids: {allowed:?})",
                    cred.uid()
                ),
            }
        }
        Err(e) => Response::Error {
            message: format!("cannot identify the peer: {e}"),
        },
    };
    let mut line = serde_json::to_vec(&response).expect("responses serialize");
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.shutdown().await
}

async fn read_and_dispatch(stream: &mut UnixStream, service: &Arc<Service>) -> Response {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream.take(MAX_MESSAGE as u64));
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => {
            return Response::Error {
                message: format!("no request within {REQUEST_TIMEOUT:?}"),
            }
        }
        Ok(Err(e)) => {
            return Response::Error {
                message: format!("cannot read the request: {e}"),
            }
        }
        Ok(Ok(_)) => {}
    }
    let request: Request = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => {
            return Response::Error {
                message: format!("malformed request: {e}"),
            }
        }
    };
    let failed = |e: anyhow::Error| Response::Error {
        message: format!("{e:#}"),
    };
    match request {
        Request::Attach(req) => service
            .attach(req)
            .await
            .map_or_else(failed, Response::Attached),
        Request::Detach { id } => {
            service
                .detach(&id, "requested")
                .await
                .map_or_else(failed, |was_attached| Response::Detached {
                    id,
                    was_attached,
                })
        }
        Request::Status => Response::Status(Box::new(service.status())),
    }
}
