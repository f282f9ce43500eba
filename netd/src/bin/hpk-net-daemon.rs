//! hpk-net-daemon: moves Ethernet frames between a container and its bubble.

use std::process::ExitCode;

use hpk_netd::datapath::{args::NetDaemonArgs, run};
use tracing::error;

fn main() -> ExitCode {
    let args = NetDaemonArgs::from_env();
    hpk_netd::logging::init();
    run::run(args).unwrap_or_else(|e| {
        error!("{e:#}");
        ExitCode::FAILURE
    })
}
