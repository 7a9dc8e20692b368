//! One case of `tunsec bench`: its lab set up, its runs of iperf3, and
//! what each run measures on the daemons (CPU ticks, drop counters).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::measure::Iperf;
use super::peers::Peer;
use super::report::{CaseReport, RunReport, Status};
use tunsec::control::{self, Request, Response};
use tunsec_lab::Lab;

use super::*;

/// Runs one case in a lab of its own and reports it; a failure is a row
/// of the table, not the end of the bench.
pub(super) fn run_case(ctx: &Ctx<'_>, kind: Kind, peer: Option<(&Path, &Path)>) -> CaseReport {
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
        Kind::KernelVxlan => setup_kernel_vxlan(lab, ctx.tenant_mtu, ctx.args.underlay_mtu)?,
        Kind::Tunsec(suite, offloads) => setup_tunsec(ctx, lab, suite, offloads)?,
        Kind::Gateway(suite) => setup_gateway(ctx, lab, suite)?,
        Kind::Networks { count, encrypted } => setup_networks(ctx, lab, count, encrypted)?,
        Kind::Peer(p) => {
            let (daemon, wg) = peer.context("no binaries for the peer")?;
            let hosts = add_hosts(lab, ctx.args.underlay_mtu)?;
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
    report.networks = ep.networks;
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
        let r = iperf3_client(&ep, ctx.args.seconds, ctx.args.streams, ctx.stop, &out)?;
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
    if ctx.args.latency {
        check_interrupted(ctx.stop)?;
        let l = sockperf(lab, &ep, ctx.args.seconds, ctx.stop)?;
        say(&format!(
            "{} latency: median {:.1} us, p99 {:.1} us, {:.0} round trips/s",
            kind.name(),
            l.rtt_median_us,
            l.rtt_p99_us,
            l.round_trips_per_second
        ));
        report.latency = Some(l);
    }
    report.drops = collect_drops(lab, &ep);
    Ok(())
}

/// The sockperf port.
const SOCKPERF_PORT: &str = "11111";

/// Request/response latency through the case's path: `sockperf
/// ping-pong` over TCP from the client's tenant to a `sockperf server` on
/// the server's, 64-byte messages for `seconds`.
fn sockperf(
    lab: &mut Lab,
    ep: &Endpoints,
    seconds: u32,
    stop: &AtomicBool,
) -> anyhow::Result<measure::Latency> {
    lab.spawn(
        "sockperf-server",
        &ep.server_ns,
        Path::new("sockperf"),
        &["server", "--tcp", "-i", ep.server_ip, "-p", SOCKPERF_PORT],
    )?;
    lab.wait_for("the sockperf server", Duration::from_secs(10), || {
        lab.exec(
            &ep.server_ns,
            "ss",
            &["-Hltn", &format!("sport = :{SOCKPERF_PORT}")],
        )
        .is_ok_and(|o| !o.stdout.is_empty())
    })?;
    check_interrupted(stop)?;
    let secs = seconds.to_string();
    let out = lab.exec(
        &ep.client_ns,
        "timeout",
        &[
            &(seconds + 30).to_string(),
            "sockperf",
            "ping-pong",
            "--tcp",
            "-i",
            ep.server_ip,
            "-p",
            SOCKPERF_PORT,
            "-t",
            &secs,
            "--full-rtt",
            "-m",
            "64",
        ],
    )?;
    lab.stop("sockperf-server");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    measure::parse_sockperf(&text)
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
    streams: u32,
    stop: &AtomicBool,
    out: &Path,
) -> anyhow::Result<Iperf> {
    let err = out.with_extension("err");
    let secs = seconds.to_string();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ep.client_ns, "iperf3", "-c", ep.server_ip])
        .args(["-B", ep.client_ip, "-p", IPERF_PORT, "-t", &secs, "-J"])
        .args(["-P", &streams.to_string()])
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
