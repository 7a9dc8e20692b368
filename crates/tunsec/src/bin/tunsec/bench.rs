//! `tunsec bench`: TCP throughput and CPU cost of tunsec against the
//! kernel's vxlan device and a plain veth, in network namespaces on this
//! machine.
//!
//! ```text
//!   t1 ── veth ── [br-t  DEV] h1 ── eth0 veth ── eth0 h2 [DEV  br-t] ── veth ── t2
//!   198.51.100.1            192.0.2.1           192.0.2.2                198.51.100.2
//! ```
//!
//! Every case gets a fresh set of namespaces (prefix `tsbench`), removed
//! when the case ends, also after a failure or Ctrl-C. iperf3 runs one TCP
//! stream from tenant `t1` to tenant `t2`:
//!
//! - `veth`: `t1` and `t2` joined by a veth pair, no tunnel: the ceiling.
//! - `kernel-vxlan`: DEV is the kernel's vxlan device, in cleartext: the
//!   baseline that every ratio refers to.
//! - `tunsec-clear`: DEV is tunsecd's TAP device, peer policy `clear`
//!   (VXLAN in the clear).
//! - `tunsec-<suite>`: policy `require`, manual random keys, VXLAN inside
//!   ESP in UDP.
//! - `wireguard-go`, `boringtun`: when installed (or `--with-peers`), see
//!   `peers`.
//!
//! The tenants get the MTU that tunsecd gives its TAP device (read from
//! its status), and the kernel cases use that same MTU, so every case
//! carries packets of the same size. For each case: Gbit/s as the median
//! of `--runs` runs, TCP retransmits, CPU seconds per GB of the tunnel
//! daemons (utime+stime from `/proc/<pid>/stat`) and of the whole machine
//! (`/proc/stat`), drops, and the ratio to `kernel-vxlan` of the same
//! bench.

mod case;
mod measure;
mod peers;
mod report;
mod setup;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use tunsec_esp::Suite;

use case::run_case;
use measure::CpuTimes;
use peers::Peer;
use report::{BASELINE, CaseReport, Report, Status};
use setup::{
    add_hosts, expected_tap_mtu, setup_gateway, setup_kernel_vxlan, setup_networks, setup_tunsec,
    setup_veth,
};
use tunsec::cli::BenchArgs;
use tunsec_lab::Lab;

/// Underlay addresses of the two hosts.
const HOST_ADDR: [&str; 2] = ["192.0.2.1", "192.0.2.2"];
/// Tenant addresses.
const TENANT_ADDR: [&str; 2] = ["198.51.100.1", "198.51.100.2"];
const VNI: &str = "100";
const TAP: &str = "ts-blue";
const IPERF_PORT: &str = "5201";

/// What a case measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Veth,
    KernelVxlan,
    /// tunsecd with `clear` (None) or `require` and this suite.
    Tunsec(Option<Suite>, Offloads),
    /// The kernel's vxlan device, protected by tunsecd in gateway mode
    /// (transport mode, selector UDP 4789) with this suite.
    Gateway(Suite),
    /// tunsecd with this many networks between the two hosts, keys per
    /// network negotiated by IKEv2 (AES-128-GCM), the tenant flow on the
    /// first; in the Encrypted VXLAN layout if `encrypted`.
    Networks {
        count: u16,
        encrypted: bool,
    },
    Peer(Peer),
}

/// Which of tunsecd's offloads a case runs with (`[offload]`), or how
/// many workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offloads {
    /// The defaults: TAP TSO and checksum offload, and GRO.
    All,
    /// Everything but UDP GRO.
    NoUdpGro,
    /// TAP offloads and GRO, no UDP GSO.
    NoUdpGso,
    /// TAP offloads, no GRO.
    NoGro,
    /// Neither.
    None,
    /// The defaults, with two worker pairs (`[node] workers = 2`).
    TwoWorkers,
}

impl Offloads {
    /// The case name's suffix.
    fn suffix(self) -> &'static str {
        match self {
            Self::All => "",
            Self::NoUdpGro => "-noudpgro",
            Self::NoUdpGso => "-noudpgso",
            Self::NoGro => "-nogro",
            Self::None => "-nooffload",
            Self::TwoWorkers => "-2workers",
        }
    }

    /// tunsecd's config `text` with this variant's settings.
    fn apply(self, text: String) -> String {
        match self {
            Self::TwoWorkers => text.replacen("[node]\n", "[node]\nworkers = 2\n", 1),
            o => text + o.config(),
        }
    }

    /// The `[offload]` section of tunsecd's config.
    fn config(self) -> &'static str {
        match self {
            Self::All => "",
            Self::NoUdpGro => "\n[offload]\nudp_gro = false\n",
            Self::NoUdpGso => "\n[offload]\nudp_gso = false\n",
            Self::NoGro => "\n[offload]\ngro = false\n",
            Self::None => {
                "\n[offload]\ntap = false\ngro = false\nudp_gso = false\nudp_gro = false\n"
            }
            Self::TwoWorkers => "",
        }
    }
}

impl Kind {
    fn all() -> Vec<Self> {
        let mut v = vec![
            Self::Veth,
            Self::KernelVxlan,
            Self::Tunsec(None, Offloads::All),
        ];
        v.extend(
            Suite::ALL
                .into_iter()
                .map(|s| Self::Tunsec(Some(s), Offloads::All)),
        );
        // The gain of each offload, with the suite of the targets.
        v.extend(
            [
                Offloads::NoUdpGro,
                Offloads::NoUdpGso,
                Offloads::NoGro,
                Offloads::None,
                Offloads::TwoWorkers,
            ]
            .map(|o| Self::Tunsec(Some(Suite::AesGcm128), o)),
        );
        v.push(Self::Gateway(Suite::AesGcm128));
        // Keys per network: 1 and 1,000 networks, and the Encrypted VXLAN
        // layout beside ESP in UDP.
        v.extend([
            Self::Networks {
                count: 1,
                encrypted: false,
            },
            Self::Networks {
                count: 1000,
                encrypted: false,
            },
            Self::Networks {
                count: 1,
                encrypted: true,
            },
        ]);
        v.extend(Peer::ALL.into_iter().map(Self::Peer));
        v
    }

    fn name(self) -> String {
        match self {
            Self::Veth => "veth".to_owned(),
            Self::KernelVxlan => BASELINE.to_owned(),
            Self::Tunsec(None, o) => format!("tunsec-clear{}", o.suffix()),
            Self::Tunsec(Some(s), o) => format!("tunsec-{}{}", s.name(), o.suffix()),
            Self::Gateway(s) => format!("tunsec-gateway-{}", s.name()),
            Self::Networks {
                encrypted: true, ..
            } => "tunsec-encrypted-vxlan".to_owned(),
            Self::Networks { count, .. } => format!("tunsec-networks-{count}"),
            Self::Peer(p) => p.name().to_owned(),
        }
    }

    fn description(self) -> String {
        match self {
            Self::Veth => "tenants joined by a plain veth pair, no tunnel (the ceiling)".to_owned(),
            Self::KernelVxlan => {
                "the kernel's vxlan device, cleartext, bridged to the tenant (the baseline)"
                    .to_owned()
            }
            Self::Tunsec(None, _) => "tunsecd, policy clear: VXLAN in the clear".to_owned(),
            Self::Tunsec(Some(s), o) => format!(
                "tunsecd, policy require, {s}: VXLAN in ESP in UDP, manual random keys{}",
                match o {
                    Offloads::All => "",
                    Offloads::NoUdpGro => ", without UDP GRO",
                    Offloads::NoUdpGso => ", without UDP GSO",
                    Offloads::NoGro => ", TAP offloads without GRO",
                    Offloads::None => ", no offloads",
                    Offloads::TwoWorkers => ", two worker pairs",
                }
            ),
            Self::Gateway(s) => format!(
                "the kernel's vxlan device, its UDP 4789 steered through tunsecd in gateway mode, {s}: ESP in UDP, transport mode, manual random keys"
            ),
            Self::Networks { count, encrypted } => format!(
                "tunsecd, {count} network(s) with keys per network by IKEv2 (aes128gcm16), the flow on one: {}",
                if encrypted {
                    "the Encrypted VXLAN layout (VXLAN, then ESP)"
                } else {
                    "VXLAN inside ESP in UDP"
                }
            ),
            Self::Peer(p) => p.description().to_owned(),
        }
    }
}

/// Where iperf3 runs in a case, and what to account for.
#[derive(Debug)]
struct Endpoints {
    client_ns: String,
    server_ns: String,
    client_ip: &'static str,
    server_ip: &'static str,
    /// The MTU of the interfaces iperf3 uses.
    mtu: u16,
    /// The tunnel daemon (for the table), if any.
    daemon: Option<&'static str>,
    /// The lab labels of the daemons whose CPU is counted.
    daemon_labels: Vec<String>,
    /// Namespaces whose UDP receive-buffer drops are counted.
    hosts: Vec<String>,
    /// tunsecd control sockets, for the drop counters.
    control_sockets: Vec<PathBuf>,
    /// Files outside the lab to remove afterwards (WireGuard's sockets).
    files: Vec<PathBuf>,
    /// With many networks: how they came up.
    networks: Option<report::NetworksReport>,
}

/// What every case needs.
struct Ctx<'a> {
    args: &'a BenchArgs,
    stop: &'a AtomicBool,
    tunsecd: Option<PathBuf>,
    clk_tck: u64,
    /// The MTU tunsecd gives its TAP device in this topology.
    tenant_mtu: u16,
}

/// Prints a progress line on stderr, with the UTC time.
fn say(msg: &str) {
    let t = OffsetDateTime::now_utc();
    eprintln!(
        "[bench {:02}:{:02}:{:02}] {msg}",
        t.hour(),
        t.minute(),
        t.second()
    );
}

/// `2026-11-22T12:42:00Z` from the system clock.
fn utc_now() -> String {
    utc_seconds(OffsetDateTime::now_utc())
}

/// `t` in UTC to the second, in RFC 3339 form: `2026-11-22T12:42:00Z`.
fn utc_seconds(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    // Whole seconds, so RFC 3339 writes no fraction; nanosecond 0 is always valid.
    let t = t.replace_nanosecond(0).unwrap_or(t);
    // Fails only for a year outside 0..=9999.
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut f = text
        .split_whitespace()
        .map(|w| w.parse::<f64>().unwrap_or(0.0));
    [
        f.next().unwrap_or(0.0),
        f.next().unwrap_or(0.0),
        f.next().unwrap_or(0.0),
    ]
}

fn cpu_times() -> anyhow::Result<CpuTimes> {
    let text = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    measure::parse_proc_stat(&text).context("/proc/stat has no cpu line")
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux
/// architecture tunsec builds for).
fn clk_tck() -> u64 {
    tunsec_lab::run("getconf", &["CLK_TCK"])
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

fn check_interrupted(stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps, waking early on Ctrl-C.
fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex::encode(buf))
}

/// The cases `--cases` names (every case by default), in bench order.
fn select_cases(names: &[String]) -> anyhow::Result<Vec<Kind>> {
    let all = Kind::all();
    if names.is_empty() {
        return Ok(all);
    }
    for n in names {
        if !all.iter().any(|k| k.name() == n.trim()) {
            bail!(
                "--cases: {n:?} is not a case; the cases are {}",
                all.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(all
        .into_iter()
        .filter(|k| names.iter().any(|n| n.trim() == k.name()))
        .collect())
}

/// Runs the bench.
pub(crate) fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let kinds = select_cases(&args.cases)?;
    // Root, iproute2, and no namespaces left from a crashed bench.
    drop(Lab::new(&args.prefix)?);
    let iperf3 = tunsec_lab::run("iperf3", &["--version"])
        .context("iperf3 is needed: apt-get install iperf3 (scripts/deps.sh installs it)")?;
    let iperf3 = String::from_utf8_lossy(&iperf3.stdout)
        .lines()
        .next()
        .unwrap_or("iperf3")
        .split(" (")
        .next()
        .unwrap_or("iperf3")
        .to_owned();
    tunsec_lab::run("ping", &["-V"]).context("ping is needed: apt-get install iputils-ping")?;
    let tunsecd = if kinds.iter().any(|k| {
        matches!(
            k,
            Kind::Tunsec(..) | Kind::Gateway(_) | Kind::Networks { .. }
        )
    }) {
        Some(crate::demo::tunsecd_path()?)
    } else {
        None
    };
    let wanted_peers: Vec<Peer> = kinds
        .iter()
        .filter_map(|k| match k {
            Kind::Peer(p) => Some(*p),
            _ => None,
        })
        .collect();
    let install_failures = if args.with_peers {
        peers::install(&wanted_peers)
    } else {
        Vec::new()
    };
    let tools = peers::Tools::find();
    let ctx = Ctx {
        args,
        stop: &stop,
        tunsecd,
        clk_tck: clk_tck(),
        tenant_mtu: expected_tap_mtu(args.underlay_mtu)?,
    };

    let load_start = loadavg();
    let date = utc_now();
    say(&format!(
        "{} cases, {} runs of {} s each; load average {:.2} {:.2} {:.2}{}",
        kinds.len(),
        args.runs,
        args.seconds,
        load_start[0],
        load_start[1],
        load_start[2],
        if load_start[0] > 1.0 {
            " (the machine is busy: figures will be noisy; the ratios to kernel-vxlan hold best)"
        } else {
            ""
        }
    ));
    let mut cases = Vec::new();
    for kind in kinds {
        if stop.load(Ordering::Relaxed) {
            say("interrupted: everything the bench made is removed");
            bail!("interrupted");
        }
        let report = match kind {
            Kind::Peer(p) => match tools.for_peer(p) {
                Ok((daemon, wg)) => run_case(&ctx, kind, Some((&daemon, &wg))),
                Err(missing) => {
                    let reason = match install_failures.iter().find(|(f, _)| *f == p) {
                        Some((_, why)) => why.clone(),
                        None if args.with_peers => missing,
                        None => format!("{missing} (--with-peers installs it)"),
                    };
                    say(&format!("== {}: skipped: {reason}", kind.name()));
                    CaseReport::not_measured(
                        &kind.name(),
                        &kind.description(),
                        Status::Skipped,
                        reason,
                    )
                }
            },
            _ => run_case(&ctx, kind, None),
        };
        if stop.load(Ordering::Relaxed) {
            say("interrupted: everything the bench made is removed");
            bail!("interrupted");
        }
        cases.push(report);
    }
    let mut report = Report {
        command: command_line(),
        date,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        iperf3,
        runs: args.runs,
        seconds: args.seconds,
        streams: args.streams,
        underlay_mtu: args.underlay_mtu,
        baseline: BASELINE,
        load_start,
        load_end: loadavg(),
        cases,
    };
    report.set_ratios();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("\n{}", report.render_table());
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report.render_svg())
            .with_context(|| format!("--svg: cannot write {}", path.display()))?;
        say(&format!("wrote the chart to {}", path.display()));
    }
    let failed: Vec<&str> = report
        .cases
        .iter()
        .filter(|c| c.status == Status::Failed)
        .map(|c| c.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("{} failed", failed.join(", "));
    }
    Ok(())
}

fn command_line() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(first) = args.first_mut() {
        if let Some(name) = Path::new(first.as_str()).file_name() {
            *first = name.to_string_lossy().into_owned();
        }
    }
    args.join(" ")
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn case_names() {
        let names: Vec<String> = Kind::all().into_iter().map(Kind::name).collect();
        assert_eq!(
            names,
            [
                "veth",
                "kernel-vxlan",
                "tunsec-clear",
                "tunsec-aes128gcm16",
                "tunsec-aes256gcm16",
                "tunsec-chacha20poly1305",
                "tunsec-aes256-sha256",
                "tunsec-aes128gcm16-noudpgro",
                "tunsec-aes128gcm16-noudpgso",
                "tunsec-aes128gcm16-nogro",
                "tunsec-aes128gcm16-nooffload",
                "tunsec-aes128gcm16-2workers",
                "tunsec-gateway-aes128gcm16",
                "tunsec-networks-1",
                "tunsec-networks-1000",
                "tunsec-encrypted-vxlan",
                "wireguard-go",
                "boringtun"
            ]
        );
        let picked = select_cases(&["tunsec-aes128gcm16".into(), "veth".into()]).unwrap();
        assert_eq!(
            picked,
            [
                Kind::Veth,
                Kind::Tunsec(Some(Suite::AesGcm128), Offloads::All)
            ]
        );
        let e = select_cases(&["aes".into()]).unwrap_err().to_string();
        assert!(
            e.contains("\"aes\" is not a case") && e.contains("kernel-vxlan"),
            "{e}"
        );
    }

    #[test]
    fn dates() {
        let d = utc_now();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.starts_with("20") && d.ends_with('Z'));
        let at = |secs| utc_seconds(OffsetDateTime::from_unix_timestamp(secs).unwrap());
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_351_323), "2026-11-22T12:42:03Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
        // The fraction is cut, not rounded, and another offset is shown in UTC.
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_795_351_323_999_999_999).unwrap();
        let t = t.to_offset(UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(utc_seconds(t), "2026-11-22T12:42:03Z");
    }
}
