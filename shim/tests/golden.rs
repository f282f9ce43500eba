//! What we hand to runtimes we cannot run here (Apptainer, SingularityCE) and the hook
//! configurations Podman/CRI-O and CDI read: golden files, plus structural checks against
//! the required fields of their formats. `UPDATE_GOLDEN=1` rewrites the files.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hpktainer::hookset::{CdiSpec, HookSet, OciHookFile};
use hpktainer::runtime::{apptainer, singularity};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde_json::Value;

const HOOK: &str = "/usr/local/bin/hpk-hook";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `actual` with the golden file `name` (or rewrites it with UPDATE_GOLDEN=1).
fn golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(actual, expected, "{name} differs from its golden file");
}

fn hooks() -> HookSet {
    HookSet::new(HOOK.into(), Path::new(hpk_hook::proto::DEFAULT_SOCKET))
}

/// A scratch directory holding a file named hpk-hook, so `--hook` accepts it.
fn fake_hook(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let hook = dir.join("hpk-hook");
    std::fs::write(&hook, "").unwrap();
    hook
}

fn check_oci_hook_file(v: &Value) {
    // oci-hooks(5), version 1.0.0: hook.path required; when needs one condition; stages
    // from the OCI lifecycle.
    let f: OciHookFile = serde_json::from_value(v.clone()).expect("only known fields");
    assert_eq!(f.version, "1.0.0");
    assert!(f.hook.path.is_absolute());
    assert!(
        f.when.always == Some(true),
        "a `when` condition is required"
    );
    assert!(!f.stages.is_empty());
    for s in &f.stages {
        assert!(
            [
                "prestart",
                "createRuntime",
                "createContainer",
                "startContainer",
                "poststart",
                "poststop"
            ]
            .contains(&s.as_str()),
            "stage {s}"
        );
    }
    assert_eq!(f.hook.args.first().map(String::as_str), Some("hpk-hook"));
    assert_eq!(
        f.hook.args.get(1),
        f.stages.first(),
        "the stage is the hook's argument"
    );
}

fn check_cdi(v: &Value) {
    // CDI 0.6.0: cdiVersion, kind vendor/class, >= 1 device with a valid name and >= 1 edit;
    // hook names from the allowed set, absolute paths.
    let spec: CdiSpec = serde_json::from_value(v.clone()).expect("only known fields");
    assert_eq!(spec.cdi_version, "0.6.0");
    let (vendor, class) = spec.kind.split_once('/').expect("kind is vendor/class");
    let ok = |s: &str, extra: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    assert!(ok(vendor, ".-") && ok(class, "._-"), "{}", spec.kind);
    assert!(!spec.devices.is_empty());
    for d in &spec.devices {
        assert!(ok(&d.name, "_.:-") && d.name.chars().next().unwrap().is_ascii_alphanumeric());
        assert!(
            !d.container_edits.hooks.is_empty(),
            "a device needs an edit"
        );
        for h in &d.container_edits.hooks {
            assert!([
                "prestart",
                "createRuntime",
                "createContainer",
                "startContainer",
                "poststart",
                "poststop"
            ]
            .contains(&h.hook_name.as_str()));
            assert!(h.path.is_absolute());
        }
    }
}

#[test]
fn hooks_install_writes_the_golden_files() {
    let scratch = testkit::Scratch::new(&testkit::prefix());
    let dir = scratch.0.clone();
    let hook = fake_hook(&dir.join("bin"));
    let (hooks_d, cdi) = (dir.join("hooks.d"), dir.join("cdi"));
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(support::HPKTAINER)
            .env_remove("HPK_NETD_SOCKET")
            .args(["hooks", "install", "--hook"])
            .arg(&hook)
            .arg("--podman")
            .arg(&hooks_d)
            .arg("--cdi")
            .arg(&cdi)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", support::stderr(&out));
        support::stdout(&out).replace(hook.to_str().unwrap(), HOOK)
    };
    run(&[]);
    for (file, name) in [
        (
            hooks_d.join("hpktainer-createRuntime.json"),
            "hooks.d/hpktainer-createRuntime.json",
        ),
        (
            hooks_d.join("hpktainer-poststop.json"),
            "hooks.d/hpktainer-poststop.json",
        ),
        (
            cdi.join("hpktainer.io-net.json"),
            "cdi/hpktainer.io-net.json",
        ),
    ] {
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace(hook.to_str().unwrap(), HOOK);
        golden(name, &text);
        let v: Value = serde_json::from_str(&text).unwrap();
        if name.starts_with("cdi/") {
            check_cdi(&v);
        } else {
            check_oci_hook_file(&v);
        }
    }
    let snippet = run(&["--print-config-json"]);
    golden("config-hooks.json", &snippet);
    let v: Value = serde_json::from_str(&snippet).unwrap();
    assert_eq!(v["hooks"]["createRuntime"][0]["args"][1], "createRuntime");
    assert_eq!(v["hooks"]["poststop"][0]["args"][1], "poststop");
}

#[test]
fn library_and_binary_agree_on_the_formats() {
    let h = hooks();
    for (name, file) in h.oci_hook_files() {
        let text = format!("{}\n", serde_json::to_string_pretty(&file).unwrap());
        golden(&format!("hooks.d/{name}"), &text);
    }
    let cdi = format!("{}\n", serde_json::to_string_pretty(&h.cdi_spec()).unwrap());
    golden("cdi/hpktainer.io-net.json", &cdi);
}

#[test]
fn apptainer_bundle_edit() {
    let input = golden_dir().join("apptainer-mounted.json");
    let mut spec = Spec::load(&input).unwrap();
    let overrides = apptainer::Overrides {
        args: vec!["ip".into(), "addr".into(), "show".into(), "tap0".into()],
        env: vec!["EXTRA=1".into()],
        cwd: Some("/srv".into()),
        annotations: HashMap::from([("io.hpktainer.ip".to_string(), "10.244.3.7".to_string())]),
    };
    apptainer::edit_spec(&mut spec, Some(&hooks()), &overrides);
    let text = format!("{}\n", serde_json::to_string_pretty(&spec).unwrap());
    golden("apptainer-edited.json", &text);

    // The structure Apptainer's engine needs: a network namespace, our two hooks with
    // PATH (it clears the environment), the annotation the hook reads.
    let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    assert_eq!(
        ns.iter()
            .filter(|n| n.typ() == LinuxNamespaceType::Network)
            .count(),
        1
    );
    let ours = spec.hooks().as_ref().unwrap();
    for stage in [ours.create_runtime(), ours.poststop()] {
        let stage = stage.as_ref().unwrap();
        assert_eq!(stage.len(), 1);
        assert!(stage[0]
            .env()
            .as_ref()
            .unwrap()
            .iter()
            .any(|e| e.starts_with("PATH=/")));
    }
    assert!(ours.prestart().is_none(), "Apptainer ignores prestart");
    // Idempotent: a second edit adds nothing.
    let mut again = spec.clone();
    apptainer::edit_spec(&mut again, Some(&hooks()), &apptainer::Overrides::default());
    assert_eq!(again.hooks(), spec.hooks());
    assert_eq!(again.linux(), spec.linux());

    let b = Path::new("/tmp/b");
    let a = Path::new("/usr/local/bin/apptainer");
    let lines = [
        apptainer::mount_cmd(a, "docker://docker.io/chazapis/hpktainer-base:latest", b),
        apptainer::run_cmd(a, b, "c1"),
        apptainer::umount_cmd(a, b),
    ]
    .iter()
    .map(|c| format!("{}\n", hpktainer::tool::render(c)))
    .collect::<String>();
    golden("apptainer-commands.txt", &lines);
}

#[test]
fn singularity_command_lines() {
    let s = Path::new("/usr/local/bin/singularity");
    let base = singularity::Invocation {
        image: "docker://docker.io/chazapis/hpktainer-base:latest".into(),
        cdi_dir: "/run/hpktainer/generated/cdi".into(),
        ..Default::default()
    };
    let with_cmd = singularity::Invocation {
        args: vec!["ip".into(), "addr".into()],
        env: vec!["A=1".into()],
        binds: vec!["/data:/data:ro".into()],
        cwd: Some("/srv".into()),
        ..base.clone()
    };
    let none = singularity::Invocation {
        no_network: true,
        ..base.clone()
    };
    // The user's CDI devices (GPUs as their CDI names), with their spec directories.
    let gpus = singularity::Invocation {
        devices: vec!["nvidia.com/gpu=0".into(), "example.test/dev=all".into()],
        device_cdi_dirs: vec!["/etc/cdi".into(), "/var/run/cdi".into()],
        ..base.clone()
    };
    let lines = [&base, &with_cmd, &none, &gpus]
        .iter()
        .map(|i| {
            format!(
                "{}\n",
                hpktainer::tool::render(&singularity::command(s, i).unwrap())
            )
        })
        .collect::<String>();
    golden("singularity-commands.txt", &lines);
    // SingularityCE needs --net --network none for a namespace, and our CDI device.
    let first = lines.lines().next().unwrap();
    assert!(
        first.contains("run --oci --net --network none --device hpktainer.io/net=net --cdi-dirs")
    );
}
