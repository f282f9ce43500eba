//! Every CDI spec of the CDI directories, and the devices a name picks among them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use tracing::{debug, warn};

use super::cdi::{Device, Spec};

/// A spec read from a file, and the priority of its directory (later directories win).
#[derive(Clone, Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub priority: usize,
    pub spec: Spec,
}

/// A file that could not be used: what it is about when that much could be read.
#[derive(Debug)]
pub struct Broken {
    pub path: PathBuf,
    pub kind: Option<String>,
    pub error: anyhow::Error,
}

/// Every spec file of `dirs` (missing directories are skipped).
#[derive(Debug, Default)]
pub struct Registry {
    pub dirs: Vec<PathBuf>,
    pub specs: Vec<Loaded>,
    pub broken: Vec<Broken>,
}

impl Registry {
    pub fn load(dirs: &[PathBuf]) -> Result<Registry> {
        let mut reg = Registry {
            dirs: dirs.to_vec(),
            ..Registry::default()
        };
        for (priority, dir) in dirs.iter().enumerate() {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot read the CDI directory {}", dir.display())
                    })
                }
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("json" | "yaml" | "yml")
                    )
                })
                .collect();
            files.sort();
            for path in files {
                reg.read(path, priority);
            }
        }
        Ok(reg)
    }

    fn read(&mut self, path: PathBuf, priority: usize) {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                self.broken.push(Broken {
                    path,
                    kind: None,
                    error: e.into(),
                });
                return;
            }
        };
        match Spec::parse(&text) {
            Ok(spec) => {
                debug!(path = %path.display(), kind = %spec.kind, "CDI spec");
                self.specs.push(Loaded {
                    path,
                    priority,
                    spec,
                });
            }
            Err(error) => {
                // Its kind, when the file is at least a map with one.
                let kind = serde_yaml_ng::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("kind")?.as_str().map(String::from));
                self.broken.push(Broken { path, kind, error });
            }
        }
    }

    /// Whether any readable spec is of `kind`.
    pub fn has_kind(&self, kind: &str) -> bool {
        self.specs.iter().any(|s| s.spec.kind == kind)
    }

    fn dirs_text(&self) -> String {
        self.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The devices `kind=name` names (`all`: every device of the kind, unless a spec
    /// defines one named `all`), each with its spec; a spec of that kind that cannot be
    /// used is an error naming its file.
    pub fn resolve(&self, kind: &str, name: &str) -> Result<Vec<(&Loaded, &Device)>> {
        if let Some(b) = self.broken.iter().find(|b| b.kind.as_deref() == Some(kind)) {
            return Err(anyhow!("{:#}", b.error)).with_context(|| {
                format!("the CDI spec {} (kind {kind}) is invalid", b.path.display())
            });
        }
        let of_kind: Vec<&Loaded> = self.specs.iter().filter(|s| s.spec.kind == kind).collect();
        let explicit = of_kind
            .iter()
            .any(|s| s.spec.devices.iter().any(|d| d.name == name));
        let mut found: BTreeMap<&str, (&Loaded, &Device)> = BTreeMap::new();
        for s in &of_kind {
            for d in &s.spec.devices {
                if d.name != name && (explicit || name != "all") {
                    continue;
                }
                if let Some((other, _)) = found.get(d.name.as_str()) {
                    if other.priority == s.priority {
                        bail!(
                            "CDI device {kind}={} is defined in both {} and {}: remove one",
                            d.name,
                            other.path.display(),
                            s.path.display()
                        );
                    }
                    if other.priority > s.priority {
                        continue;
                    }
                }
                found.insert(&d.name, (s, d));
            }
        }
        if found.is_empty() {
            let mut msg = if of_kind.is_empty() {
                format!("no CDI spec of kind {kind} in {}", self.dirs_text())
            } else {
                let names: Vec<&str> = of_kind
                    .iter()
                    .flat_map(|s| s.spec.devices.iter().map(|d| d.name.as_str()))
                    .collect();
                let files: Vec<String> = of_kind
                    .iter()
                    .map(|s| s.path.display().to_string())
                    .collect();
                format!(
                    "no CDI device {kind}={name} in {} (it has: {})",
                    files.join(", "),
                    names.join(", ")
                )
            };
            for b in self.broken.iter().filter(|b| b.kind.is_none()) {
                msg.push_str(&format!(
                    "; {} could not be read: {:#}",
                    b.path.display(),
                    b.error
                ));
            }
            bail!(msg);
        }
        for b in &self.broken {
            warn!(path = %b.path.display(), error = %format!("{:#}", b.error), "CDI spec skipped");
        }
        Ok(found.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
cdiVersion: "0.5.0"
kind: example.test/dev
devices:
  - name: a
    containerEdits:
      deviceNodes:
        - path: /dev/a
          hostPath: /dev/null
  - name: "1"
    containerEdits:
      env: ["ONE=1"]
containerEdits:
  mounts:
    - hostPath: /tmp
      containerPath: /data
      options: [ro, bind]
"#;

    #[test]
    fn resolution_by_name_all_and_priority() {
        let scratch = crate::testutil::TempDir::new("cdi");
        let (low, high) = (scratch.path().join("etc"), scratch.path().join("run"));
        std::fs::create_dir_all(&low).unwrap();
        std::fs::create_dir_all(&high).unwrap();
        std::fs::write(low.join("x.yaml"), YAML).unwrap();
        std::fs::write(high.join("x.json"), r#"{"cdiVersion":"0.3.0","kind":"example.test/dev","devices":[{"name":"a","containerEdits":{"env":["HIGH=1"]}}]}"#).unwrap();
        std::fs::write(high.join("junk.yaml"), "{{{").unwrap();
        let reg =
            Registry::load(&[low.clone(), high.clone(), scratch.path().join("none")]).unwrap();
        let a = reg.resolve("example.test/dev", "a").unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].1.container_edits.env, ["HIGH=1"]);
        assert_eq!(reg.resolve("example.test/dev", "all").unwrap().len(), 2);
        let e = format!("{:#}", reg.resolve("example.test/dev", "zz").unwrap_err());
        assert!(
            e.contains("it has: a, 1, a") && e.contains("junk.yaml"),
            "{e}"
        );
        // A spec of the kind asked for that is invalid: an error naming the file.
        std::fs::write(
            low.join("bad.yaml"),
            "cdiVersion: 0.3.0\nkind: example.test/dev\ndevices: []\n",
        )
        .unwrap();
        let reg = Registry::load(&[low.clone(), high]).unwrap();
        let e = format!("{:#}", reg.resolve("example.test/dev", "a").unwrap_err());
        assert!(e.contains("bad.yaml") && e.contains("no devices"), "{e}");
        // The same device twice in one directory.
        std::fs::remove_file(low.join("bad.yaml")).unwrap();
        std::fs::write(low.join("y.yaml"), YAML).unwrap();
        let reg = Registry::load(&[low]).unwrap();
        let e = format!("{:#}", reg.resolve("example.test/dev", "a").unwrap_err());
        assert!(e.contains("both"), "{e}");
    }
}
