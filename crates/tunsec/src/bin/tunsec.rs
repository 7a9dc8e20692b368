//! `tunsec`: the command-line interface to `tunsecd`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tunsec::config::DEFAULT_CONTROL_SOCKET;
use tunsec::control::{self, Request, Response};

/// tunsec: inspect and control tunsecd.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// tunsecd's control socket.
    #[arg(long, global = true, default_value = DEFAULT_CONTROL_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the node, networks, peers, every SA with its counters, drops
    /// and the forwarding database.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the status as OpenMetrics text for Prometheus (per peer: IKE
    /// SA established, Child SAs; per SA: packets, bytes, drops; per
    /// network; data path drops), e.g. for node_exporter's textfile
    /// collector.
    Metrics,
    /// Take an IKE peer down: delete its IKE SA (telling the peer) and
    /// make no new one until `up`; its `require` traffic is dropped.
    Down {
        /// The peer's name.
        peer: String,
    },
    /// Bring an IKE peer up: negotiate at once.
    Up {
        /// The peer's name.
        peer: String,
    },
    /// Rekey an IKE peer's Child SA now: new keys and SPIs, make before
    /// break (the old SAs go once the new ones carry the traffic).
    Rekey {
        /// The peer's name.
        peer: String,
        /// Rekey the IKE SA instead (new IKE SPIs and keys; the Child SAs
        /// stay).
        #[arg(long)]
        ike: bool,
    },
    /// Re-authenticate an IKE peer now: a new IKE SA with the current
    /// credentials replaces the established one, make before break.
    Reauth {
        /// The peer's name.
        peer: String,
    },
    /// Make tunsecd read its configuration file again and take up new IKE
    /// credentials (certificate, key, CA, CRL, PSK) for new IKE SAs (as
    /// SIGHUP does).
    Reload,
    /// Manage SAs.
    Sa {
        #[command(subcommand)]
        command: SaCommand,
    },
    /// Gateway mode's entries on this host.
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
    },
    /// Run the demo: three hosts and two virtual networks in network
    /// namespaces on this machine (needs root).
    Demo(tunsec::demo::DemoArgs),
    /// Measure TCP throughput and CPU cost per case (veth, the kernel's
    /// vxlan, tunsecd in clear and with each suite, WireGuard peers when
    /// installed) in network namespaces on this machine (needs root and
    /// iperf3).
    Bench(tunsec::bench::BenchArgs),
    /// A small CA: init-ca, issue, self-signed, crl, show, verify (PEM;
    /// keys mode 0600).
    Pki(tunsec::pki::PkiArgs),
}

#[derive(Debug, Subcommand)]
enum SaCommand {
    /// Delete a peer's SAs (both directions).
    Delete {
        /// The peer's name.
        peer: String,
    },
}

#[derive(Debug, Subcommand)]
enum GatewayCommand {
    /// Remove what a stopped tunsecd left in place to keep the protected
    /// traffic blocked (its steering rules, its route table, its nftables
    /// guard): from then on the kernel's tunnels send in the clear.
    /// Refused while tunsecd runs.
    Release {
        /// tunsecd's configuration file (for the table, priorities and
        /// guard to remove, and the control socket).
        #[arg(short, long, default_value = "/etc/tunsec/tunsec.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let request = match args.command {
        Command::Status { json } => {
            return match control::call(&args.socket, &Request::Status) {
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
        Command::Metrics => {
            return match control::call(&args.socket, &Request::Status) {
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
        Command::Sa {
            command: SaCommand::Delete { peer },
        } => Request::DeleteSa { peer },
        Command::Down { peer } => Request::Down { peer },
        Command::Up { peer } => Request::Up { peer },
        Command::Rekey { peer, ike } => Request::Rekey { peer, ike },
        Command::Reauth { peer } => Request::Reauth { peer },
        Command::Reload => Request::Reload,
        Command::Demo(demo) => {
            return match tunsec::demo::run(&demo) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tunsec demo: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Pki(pki) => {
            return match tunsec::pki::run(&pki, &mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tunsec pki: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Gateway {
            command: GatewayCommand::Release { config },
        } => {
            let released = tunsec::config::Config::load(&config)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))
                .and_then(|c| tunsec::gateway::release(&c));
            return match released {
                Ok(r) => {
                    println!(
                        "released: {} rules, {} routes, guard {}",
                        r.rules,
                        r.routes,
                        if r.guard { "removed" } else { "absent" }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tunsec gateway release: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Bench(bench) => {
            return match tunsec::bench::run(&bench) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tunsec bench: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match control::call(&args.socket, &request) {
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
        Response::Status(_) => ExitCode::SUCCESS,
    }
}
