//! One module per subcommand.

pub mod exec;
pub mod hooks;
pub mod logs;
pub mod prune;
pub mod ps;
pub mod run;
pub mod run_other;
pub mod shim;
pub mod status;
pub mod stop;

use std::path::PathBuf;

use crate::paths::Paths;

/// What every command needs: where state lives and where hpk-netd listens.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub paths: Paths,
    /// hpk-netd's socket: --socket, else HPK_NETD_SOCKET, else the default.
    pub socket: PathBuf,
}

impl Ctx {
    pub fn new(root: Option<&std::path::Path>, socket: Option<&std::path::Path>) -> Ctx {
        Ctx {
            paths: Paths::new(root),
            socket: hpk_hook::client::socket_path(socket),
        }
    }
}

/// The exit code of a finished child: its code, or 128 + the signal that killed it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}
