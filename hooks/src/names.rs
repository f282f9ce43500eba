//! Container names as the bubbles' DNS serves them: the annotations that carry a name, and
//! what a valid name is. Shared by `hpktainer run` (refuses a bad `--name` before anything
//! starts), the hook and hpk-netd (which never stores an invalid one).

/// The annotation hpktainer sets to the container's name.
pub const ANNOTATION_NAME: &str = "io.hpktainer.name";

/// Where other runtimes put a container's name, tried in order after ours: CRI-O's and
/// nerdctl's. (Podman puts none in the bundle: its users add `--annotation
/// io.hpktainer.name=NAME`.)
pub const RUNTIME_NAME_ANNOTATIONS: &[&str] =
    &["io.kubernetes.cri-o.ContainerName", "nerdctl/name"];

/// The longest DNS label (RFC 1035 2.3.4).
pub const MAX_LABEL: usize = 63;

/// Checks that `name` is one DNS label (RFC 1123: letters, digits and inner hyphens, at most
/// 63 characters); the error says what is wrong with it.
pub fn validate(name: &str) -> Result<(), String> {
    let why = if name.is_empty() {
        "it is empty".to_string()
    } else if name.len() > MAX_LABEL {
        format!(
            "it has {} characters, a DNS label at most {MAX_LABEL}",
            name.len()
        )
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        format!("{c:?} is not allowed (letters, digits and '-' only)")
    } else if name.starts_with('-') || name.ends_with('-') {
        "it starts or ends with '-'".to_string()
    } else {
        return Ok(());
    };
    Err(format!(
        "container name {name:?} cannot be a DNS name: {why}; choose a name like \"web\" or \"db-1\""
    ))
}

/// The name the container carries in its annotations, if any; ours first. Names are
/// compared and served in lower case, as DNS compares them.
pub fn from_annotations(annotations: &std::collections::HashMap<String, String>) -> Option<String> {
    std::iter::once(ANNOTATION_NAME)
        .chain(RUNTIME_NAME_ANNOTATIONS.iter().copied())
        .find_map(|key| annotations.get(key))
        .filter(|v| !v.is_empty())
        .map(|v| v.to_ascii_lowercase())
}

/// Why `name` cannot be had: who has it and where, and what to do.
pub fn taken(name: &str, container: &str, address: std::net::Ipv4Addr, bubble: &str) -> String {
    format!(
        "name {name} is taken: container {container} at {address} in the bubble of {bubble} \
         has it; choose another --name, or stop that container first"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_pass_and_the_rest_say_why() {
        for ok in ["web", "db-1", "A1", &"x".repeat(63)] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        let why = |n: &str| validate(n).unwrap_err();
        assert!(why("").contains("empty"));
        assert!(why(&"x".repeat(64)).contains("64 characters"));
        assert!(why("my_db").contains("'_' is not allowed"));
        assert!(why("web.x").contains("'.' is not allowed"));
        assert!(why("-web").contains("starts or ends"));
        assert!(why("web-").contains("starts or ends"));
    }

    #[test]
    fn our_annotation_wins_and_names_are_lower_case() {
        let ann = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(from_annotations(&ann(&[])), None);
        assert_eq!(
            from_annotations(&ann(&[("nerdctl/name", "Web")])).as_deref(),
            Some("web")
        );
        assert_eq!(
            from_annotations(&ann(&[("nerdctl/name", "x"), (ANNOTATION_NAME, "db")])).as_deref(),
            Some("db")
        );
        assert_eq!(from_annotations(&ann(&[(ANNOTATION_NAME, "")])), None);
    }
}
