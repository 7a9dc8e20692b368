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

mod measure;
mod peers;
mod report;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use tunsec_esp::Suite;

use measure::{CpuTimes, Iperf};
use peers::Peer;
use report::{BASELINE, CaseReport, Report, RunReport, Status};
use tunsec::cli::BenchArgs;
use tunsec::config::Config;
use tunsec::control::{self, Request, Response};
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
    let tunsecd = if kinds
        .iter()
        .any(|k| matches!(k, Kind::Tunsec(..) | Kind::Gateway(_)))
    {
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
        tenant_mtu: expected_tap_mtu()?,
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
        streams: 1,
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

/// Runs one case in a lab of its own and reports it; a failure is a row
/// of the table, not the end of the bench.
fn run_case(ctx: &Ctx<'_>, kind: Kind, peer: Option<(&Path, &Path)>) -> CaseReport {
    let name = kind.name();
    let mut report =
        CaseReport::not_measured(&name, &kind.description(), Status::Ok, String::new());
    report.reason = None;
    report.load1_at_start = loadavg()[0];
    // A quiet second: what the rest of the machine is doing.
    if let Ok(before) = cpu_times() {
        sleep_unless_stopped(ctx.stop, Duration::from_secs(1));
        if let Ok(after) = cpu_times() {
            report.other_cpu_percent = after.busy_percent_since(before);
        }
    }
    say(&format!(
        "== {name}: {}; load {:.2}, other CPU use {:.0}%",
        kind.description(),
        report.load1_at_start,
        report.other_cpu_percent
    ));
    let mut lab = match Lab::new(&ctx.args.prefix) {
        Ok(lab) => lab,
        Err(e) => {
            report.status = Status::Failed;
            report.reason = Some(format!("{e:#}"));
            return report;
        }
    };
    let mut files = Vec::new();
    let result = measure_case(ctx, &mut lab, kind, peer, &mut report, &mut files);
    if let Err(e) = result {
        report.status = Status::Failed;
        report.reason = Some(format!("{e:#}"));
        if !ctx.stop.load(Ordering::Relaxed) {
            say(&format!("{name} FAILED: {e:#}"));
            print_logs(&lab);
        }
    }
    drop(lab);
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    report.summarize();
    if report.status == Status::Ok {
        say(&format!(
            "{name}: median {:.3} Gbit/s",
            report.gbps_median.unwrap_or(0.0)
        ));
    }
    report
}

/// The tails of the lab's logs (the daemons'), on stderr.
fn print_logs(lab: &Lab) {
    for log in lab.logs() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(20)..];
        eprintln!("--- {} ---\n{}", log.display(), tail.join("\n"));
    }
}

fn measure_case(
    ctx: &Ctx<'_>,
    lab: &mut Lab,
    kind: Kind,
    peer: Option<(&Path, &Path)>,
    report: &mut CaseReport,
    files: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let ep = match kind {
        Kind::Veth => setup_veth(lab, ctx.tenant_mtu)?,
        Kind::KernelVxlan => setup_kernel_vxlan(lab, ctx.tenant_mtu)?,
        Kind::Tunsec(suite, offloads) => setup_tunsec(ctx, lab, suite, offloads)?,
        Kind::Gateway(suite) => setup_gateway(ctx, lab, suite)?,
        Kind::Peer(p) => {
            let (daemon, wg) = peer.context("no binaries for the peer")?;
            let hosts = add_hosts(lab)?;
            let ep = peers::setup(lab, &hosts, p, daemon, wg);
            if let Ok(ep) = &ep {
                files.extend(ep.files.iter().cloned());
            } else {
                let tag = std::process::id() % 100_000;
                for side in 1..=2 {
                    files.push(PathBuf::from(format!(
                        "/var/run/wireguard/tsb{}{tag}{side}.sock",
                        if p == Peer::WireguardGo { "wg" } else { "bt" }
                    )));
                }
            }
            ep?
        }
    };
    report.mtu = Some(ep.mtu);
    report.daemon = ep.daemon.map(str::to_owned);
    check_interrupted(ctx.stop)?;

    lab.spawn(
        "iperf3-server",
        &ep.server_ns,
        Path::new("iperf3"),
        &["-s", "-B", ep.server_ip, "-p", IPERF_PORT],
    )?;
    lab.wait_for("the iperf3 server", Duration::from_secs(10), || {
        lab.exec(
            &ep.server_ns,
            "ss",
            &["-Hltn", &format!("sport = :{IPERF_PORT}")],
        )
        .is_ok_and(|o| !o.stdout.is_empty())
    })?;
    let mut reachable = false;
    for _ in 0..15 {
        check_interrupted(ctx.stop)?;
        if lab.try_exec(
            &ep.client_ns,
            "ping",
            &["-c", "1", "-W", "1", "-q", ep.server_ip],
        ) {
            reachable = true;
            break;
        }
    }
    if !reachable {
        bail!(
            "{} does not answer pings from {}",
            ep.server_ip,
            ep.client_ns
        );
    }

    for i in 1..=ctx.args.runs {
        check_interrupted(ctx.stop)?;
        let d0 = daemon_ticks(lab, &ep)?;
        let m0 = cpu_times()?;
        let out = lab.dir.path().join(format!("iperf3-{i}.json"));
        let r = iperf3_client(&ep, ctx.args.seconds, ctx.stop, &out)?;
        let m1 = cpu_times()?;
        let d1 = daemon_ticks(lab, &ep)?;
        let machine_cpu_s = measure::ticks_to_seconds(m1.busy_since(m0), ctx.clk_tck);
        let daemon_cpu_s = ep
            .daemon
            .map(|_| measure::ticks_to_seconds(d1.saturating_sub(d0), ctx.clk_tck));
        let run = RunReport {
            gbps: r.bits_per_second / 1e9,
            bytes: r.bytes,
            seconds: r.seconds,
            retransmits: r.retransmits,
            daemon_cpu_s,
            machine_cpu_s,
            daemon_cpu_s_per_gb: daemon_cpu_s.and_then(|s| measure::seconds_per_gb(s, r.bytes)),
            machine_cpu_s_per_gb: measure::seconds_per_gb(machine_cpu_s, r.bytes),
        };
        let mut line = format!(
            "{} run {i}/{}: {:.3} Gbit/s, {:.2} GB, {} retransmits",
            kind.name(),
            ctx.args.runs,
            run.gbps,
            r.bytes as f64 / 1e9,
            r.retransmits.map_or("?".to_owned(), |n| n.to_string()),
        );
        if let (Some(d), Some(s)) = (ep.daemon, run.daemon_cpu_s_per_gb) {
            let _ = write!(line, ", {d} {s:.2} s/GB");
        }
        let _ = write!(
            line,
            ", machine {} s/GB, load {:.2}",
            run.machine_cpu_s_per_gb
                .map_or("-".to_owned(), |s| format!("{s:.2}")),
            loadavg()[0]
        );
        say(&line);
        report.runs.push(run);
    }
    report.drops = collect_drops(lab, &ep);
    Ok(())
}

/// utime+stime of the case's daemons, summed; an error if one died.
fn daemon_ticks(lab: &Lab, ep: &Endpoints) -> anyhow::Result<u64> {
    let mut total = 0;
    for label in &ep.daemon_labels {
        let pid = lab
            .pid(label)
            .with_context(|| format!("{label} was not started"))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| measure::parse_pid_stat(&t))
            .filter(|s| s.state != 'Z' && s.state != 'X')
            .with_context(|| format!("{label} (pid {pid}) has exited"))?;
        total += stat.ticks;
    }
    Ok(total)
}

/// Runs one iperf3 client test and parses its JSON. Ctrl-C stops it.
fn iperf3_client(
    ep: &Endpoints,
    seconds: u32,
    stop: &AtomicBool,
    out: &Path,
) -> anyhow::Result<Iperf> {
    let err = out.with_extension("err");
    let secs = seconds.to_string();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ep.client_ns, "iperf3", "-c", ep.server_ip])
        .args(["-B", ep.client_ip, "-p", IPERF_PORT, "-t", &secs, "-J"])
        .args(["--connect-timeout", "5000"])
        .stdin(Stdio::null())
        .stdout(File::create(out)?)
        .stderr(File::create(&err)?)
        .spawn()
        .context("cannot start iperf3")?;
    let deadline = Instant::now() + Duration::from_secs(u64::from(seconds) + 30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            check_interrupted(stop)?;
            bail!("iperf3 did not finish within {} s", seconds + 30);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let json = std::fs::read_to_string(out).unwrap_or_default();
    match measure::parse_iperf3(&json) {
        Ok(r) if status.success() => Ok(r),
        Ok(_) => bail!(
            "iperf3 exited with {status}: {}",
            std::fs::read_to_string(&err).unwrap_or_default().trim()
        ),
        Err(e) => Err(e.context(format!(
            "iperf3 exited with {status}: {}",
            std::fs::read_to_string(&err).unwrap_or_default().trim()
        ))),
    }
}

/// Drops over the whole case: the hosts' UDP receive-buffer overflows and
/// tunsecd's counters (data path and SAs). Zeros are left out.
fn collect_drops(lab: &Lab, ep: &Endpoints) -> BTreeMap<String, u64> {
    let mut drops = BTreeMap::new();
    for host in &ep.hosts {
        if let Some(n) = lab
            .exec(host, "cat", &["/proc/net/snmp"])
            .ok()
            .and_then(|o| measure::parse_udp_rcvbuf_errors(&String::from_utf8_lossy(&o.stdout)))
        {
            *drops.entry("udp_rcvbuf".to_owned()).or_insert(0) += n;
        }
    }
    for sock in &ep.control_sockets {
        if let Ok(Response::Status(s)) = control::call(sock, &Request::Status) {
            let sa_drops = s.peers.iter().flat_map(|p| &p.sas).flat_map(|sa| &sa.drops);
            for (reason, n) in s.drops.iter().chain(sa_drops) {
                *drops.entry(format!("tunsecd:{reason}")).or_insert(0) += n;
            }
        }
    }
    drops.retain(|_, n| *n > 0);
    drops
}

// ---------------------------------------------------------------------
// Topologies

/// Hosts `h1` and `h2`, joined by a veth pair (`eth0` on both) with the
/// underlay addresses.
fn add_hosts(lab: &mut Lab) -> anyhow::Result<[String; 2]> {
    let h1 = lab.add_ns("h1")?;
    let h2 = lab.add_ns("h2")?;
    lab.veth(&h1, "eth0", &h2, "eth0")?;
    for (h, addr) in [(&h1, HOST_ADDR[0]), (&h2, HOST_ADDR[1])] {
        lab.exec(
            h,
            "ip",
            &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        )?;
    }
    Ok([h1, h2])
}

/// Tenant `t<n>` behind bridge `br-t` of `host`, which also holds `dev`
/// (the TAP or vxlan device). The tenant's interface and its veth peer get
/// `mtu`.
fn add_tenant(lab: &mut Lab, host: &str, n: usize, dev: &str, mtu: u16) -> anyhow::Result<String> {
    let t = lab.add_ns(&format!("t{n}"))?;
    let mtu = mtu.to_string();
    lab.add_bridge(host, "br-t")?;
    lab.veth(host, "vt", &t, "eth0")?;
    lab.exec(host, "ip", &["link", "set", "vt", "mtu", &mtu])?;
    lab.exec(&t, "ip", &["link", "set", "eth0", "mtu", &mtu])?;
    lab.exec(host, "ip", &["link", "set", "vt", "master", "br-t"])?;
    lab.wait_for(&format!("{dev} in {host}"), Duration::from_secs(10), || {
        lab.try_exec(host, "ip", &["link", "show", dev])
    })?;
    lab.exec(host, "ip", &["link", "set", dev, "master", "br-t"])?;
    lab.exec(
        &t,
        "ip",
        &[
            "addr",
            "add",
            &format!("{}/24", TENANT_ADDR[n - 1]),
            "dev",
            "eth0",
        ],
    )?;
    Ok(t)
}

fn tenant_endpoints(tenants: [String; 2], mtu: u16) -> Endpoints {
    let [client_ns, server_ns] = tenants;
    Endpoints {
        client_ns,
        server_ns,
        client_ip: TENANT_ADDR[0],
        server_ip: TENANT_ADDR[1],
        mtu,
        daemon: None,
        daemon_labels: Vec::new(),
        hosts: Vec::new(),
        control_sockets: Vec::new(),
        files: Vec::new(),
    }
}

fn setup_veth(lab: &mut Lab, mtu: u16) -> anyhow::Result<Endpoints> {
    let t1 = lab.add_ns("t1")?;
    let t2 = lab.add_ns("t2")?;
    lab.veth(&t1, "eth0", &t2, "eth0")?;
    for (t, addr) in [(&t1, TENANT_ADDR[0]), (&t2, TENANT_ADDR[1])] {
        lab.exec(t, "ip", &["link", "set", "eth0", "mtu", &mtu.to_string()])?;
        lab.exec(
            t,
            "ip",
            &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        )?;
    }
    Ok(tenant_endpoints([t1, t2], mtu))
}

fn setup_kernel_vxlan(lab: &mut Lab, mtu: u16) -> anyhow::Result<Endpoints> {
    let hosts = add_hosts(lab)?;
    let mut ep = vxlan_tenants(lab, &hosts, mtu, true)?;
    ep.hosts = hosts.to_vec();
    Ok(ep)
}

/// On each host a kernel vxlan device `vx0` (VNI 100, UDP 4789, to the
/// other host) with `mtu`, bridged to a tenant; bound to `eth0` with
/// `bound` (gateway mode needs it unbound: a route lookup with a fixed
/// output device never reaches the steering's TUN).
fn vxlan_tenants(
    lab: &mut Lab,
    hosts: &[String; 2],
    mtu: u16,
    bound: bool,
) -> anyhow::Result<Endpoints> {
    let mut tenants = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let mut args = vec![
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            VNI,
            "local",
            HOST_ADDR[i],
            "remote",
            HOST_ADDR[1 - i],
            "dstport",
            "4789",
            "nolearning",
        ];
        if bound {
            args.extend(["dev", "eth0"]);
        }
        lab.exec(h, "ip", &args)?;
        lab.exec(
            h,
            "ip",
            &["link", "set", "vx0", "mtu", &mtu.to_string(), "up"],
        )?;
        tenants.push(add_tenant(lab, h, i + 1, "vx0", mtu)?);
    }
    let [t1, t2]: [String; 2] = tenants
        .try_into()
        .map_err(|_| anyhow::anyhow!("two tenants expected"))?;
    Ok(tenant_endpoints([t1, t2], mtu))
}

/// Random keys for both directions, `dir/key-FROM-TO` (hex, as `[peer.sa]`
/// reads them); returns the path of a direction's key.
fn write_keys(dir: &Path, suite: Suite) -> anyhow::Result<impl Fn(usize, usize) -> PathBuf> {
    let dir = dir.to_owned();
    let key = move |from: usize, to: usize| dir.join(format!("key-{from}-{to}"));
    for (from, to) in [(1, 2), (2, 1)] {
        let len = suite.encryption_key_len() + suite.integrity_key_len();
        tunsec::config::write_secret(key(from, to), random_hex(len)?)?;
    }
    Ok(key)
}

/// Starts tunsecd on both hosts with `config(n)` for host `n` and waits
/// until each answers on its control socket; `mtu_of` reads from its
/// status the MTU the tenant side gets (`what` names it in an error).
/// Returns the daemons' lab labels, their control sockets and the MTUs.
fn start_tunsecds(
    ctx: &Ctx<'_>,
    lab: &mut Lab,
    hosts: &[String; 2],
    config: impl Fn(usize) -> String,
    mtu_of: impl Fn(&tunsec::status::Status) -> Option<u16>,
    what: &str,
) -> anyhow::Result<(Vec<String>, Vec<PathBuf>, [u16; 2])> {
    let tunsecd = ctx.tunsecd.as_deref().context("tunsecd was not found")?;
    let dir = lab.dir.path().to_owned();
    let mut labels = Vec::new();
    let mut sockets = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let n = i + 1;
        let path = dir.join(format!("h{n}.toml"));
        std::fs::write(&path, config(n))?;
        let label = format!("tunsecd-h{n}");
        lab.spawn(&label, h, tunsecd, &["--config", &path.to_string_lossy()])?;
        labels.push(label);
        sockets.push(dir.join(format!("h{n}.sock")));
    }
    let mut mtus = [0; 2];
    for (i, sock) in sockets.iter().enumerate() {
        let mut mtu = None;
        lab.wait_for(
            &format!("tunsecd on h{} to answer", i + 1),
            Duration::from_secs(20),
            || match control::call(sock, &Request::Status) {
                Ok(Response::Status(s)) => {
                    mtu = mtu_of(&s);
                    true
                }
                _ => ctx.stop.load(Ordering::Relaxed),
            },
        )?;
        check_interrupted(ctx.stop)?;
        mtus[i] = mtu.with_context(|| format!("h{}: tunsec status shows no {what}", i + 1))?;
    }
    Ok((labels, sockets, mtus))
}

/// The config of host `n` (1 or 2): network `blue` (VXLAN, VNI 100), the
/// other host as its peer, with `sa` = (suite, key_in, key_out) under
/// `require` or no SA under `clear`.
fn tunsec_config(dir: &Path, n: usize, sa: Option<(Suite, &Path, &Path)>) -> String {
    let other = 3 - n;
    let mut c = format!(
        "[node]\nname = \"h{n}\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n\n\
         [[network]]\nname = \"blue\"\nvni = {VNI}\nencapsulation = \"vxlan\"\ntap = \"{TAP}\"\n\n\
         [[peer]]\nname = \"h{other}\"\nunderlay = \"{}\"\nnetworks = [\"blue\"]\npolicy = \"{}\"\n",
        HOST_ADDR[n - 1],
        dir.join(format!("h{n}.sock")).display(),
        HOST_ADDR[other - 1],
        if sa.is_some() { "require" } else { "clear" }
    );
    if let Some((suite, key_in, key_out)) = sa {
        // SPI of packets from host a to host b: 0x1000 + 16 b + a.
        let spi = |from: usize, to: usize| 0x1000 + 16 * to + from;
        let _ = write!(
            c,
            "\n[peer.sa]\nspi_in = {:#x}\nspi_out = {:#x}\nsuite = \"{}\"\nkey_in = \"{}\"\nkey_out = \"{}\"\n",
            spi(other, n),
            spi(n, other),
            suite.name(),
            key_in.display(),
            key_out.display()
        );
    }
    c
}

/// The TAP MTU tunsecd works out for this topology (the daemon's own
/// rule), for the cases without tunsecd.
fn expected_tap_mtu() -> anyhow::Result<u16> {
    let dir = Path::new("/nonexistent");
    let config = Config::parse(&tunsec_config(dir, 1, None), dir)
        .map_err(|e| anyhow::anyhow!("the bench's own config: {e}"))?;
    let net = &config.networks[0];
    Ok(tunsec::daemon::network_mtu(&config, net)?.mtu)
}

fn setup_tunsec(
    ctx: &Ctx<'_>,
    lab: &mut Lab,
    suite: Option<Suite>,
    offloads: Offloads,
) -> anyhow::Result<Endpoints> {
    let hosts = add_hosts(lab)?;
    let dir = lab.dir.path().to_owned();
    let key = suite.map(|s| write_keys(&dir, s)).transpose()?;
    let (labels, sockets, mtus) = start_tunsecds(
        ctx,
        lab,
        &hosts,
        |n| {
            let keys = key.as_ref().map(|k| (k(3 - n, n), k(n, 3 - n)));
            offloads.apply(tunsec_config(
                &dir,
                n,
                suite
                    .zip(keys.as_ref())
                    .map(|(s, (i, o))| (s, i.as_path(), o.as_path())),
            ))
        },
        |s| s.networks.iter().find(|n| n.tap == TAP).map(|n| n.mtu),
        TAP,
    )?;
    let mut tenants = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        tenants.push(add_tenant(lab, h, i + 1, TAP, mtus[i])?);
    }
    let [t1, t2]: [String; 2] = tenants
        .try_into()
        .map_err(|_| anyhow::anyhow!("two tenants expected"))?;
    let mut ep = tenant_endpoints([t1, t2], mtus[0].min(mtus[1]));
    ep.daemon = Some("tunsecd");
    ep.daemon_labels = labels;
    ep.hosts = hosts.to_vec();
    ep.control_sockets = sockets;
    Ok(ep)
}

/// The gateway-mode config of host `n` (1 or 2): the other host as its
/// peer, its VXLAN (UDP 4789) protected with `suite` and manual keys.
fn gateway_config(dir: &Path, n: usize, suite: Suite, key_in: &Path, key_out: &Path) -> String {
    let other = 3 - n;
    let spi = |from: usize, to: usize| 0x3000 + 16 * to + from;
    format!(
        "[node]\nname = \"h{n}\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n\n\
         [gateway]\ntunnel_devices = [\"vx0\"]\n\n\
         [[peer]]\nname = \"h{other}\"\nunderlay = \"{}\"\n\n\
         [[peer.selector]]\nprotocol = \"udp\"\nports = 4789\n\n\
         [peer.sa]\nspi_in = {:#x}\nspi_out = {:#x}\nsuite = \"{}\"\nkey_in = \"{}\"\nkey_out = \"{}\"\n",
        HOST_ADDR[n - 1],
        dir.join(format!("h{n}.sock")).display(),
        HOST_ADDR[other - 1],
        spi(other, n),
        spi(n, other),
        suite.name(),
        key_in.display(),
        key_out.display()
    )
}

/// tunsecd in gateway mode on both hosts, then on each a kernel vxlan
/// device (not bound to a lower device, so the steering sees its packets)
/// with the MTU tunsecd advises, bridged to the tenant.
fn setup_gateway(ctx: &Ctx<'_>, lab: &mut Lab, suite: Suite) -> anyhow::Result<Endpoints> {
    let hosts = add_hosts(lab)?;
    let dir = lab.dir.path().to_owned();
    let key = write_keys(&dir, suite)?;
    let (labels, sockets, mtus) = start_tunsecds(
        ctx,
        lab,
        &hosts,
        |n| gateway_config(&dir, n, suite, &key(3 - n, n), &key(n, 3 - n)),
        |s| s.gateway.as_ref().map(|g| g.tunnel_mtu_advice),
        "gateway",
    )?;
    let mut ep = vxlan_tenants(lab, &hosts, mtus[0].min(mtus[1]), false)?;
    ep.daemon = Some("tunsecd");
    ep.daemon_labels = labels;
    ep.hosts = hosts.to_vec();
    ep.control_sockets = sockets;
    Ok(ep)
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
    fn configs_parse() {
        assert_eq!(expected_tap_mtu().unwrap(), 1385);
        let dir = tempfile::tempdir().unwrap();
        for suite in Suite::ALL {
            let len = suite.encryption_key_len() + suite.integrity_key_len();
            let (a, b) = (dir.path().join("a"), dir.path().join("b"));
            tunsec::config::write_secret(&a, random_hex(len).unwrap()).unwrap();
            tunsec::config::write_secret(&b, random_hex(len).unwrap()).unwrap();
            let text = tunsec_config(dir.path(), 2, Some((suite, &a, &b)));
            let c = Config::parse(&text, dir.path()).unwrap();
            let sa = c.peers[0].sa.as_ref().unwrap();
            assert_eq!(sa.suite, suite);
            assert_eq!((sa.spi_in, sa.spi_out), (0x1021, 0x1012));
            let all = |c: &Config| {
                let o = c.offload;
                (o.tap, o.gro, o.udp_gso, o.udp_gro)
            };
            assert_eq!(all(&c), (true, true, true, true));
            for (o, expect) in [
                (Offloads::NoUdpGro, (true, true, true, false)),
                (Offloads::NoUdpGso, (true, true, false, true)),
                (Offloads::NoGro, (true, false, true, true)),
                (Offloads::None, (false, false, false, false)),
            ] {
                let c = Config::parse(&o.apply(text.clone()), dir.path()).unwrap();
                assert_eq!(all(&c), expect, "{o:?}");
            }
            let c = Config::parse(&Offloads::TwoWorkers.apply(text.clone()), dir.path()).unwrap();
            assert_eq!((all(&c), c.node.workers), ((true, true, true, true), 2));
            let c =
                Config::parse(&gateway_config(dir.path(), 1, suite, &a, &b), dir.path()).unwrap();
            let gw = c.gateway.as_ref().unwrap();
            assert_eq!(gw.tunnel_devices, ["vx0"]);
            assert_eq!(c.peers[0].sa.as_ref().unwrap().suite, suite);
        }
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
