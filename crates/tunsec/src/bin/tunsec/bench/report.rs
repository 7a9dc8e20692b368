//! The results of `tunsec bench`: the JSON form (`--json`), the table, and
//! the SVG chart (`--svg`), hand-written.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::measure::{median, median_u64};

/// The name of the baseline case.
pub(crate) const BASELINE: &str = "kernel-vxlan";

/// One whole run of `tunsec bench`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// The command line.
    pub(crate) command: String,
    /// When it started (UTC).
    pub(crate) date: String,
    /// The kernel release.
    pub(crate) kernel: String,
    /// CPUs online.
    pub(crate) cpus: usize,
    /// iperf3's version line.
    pub(crate) iperf3: String,
    /// iperf3 runs per case.
    pub(crate) runs: u32,
    /// Seconds per iperf3 run.
    pub(crate) seconds: u32,
    /// TCP streams per run.
    pub(crate) streams: u32,
    /// The underlay's MTU.
    pub(crate) underlay_mtu: u16,
    /// The case the ratios refer to.
    pub(crate) baseline: &'static str,
    /// `/proc/loadavg` (1, 5, 15 minutes) when the bench started.
    pub(crate) load_start: [f64; 3],
    /// ... and when it ended.
    pub(crate) load_end: [f64; 3],
    /// Every case, in the order run.
    pub(crate) cases: Vec<CaseReport>,
}

/// The outcome of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Measured.
    Ok,
    /// Not run (a peer that is not installed), with the reason.
    Skipped,
    /// Set-up or a run failed, with the reason.
    Failed,
}

/// One case.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CaseReport {
    /// Its name (`tunsec-aes128gcm16`...).
    pub(crate) name: String,
    /// What it measures.
    pub(crate) description: String,
    /// ok, skipped or failed.
    pub(crate) status: Status,
    /// Why it was skipped or failed.
    pub(crate) reason: Option<String>,
    /// The MTU of the tenants' interfaces (the IP packet size iperf3's
    /// TCP segments are cut to).
    pub(crate) mtu: Option<u16>,
    /// The tunnel daemon whose CPU is counted (`tunsecd`...), if any.
    pub(crate) daemon: Option<String>,
    /// Median throughput over the runs.
    pub(crate) gbps_median: Option<f64>,
    /// Lowest run.
    pub(crate) gbps_min: Option<f64>,
    /// Highest run.
    pub(crate) gbps_max: Option<f64>,
    /// `gbps_median` divided by the baseline's, measured in the same
    /// bench.
    pub(crate) ratio_to_baseline: Option<f64>,
    /// Median TCP retransmits per run.
    pub(crate) retransmits_median: Option<u64>,
    /// Median of the runs' daemon CPU seconds (both hosts) per GB.
    pub(crate) daemon_cpu_s_per_gb: Option<f64>,
    /// Median of the runs' machine-wide busy CPU seconds per GB.
    pub(crate) machine_cpu_s_per_gb: Option<f64>,
    /// The 1-minute load average when the case started.
    pub(crate) load1_at_start: f64,
    /// The share of all CPUs busy in a quiet second before the case
    /// (other people's work), in percent.
    pub(crate) other_cpu_percent: f64,
    /// Drops counted over the whole case, by where: `udp_rcvbuf` (the
    /// hosts' UDP receive buffers), `tunsecd:<reason>` (data path and SA
    /// drops). Zeros left out.
    pub(crate) drops: BTreeMap<String, u64>,
    /// With keys per network: how the networks came up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) networks: Option<NetworksReport>,
    /// With `--latency`: request/response through the path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) latency: Option<super::measure::Latency>,
    /// Every run.
    pub(crate) runs: Vec<RunReport>,
}

/// How a case's networks came up (`tunsec-networks-N`).
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct NetworksReport {
    /// Networks between the two hosts, each with a Child SA of its own.
    pub(crate) count: u16,
    /// From the start of both daemons until each showed a Child SA per
    /// network.
    pub(crate) up_secs: f64,
    /// The resident memory of each host's tunsecd once they were up.
    pub(crate) rss_kib: [u64; 2],
}

/// One iperf3 run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunReport {
    /// Received throughput.
    pub(crate) gbps: f64,
    /// TCP payload bytes received.
    pub(crate) bytes: u64,
    /// Length of the test.
    pub(crate) seconds: f64,
    /// TCP retransmits.
    pub(crate) retransmits: Option<u64>,
    /// CPU seconds of the tunnel daemons (both hosts).
    pub(crate) daemon_cpu_s: Option<f64>,
    /// Busy CPU seconds of the whole machine.
    pub(crate) machine_cpu_s: f64,
    /// `daemon_cpu_s` per GB.
    pub(crate) daemon_cpu_s_per_gb: Option<f64>,
    /// `machine_cpu_s` per GB.
    pub(crate) machine_cpu_s_per_gb: Option<f64>,
}

impl CaseReport {
    /// A case that did not run or failed before any run.
    pub(crate) fn not_measured(
        name: &str,
        description: &str,
        status: Status,
        reason: String,
    ) -> Self {
        Self {
            name: name.to_owned(),
            description: description.to_owned(),
            status,
            reason: Some(reason),
            mtu: None,
            daemon: None,
            gbps_median: None,
            gbps_min: None,
            gbps_max: None,
            ratio_to_baseline: None,
            retransmits_median: None,
            daemon_cpu_s_per_gb: None,
            machine_cpu_s_per_gb: None,
            load1_at_start: 0.0,
            other_cpu_percent: 0.0,
            drops: BTreeMap::new(),
            networks: None,
            latency: None,
            runs: Vec::new(),
        }
    }

    /// Fills in the medians from the runs.
    pub(crate) fn summarize(&mut self) {
        let gbps: Vec<f64> = self.runs.iter().map(|r| r.gbps).collect();
        self.gbps_median = median(&gbps);
        self.gbps_min = gbps.iter().copied().reduce(f64::min);
        self.gbps_max = gbps.iter().copied().reduce(f64::max);
        let retr: Vec<u64> = self.runs.iter().filter_map(|r| r.retransmits).collect();
        self.retransmits_median = median_u64(&retr);
        let daemon: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| r.daemon_cpu_s_per_gb)
            .collect();
        self.daemon_cpu_s_per_gb = median(&daemon);
        let machine: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| r.machine_cpu_s_per_gb)
            .collect();
        self.machine_cpu_s_per_gb = median(&machine);
    }
}

impl Report {
    /// Sets every case's ratio to the baseline measured in this bench.
    pub(crate) fn set_ratios(&mut self) {
        let base = self
            .cases
            .iter()
            .find(|c| c.name == BASELINE && c.status == Status::Ok)
            .and_then(|c| c.gbps_median)
            .filter(|&g| g > 0.0);
        for c in &mut self.cases {
            c.ratio_to_baseline = match (base, c.gbps_median) {
                (Some(b), Some(g)) if c.status == Status::Ok => Some(g / b),
                _ => None,
            };
        }
    }

    /// The human-readable table, with a header and notes.
    pub(crate) fn render_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "tunsec bench: iperf3, {} TCP stream(s), median of {} runs of {} s per case, underlay MTU {}; {} CPUs, kernel {}, {}; {}",
            self.streams,
            self.runs,
            self.seconds,
            self.underlay_mtu,
            self.cpus,
            self.kernel,
            self.iperf3,
            self.date
        );
        let _ = writeln!(
            s,
            "load average: {} at start, {} at end\n",
            fmt_load(self.load_start),
            fmt_load(self.load_end)
        );
        let _ = writeln!(
            s,
            "{:<25} {:>5} {:>7} {:>15} {:>8} {:>9} {:>12} {:>12} {:>6}  drops",
            "case",
            "MTU",
            "Gbit/s",
            "(min-max)",
            "vs vxlan",
            "retr/run",
            "daemon s/GB",
            "machine s/GB",
            "bgCPU"
        );
        for c in &self.cases {
            if c.status != Status::Ok {
                let _ = writeln!(
                    s,
                    "{:<25} {:>5} {}: {}",
                    c.name,
                    c.mtu.map_or("-".to_owned(), |m| m.to_string()),
                    if c.status == Status::Skipped {
                        "skipped"
                    } else {
                        "FAILED"
                    },
                    c.reason.as_deref().unwrap_or("")
                );
                continue;
            }
            let drops = if c.drops.is_empty() {
                if c.daemon.is_some() { "0" } else { "-" }.to_owned()
            } else {
                c.drops
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let daemon = match (&c.daemon, c.daemon_cpu_s_per_gb) {
                (Some(_), Some(v)) => format!("{v:.2}"),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                s,
                "{:<25} {:>5} {:>7} {:>15} {:>8} {:>9} {:>12} {:>12} {:>5.0}%  {}",
                c.name,
                c.mtu.map_or("-".to_owned(), |m| m.to_string()),
                opt(c.gbps_median, 3),
                format!(
                    "({}-{})",
                    opt(c.gbps_min, 2).trim(),
                    opt(c.gbps_max, 2).trim()
                ),
                c.ratio_to_baseline
                    .map_or("-".to_owned(), |r| format!("{:.1}%", 100.0 * r)),
                c.retransmits_median
                    .map_or("-".to_owned(), |r| r.to_string()),
                daemon,
                opt(c.machine_cpu_s_per_gb, 2),
                c.other_cpu_percent,
                drops
            );
        }
        let _ = writeln!(
            s,
            "\nvs vxlan: median Gbit/s over the {BASELINE} median of this bench. retr/run: TCP retransmits, median per run.\n\
             daemon s/GB: user+system CPU seconds of the tunnel daemons on both hosts (tunsecd, wireguard-go or boringtun) per 10^9 bytes received.\n\
             machine s/GB: busy CPU seconds of the whole machine (iperf3, softirq and anything else running) per 10^9 bytes.\n\
             bgCPU: share of all CPUs busy in a quiet second before the case (other people's work). MTU: the tenants' interfaces.\n\
             drops: over the whole case; udp_rcvbuf = UDP receive-buffer overflows on the hosts, tunsecd:* = tunsecd's drop counters."
        );
        let with_latency: Vec<_> = self
            .cases
            .iter()
            .filter_map(|c| Some((c, c.latency?)))
            .collect();
        if !with_latency.is_empty() {
            let base = with_latency
                .iter()
                .find(|(c, _)| c.name == BASELINE)
                .map(|(_, l)| *l);
            let _ = writeln!(
                s,
                "\nlatency: sockperf ping-pong over TCP, 64-byte messages, {} s: round-trip time (us) and round trips per second",
                self.seconds
            );
            for (c, l) in &with_latency {
                let vs = base.map_or("-".to_owned(), |b| {
                    format!(
                        "{:.1}%",
                        100.0 * l.round_trips_per_second / b.round_trips_per_second
                    )
                });
                let _ = writeln!(
                    s,
                    "  {:<25} median {:>8.1}  p99 {:>8.1}  {:>9.0}/s  vs vxlan {vs}",
                    c.name, l.rtt_median_us, l.rtt_p99_us, l.round_trips_per_second
                );
            }
        }
        let with_networks: Vec<_> = self
            .cases
            .iter()
            .filter_map(|c| Some((c, c.networks?)))
            .collect();
        if !with_networks.is_empty() {
            let _ = writeln!(
                s,
                "
keys per network: networks, time until every Child SA was up, tunsecd resident memory (h1, h2)"
            );
            for (c, n) in &with_networks {
                let _ = writeln!(
                    s,
                    "  {:<25} {:>5} networks up in {:>6.2} s, RSS {:.1} / {:.1} MiB",
                    c.name,
                    n.count,
                    n.up_secs,
                    n.rss_kib[0] as f64 / 1024.0,
                    n.rss_kib[1] as f64 / 1024.0
                );
            }
            // Memory per network: the difference between the largest and
            // the smallest count, over the networks added.
            let lo = with_networks.iter().min_by_key(|(_, n)| n.count);
            let hi = with_networks.iter().max_by_key(|(_, n)| n.count);
            if let (Some((_, lo)), Some((_, hi))) = (lo, hi) {
                if hi.count > lo.count {
                    let per = |i: usize| {
                        (hi.rss_kib[i] as f64 - lo.rss_kib[i] as f64)
                            / f64::from(hi.count - lo.count)
                    };
                    let _ = writeln!(
                        s,
                        "  memory per network (its TAP queue, Child SA pair, tables): {:.1} / {:.1} KiB",
                        per(0),
                        per(1)
                    );
                }
            }
        }
        s
    }

    /// An SVG bar chart: per case, throughput (left axis) and CPU seconds
    /// per GB, machine and daemon (right axis).
    pub(crate) fn render_svg(&self) -> String {
        const MIN_GROUP: f64 = 96.0;
        const MIN_WIDTH: f64 = 860.0;
        const LEFT: f64 = 70.0;
        const RIGHT: f64 = 70.0;
        const TOP: f64 = 78.0;
        const PLOT_H: f64 = 300.0;
        const BAR: f64 = 22.0;
        let n = self.cases.len().max(1) as f64;
        let width = (LEFT + RIGHT + MIN_GROUP * n).max(MIN_WIDTH);
        let group = (width - LEFT - RIGHT) / n;
        let height = TOP + PLOT_H + 150.0;
        let base_y = TOP + PLOT_H;
        let ok = |c: &&CaseReport| c.status == Status::Ok;
        let max_gbps = nice_max(
            self.cases
                .iter()
                .filter(ok)
                .filter_map(|c| c.gbps_median)
                .fold(0.0, f64::max),
        );
        let max_cpu = nice_max(
            self.cases
                .iter()
                .filter(ok)
                .flat_map(|c| [c.machine_cpu_s_per_gb, c.daemon_cpu_s_per_gb])
                .flatten()
                .fold(0.0, f64::max),
        );
        const THROUGHPUT: &str = "#2b6cb0";
        const MACHINE: &str = "#dd6b20";
        const DAEMON: &str = "#f6ad55";

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r##"<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="22" font-size="16" font-weight="bold">tunsec bench: one TCP stream between two tenants in network namespaces</text>
<text x="{LEFT}" y="40" fill="#444">{}</text>
<text x="{LEFT}" y="56" fill="#444">{}: median of {} runs of {} s; {} CPUs, kernel {}; load {} at start, {} at end</text>"##,
            xml(&self.command),
            self.date,
            self.runs,
            self.seconds,
            self.cpus,
            xml(&self.kernel),
            fmt_load(self.load_start),
            fmt_load(self.load_end)
        );
        // Axes and grid: 5 steps.
        for i in 0..=5 {
            let f = f64::from(i) / 5.0;
            let y = base_y - f * PLOT_H;
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>
<text x="{:.1}" y="{:.1}" text-anchor="end" fill="{THROUGHPUT}">{}</text>
<text x="{:.1}" y="{:.1}" fill="{MACHINE}">{}</text>"##,
                width - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                trim_num(f * max_gbps),
                width - RIGHT + 6.0,
                y + 4.0,
                trim_num(f * max_cpu)
            );
        }
        let _ = writeln!(
            s,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle" fill="{THROUGHPUT}">Gbit/s</text>
<text transform="translate({:.1} {:.1}) rotate(90)" text-anchor="middle" fill="{MACHINE}">CPU seconds per GB</text>"#,
            TOP + PLOT_H / 2.0,
            width - 16.0,
            TOP + PLOT_H / 2.0
        );
        for (i, c) in self.cases.iter().enumerate() {
            let x0 = LEFT + group * i as f64 + (group - 3.0 * BAR) / 2.0;
            let label_x = LEFT + group * (i as f64 + 0.5);
            let _ = writeln!(
                s,
                r#"<text transform="translate({:.1} {:.1}) rotate(35)" fill="black">{}</text>"#,
                label_x - 20.0,
                base_y + 26.0,
                xml(&c.name)
            );
            if c.status != Status::Ok {
                let word = if c.status == Status::Skipped {
                    "skipped"
                } else {
                    "failed"
                };
                let _ = writeln!(
                    s,
                    r##"<text x="{label_x:.1}" y="{:.1}" text-anchor="middle" fill="#888">{word}</text>"##,
                    base_y - 8.0
                );
                continue;
            }
            let bars = [
                (c.gbps_median, max_gbps, THROUGHPUT, 2),
                (c.machine_cpu_s_per_gb, max_cpu, MACHINE, 1),
                (
                    c.daemon_cpu_s_per_gb.filter(|_| c.daemon.is_some()),
                    max_cpu,
                    DAEMON,
                    1,
                ),
            ];
            for (k, (value, max, colour, decimals)) in bars.into_iter().enumerate() {
                let Some(v) = value else { continue };
                let h = if max > 0.0 { v / max * PLOT_H } else { 0.0 };
                let x = x0 + BAR * k as f64;
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{colour}"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{v:.decimals$}</text>"#,
                    base_y - h,
                    BAR - 2.0,
                    x + (BAR - 2.0) / 2.0,
                    base_y - h - 3.0
                );
            }
            if let Some(r) = c.ratio_to_baseline {
                let _ = writeln!(
                    s,
                    r##"<text x="{label_x:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="#444">{:.1}% of vxlan</text>"##,
                    base_y + 13.0,
                    100.0 * r
                );
            }
        }
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{base_y}" x2="{:.1}" y2="{base_y}" stroke="black"/>"#,
            width - RIGHT
        );
        // Legend.
        let ly = height - 22.0;
        for (k, (colour, text)) in [
            (THROUGHPUT, "throughput, Gbit/s (left)"),
            (MACHINE, "whole machine, CPU s/GB (right)"),
            (DAEMON, "tunnel daemons, CPU s/GB (right)"),
        ]
        .into_iter()
        .enumerate()
        {
            let lx = LEFT + 230.0 * k as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{colour}"/>
<text x="{:.1}" y="{ly:.1}">{text}</text>"#,
                ly - 10.0,
                lx + 16.0
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn fmt_load(l: [f64; 3]) -> String {
    format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// A round axis maximum at or above `v` (1, 2 or 5 times a power of ten).
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&m| m >= v)
        .unwrap_or(10.0 * p)
}

fn trim_num(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Escapes text for SVG.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod test {
    use super::*;

    fn run(gbps: f64) -> RunReport {
        RunReport {
            gbps,
            bytes: (gbps * 1e9 / 8.0) as u64,
            seconds: 1.0,
            retransmits: Some(3),
            daemon_cpu_s: Some(1.0),
            machine_cpu_s: 2.0,
            daemon_cpu_s_per_gb: Some(8.0 / gbps),
            machine_cpu_s_per_gb: Some(16.0 / gbps),
        }
    }

    fn case(name: &str, runs: &[f64]) -> CaseReport {
        let mut c = CaseReport::not_measured(name, "d", Status::Ok, String::new());
        c.reason = None;
        c.daemon = Some("tunsecd".into());
        c.mtu = Some(1385);
        c.runs = runs.iter().map(|&g| run(g)).collect();
        c.summarize();
        c
    }

    fn report() -> Report {
        let mut r = Report {
            command: "tunsec bench <x>".into(),
            date: "2026-01-01T00:00:00Z".into(),
            kernel: "6.18".into(),
            cpus: 2,
            iperf3: "iperf 3.12".into(),
            runs: 3,
            seconds: 5,
            streams: 1,
            underlay_mtu: 1500,
            baseline: BASELINE,
            load_start: [0.5, 0.4, 0.3],
            load_end: [1.5, 1.0, 0.5],
            cases: vec![
                case(BASELINE, &[10.0, 20.0, 16.0]),
                case("tunsec-aes128gcm16", &[2.0, 4.0, 1.0]),
                CaseReport::not_measured("boringtun", "d", Status::Skipped, "not installed".into()),
            ],
        };
        r.set_ratios();
        r
    }

    #[test]
    fn summaries_and_ratios() {
        let r = report();
        let base = &r.cases[0];
        assert_eq!(base.gbps_median, Some(16.0));
        assert_eq!(base.gbps_min, Some(10.0));
        assert_eq!(base.gbps_max, Some(20.0));
        assert_eq!(base.ratio_to_baseline, Some(1.0));
        let ts = &r.cases[1];
        assert_eq!(ts.gbps_median, Some(2.0));
        assert_eq!(ts.ratio_to_baseline, Some(0.125));
        assert_eq!(ts.daemon_cpu_s_per_gb, Some(4.0));
        assert_eq!(ts.retransmits_median, Some(3));
        assert_eq!(r.cases[2].ratio_to_baseline, None);
        let table = r.render_table();
        assert!(table.contains("12.5%"), "{table}");
        assert!(table.contains("boringtun"));
        assert!(table.contains("skipped: not installed"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["cases"][2]["status"], "skipped");
        assert_eq!(json["cases"][1]["ratio_to_baseline"], 0.125);
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let svg = report().render_svg();
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("tunsec bench &lt;x&gt;"));
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert!(svg.contains(">skipped<"));
    }

    #[test]
    fn axis_maxima() {
        assert_eq!(nice_max(17.7), 20.0);
        assert_eq!(nice_max(0.7), 1.0);
        assert_eq!(nice_max(2.2), 2.5);
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(trim_num(2.50), "2.5");
        assert_eq!(trim_num(10.0), "10");
    }
}
