//! The GPUs Slurm gave the bubble's job step (`--gres=gpu:N`): its GPU variables, read from
//! the bubble's own process, are handed to every command run in the bubble, so that
//! `hpktainer run --gpus all` there takes those GPUs only, whatever the caller's own
//! environment says (a login shell, or an `srun --overlap` step with other GPUs).

use std::process::Command;

use tracing::debug;

/// Slurm's and CUDA's names for the GPUs a step may use.
pub const VARS: [&str; 4] = [
    "SLURM_STEP_GPUS",
    "SLURM_JOB_GPUS",
    "CUDA_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
];

/// The GPU variables in an environ block (NUL-separated NAME=VALUE).
pub fn from_environ(block: &[u8]) -> Vec<(String, String)> {
    block
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
        .filter(|(k, _)| VARS.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Sets on `cmd` the GPU variables of process `pid` (the bubble's) and removes the
/// others, so the caller's never stand in for the bubble's. Unreadable: left as they are.
pub fn pass_from(cmd: &mut Command, pid: i32) {
    let block = match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(b) => b,
        Err(e) => {
            debug!(pid, error = %e, "the bubble's environment is unreadable: GPU variables left as they are");
            return;
        }
    };
    let vars = from_environ(&block);
    for name in VARS {
        match vars.iter().find(|(k, _)| k == name) {
            Some((k, v)) => cmd.env(k, v),
            None => cmd.env_remove(name),
        };
    }
    debug!(?vars, "the bubble's GPU variables");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_variables_are_picked_from_an_environ_block() {
        let block =
            b"PATH=/bin\0CUDA_VISIBLE_DEVICES=0,1\0SLURM_JOB_GPUS=2,3\0X=CUDA_VISIBLE_DEVICES=9\0";
        assert_eq!(
            from_environ(block),
            [
                ("CUDA_VISIBLE_DEVICES".to_string(), "0,1".to_string()),
                ("SLURM_JOB_GPUS".to_string(), "2,3".to_string())
            ]
        );
        let mut cmd = Command::new("true");
        cmd.env("SLURM_STEP_GPUS", "7");
        pass_from(&mut cmd, std::process::id() as i32);
        // Our own environment has no SLURM_STEP_GPUS: the caller's value is removed.
        if std::env::var_os("SLURM_STEP_GPUS").is_none() {
            let envs: Vec<_> = cmd.get_envs().collect();
            assert!(
                envs.contains(&(std::ffi::OsStr::new("SLURM_STEP_GPUS"), None)),
                "{envs:?}"
            );
        }
    }
}
