//! The container's environment: the image's, then `--env-file`s, then `-e`, later ones
//! winning per name.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// PATH when the image names none, and for hooks of runtimes that clear the environment
/// (Apptainer).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `NAME=VALUE`, or `NAME` alone to pass this process's value (skipped when unset).
pub fn parse_arg(arg: &str) -> Result<Option<String>> {
    let name = arg.split('=').next().unwrap_or("");
    if name.is_empty() || name.contains(char::is_whitespace) {
        bail!("environment variable {arg:?}: expected NAME=VALUE");
    }
    if arg.contains('=') {
        return Ok(Some(arg.to_string()));
    }
    Ok(std::env::var(name).ok().map(|v| format!("{name}={v}")))
}

/// NAME=VALUE lines; blank lines and `#` comments skipped.
pub fn read_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --env-file {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_arg(line) {
            Ok(Some(v)) => out.push(v),
            Ok(None) => {}
            Err(e) => bail!("{} line {}: {e}", path.display(), n + 1),
        }
    }
    Ok(out)
}

/// Merges `over` into `base`: same name replaces, in place; new names are appended.
pub fn merge(base: &mut Vec<String>, over: impl IntoIterator<Item = String>) {
    for kv in over {
        let name = kv.split('=').next().unwrap_or("").to_string();
        match base
            .iter_mut()
            .find(|e| e.split('=').next() == Some(name.as_str()))
        {
            Some(slot) => *slot = kv,
            None => base.push(kv),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_merges() {
        let mut env = vec![DEFAULT_PATH.to_string(), "A=1".into()];
        merge(&mut env, ["A=2".to_string(), "B=x=y".to_string()]);
        assert_eq!(
            env,
            vec![DEFAULT_PATH.to_string(), "A=2".into(), "B=x=y".into()]
        );
        assert!(parse_arg("=x").is_err());
        assert_eq!(parse_arg("K=").unwrap(), Some("K=".into()));
        assert_eq!(parse_arg("HPK_SURELY_UNSET_VAR").unwrap(), None);
    }
}
