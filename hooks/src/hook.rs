//! The hook's work: read the OCI state, decide, ask hpk-netd.

use std::collections::HashMap;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use oci_spec::runtime::{Spec, State};

use crate::client::{Client, ClientError};
use crate::proto::{
    AttachRequest, EndpointKind, ANNOTATION_ENDPOINT, ANNOTATION_IP, ANNOTATION_NETWORK,
};

/// The OCI lifecycle points the hook handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// `createRuntime` (and the deprecated `prestart`): attach the container.
    Attach,
    /// `poststop`: detach it.
    Detach,
}

/// Parses the state a runtime writes on the hook's stdin.
pub fn read_state(input: impl Read) -> Result<State> {
    let mut text = String::new();
    input
        .take(crate::proto::MAX_MESSAGE as u64)
        .read_to_string(&mut text)
        .context("cannot read the OCI state on stdin")?;
    if text.trim().is_empty() {
        bail!(
            "no OCI state on stdin: hpk-hook runs as an OCI hook, started by the container runtime"
        );
    }
    let state: State = serde_json::from_str(&text)
        .map_err(|e| anyhow!("the OCI state on stdin is not valid JSON state: {e}"))?;
    if state.id().is_empty() {
        bail!("the OCI state on stdin has no container id");
    }
    Ok(state)
}

/// Annotations from the state, or from the bundle's config.json when the runtime left
/// them out of the state.
fn annotations(state: &State) -> Result<HashMap<String, String>> {
    if let Some(a) = state.annotations() {
        return Ok(a.clone());
    }
    if state.bundle().as_os_str().is_empty() {
        return Ok(HashMap::new());
    }
    let config = state.bundle().join("config.json");
    if !config.exists() {
        return Ok(HashMap::new());
    }
    let spec = Spec::load(&config).with_context(|| format!("cannot read {}", config.display()))?;
    Ok(spec.annotations().clone().unwrap_or_default())
}

/// What the container asked for in its annotations.
#[derive(Debug, PartialEq, Eq)]
pub enum Wish {
    OptOut,
    Attach {
        address: Option<Ipv4Addr>,
        endpoint: Option<EndpointKind>,
        /// The name the bubbles' DNS serves it under.
        name: Option<String>,
        /// Host ports to forward to it.
        ports: Vec<crate::ports::PortMapping>,
    },
}

pub fn wish(annotations: &HashMap<String, String>) -> Result<Wish> {
    match annotations.get(ANNOTATION_NETWORK).map(String::as_str) {
        None | Some("") | Some("hpk") | Some("default") => {}
        Some("none") => return Ok(Wish::OptOut),
        Some(other) => bail!("annotation {ANNOTATION_NETWORK}={other:?} is not understood (use \"none\" to opt out, or leave it unset)"),
    }
    let address = match annotations.get(ANNOTATION_IP) {
        None => None,
        Some(ip) => Some(
            ip.parse()
                .map_err(|_| anyhow!("annotation {ANNOTATION_IP}={ip:?} is not an IPv4 address"))?,
        ),
    };
    let endpoint = match annotations.get(ANNOTATION_ENDPOINT) {
        None => None,
        Some(kind) => Some(
            <EndpointKind as clap::ValueEnum>::from_str(kind, true).map_err(|_| {
                anyhow!("annotation {ANNOTATION_ENDPOINT}={kind:?} is not understood (auto, veth, tap or socket)")
            })?,
        ),
    };
    // Our own annotation must be a valid name (hpktainer checked it); another runtime's
    // name that is no DNS label is not served, but does not stop the container.
    let name = crate::names::from_annotations(annotations);
    if let Some(ours) = annotations.get(crate::names::ANNOTATION_NAME) {
        crate::names::validate(ours)
            .map_err(|e| anyhow!("annotation {}: {e}", crate::names::ANNOTATION_NAME))?;
    }
    let name = name.filter(|n| crate::names::validate(n).is_ok());
    let ports = match annotations.get(crate::ports::ANNOTATION_PORTS) {
        None => Vec::new(),
        Some(list) => crate::ports::PortMapping::parse_list(list)
            .map_err(|e| anyhow!("annotation {}: {e}", crate::ports::ANNOTATION_PORTS))?,
    };
    Ok(Wish::Attach {
        address,
        endpoint,
        name,
        ports,
    })
}

/// Runs one hook invocation against hpk-netd at `socket`.
pub fn run(stage: Stage, state: &State, socket: &Path) -> Result<()> {
    let client = Client::new(socket);
    let id = state.id().clone();
    match stage {
        Stage::Attach => {
            let (address, endpoint, name, ports) = match wish(&annotations(state)?)? {
                Wish::OptOut => return Ok(()),
                Wish::Attach {
                    address,
                    endpoint,
                    name,
                    ports,
                } => (address, endpoint, name, ports),
            };
            let pid = state.pid().ok_or_else(|| {
                anyhow!("the OCI state of {id} has no pid: createRuntime needs the container's process (is this hook configured for the right stage?)")
            })?;
            if !Path::new(&format!("/proc/{pid}")).exists() {
                bail!("container {id}: its process {pid} is gone (the container exited before its network was attached)");
            }
            let attached = client.attach(AttachRequest {
                id: id.clone(),
                pid,
                address,
                endpoint,
                name,
                ports,
            });
            match attached {
                Ok(_) => Ok(()),
                // The message and, per code, what to do (see `ControlError`'s Display).
                Err(ClientError::Refused(e)) => bail!("hpk-netd could not attach {id}: {e}"),
                Err(e) => Err(e.into()),
            }
        }
        // Idempotent: a container that was never attached (opted out, failed to start)
        // has nothing to detach.
        Stage::Detach => match client.detach(&id) {
            Ok(_) => Ok(()),
            Err(ClientError::Refused(e)) => bail!("hpk-netd could not detach {id}: {e}"),
            Err(e) => Err(e.into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn annotations_decide() {
        assert_eq!(
            wish(&ann(&[])).unwrap(),
            Wish::Attach {
                address: None,
                endpoint: None,
                name: None,
                ports: Vec::new()
            }
        );
        assert_eq!(
            wish(&ann(&[(ANNOTATION_ENDPOINT, "veth")])).unwrap(),
            Wish::Attach {
                address: None,
                endpoint: Some(EndpointKind::Veth),
                name: None,
                ports: Vec::new()
            }
        );
        let err = wish(&ann(&[(ANNOTATION_ENDPOINT, "vxlan")])).unwrap_err();
        assert!(
            err.to_string().contains("auto, veth, tap or socket"),
            "{err}"
        );
        assert_eq!(
            wish(&ann(&[(ANNOTATION_NETWORK, "none")])).unwrap(),
            Wish::OptOut
        );
        assert_eq!(
            wish(&ann(&[(ANNOTATION_IP, "10.244.3.7")])).unwrap(),
            Wish::Attach {
                address: Some(Ipv4Addr::new(10, 244, 3, 7)),
                endpoint: None,
                name: None,
                ports: Vec::new()
            }
        );
        assert!(wish(&ann(&[(ANNOTATION_IP, "10.244.3")])).is_err());
        // Names: ours must be a DNS label; another runtime's bad one is only not served.
        let named = |pairs| match wish(&ann(pairs)).unwrap() {
            Wish::Attach { name, .. } => name,
            Wish::OptOut => panic!("opted out"),
        };
        assert_eq!(
            named(&[(crate::names::ANNOTATION_NAME, "Web")]).as_deref(),
            Some("web")
        );
        assert_eq!(named(&[("nerdctl/name", "my_app")]), None);
        let err = wish(&ann(&[(crate::names::ANNOTATION_NAME, "my_app")])).unwrap_err();
        assert!(err.to_string().contains("'_' is not allowed"), "{err}");
        assert!(wish(&ann(&[(ANNOTATION_NETWORK, "bridge")])).is_err());
    }

    #[test]
    fn states_are_checked() {
        let ok = read_state(
            &br#"{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":7,"bundle":"/b"}"#[..],
        )
        .unwrap();
        assert_eq!(ok.id(), "c1");
        assert_eq!(*ok.pid(), Some(7));
        let no_pid = read_state(
            &br#"{"ociVersion":"1.0.2","id":"c1","status":"stopped","bundle":"/b"}"#[..],
        )
        .unwrap();
        assert_eq!(*no_pid.pid(), None);
        for bad in [
            &b""[..],
            b"{",
            b"[1,2]",
            br#"{"ociVersion":"1.0.2","status":"creating"}"#,
        ] {
            assert!(
                read_state(bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
