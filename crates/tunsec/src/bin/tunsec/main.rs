//! `tunsec`: the command-line interface to `tunsecd`. `demo` and `bench`
//! live here, beside the CLI, and not in the library that `tunsecd` links.

mod bench;
mod demo;

use std::process::ExitCode;

use tunsec::cli::{GatewayCommand, KeysCommand, SaCommand, TunsecArgs, TunsecCommand};
use tunsec::control::{self, Request, Response};

fn main() -> ExitCode {
    let args = TunsecArgs::parse_args();
    let socket = args.socket();
    let request = match args.command {
        TunsecCommand::Status { json, .. } => {
            return match control::call(&socket, &Request::Status) {
                Ok(Response::Status(status)) => {
                    if json {
                        match serde_json::to_string_pretty(&status) {
                            Ok(s) => println!("{s}"),
                            Err(e) => {
                                eprintln!("tunsec: {e}");
                                return ExitCode::FAILURE;
                            }
                        }
                    } else {
                        print!("{}", status.render());
                    }
                    ExitCode::SUCCESS
                }
                Ok(other) => report(other),
                Err(e) => {
                    eprintln!("tunsec: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        TunsecCommand::Metrics { .. } => {
            return match control::call(&socket, &Request::Status) {
                Ok(Response::Status(status)) => {
                    print!("{}", tunsec::metrics::render(&status));
                    ExitCode::SUCCESS
                }
                Ok(other) => report(other),
                Err(e) => {
                    eprintln!("tunsec: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        TunsecCommand::Keys {
            command: KeysCommand::Export { wireshark, .. },
        } => {
            return outcome(
                "tunsec keys export",
                export_keys(
                    &socket,
                    &wireshark,
                    &mut std::io::stdout(),
                    &mut std::io::stderr(),
                ),
            );
        }
        TunsecCommand::Sa {
            command: SaCommand::Delete { peer, .. },
        } => Request::DeleteSa { peer },
        TunsecCommand::Down { peer, .. } => Request::Down { peer },
        TunsecCommand::Up { peer, .. } => Request::Up { peer },
        TunsecCommand::Rekey {
            peer, ike, network, ..
        } => Request::Rekey { peer, ike, network },
        TunsecCommand::Reauth { peer, .. } => Request::Reauth { peer },
        TunsecCommand::Reload { .. } => Request::Reload,
        TunsecCommand::Demo(demo) => {
            return outcome("tunsec demo", demo::run(&demo));
        }
        TunsecCommand::Pki(pki) => {
            return outcome("tunsec pki", tunsec::pki::run(&pki, &mut std::io::stdout()));
        }
        TunsecCommand::Gateway {
            command: GatewayCommand::Release { config },
        } => {
            let released = tunsec::config::Config::load(&config)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))
                .and_then(|c| tunsec::gateway::release(&c))
                .map(|r| {
                    println!(
                        "released: {} rules, {} routes, guard {}",
                        r.rules,
                        r.routes,
                        if r.guard { "removed" } else { "absent" }
                    );
                });
            return outcome("tunsec gateway release", released);
        }
        TunsecCommand::Generate { what } => {
            return outcome(
                "tunsec generate",
                tunsec::cli::generate(&what, &mut std::io::stdout()),
            );
        }
        TunsecCommand::Bench(bench) => {
            return outcome("tunsec bench", bench::run(&bench));
        }
    };
    match control::call(&socket, &request) {
        Ok(r) => report(r),
        Err(e) => {
            eprintln!("tunsec: {e}");
            ExitCode::FAILURE
        }
    }
}

fn report(response: Response) -> ExitCode {
    match response {
        Response::Done { message } => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Response::Error { message } => {
            eprintln!("tunsec: {message}");
            ExitCode::FAILURE
        }
        Response::Status(_) | Response::Keys(_) => ExitCode::SUCCESS,
    }
}

/// `tunsec keys export --wireshark DIR`: asks tunsecd at `socket` for the
/// keys, writes them into `dir` (`keys::write_wireshark`), lists the files on
/// `out`, and warns on `err`, loudly, that they are secret.
fn export_keys(
    socket: &std::path::Path,
    dir: &std::path::Path,
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let export = match control::call(socket, &Request::ExportKeys)? {
        Response::Keys(k) => k,
        Response::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer from tunsecd: {other:?}"),
    };
    let written = tunsec::keys::write_wireshark(dir, &export)?;
    writeln!(
        err,
        "WARNING: SECRET KEYS WRITTEN. The files below hold the keys of {} IKE SAs and {} ESP SAs \
         of this host: whoever reads them can decrypt its IKE and ESP traffic. They are mode 0600; \
         delete them as soon as the debugging is done.",
        export.ike.len(),
        export.esp.len()
    )?;
    for (path, rows) in &written.files {
        writeln!(out, "{} ({rows} SAs)", path.display())?;
    }
    for note in &written.skipped {
        writeln!(err, "left out: {note}")?;
    }
    Ok(())
}

/// The exit code of a command that prints its own output: on an error,
/// `WHAT: ERROR` (with its causes) on stderr.
fn outcome(what: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
