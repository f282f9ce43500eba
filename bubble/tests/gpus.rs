//! A Slurm job with `--gres=gpu:N`: the bubble's step has the GPU variables Slurm set for
//! it, and `hpktainer run --nv` typed in the bubble (through `hpk-bubble shell`) takes
//! those GPUs, not the ones the caller's environment names. The GPUs are stand-ins: a CDI
//! spec of kind nvidia.com/gpu whose nodes are /dev/null and /dev/zero.

mod support;

use support::{stderr, stdout, Cluster};

#[test]
fn commands_in_a_bubble_see_the_gpus_slurm_gave_it() {
    let mut c = Cluster::new(1);
    let cdi = c.dir.0.join("cdi");
    std::fs::create_dir_all(&cdi).unwrap();
    std::fs::write(
        cdi.join("nvidia.yaml"),
        r#"cdiVersion: "0.5.0"
kind: nvidia.com/gpu
devices:
  - name: "0"
    containerEdits:
      deviceNodes: [{path: /dev/nvidia0, hostPath: /dev/null}]
  - name: "1"
    containerEdits:
      deviceNodes: [{path: /dev/nvidia1, hostPath: /dev/zero}]
"#,
    )
    .unwrap();
    // Slurm gave the bubble's step GPU 1.
    c.launch_with(0, 1, "controller", &[], &[("CUDA_VISIBLE_DEVICES", "1")]);
    c.wait_ready(1);
    // The caller's own step names GPU 0, both ways.
    let in_bubble = |args: &[&str]| {
        let mut cmd = c.command(0, &["shell", "1", "--"]);
        cmd.args(args)
            .env("CUDA_VISIBLE_DEVICES", "0")
            .env("SLURM_JOB_GPUS", "0")
            .stdin(std::process::Stdio::null());
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out).trim().to_string()
    };
    assert_eq!(
        in_bubble(&[
            "sh",
            "-c",
            "echo ${CUDA_VISIBLE_DEVICES}/${SLURM_JOB_GPUS:-none}"
        ]),
        "1/none"
    );
    let rootfs = c.rootfs.to_str().unwrap();
    let cdi = cdi.to_str().unwrap();
    let seen = in_bubble(&[
        "hpktainer",
        "run",
        "--nv",
        "--cdi-spec-dir",
        cdi,
        rootfs,
        "sh",
        "-c",
        "ls /dev | grep nvidia",
    ]);
    assert_eq!(seen, "nvidia1");
}
