//! `hpktainer runtime`: an OCI runtime with runc's command line. On `create` and `run` it
//! adds our hooks and a network namespace to the bundle's config.json, then execs the
//! real runtime with the arguments untouched; every other verb goes straight through.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, Context, Result};
use tracing::debug;

use super::Ctx;
use crate::bundle;
use crate::hookset::{find_hook, HookSet};

/// runc's global options that take a value (`--root DIR`, not `--root=DIR`).
const GLOBAL_WITH_VALUE: [&str; 5] = ["--root", "--log", "--log-format", "--criu", "--rootless"];

/// Our own options, given before runc's arguments (Podman's `--runtime` names a program,
/// so they go into a two-line wrapper script; conmon does not pass our environment on).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OwnArgs {
    pub runtime_path: Option<PathBuf>,
    pub socket: Option<PathBuf>,
}

/// Splits off leading `--runtime-path PATH` and `--socket PATH` (also `--x=PATH`).
pub fn split_own_args(args: &[String]) -> (OwnArgs, Vec<String>) {
    let mut own = OwnArgs::default();
    let mut i = 0;
    while i < args.len() {
        let (flag, inline) = match args[i].split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (args[i].as_str(), None),
        };
        let slot = match flag {
            "--runtime-path" => &mut own.runtime_path,
            "--socket" => &mut own.socket,
            _ => break,
        };
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                match args.get(i) {
                    Some(v) => v.clone(),
                    None => break,
                }
            }
        };
        *slot = Some(PathBuf::from(value));
        i += 1;
    }
    (own, args[i.min(args.len())..].to_vec())
}

/// The index of the verb in runc's arguments.
pub fn verb_index(args: &[String]) -> Option<usize> {
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if !a.starts_with('-') {
            return Some(i);
        }
        if GLOBAL_WITH_VALUE.contains(&a.as_str()) {
            i += 1;
        }
        i += 1;
    }
    None
}

/// The bundle of a `create`/`run` (`--bundle DIR`, `-b DIR`, `--bundle=DIR`; default: the
/// working directory, as runc does).
pub fn bundle_of(verb_args: &[String]) -> PathBuf {
    let mut it = verb_args.iter();
    while let Some(a) = it.next() {
        if a == "--bundle" || a == "-b" {
            if let Some(v) = it.next() {
                return PathBuf::from(v);
            }
        }
        if let Some(v) = a
            .strip_prefix("--bundle=")
            .or_else(|| a.strip_prefix("-b="))
        {
            return PathBuf::from(v);
        }
    }
    PathBuf::from(".")
}

pub fn shim(ctx: &Ctx, raw: &[String]) -> Result<i32> {
    let (own, args) = split_own_args(raw);
    let socket = own.socket.unwrap_or_else(|| ctx.socket.clone());
    let runtime = own
        .runtime_path
        .or_else(|| std::env::var_os("HPKTAINER_RUNTIME_PATH").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("runc"));
    if let Some(i) = verb_index(&args) {
        if matches!(args[i].as_str(), "create" | "run") {
            let dir = bundle_of(&args[i + 1..]);
            let hooks = HookSet::new(find_hook(None)?, &socket);
            bundle::edit_config(&dir, &hooks).with_context(|| {
                format!(
                    "hpktainer runtime: cannot add our hooks to the bundle {}",
                    dir.display()
                )
            })?;
            debug!(bundle = %dir.display(), "hooks and network namespace added");
        }
    }
    let mut cmd = Command::new(&runtime);
    cmd.args(&args);
    crate::runtime::oci::prepare_runtime_command(
        &mut cmd,
        &crate::runtime::Runtime::from_path(runtime.clone()),
    );
    let err = cmd.exec();
    Err(anyhow!(
        "cannot run the runtime {}: {err} (set --runtime-path or HPKTAINER_RUNTIME_PATH)",
        runtime.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn runc_command_lines_are_understood() {
        let (own, rest) = split_own_args(&v(&[
            "--runtime-path",
            "/usr/bin/crun",
            "--socket=/s",
            "create",
            "x",
        ]));
        assert_eq!(own.runtime_path, Some(PathBuf::from("/usr/bin/crun")));
        assert_eq!(own.socket, Some(PathBuf::from("/s")));
        assert_eq!(rest, v(&["create", "x"]));
        let (own, rest) = split_own_args(&v(&["--root", "/r", "list"]));
        assert_eq!(own, OwnArgs::default());
        assert_eq!(rest, v(&["--root", "/r", "list"]));
        let conmon = v(&[
            "--root",
            "/run/runc",
            "--log",
            "/l",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "id",
        ]);
        let i = verb_index(&conmon).unwrap();
        assert_eq!(conmon[i], "create");
        assert_eq!(bundle_of(&conmon[i + 1..]), PathBuf::from("/b"));
        assert_eq!(bundle_of(&v(&["-b=/c", "id"])), PathBuf::from("/c"));
        assert_eq!(bundle_of(&v(&["id"])), PathBuf::from("."));
        assert_eq!(
            verb_index(&v(&["--debug", "--root=/r", "state", "x"])),
            Some(2)
        );
        assert_eq!(verb_index(&v(&["--version"])), None);
    }
}
