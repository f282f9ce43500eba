//! Log setup shared by the binaries: `tracing` to stderr, filtered by `HPK_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the stderr subscriber; `HPK_LOG` takes `tracing` filter syntax (default `info`).
pub fn init() {
    let filter = EnvFilter::try_from_env("HPK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
