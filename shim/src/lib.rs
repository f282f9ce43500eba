//! hpktainer: run containers on a bubble's overlay network (hpk-netd), with runc, crun,
//! Apptainer or SingularityCE, and set up hpktainer's OCI hooks for every runtime.

pub mod bundle;
pub mod cli;
pub mod commands;
pub mod devices;
pub mod environment;
pub mod files;
pub mod hookset;
pub mod image;
pub mod netd;
pub mod paths;
pub mod rootfs;
pub mod rootless;
pub mod runtime;
pub mod signals;
pub mod state;
pub mod sweep;
pub mod tool;
pub mod userspec;

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};

    /// A scratch directory under the temporary directory, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(what: &str) -> TempDir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let dir =
                std::env::temp_dir().join(format!("hpk-{what}-{}-{nanos:08x}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
