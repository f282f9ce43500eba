//! Our two hooks (hpk-hook createRuntime / poststop) in every format a runtime reads them:
//! config.json `hooks`, oci-hooks(5) files for Podman/CRI-O, and a CDI spec.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{Hook, HookBuilder, Hooks, HooksBuilder};
use serde::{Deserialize, Serialize};

/// Seconds a runtime waits for one hook call; an attach takes ~10 ms.
pub const HOOK_TIMEOUT: i64 = 30;
/// CDI kind (vendor/class) of our device.
pub const CDI_KIND: &str = "hpktainer.io/net";
/// The CDI device SingularityCE users name: `--device hpktainer.io/net=net`.
pub const CDI_DEVICE: &str = "net";

/// The hook binary and how to call it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookSet {
    pub path: PathBuf,
    /// Passed as `--socket`: runtimes give hooks only the env the config names, so
    /// HPK_NETD_SOCKET would not reach the hook.
    pub socket: Option<PathBuf>,
    /// Extra env for the hook (Apptainer clears it).
    pub env: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    CreateRuntime,
    Poststop,
}

impl Stage {
    pub const ALL: [Stage; 2] = [Stage::CreateRuntime, Stage::Poststop];
    pub fn name(self) -> &'static str {
        match self {
            Stage::CreateRuntime => "createRuntime",
            Stage::Poststop => "poststop",
        }
    }

    /// Our oci-hooks(5) file for this stage in a hooks.d directory.
    pub fn hook_file_name(self) -> String {
        format!("hpktainer-{}.json", self.name())
    }
}

/// Finds hpk-hook: `explicit`, else next to this executable, else on PATH.
pub fn find_hook(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--hook {}: no such file", p.display());
        }
        return std::fs::canonicalize(p).with_context(|| format!("--hook {}", p.display()));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let beside = dir.join("hpk-hook");
        if beside.is_file() {
            return Ok(beside);
        }
    }
    if let Some(found) = crate::runtime::which("hpk-hook") {
        return Ok(found);
    }
    bail!("hpk-hook not found next to hpktainer nor on PATH: install it, or pass --hook PATH")
}

impl HookSet {
    /// The socket is named only when it is not the default, so installed configs stay
    /// valid when the default is used.
    pub fn new(path: PathBuf, socket: &Path) -> HookSet {
        let socket =
            (socket != Path::new(hpk_hook::proto::DEFAULT_SOCKET)).then(|| socket.to_path_buf());
        HookSet {
            path,
            socket,
            env: Vec::new(),
        }
    }

    pub fn args(&self, stage: Stage) -> Vec<String> {
        let mut args = vec!["hpk-hook".to_string(), stage.name().to_string()];
        if let Some(s) = &self.socket {
            args.push("--socket".into());
            args.push(s.display().to_string());
        }
        args
    }

    pub fn oci_hook(&self, stage: Stage) -> Hook {
        let mut b = HookBuilder::default()
            .path(self.path.clone())
            .args(self.args(stage))
            .timeout(HOOK_TIMEOUT);
        if !self.env.is_empty() {
            b = b.env(self.env.clone());
        }
        b.build().expect("a hook with a path builds")
    }

    /// The `hooks` object of a config.json.
    pub fn oci_hooks(&self) -> Hooks {
        HooksBuilder::default()
            .create_runtime(vec![self.oci_hook(Stage::CreateRuntime)])
            .poststop(vec![self.oci_hook(Stage::Poststop)])
            .build()
            .expect("hooks build")
    }

    /// Is `hook` one of ours for `stage`? (So adding hooks is idempotent.)
    pub fn is_ours(hook: &Hook, stage: Stage) -> bool {
        let named_hpk = hook.path().file_name().is_some_and(|n| n == "hpk-hook");
        let args = hook.args().clone().unwrap_or_default();
        named_hpk && args.get(1).map(String::as_str) == Some(stage.name())
    }

    /// Adds our hooks to `hooks` unless they are there already.
    pub fn merge_into(&self, hooks: Option<Hooks>) -> Hooks {
        let mut hooks = hooks.unwrap_or_default();
        let mut create = hooks.create_runtime().clone().unwrap_or_default();
        if !create
            .iter()
            .any(|h| Self::is_ours(h, Stage::CreateRuntime))
        {
            create.push(self.oci_hook(Stage::CreateRuntime));
        }
        let mut post = hooks.poststop().clone().unwrap_or_default();
        if !post.iter().any(|h| Self::is_ours(h, Stage::Poststop)) {
            post.push(self.oci_hook(Stage::Poststop));
        }
        hooks.set_create_runtime(Some(create));
        hooks.set_poststop(Some(post));
        hooks
    }

    /// The hook's command for `stage`, as oci-hooks(5) files and CDI specs write it.
    fn command(&self, stage: Stage) -> OciHookCommand {
        OciHookCommand {
            path: self.path.clone(),
            args: self.args(stage),
            env: self.env.clone(),
            timeout: Some(HOOK_TIMEOUT),
        }
    }

    /// oci-hooks(5) files, one per stage (the stage is an argument of the hook).
    pub fn oci_hook_files(&self) -> Vec<(String, OciHookFile)> {
        Stage::ALL
            .iter()
            .map(|&stage| {
                (
                    stage.hook_file_name(),
                    OciHookFile {
                        version: "1.0.0".into(),
                        hook: self.command(stage),
                        when: When { always: Some(true) },
                        stages: vec![stage.name().into()],
                    },
                )
            })
            .collect()
    }

    /// A CDI spec whose only edits are our hooks.
    pub fn cdi_spec(&self) -> CdiSpec {
        let hooks = Stage::ALL
            .iter()
            .map(|&stage| {
                let OciHookCommand {
                    path,
                    args,
                    env,
                    timeout,
                } = self.command(stage);
                CdiHook {
                    hook_name: stage.name().into(),
                    path,
                    args,
                    env,
                    timeout,
                }
            })
            .collect();
        CdiSpec {
            cdi_version: "0.6.0".into(),
            kind: CDI_KIND.into(),
            devices: vec![CdiDevice {
                name: CDI_DEVICE.into(),
                container_edits: ContainerEdits { hooks },
            }],
        }
    }

    /// File name of our CDI spec in a CDI directory.
    pub fn cdi_file_name() -> &'static str {
        "hpktainer.io-net.json"
    }
}

/// oci-hooks(5): `{"version":"1.0.0","hook":{...},"when":{...},"stages":[...]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciHookFile {
    pub version: String,
    pub hook: OciHookCommand,
    pub when: When,
    pub stages: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciHookCommand {
    pub path: PathBuf,
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always: Option<bool>,
}

/// CDI spec (cdiVersion 0.6.0), only the parts a hooks-only device uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CdiSpec {
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<CdiDevice>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CdiDevice {
    pub name: String,
    pub container_edits: ContainerEdits,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerEdits {
    pub hooks: Vec<CdiHook>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CdiHook {
    pub hook_name: String,
    pub path: PathBuf,
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}
