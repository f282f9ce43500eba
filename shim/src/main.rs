//! hpktainer: parse, set up logging, dispatch.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use hpktainer::cli::{Cli, Command, HooksCommand, InstanceCommand, RunOpts};
use hpktainer::commands::{self, Ctx};
use tracing_subscriber::EnvFilter;

/// hpktainer's own failures (bad input, netd down, ...) exit with 125, as Podman's do, so
/// they differ from the container's exit codes.
const OWN_FAILURE: u8 = 125;

fn init_logging(debug: bool) {
    let filter = if debug {
        EnvFilter::new("debug")
    } else {
        EnvFilter::try_from_env("HPK_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
}

/// `hpktainer-runtime ARGS` (a symlink, for --runtime users) or `hpktainer runtime ARGS`:
/// runc's command line, which clap must not see (runc has its own --root and --debug).
fn shim_args(argv: &[String]) -> Option<Vec<String>> {
    let invoked = argv.first().map(|a| {
        Path::new(a)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    });
    if invoked.as_deref() == Some("hpktainer-runtime") {
        return Some(argv[1..].to_vec());
    }
    let rest = argv.get(2..)?;
    let help = rest.is_empty() || matches!(rest, [h] if h == "--help" || h == "-h");
    (argv[1] == "runtime" && !help).then(|| rest.to_vec())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if let Some(args) = shim_args(&argv) {
        init_logging(false);
        let ctx = Ctx::new(
            std::env::var_os("HPKTAINER_ROOT").as_deref().map(Path::new),
            None,
        );
        return finish(commands::shim::shim(&ctx, &args));
    }
    let cli = Cli::parse();
    init_logging(cli.debug);
    let ctx = Ctx::new(cli.root.as_deref(), cli.socket.as_deref());
    let result = match cli.command {
        Command::Run(a) => commands::run::run(&ctx, &a.opts, &a.image, &a.command),
        Command::Shell { opts, image } => {
            let opts = RunOpts {
                interactive: true,
                tty: true,
                ..opts
            };
            commands::run::run(&ctx, &opts, &image, &["/bin/sh".to_string()])
        }
        Command::Exec(a) => commands::exec::exec(&ctx, &a),
        Command::Ps(a) => commands::ps::ps(&ctx, a.all, a.json).map(|()| 0),
        Command::Stop(a) => commands::stop::stop(&ctx, &a.names, a.time, false).map(|()| 0),
        Command::Port { name } => commands::ps::port(&ctx, name.as_deref()).map(|()| 0),
        Command::Logs { name } => commands::logs::logs(&ctx, &name).map(|()| 0),
        Command::Rm { force, names } => commands::prune::rm(&ctx, &names, force).map(|()| 0),
        Command::Prune => commands::prune::prune(&ctx).map(|()| 0),
        Command::Instance(InstanceCommand::Start {
            opts,
            image,
            instance,
            command,
        }) => {
            let opts = RunOpts {
                detach: true,
                name: Some(instance),
                ..opts
            };
            commands::run::run(&ctx, &opts, &image, &command)
        }
        Command::Instance(InstanceCommand::Stop { time, names }) => {
            commands::stop::stop(&ctx, &names, time, true).map(|()| 0)
        }
        Command::Instance(InstanceCommand::List { json }) => {
            commands::ps::ps(&ctx, false, json).map(|()| 0)
        }
        Command::Hooks(HooksCommand::Install(a)) => commands::hooks::install(&ctx, &a).map(|()| 0),
        Command::Hooks(HooksCommand::Uninstall(d)) => commands::hooks::uninstall(&d).map(|()| 0),
        Command::Runtime(a) => {
            let mut args = Vec::new();
            if let Some(p) = a.runtime_path {
                args.push(format!("--runtime-path={}", p.display()));
            }
            args.extend(a.args);
            commands::shim::shim(&ctx, &args)
        }
        Command::Status { json } => commands::status::status(&ctx, json).map(|()| 0),
    };
    finish(result)
}

fn finish(result: anyhow::Result<i32>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("hpktainer: {e:#}");
            ExitCode::from(OWN_FAILURE)
        }
    }
}
