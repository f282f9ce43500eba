//! hpk-hook: the OCI hook that attaches a container to its bubble's network.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use hpk_hook::client::socket_path;
use hpk_hook::hook::{self, Stage};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum HookStage {
    /// After the container's namespaces exist: attach it (address, tap, forwarder).
    #[value(name = "createRuntime")]
    CreateRuntime,
    /// Deprecated alias of createRuntime, for runtimes that only know it.
    #[value(name = "prestart")]
    Prestart,
    /// After the container is deleted: detach it (idempotent; needs only the id).
    #[value(name = "poststop")]
    Poststop,
}

/// OCI hook for hpktainer: reads the container state on stdin and asks hpk-netd to attach
/// (createRuntime, prestart) or detach (poststop) the container.
///
/// Annotations: io.hpktainer.network=none opts a container out;
/// io.hpktainer.ip=ADDRESS asks for a static address in the bubble's subnet.
/// A failure prints one line on stderr and exits 1, which aborts the container's start.
#[derive(Debug, Parser)]
#[command(name = "hpk-hook", version, verbatim_doc_comment)]
struct Cli {
    /// The OCI hook stage this call is for.
    stage: HookStage,

    /// hpk-netd's control socket [env: HPK_NETD_SOCKET; default: /run/hpktainer/netd.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stage = match cli.stage {
        HookStage::CreateRuntime | HookStage::Prestart => Stage::Attach,
        HookStage::Poststop => Stage::Detach,
    };
    let result = hook::read_state(std::io::stdin().lock())
        .and_then(|state| hook::run(stage, &state, &socket_path(cli.socket.as_deref())));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hpk-hook: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn man_page_is_current() {
        use clap::CommandFactory;
        testkit::check_man_page(super::Cli::command(), "1");
    }
}
