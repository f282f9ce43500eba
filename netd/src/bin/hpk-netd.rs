//! hpk-netd: owns a bubble's network and every container endpoint in it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use hpk_hook::client::{socket_path, Client};
use hpk_netd::daemon::{args::RunArgs, run};
use tracing::error;

/// The network daemon of an hpktainer bubble.
///
/// `hpk-netd run` takes the bubble's subnet from flannel's subnet.env (or leases one in
/// etcd as flanneld would), sets up the bridge (the subnet's .1), forwarding and NAT,
/// and then serves the OCI hooks on its control socket: each attached container gets an
/// address, a tap, and a forwarder that outlives hpk-netd restarts.
/// Log level: HPK_LOG (e.g. HPK_LOG=debug).
#[derive(Debug, Parser)]
#[command(name = "hpk-netd", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (in the foreground).
    Run(Box<RunArgs>),
    /// Show the subnet, the bridge and every endpoint.
    Status {
        /// Control socket [env: HPK_NETD_SOCKET; default /run/hpktainer/netd.sock].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    hpk_netd::logging::init();
    let result = match cli.command {
        Command::Run(args) => args.config().and_then(run::run_blocking),
        Command::Status { socket, json } => status(socket, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn status(socket: Option<PathBuf>, json: bool) -> Result<()> {
    let status = Client::new(socket_path(socket.as_deref())).status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", hpk_hook::report::table(&status));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn man_page_is_current() {
        use clap::CommandFactory;
        testkit::check_man_page(super::Cli::command(), "8");
    }
}
