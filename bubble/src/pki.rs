//! The cluster's etcd PKI, made by the controller's launcher at start-up: a CA for this
//! cluster only, a server certificate for the controller's etcd, and one client
//! certificate that every bubble's hpk-netd (and K3s) presents. etcd then serves only
//! clients holding it (`--client-cert-auth`): another user who can reach the host can
//! neither read nor rewrite the cluster's leases and routes.
//!
//! Beside them the controller writes the overlay key ([`OVERLAY_KEY`]): every hpk-netd
//! VTEP authenticates (or encrypts) its datagrams with keys derived from it, so another
//! user on a node can neither inject frames into the overlay nor replay captured ones.
//!
//! The CA's key is never written: once start-up is done nothing can sign another
//! certificate. The CA and client files go to the shared directory (nodes read them),
//! the server's to the controller's state directory; all are 0600 in 0700 directories.
//!
//! A controller restarted in place ([`create_or_keep`]) carries on with the files it
//! finds, since the nodes hold certificates of that CA and no other. The overlay key is
//! rotated: a new one, the old one kept on the file's second line. Every hpk-netd follows
//! the file (opening both, sealing with the new one once all can open it), and a bubble
//! started after the rotation opens what the others still seal with the old one.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

use hpk_netd::sys::fs::{private_dir, write_atomically};
use hpk_netd::underlay::auth::key::ClusterKey;

/// The overlay key's file name, in the shared PKI directory.
pub const OVERLAY_KEY: &str = "overlay.key";

/// A cluster lives as long as its job; a year covers any allocation.
const VALIDITY: time::Duration = time::Duration::days(365);

/// What a client of the cluster's etcd presents, and the CA it trusts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClientFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The controller's etcd's own certificate and key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerFiles {
    /// Where the controller keeps them in its state directory's `dir`.
    pub fn in_dir(dir: &Path) -> ServerFiles {
        ServerFiles {
            cert: dir.join("etcd-server.pem"),
            key: dir.join("etcd-server-key.pem"),
        }
    }
}

impl ClientFiles {
    /// Where the controller puts them in the shared directory `dir`.
    pub fn in_dir(dir: &Path) -> ClientFiles {
        ClientFiles {
            ca: dir.join("etcd-ca.pem"),
            cert: dir.join("etcd-client.pem"),
            key: dir.join("etcd-client-key.pem"),
        }
    }

    /// The files a node needs, with what to do when one is missing.
    pub fn check(&self) -> Result<()> {
        for path in [&self.ca, &self.cert, &self.key] {
            std::fs::File::open(path).with_context(|| {
                format!(
                    "cannot read {}: the controller bubble writes it when it starts, in the shared directory every bubble of the cluster must use (--shared-dir, HPK_SHARED_DIR)",
                    path.display()
                )
            })?;
        }
        Ok(())
    }
}

/// The cluster's PKI for a controller's start: the one a previous start of this
/// controller left (the shared files and, in its state dir, the server's), else a new
/// one. Refuses when the shared files exist without the server's: no new server
/// certificate can be signed by the CA the nodes trust.
pub fn create_or_keep(
    client_dir: &Path,
    server_dir: &Path,
    host_ip: Ipv4Addr,
) -> Result<(ClientFiles, ServerFiles)> {
    let client = ClientFiles::in_dir(client_dir);
    let server = ServerFiles::in_dir(server_dir);
    let shared = [&client.ca, &client.cert, &client.key];
    if !shared.iter().any(|p| p.exists()) {
        return create(client_dir, server_dir, host_ip);
    }
    if shared.iter().all(|p| p.is_file()) && server.cert.is_file() && server.key.is_file() {
        tracing::info!(
            dir = %client_dir.display(),
            "carrying on with the cluster's CA and certificates (the nodes hold them); the overlay key is rotated"
        );
        let key = client_dir.join(OVERLAY_KEY);
        match ClusterKey::load(&key) {
            Ok(old) => ClusterKey::generate()?.write_rotated(&old, &key)?,
            Err(_) => ClusterKey::generate()?.write(&key)?,
        }
        return Ok((client, server));
    }
    bail!(
        "{} holds the etcd certificates of a cluster that is still running, but {} has no server certificate of its CA (this controller's state directory is gone, or it runs on another node than before); the CA's key is never kept, so the nodes cannot be given new ones: end the job (scancel) and submit it again, or remove {} and restart every bubble of the job",
        client_dir.display(),
        server_dir.display(),
        client_dir.display()
    )
}

/// Makes a CA and the server and client certificates; the server's names `host_ip` and
/// loopback (the bubble's own services reach etcd there).
pub fn create(
    client_dir: &Path,
    server_dir: &Path,
    host_ip: Ipv4Addr,
) -> Result<(ClientFiles, ServerFiles)> {
    let ca = certified_ca().context("cannot make the cluster's CA")?;
    let server_key = KeyPair::generate()?;
    let server = leaf(
        "hpk etcd",
        vec![
            SanType::IpAddress(IpAddr::V4(host_ip)),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::DnsName("localhost".try_into()?),
        ],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?
    .signed_by(&server_key, &ca)
    .context("cannot sign etcd's server certificate")?;
    let client_key = KeyPair::generate()?;
    let client = leaf("hpk-netd", vec![], ExtendedKeyUsagePurpose::ClientAuth)?
        .signed_by(&client_key, &ca)
        .context("cannot sign the client certificate")?;

    private_dir(client_dir)?;
    private_dir(server_dir)?;
    let files = ClientFiles::in_dir(client_dir);
    let server_files = ServerFiles::in_dir(server_dir);
    for (path, pem) in [
        (&files.ca, ca.pem()),
        (&files.cert, client.pem()),
        (&files.key, client_key.serialize_pem()),
        (&server_files.cert, server.pem()),
        (&server_files.key, server_key.serialize_pem()),
    ] {
        write_atomically(path, pem.as_bytes(), 0o600, true)?;
    }
    ClusterKey::generate()?.write(&client_dir.join(OVERLAY_KEY))?;
    Ok((files, server_files))
}

fn certified_ca() -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "hpktainer cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params);
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

fn leaf(
    name: &str,
    names: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = names;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    Ok(params)
}

/// From an hour ago (clocks of a cluster's nodes differ a little) for [`VALIDITY`].
fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + VALIDITY;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// openssl, independently: the chain verifies for each purpose, the server names
    /// the host, and every file is its owner's alone.
    #[test]
    fn certificates_verify_and_files_are_private() {
        let dir = std::env::temp_dir().join(format!("hpk-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (client, server) = create(
            &dir.join("shared"),
            &dir.join("state"),
            "192.0.2.11".parse().unwrap(),
        )
        .unwrap();
        let verify = |purpose: &str, cert: &Path| {
            let out = std::process::Command::new("openssl")
                .args(["verify", "-purpose", purpose, "-CAfile"])
                .arg(&client.ca)
                .arg(cert)
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };
        assert!(verify("sslserver", &server.cert).0);
        assert!(verify("sslclient", &client.cert).0);
        // Each is good for its own job only.
        assert!(!verify("sslserver", &client.cert).0);
        let text = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&server.cert)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("IP Address:192.0.2.11"), "{text}");
        assert!(text.contains("IP Address:127.0.0.1"), "{text}");
        for path in [
            &client.ca,
            &client.cert,
            &client.key,
            &server.cert,
            &server.key,
            &dir.join("shared").join(OVERLAY_KEY),
        ] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        for d in ["shared", "state"] {
            let mode = std::fs::metadata(dir.join(d)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
        }
        assert_eq!(
            std::fs::read_dir(dir.join("shared")).unwrap().count(),
            4,
            "no CA key"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A restarted controller keeps the CA and the certificates (the nodes hold them) and
    /// rotates the overlay key, the old one kept second; the shared files without the
    /// server's are refused.
    #[test]
    fn a_restart_keeps_the_certificates_and_rotates_the_overlay_key() {
        let dir = std::env::temp_dir().join(format!("hpk-pki-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (shared, state) = (dir.join("shared"), dir.join("state"));
        let ip = "192.0.2.11".parse().unwrap();
        let (client, server) = create_or_keep(&shared, &state, ip).unwrap();
        let read = |p: &Path| std::fs::read(p).unwrap();
        let (ca, cert, key) = (
            read(&client.ca),
            read(&server.cert),
            read(&shared.join(OVERLAY_KEY)),
        );
        let (client2, server2) = create_or_keep(&shared, &state, ip).unwrap();
        assert_eq!((&client2, &server2), (&client, &server));
        assert_eq!(read(&client.ca), ca, "the CA is kept");
        assert_eq!(read(&server.cert), cert, "the server's certificate is kept");
        let (current, previous) =
            ClusterKey::load_with_previous(&shared.join(OVERLAY_KEY)).unwrap();
        let old = String::from_utf8(key).unwrap();
        let hex = |k: &ClusterKey| {
            k.as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_ne!(hex(&current), old.trim(), "a new key");
        assert_eq!(
            previous.as_ref().map(hex).as_deref(),
            Some(old.trim()),
            "the old one second"
        );
        std::fs::remove_dir_all(&state).unwrap();
        let e = format!("{:#}", create_or_keep(&shared, &state, ip).unwrap_err());
        assert!(
            e.contains("no server certificate") && e.contains("scancel"),
            "{e}"
        );
        assert_eq!(read(&client.ca), ca, "nothing the nodes hold is replaced");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
