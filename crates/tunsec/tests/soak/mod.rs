//! The fault-injection soak of `soak_e2e.rs` (issue 20).
//!
//! `lab.rs` builds three hosts in overlay mode with certificates and
//! short lifetimes, `traffic.rs` runs a TCP transfer, a UDP stream and
//! pings between them, `faults.rs` draws faults from the seed and applies
//! them one after another, and `report.rs` writes the report. The
//! invariants, checked over the whole run:
//!
//! - **no cleartext on the underlay**: nftables on the underlay bridge
//!   counts no VXLAN (UDP 4789) and no frame that is neither ARP, IKE
//!   (UDP 500, 4500), ESP nor ICMP;
//! - **the TCP transfer intact**: the bytes and SHA-256 received are the
//!   ones sent;
//! - **traffic back after each fault** within the fault's bound
//!   (`Fault::bound`);
//! - **nothing lost outside faults**: no UDP datagram or ping sent
//!   outside a fault's window (from its start to 1 s after its recovery)
//!   lost, across the automatic rekeys every 8-9 s (Child SAs) and 27-30 s
//!   (IKE SAs) and the re-authentications after reloads (make before
//!   break), and none received twice; the report lists every loss and
//!   every drop counter that rose outside a fault;
//! - **no `replay` drop**: no SA of any host counts one (status, sampled
//!   every 0.5 s, the highest count of each SA) -- nothing here replays;
//! - **memory bounded**: each tunsecd's resident memory stays under
//!   [`RSS_BOUND_KIB`];
//! - **no SA left behind**: at the end, each side of each pair holds one
//!   live inbound and one live outbound SA, the one's outbound SPI the
//!   other's inbound, within 20 s;
//! - every tunsecd still answers at the end.
//!
//! The lab runs in overlay mode (`soak_e2e.rs`) or gateway mode
//! (`soak_gateway_e2e.rs`), with the same traffic, faults and invariants.
//! A failed run leaves the daemons' logs in `target/tmp/soak-logs/`
//! (`soak-logs-gateway/`).

mod faults;
mod lab;
mod report;
mod traffic;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tunsec::control::{self, Request, Response};
use tunsec::status::Status;
use tunsec_lab::Lab;

use crate::common::*;
use faults::{Fault, Rng, recovery};
pub(crate) use lab::Mode;
use lab::{HOSTS, SoakLab};
use report::{Check, Outcome, Report};
use traffic::Traffic;

/// The bound on each tunsecd's resident memory.
pub(crate) const RSS_BOUND_KIB: u64 = 64 * 1024;
/// The longest a fault with its recovery may take, so that the last one
/// ends before the traffic does.
const LONGEST_FAULT: Duration = Duration::from_secs(25);

/// How long and with which seed: `TUNSEC_SOAK_SECS` (default 180),
/// `TUNSEC_SOAK_SEED` (default 1), and `TUNSEC_SOAK_REPORT`, a file the
/// report is written to besides stderr and `target/tmp/soak-report.md`.
pub(crate) struct Settings {
    pub(crate) seconds: u64,
    pub(crate) seed: u64,
    pub(crate) report: Option<PathBuf>,
}

impl Settings {
    pub(crate) fn from_env() -> Self {
        let number = |name: &str, default: u64| {
            std::env::var(name).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name}: {v:?} is not a whole number"))
            })
        };
        Self {
            seconds: number("TUNSEC_SOAK_SECS", 180),
            seed: number("TUNSEC_SOAK_SEED", 1),
            report: std::env::var_os("TUNSEC_SOAK_REPORT").map(PathBuf::from),
        }
    }
}

pub(crate) fn preflight() {
    require(
        "the soak",
        &[
            ("ip", &["-V"], "iproute2"),
            ("ping", &["-V"], "iputils-ping"),
            ("nft", &["--version"], "nftables"),
            ("iptables-nft", &["--version"], "iptables"),
            ("python3", &["--version"], "python3"),
        ],
    );
}

/// Runs the soak in `lab` with tunsecd in `mode`; fails unless the
/// report's verdict is PASS.
pub(crate) fn run(lab: &mut Lab, settings: &Settings, mode: Mode) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut soak = SoakLab::build(lab, mode)?;
    phase(lab, "three hosts up, every pair pings", t0);
    let tenants = [soak.tenant(1), soak.tenant(2), soak.tenant(3)].map(str::to_owned);
    let start = unix_now();
    let traffic = Traffic::start(
        lab,
        [&tenants[0], &tenants[1], &tenants[2]],
        settings.seconds,
    )?;
    let sampler = Sampler::start(HOSTS.map(|n| socket_path(lab, n)));
    let end = Instant::now() + Duration::from_secs(settings.seconds);
    let mut rng = Rng::new(settings.seed);
    let mut outcomes = Vec::new();
    let mut rss = [0u64; 3];
    loop {
        std::thread::sleep(Duration::from_secs(rng.range(2, 5)));
        sample_rss(lab, &mut rss);
        let fault = Fault::draw(&mut rng);
        if Instant::now() + LONGEST_FAULT > end {
            break;
        }
        eprintln!("  fault {}: {fault}", outcomes.len() + 1);
        let from = unix_now();
        fault.run(lab, &mut soak)?;
        let recovery = recovery(&soak, fault.bound() + Duration::from_secs(20))?;
        eprintln!(
            "    back in {}",
            recovery.map_or("(not within 20 s of the bound)".to_owned(), |r| format!(
                "{:.2} s",
                r.as_secs_f64()
            ))
        );
        outcomes.push(Outcome {
            fault,
            from,
            to: unix_now(),
            recovery,
        });
        sample_rss(lab, &mut rss);
    }
    let flows = traffic.finish(lab)?;
    let samples = sampler.finish();
    let replay = samples.replay;
    phase(lab, "traffic done", t0);

    let mut report = Report {
        mode: mode.name(),
        seed: settings.seed,
        start,
        seconds: settings.seconds,
        outcomes,
        udp_lost: flows.udp_lost.clone(),
        pings_lost: flows.pings_lost.clone(),
        drops: samples.rises,
        checks: Vec::new(),
    };
    let [vxlan, other, icmp] = soak.counters(lab)?;
    report.checks.push(Check {
        name: "no cleartext on the underlay",
        measured: format!("{vxlan} VXLAN frames, {other} other frames ({icmp} ICMP, allowed)"),
        held: vxlan == 0 && other == 0,
    });
    report.checks.push(Check {
        name: "TCP transfer intact (bytes, SHA-256)",
        measured: format!("sent {}, received {}", flows.tcp_sent, flows.tcp_received),
        held: !flows.tcp_sent.is_empty()
            && !flows.tcp_sent.starts_with("0 ")
            && flows.tcp_sent == flows.tcp_received,
    });
    let udp_outside = flows
        .udp_lost
        .iter()
        .filter(|&&t| !report.during_a_fault(t))
        .count();
    let pings_outside = flows
        .pings_lost
        .iter()
        .filter(|&&t| !report.during_a_fault(t))
        .count();
    report.checks.push(Check {
        name: "nothing lost outside faults, nothing duplicated",
        measured: format!(
            "UDP: {} sent, {} lost ({udp_outside} outside faults), {} duplicated; pings: {} sent, {} lost ({pings_outside} outside faults)",
            flows.udp_sent,
            flows.udp_lost.len(),
            flows.udp_duplicates,
            flows.pings_sent,
            flows.pings_lost.len()
        ),
        held: udp_outside == 0 && pings_outside == 0 && flows.udp_duplicates == 0,
    });
    report.checks.push(Check {
        name: "no replay drop",
        measured: format!("{replay} (the highest count of each SA, summed)"),
        held: replay == 0,
    });
    report.checks.push(Check {
        name: "memory bounded",
        measured: format!(
            "highest resident memory h1 {} KiB, h2 {} KiB, h3 {} KiB (bound {RSS_BOUND_KIB} KiB)",
            rss[0], rss[1], rss[2]
        ),
        held: rss.iter().all(|&r| r > 0 && r < RSS_BOUND_KIB),
    });
    let left_behind = sas_left_behind(lab, Duration::from_secs(20));
    report.checks.push(Check {
        name: "no SA left behind",
        measured: left_behind
            .clone()
            .err()
            .unwrap_or_else(|| "one matching live pair per peer on every host".to_owned()),
        held: left_behind.is_ok(),
    });
    let answering = HOSTS.iter().filter(|&&n| status(lab, n).is_ok()).count();
    report.checks.push(Check {
        name: "every tunsecd answers at the end",
        measured: format!("{answering} of 3"),
        held: answering == 3,
    });

    let text = report.render();
    eprintln!("{text}");
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(match mode {
        Mode::Overlay => "soak-report.md".to_owned(),
        other => format!("soak-report-{}.md", other.name()),
    });
    std::fs::write(&tmp, &text)?;
    if let Some(path) = &settings.report {
        std::fs::write(path, &text).with_context(|| format!("{}", path.display()))?;
    }
    if report.passed() {
        return Ok(());
    }
    let kept = keep_logs(lab, mode)?;
    bail!(
        "the soak failed; report in {}, the daemons' logs in {}",
        tmp.display(),
        kept.display()
    )
}

/// Copies the lab's logs (every tunsecd's, a killed one's under
/// `h<n>.killed-<pid>.log`, and the traffic's) to
/// `target/tmp/soak-logs/` (`soak-logs-gateway/` in gateway mode), emptied
/// first, so that a failed run can be
/// explained after the lab and its directory are gone.
fn keep_logs(lab: &Lab, mode: Mode) -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(match mode {
        Mode::Overlay => "soak-logs".to_owned(),
        other => format!("soak-logs-{}", other.name()),
    });
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    for log in lab.logs() {
        if let Some(name) = log.file_name() {
            std::fs::copy(&log, dir.join(name)).with_context(|| format!("{}", log.display()))?;
        }
    }
    Ok(dir)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Keeps the highest resident memory (KiB) seen of each tunsecd.
fn sample_rss(lab: &Lab, rss: &mut [u64; 3]) {
    for (i, n) in HOSTS.iter().enumerate() {
        let Some(pid) = lab.pid(&format!("h{n}")) else {
            continue;
        };
        let kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            });
        if let Some(kib) = kib {
            rss[i] = rss[i].max(kib);
        }
    }
}

/// A data-path drop counter that rose: when (Unix seconds, the sample
/// that saw it), on which host, the counter (`path <reason>`, or `SA
/// <spi> <reason>`), and by how much.
pub(crate) struct DropRise {
    pub(crate) at: f64,
    pub(crate) host: u8,
    pub(crate) counter: String,
    pub(crate) by: u64,
}

/// What the sampler saw: the highest `replay` count of each SA, summed,
/// and every rise of a drop counter.
struct Samples {
    replay: u64,
    rises: Vec<DropRise>,
}

/// Samples each host's status every 0.5 s in a thread: every drop
/// counter, of the data path and of each SA, so that a packet lost
/// outside a fault can be told where it went.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Samples>,
}

impl Sampler {
    fn start(sockets: [PathBuf; 3]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut last: HashMap<(usize, String), u64> = HashMap::new();
            let mut replay: HashMap<(usize, String), u64> = HashMap::new();
            let mut rises = Vec::new();
            // The first round only learns where the counters stand after
            // the start (a no_sa before the first Child SA, say).
            let mut first = true;
            while !flag.load(Ordering::Relaxed) {
                for (i, sock) in sockets.iter().enumerate() {
                    let Ok(Response::Status(s)) = control::call(sock, &Request::Status) else {
                        continue;
                    };
                    let now = unix_now();
                    let path = s.drops.iter().map(|(r, &n)| (format!("path {r}"), n));
                    let sas = s.peers.iter().flat_map(|p| p.sas.iter()).flat_map(|sa| {
                        sa.drops
                            .iter()
                            .map(move |(r, &n)| (format!("SA {} {r}", sa.spi), n))
                    });
                    for (counter, n) in path.chain(sas) {
                        if counter.ends_with(" replay") {
                            let e = replay.entry((i, counter.clone())).or_default();
                            *e = (*e).max(n);
                        }
                        let before = last.insert((i, counter.clone()), n).unwrap_or(0);
                        // A restarted tunsecd counts from 0 again.
                        let by = if n >= before { n - before } else { n };
                        if by > 0 && !first {
                            rises.push(DropRise {
                                at: now,
                                host: i as u8 + 1,
                                counter,
                                by,
                            });
                        }
                    }
                }
                first = false;
                std::thread::sleep(Duration::from_millis(500));
            }
            Samples {
                replay: replay.values().sum(),
                rises,
            }
        });
        Self { stop, thread }
    }

    fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(Samples {
            replay: u64::MAX,
            rises: Vec::new(),
        })
    }
}

/// Waits up to `limit` for each pair of hosts to hold exactly one live
/// pair of SAs with each other, the one's outbound SPI the other's
/// inbound; an error names the pair that never did.
fn sas_left_behind(lab: &Lab, limit: Duration) -> Result<(), String> {
    for (a, b) in [(1u8, 2u8), (2, 3), (1, 3)] {
        let t = Instant::now();
        loop {
            let last = match (status(lab, a), status(lab, b)) {
                (Ok(sa), Ok(sb)) => match clean_pair(&sa, &sb, a, b) {
                    Ok(()) => break,
                    Err(e) => e,
                },
                (Err(e), _) | (_, Err(e)) => format!("{e:#}"),
            };
            if t.elapsed() > limit {
                return Err(format!("h{a}-h{b}: {last}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

/// Whether `sa` (host `a`) and `sb` (host `b`) hold one live pair with
/// each other whose SPIs match.
fn clean_pair(sa: &Status, sb: &Status, a: u8, b: u8) -> Result<(), String> {
    let spis = |s: &Status, peer: u8, dir: &str| -> Vec<String> {
        s.peers
            .iter()
            .filter(|p| p.name == format!("h{peer}"))
            .flat_map(|p| p.sas.iter())
            .filter(|sa| sa.direction == dir && (sa.state == "live" || sa.state == "soft"))
            .map(|sa| sa.spi.clone())
            .collect()
    };
    let (a_out, a_in) = (spis(sa, b, "out"), spis(sa, b, "in"));
    let (b_out, b_in) = (spis(sb, a, "out"), spis(sb, a, "in"));
    let all = |s: &Status| s.peers.iter().map(|p| p.sas.len()).sum::<usize>();
    if a_out.len() == 1 && a_in.len() == 1 && a_out == b_in && b_out == a_in {
        return Ok(());
    }
    Err(format!(
        "h{a} out {a_out:?} in {a_in:?}, h{b} out {b_out:?} in {b_in:?} (SAs in all: h{a} {}, h{b} {})",
        all(sa),
        all(sb)
    ))
}
