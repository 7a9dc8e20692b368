//! `tunsecd`: the tunsec daemon.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use tunsec::cli::TunsecdArgs;
use tunsec::config::Config;
use tunsec::daemon::Daemon;
use tunsec::gateway::GatewayDaemon;

fn main() -> ExitCode {
    let args = TunsecdArgs::parse();
    let mut logging = match tunsec::logging::init(&args.log) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tunsecd: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tunsecd: {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    logging.apply_config(config.node.log_level.as_ref());
    if args.check && config.gateway.is_some() {
        println!(
            "{}: ok (gateway mode, {} peers)",
            args.config.display(),
            config.peers.len()
        );
        return ExitCode::SUCCESS;
    }
    if args.check {
        println!(
            "{}: ok ({} networks, {} peers)",
            args.config.display(),
            config.networks.len(),
            config.peers.len()
        );
        return ExitCode::SUCCESS;
    }
    let term = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, term.clone()) {
            eprintln!("tunsecd: cannot handle signal {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let config_path = Some(args.config.clone());
    if config.gateway.is_some() {
        return serve(GatewayDaemon::start(config, config_path), |d| d.run(&term));
    }
    serve(Daemon::start(config, config_path), |d| d.run(&term))
}

/// Runs a daemon that `started` (overlay or gateway mode) once it has
/// told systemd it is ready; an error on stderr.
fn serve<D>(started: anyhow::Result<D>, run: impl FnOnce(D) -> anyhow::Result<()>) -> ExitCode {
    let result = started.and_then(|daemon| {
        tunsec::systemd::ready();
        run(daemon)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tunsecd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
