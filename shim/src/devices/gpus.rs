//! `--gpus` / `--nv`: NVIDIA GPUs through the CDI spec the NVIDIA Container Toolkit writes
//! (`nvidia-ctk cdi generate`), limited to the GPUs Slurm gave the job when it says so.

use anyhow::{bail, Result};

use super::registry::Registry;

pub const KIND: &str = "nvidia.com/gpu";

/// Slurm's absolute GPU indices (right when the job's cgroup renumbers what CUDA sees)
/// come first; then CUDA_VISIBLE_DEVICES (indices, or GPU-/MIG- UUIDs).
const ENV: [&str; 3] = ["SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"];

/// The GPUs this environment restricts us to, and the variable that said so.
pub fn visible(get: impl Fn(&str) -> Option<String>) -> Option<(&'static str, Vec<String>)> {
    ENV.iter().find_map(|name| {
        let v = get(name)?;
        let list: Vec<String> = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "NoDevFiles")
            .map(String::from)
            .collect();
        Some((*name, list))
    })
}

/// The CDI device names `--gpus WHICH` (`all` or a comma list) means here.
pub fn names(
    which: &str,
    reg: &Registry,
    get: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>> {
    if !reg.has_kind(KIND) {
        let dirs: Vec<String> = reg.dirs.iter().map(|d| d.display().to_string()).collect();
        bail!(
            "--gpus/--nv: no NVIDIA CDI spec (kind {KIND}) in {}: on the node, as root, run \
             `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` (NVIDIA Container Toolkit), \
             or point --cdi-spec-dir at a directory holding one",
            dirs.join(", ")
        );
    }
    let asked: Option<Vec<String>> = match which.trim_start_matches("device=") {
        "all" => None,
        list => Some(list.split(',').map(|s| s.trim().to_string()).collect()),
    };
    let picked = match (asked, visible(get)) {
        (None, None) => return Ok(vec![format!("{KIND}=all")]),
        (Some(list), _) => list,
        (None, Some((var, list))) => {
            if list.is_empty() {
                bail!("--gpus all: {var} names no GPU: this job was given none (ask Slurm for them with --gres=gpu:N)");
            }
            tracing::debug!(from = var, gpus = ?list, "GPUs limited by the environment");
            list
        }
    };
    Ok(picked.into_iter().map(|g| format!("{KIND}={g}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg_with_gpus() -> (crate::testutil::TempDir, Registry) {
        let dir = crate::testutil::TempDir::new("gpus");
        std::fs::write(
            dir.path().join("nvidia.yaml"),
            "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: \"0\"\n  containerEdits: {env: [G=0]}\n- name: all\n  containerEdits: {env: [G=all]}\n",
        )
        .unwrap();
        let reg = Registry::load(&[dir.path().to_path_buf()]).unwrap();
        (dir, reg)
    }

    #[test]
    fn slurm_and_cuda_variables_pick_the_gpus() {
        let (_d, reg) = reg_with_gpus();
        let none = |_: &str| None;
        assert_eq!(names("all", &reg, none).unwrap(), ["nvidia.com/gpu=all"]);
        let cuda = |n: &str| (n == "CUDA_VISIBLE_DEVICES").then(|| "1,GPU-abc".to_string());
        assert_eq!(
            names("all", &reg, cuda).unwrap(),
            ["nvidia.com/gpu=1", "nvidia.com/gpu=GPU-abc"]
        );
        let both = |n: &str| match n {
            "SLURM_JOB_GPUS" => Some("2,3".to_string()),
            "CUDA_VISIBLE_DEVICES" => Some("0,1".to_string()),
            _ => None,
        };
        assert_eq!(
            names("all", &reg, both).unwrap(),
            ["nvidia.com/gpu=2", "nvidia.com/gpu=3"]
        );
        assert_eq!(names("device=0", &reg, both).unwrap(), ["nvidia.com/gpu=0"]);
        let empty = |n: &str| (n == "CUDA_VISIBLE_DEVICES").then(String::new);
        assert!(names("all", &reg, empty)
            .unwrap_err()
            .to_string()
            .contains("gres"));
        let e = names("all", &Registry::default(), none)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"),
            "{e}"
        );
    }
}
