//! hpk-bubble: start, enter and list the bubbles of an hpktainer cluster.

use std::process::ExitCode;

use clap::Parser;
use hpk_bubble::cli::{Cli, Command};
use hpk_bubble::{commands, enter, init, start};

fn main() -> ExitCode {
    let cli = Cli::parse();
    hpk_netd::logging::init();
    let result = match cli.command {
        Command::Start(args) => start::run(args),
        Command::Shell(args) => enter::run(args),
        Command::Wait(args) => commands::wait(args),
        Command::List(args) => commands::list(args),
        Command::Init(args) => init::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hpk-bubble: {e:#}");
            ExitCode::FAILURE
        }
    }
}
