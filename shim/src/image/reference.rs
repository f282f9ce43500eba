//! What users write as IMAGE, parsed into a source.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// Where an image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A root filesystem directory, used as it is.
    Dir(PathBuf),
    /// `docker://REF`: a registry.
    Docker(String),
    /// `oci:DIR[:TAG]`, `oci-archive:FILE`, `docker-archive:FILE`: local, read by skopeo.
    Local { transport: String, path: PathBuf },
}

impl Source {
    pub fn parse(text: &str) -> Result<Source> {
        if let Some(reference) = text.strip_prefix("docker://") {
            check_docker_reference(reference)?;
            return Ok(Source::Docker(reference.to_string()));
        }
        for transport in ["oci-archive", "docker-archive", "oci"] {
            if let Some(rest) = text
                .strip_prefix(transport)
                .and_then(|r| r.strip_prefix(':'))
            {
                if rest.is_empty() {
                    bail!("image {text:?}: {transport}: needs a path");
                }
                // oci:DIR:TAG; the path part must exist.
                let path = PathBuf::from(rest.split(':').next().unwrap_or(rest));
                if !path.exists() {
                    bail!("image {text:?}: {} does not exist", path.display());
                }
                return Ok(Source::Local {
                    transport: transport.to_string(),
                    path,
                });
            }
        }
        let dir = PathBuf::from(text);
        if dir.is_dir() {
            return Ok(Source::Dir(std::fs::canonicalize(&dir)?));
        }
        bail!(
            "unknown image {text:?}: not a directory; use docker://REGISTRY/NAME[:TAG], \
             oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE or a rootfs directory"
        )
    }

    /// The string skopeo reads.
    pub fn skopeo_name(&self, original: &str) -> String {
        match self {
            Source::Docker(r) => format!("docker://{r}"),
            _ => original.to_string(),
        }
    }
}

/// The registry part of a docker reference (docker.io when none is named).
pub fn registry_of(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// localhost registries are plain HTTP by convention; others only when the user says so.
pub fn is_insecure(registry: &str, insecure: &[String]) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost"
        || host.starts_with("127.")
        || host == "[::1]"
        || insecure.iter().any(|i| i == registry || i == host)
}

/// A registry reference is `[HOST[:PORT]/]PATH[:TAG][@DIGEST]`, with a lower-case path.
/// Checked here so a typo is one clear line instead of skopeo's paragraph.
fn check_docker_reference(reference: &str) -> Result<()> {
    let bad = |why: &str| -> Result<()> {
        bail!("malformed image reference docker://{reference}: {why} (expected docker://[HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST])")
    };
    if reference.is_empty() {
        return bad("it is empty");
    }
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        let ok = d
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return bad("the digest is not sha256:<64 hex digits>");
        }
    }
    let registry = registry_of(name);
    let path = if registry == "docker.io" && !name.starts_with("docker.io/") {
        name
    } else {
        &name[registry.len() + 1..]
    };
    let (path, tag) = match path.rsplit_once(':') {
        Some((p, t)) => (p, Some(t)),
        None => (path, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return bad("the tag may hold only letters, digits, '_', '.' and '-'");
        }
    }
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    };
    if path.is_empty() || !path.split('/').all(component_ok) {
        return bad("the name must be lower-case letters, digits, '.', '_', '-' separated by '/'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        assert_eq!(
            Source::parse("docker://docker.io/chazapis/hpktainer-base:latest").unwrap(),
            Source::Docker("docker.io/chazapis/hpktainer-base:latest".into())
        );
        for good in [
            "busybox",
            "library/busybox:1.36",
            "127.0.0.1:5000/bb:latest",
            "localhost/x/y",
            "registry.example:443/a/b@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            check_docker_reference(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "Busybox",
            "a b",
            "x:",
            "x@sha256:12",
            "127.0.0.1:5000/",
            "a//b",
        ] {
            assert!(check_docker_reference(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Source::parse("/no/such/rootfs").is_err());
        assert!(Source::parse("oci:/no/such/layout:tag").is_err());
        assert!(matches!(Source::parse("/").unwrap(), Source::Dir(_)));
    }

    #[test]
    fn registries_and_insecurity() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/bb"), "127.0.0.1:5000");
        assert!(is_insecure("127.0.0.1:5000", &[]));
        assert!(is_insecure("localhost:5000", &[]));
        assert!(!is_insecure("registry.example", &[]));
        assert!(is_insecure(
            "registry.example:5000",
            &["registry.example:5000".into()]
        ));
        assert!(is_insecure(
            "registry.example",
            &["registry.example".into()]
        ));
    }
}
