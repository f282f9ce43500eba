//! etcd client TLS from PEM files: the CA to trust and, for client-certificate
//! authentication, our certificate and key.

use std::path::Path;

use anyhow::{Context, Result};
use etcd_client::{Certificate, Identity, TlsOptions};

pub fn options(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<TlsOptions> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}
