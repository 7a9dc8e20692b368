//! What one run measures, and the arithmetic on it: iperf3's JSON, CPU
//! time from `/proc/<pid>/stat` and `/proc/stat`, socket-buffer drops from
//! `/proc/net/snmp`, and medians. Pure functions on text, so they are
//! tested without root.

use anyhow::{Context, bail};
use serde_json::Value;

/// What `iperf3 -c ... -J` reports about one TCP test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Iperf {
    /// Received throughput (`end.sum_received.bits_per_second`).
    pub(crate) bits_per_second: f64,
    /// TCP payload bytes received (`end.sum_received.bytes`).
    pub(crate) bytes: u64,
    /// The length of the test (`end.sum_received.seconds`).
    pub(crate) seconds: f64,
    /// TCP retransmits of the sender (`end.sum_sent.retransmits`).
    pub(crate) retransmits: Option<u64>,
}

/// Parses the JSON that `iperf3 -c ... -J` prints. A test that failed
/// (iperf3 puts an `error` field in its JSON) is an error with iperf3's
/// message.
pub(crate) fn parse_iperf3(json: &str) -> anyhow::Result<Iperf> {
    let v: Value = serde_json::from_str(json).with_context(|| {
        let head: String = json.chars().take(200).collect();
        format!("iperf3 -J printed no JSON: {head:?}")
    })?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("iperf3: {e}");
    }
    let rx = v
        .pointer("/end/sum_received")
        .context("iperf3 JSON has no end.sum_received")?;
    let field = |name: &str| {
        rx.get(name)
            .with_context(|| format!("iperf3 JSON has no end.sum_received.{name}"))
    };
    let bits_per_second = field("bits_per_second")?
        .as_f64()
        .context("end.sum_received.bits_per_second is not a number")?;
    let bytes = field("bytes")?
        .as_u64()
        .context("end.sum_received.bytes is not a count")?;
    let seconds = field("seconds")?
        .as_f64()
        .context("end.sum_received.seconds is not a number")?;
    if !bits_per_second.is_finite() || bits_per_second < 0.0 {
        bail!("iperf3 reported {bits_per_second} bits/s");
    }
    let retransmits = v
        .pointer("/end/sum_sent/retransmits")
        .and_then(Value::as_u64);
    Ok(Iperf {
        bits_per_second,
        bytes,
        seconds,
        retransmits,
    })
}

/// What `sockperf ping-pong --full-rtt` measured.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub(crate) struct Latency {
    /// The median round-trip time, in microseconds.
    pub(crate) rtt_median_us: f64,
    /// The 99th percentile.
    pub(crate) rtt_p99_us: f64,
    /// Round trips per second over the valid duration (one request and
    /// its answer each: transactions per second).
    pub(crate) round_trips_per_second: f64,
}

/// Parses what `sockperf ping-pong --full-rtt` prints: the `[Valid
/// Duration]` line (run time and messages received) and the 50th and
/// 99th percentiles (microseconds). Colour codes are ignored.
pub(crate) fn parse_sockperf(text: &str) -> anyhow::Result<Latency> {
    let mut runtime = None;
    let mut received = None;
    let mut p50 = None;
    let mut p99 = None;
    let value = |line: &str| {
        line.rsplit('=').next().and_then(|v| {
            v.trim()
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse::<f64>()
                .ok()
        })
    };
    for line in text.lines() {
        if line.contains("[Valid Duration]") {
            for field in line.split(';') {
                if let Some(v) = field.split("RunTime=").nth(1) {
                    runtime = v.trim().trim_end_matches("sec").trim().parse::<f64>().ok();
                }
                if let Some(v) = field.split("ReceivedMessages=").nth(1) {
                    received = v.trim().parse::<f64>().ok();
                }
            }
        } else if line.contains("percentile 50.000") {
            p50 = value(line);
        } else if line.contains("percentile 99.000") {
            p99 = value(line);
        }
    }
    match (runtime, received, p50, p99) {
        (Some(t), Some(n), Some(p50), Some(p99)) if t > 0.0 => Ok(Latency {
            rtt_median_us: p50,
            rtt_p99_us: p99,
            round_trips_per_second: n / t,
        }),
        _ => {
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            bail!("sockperf printed no statistics: {tail:?}")
        }
    }
}

/// Busy and total time of all CPUs, in clock ticks, from the `cpu` line
/// of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    /// user + nice + system + irq + softirq + steal.
    pub(crate) busy: u64,
    /// busy + idle + iowait.
    pub(crate) total: u64,
}

impl CpuTimes {
    /// Busy ticks from `self` to `later`.
    pub(crate) fn busy_since(self, earlier: Self) -> u64 {
        self.busy.saturating_sub(earlier.busy)
    }

    /// The share of all CPUs that was busy from `earlier` to `self`, in
    /// percent.
    pub(crate) fn busy_percent_since(self, earlier: Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * self.busy_since(earlier) as f64 / total as f64
    }
}

/// Parses the `cpu` line of `/proc/stat` (`cpu user nice system idle
/// iowait irq softirq steal guest guest_nice`; guest time is already in
/// user).
pub(crate) fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    if f.len() < 4 {
        return None;
    }
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    Some(CpuTimes {
        busy,
        total: busy + at(3) + at(4),
    })
}

/// One process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// The state letter (`R`, `S`, `Z`...).
    pub(crate) state: char,
    /// utime + stime of the whole thread group, in clock ticks.
    pub(crate) ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces
/// and parentheses, so the fields are counted from the last `)`: state is
/// field 3, utime 14 and stime 15 (proc(5)).
pub(crate) fn parse_pid_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let utime: u64 = f.get(14 - 3)?.parse().ok()?;
    let stime: u64 = f.get(15 - 3)?.parse().ok()?;
    Some(ProcStat {
        state,
        ticks: utime + stime,
    })
}

/// Clock ticks to seconds.
pub(crate) fn ticks_to_seconds(ticks: u64, clk_tck: u64) -> f64 {
    ticks as f64 / clk_tck.max(1) as f64
}

/// CPU seconds per GB (10^9 bytes) moved; `None` when nothing moved.
pub(crate) fn seconds_per_gb(cpu_seconds: f64, bytes: u64) -> Option<f64> {
    (bytes > 0).then(|| cpu_seconds / (bytes as f64 / 1e9))
}

/// `RcvbufErrors` of the `Udp:` lines of `/proc/net/snmp` (a header line
/// of names, then a line of values).
pub(crate) fn parse_udp_rcvbuf_errors(snmp: &str) -> Option<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let names = lines.next()?;
    let values = lines.next()?;
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
}

/// The median (the mean of the middle two for an even count); `None` for
/// no values. NaNs sort last.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// The median of counts, rounded.
pub(crate) fn median_u64(values: &[u64]) -> Option<u64> {
    let v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
    median(&v).map(|m| m.round() as u64)
}

#[cfg(test)]
mod test {
    use super::*;

    /// A real `iperf3 -c -t 1 -J` output (iperf 3.12), intervals trimmed.
    const IPERF3_OK: &str = r#"{
	"start":	{
		"connected":	[{"socket": 5, "local_host": "198.51.100.1", "local_port": 45123, "remote_host": "198.51.100.2", "remote_port": 5201}],
		"version":	"iperf 3.12",
		"test_start":	{"protocol": "TCP", "num_streams": 1, "duration": 1}
	},
	"intervals":	[],
	"end":	{
		"streams":	[],
		"sum_sent":	{"start": 0, "end": 1.00034, "seconds": 1.00034, "bytes": 3247964160, "bits_per_second": 25974881820.181137, "retransmits": 8, "sender": true},
		"sum_received":	{"start": 0, "end": 1.000388, "seconds": 1.000388, "bytes": 3247964160, "bits_per_second": 25973635509.422344, "sender": true},
		"cpu_utilization_percent":	{"host_total": 96.8, "host_user": 0, "host_system": 96.8, "remote_total": 44.2, "remote_user": 1.5, "remote_system": 42.7},
		"sender_tcp_congestion":	"cubic",
		"receiver_tcp_congestion":	"cubic"
	}
}"#;

    /// What iperf 3.12 prints with -J when it cannot connect.
    const IPERF3_ERROR: &str = r#"{
	"start":	{"connected": [], "version": "iperf 3.12"},
	"intervals":	[],
	"end":	{
	},
	"error":	"unable to connect to server: Connection timed out"
}"#;

    #[test]
    fn iperf3_json() {
        let r = parse_iperf3(IPERF3_OK).unwrap();
        assert_eq!(r.bytes, 3_247_964_160);
        assert!((r.bits_per_second - 25_973_635_509.422_344).abs() < 1e-3);
        assert!((r.seconds - 1.000_388).abs() < 1e-9);
        assert_eq!(r.retransmits, Some(8));
    }

    #[test]
    fn iperf3_errors() {
        let e = parse_iperf3(IPERF3_ERROR).unwrap_err().to_string();
        assert_eq!(
            e,
            "iperf3: unable to connect to server: Connection timed out"
        );
        assert!(
            parse_iperf3("iperf3: error - unable to connect")
                .unwrap_err()
                .to_string()
                .contains("no JSON")
        );
        let no_bytes = r#"{"end": {"sum_received": {"seconds": 1.0, "bits_per_second": 1.0}}}"#;
        assert!(
            parse_iperf3(no_bytes)
                .unwrap_err()
                .to_string()
                .contains("end.sum_received.bytes")
        );
        // UDP tests and old versions have no retransmits: not an error.
        let no_retr =
            r#"{"end": {"sum_received": {"seconds": 1.0, "bytes": 10, "bits_per_second": 80.0}}}"#;
        assert_eq!(parse_iperf3(no_retr).unwrap().retransmits, None);
    }

    #[test]
    fn proc_stat() {
        let text = "cpu  100 5 50 1000 20 3 7 2 0 0\ncpu0 50 2 25 500 10 1 3 1 0 0\nintr 1 2\n";
        let t = parse_proc_stat(text).unwrap();
        assert_eq!(t.busy, 100 + 5 + 50 + 3 + 7 + 2);
        assert_eq!(t.total, t.busy + 1000 + 20);
        let later = CpuTimes {
            busy: t.busy + 150,
            total: t.total + 200,
        };
        assert_eq!(later.busy_since(t), 150);
        assert!((later.busy_percent_since(t) - 75.0).abs() < 1e-9);
        assert_eq!(t.busy_percent_since(t), 0.0);
        assert_eq!(parse_proc_stat("cpu0 1 2 3 4\n"), None);
    }

    #[test]
    fn pid_stat() {
        // The command name holds a space and a parenthesis.
        let text = "4242 (tunsec d) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    1234 567 0 0 20 0 4 0 100 2000000 500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let s = parse_pid_stat(text).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.ticks, 1234 + 567);
        assert_eq!(parse_pid_stat("1 (x) Z 1 2"), None);
    }

    #[test]
    fn cpu_per_gb() {
        // 250 ticks at 100 Hz = 2.5 s for 1.25 GB: 2 s/GB.
        let secs = ticks_to_seconds(250, 100);
        assert!((secs - 2.5).abs() < 1e-12);
        let per_gb = seconds_per_gb(secs, 1_250_000_000).unwrap();
        assert!((per_gb - 2.0).abs() < 1e-12);
        assert_eq!(seconds_per_gb(1.0, 0), None);
        assert_eq!(ticks_to_seconds(10, 0), 10.0);
    }

    #[test]
    fn snmp() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                    Udp: 100 0 7 90 7 0 0 0 0\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                    UdpLite: 0 0 0 0 0 0 0 0 0\n";
        assert_eq!(parse_udp_rcvbuf_errors(text), Some(7));
        assert_eq!(parse_udp_rcvbuf_errors("Ip: a\nIp: 1\n"), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median_u64(&[10, 1, 4]), Some(4));
        assert_eq!(median_u64(&[1, 2]), Some(2));
    }

    #[test]
    fn sockperf_statistics() {
        let text = "sockperf: [Total Run] RunTime=2.001 sec; Warm up time=400 msec; SentMessages=114492; ReceivedMessages=114491\n\
sockperf: [Valid Duration] RunTime=1.550 sec; SentMessages=91461; ReceivedMessages=91461\n\
sockperf: \u{1b}[2;35m====> avg-rtt=16.917 (std-dev=25.770)\u{1b}[0m\n\
sockperf: ---> percentile 99.000 =   22.022\n\
sockperf: ---> percentile 90.000 =   19.198\n\
sockperf: ---> percentile 50.000 =   16.274\n";
        let l = parse_sockperf(text).unwrap();
        assert_eq!((l.rtt_median_us, l.rtt_p99_us), (16.274, 22.022));
        assert!((l.round_trips_per_second - 91461.0 / 1.55).abs() < 1e-6);
        assert!(parse_sockperf("sockperf: connection refused").is_err());
    }
}
