//! The control socket: one JSON request line in, one JSON response line out.
//! Peers are identified by SO_PEERCRED; only configured uids are served. Requests are
//! bounded in size and time, and connections in number, so that a flood of bad or idle
//! connections cannot starve the hooks' attaches or run hpk-netd out of descriptors.
//! Requests carry the protocol's version; failures are answered with a code (`errors`).

mod errors;

use std::sync::Arc;
use std::time::Duration;

use hpk_hook::proto::{
    parse_request, AttachRequest, Attachment, ControlError, ErrorCode, Request, Response,
    MAX_REQUEST,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use self::errors::{failed, Refusal};
use super::{status, Daemon};

/// How long an allowed peer may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a refused peer is listened to before it gets its answer (so that it reads
/// our reason, not a broken pipe).
const REFUSED_TIMEOUT: Duration = Duration::from_millis(200);

/// Connections of allowed peers served at once; more are answered "busy" at once.
pub const MAX_CONNECTIONS: usize = 256;

pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>, allowed_uids: Arc<Vec<u32>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (daemon, allowed, slots) =
                    (daemon.clone(), allowed_uids.clone(), slots.clone());
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, daemon, &allowed, &slots).await {
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
    slots: &Semaphore,
) -> std::io::Result<()> {
    let cred = stream.peer_cred();
    let permitted = cred.as_ref().is_ok_and(|c| allowed.contains(&c.uid()));
    // A refused peer's request is read too (briefly), so that it gets our answer rather
    // than a broken pipe on its write.
    let timeout = if permitted {
        REQUEST_TIMEOUT
    } else {
        REFUSED_TIMEOUT
    };
    let slot = if permitted {
        slots.try_acquire().ok()
    } else {
        None
    };
    let response = match cred {
        Err(e) => Response::Error(Refusal::Unidentified(e).into()),
        Ok(cred) if !permitted => {
            let _ = read_request(&mut stream, timeout).await;
            warn!(uid = cred.uid(), pid = ?cred.pid(), "refused a control peer");
            Response::Error(
                Refusal::NotPermitted {
                    uid: cred.uid(),
                    allowed: allowed.to_vec(),
                }
                .into(),
            )
        }
        Ok(_) if slot.is_none() => Response::Error(Refusal::Busy.into()),
        Ok(_) => match read_request(&mut stream, timeout).await {
            Ok(request) => dispatch(request, &daemon).await,
            Err(e) => Response::Error(e),
        },
    };
    let mut line = serde_json::to_vec(&response).expect("responses serialize");
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.shutdown().await
}

/// Reads one request line, of this protocol's version.
async fn read_request(stream: &mut UnixStream, timeout: Duration) -> Result<Request, ControlError> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream.take(MAX_REQUEST as u64 + 1));
    match tokio::time::timeout(timeout, reader.read_until(b'\n', &mut line)).await {
        Err(_) => return Err(Refusal::NoRequest(timeout).into()),
        Ok(Err(e)) => return Err(Refusal::Unreadable(e).into()),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST {
        return Err(Refusal::TooLong.into());
    }
    parse_request(&line)
}

async fn dispatch(request: Request, daemon: &Arc<Daemon>) -> Response {
    let op = match &request {
        Request::Attach(_) => "attach",
        Request::Detach { .. } => "detach",
        Request::Status => "status",
    };
    let response = match request {
        Request::Attach(req) => attach(daemon, req)
            .await
            .map_or_else(Response::Error, Response::Attached),
        // The hook sends it at poststop; the log's `why` tells it from hpk-netd's own.
        Request::Detach { id } => {
            let detached = daemon.endpoints.detach(&id, "poststop");
            release(daemon, &id).await;
            match detached {
                Ok(true) => Response::Detached {
                    id,
                    was_attached: true,
                },
                // Not attached, or already on its way out: the hook takes it as done.
                Ok(false) => Response::Error(Refusal::NotAttached(id).into()),
                Err(e) => Response::Error(failed(&e)),
            }
        }
        // A netlink dump and a directory read: not on the async workers.
        Request::Status => {
            let daemon = daemon.clone();
            match tokio::task::spawn_blocking(move || status::status(&daemon)).await {
                Ok(status) => Response::Status(Box::new(status)),
                Err(e) => Response::Error(ControlError::new(
                    ErrorCode::Internal,
                    format!("status failed: {e}"),
                )),
            }
        }
    };
    if let Response::Error(e) = &response {
        match e.code {
            // Their answer sends the user to this log.
            ErrorCode::Internal | ErrorCode::Unavailable => {
                warn!(op, code = %e.code, error = e.message, "request failed")
            }
            // Every poststop of a container never attached (opted out, failed) gets it.
            ErrorCode::NotFound => debug!(op, code = %e.code, error = e.message, "request refused"),
            ErrorCode::BadRequest | ErrorCode::Conflict => {
                info!(op, code = %e.code, error = e.message, "request refused")
            }
        }
    }
    response
}

/// Attaches a container, registers its name and publishes its ports, all or nothing: a
/// name taken elsewhere fails the attach before anything is built (from memory), or undoes
/// it (when etcd says so first), as a port that cannot be bound does.
async fn attach(daemon: &Daemon, req: AttachRequest) -> Result<Attachment, ControlError> {
    let named = daemon.names.as_ref().zip(req.name.clone());
    if let Some((names, name)) = &named {
        hpk_hook::names::validate(name).map_err(|e| ControlError::new(ErrorCode::BadRequest, e))?;
        // It fails only when another container holds the name.
        names
            .check(name, &req.id)
            .map_err(|e| ControlError::new(ErrorCode::Conflict, format!("{e:#}")))?;
    }
    let (id, ports) = (req.id.clone(), req.ports.clone());
    let attachment = daemon.endpoints.attach(req).await.map_err(|e| failed(&e))?;
    if let Some((names, name)) = named {
        if let Err(e) = names.claim(&name, &id, attachment.address).await {
            let _ = daemon.endpoints.detach(&id, "its name is taken");
            return Err(failed(&e));
        }
    }
    if let Err(e) = daemon.ports.publish(&id, attachment.address, &ports).await {
        let _ = daemon
            .endpoints
            .detach(&id, "a port could not be published");
        release(daemon, &id).await;
        return Err(failed(&e));
    }
    Ok(attachment)
}

/// Closes a container's published ports and releases its names.
async fn release(daemon: &Daemon, id: &str) {
    daemon.ports.unpublish(id);
    if let Some(names) = &daemon.names {
        names.release_container(id).await;
    }
}
