//! Smoke test of `tunsec bench`: one 1-second run of the `veth`,
//! `kernel-vxlan` and `tunsec-aes128gcm16` cases, with two TCP streams,
//! `--latency` (sockperf), `--json` and `--svg`. Every row must be measured with a non-zero throughput, the
//! ratios must refer to `kernel-vxlan`, and no namespace may be left.
//!
//! It needs root and iperf3 (`scripts/deps.sh`), and fails, never skips,
//! without them. It asserts nothing about speed: figures belong in
//! `docs/performance.md`, not in tests.

use std::process::{Command, Stdio};

use tunsec_lab::is_root;

const TUNSEC: &str = env!("CARGO_BIN_EXE_tunsec");
/// Namespaces of their own, so that a `tunsec bench` running beside the
/// test is left alone.
const PREFIX: &str = "tsbsmoke";
const CASES: [&str; 3] = ["veth", "kernel-vxlan", "tunsec-aes128gcm16"];

fn namespaces_left() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{PREFIX}-")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn bench_smoke() {
    assert!(
        is_root(),
        "tunsec bench builds network namespaces: run this test as root"
    );
    let iperf3 = Command::new("iperf3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        iperf3,
        "iperf3 is missing: apt-get install iperf3 (or run scripts/deps.sh)"
    );

    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("bench.svg");
    let out = Command::new(TUNSEC)
        .args(["bench", "--runs", "1", "--seconds", "1", "--json"])
        .args(["--streams", "2", "--latency"])
        .args(["--cases", &CASES.join(","), "--prefix", PREFIX, "--svg"])
        .arg(&svg)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run tunsec");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tunsec bench failed ({}):\n{stderr}",
        out.status
    );
    // Progress: one line per run on stderr.
    for case in CASES {
        assert!(
            stderr.contains(&format!("{case} run 1/1: ")),
            "no progress line for {case}:\n{stderr}"
        );
    }

    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "--json printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(report["baseline"], "kernel-vxlan");
    assert_eq!(report["streams"], 2, "the stream count");
    let cases = report["cases"].as_array().expect("cases");
    let names: Vec<&str> = cases.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, CASES, "{report:#}");
    for c in cases {
        let name = &c["name"];
        assert_eq!(c["status"], "ok", "{name}: {c:#}");
        let gbps = c["gbps_median"].as_f64().unwrap_or(0.0);
        assert!(gbps > 0.0, "{name}: {gbps} Gbit/s\n{c:#}");
        assert_eq!(c["runs"].as_array().map(Vec::len), Some(1), "{name}");
        assert!(
            c["ratio_to_baseline"].as_f64().unwrap_or(0.0) > 0.0,
            "{name}"
        );
        assert!(
            c["machine_cpu_s_per_gb"].as_f64().unwrap_or(0.0) > 0.0,
            "{name}"
        );
        assert!(c["runs"][0]["retransmits"].is_u64(), "{name}: {c:#}");
        // sockperf's round trips: a median, a 99th percentile at least
        // as long, and a rate.
        let l = &c["latency"];
        let (p50, p99) = (
            l["rtt_median_us"].as_f64().unwrap_or(0.0),
            l["rtt_p99_us"].as_f64().unwrap_or(0.0),
        );
        assert!(p50 > 0.0 && p99 >= p50, "{name}: latency {l:#}");
        assert!(
            l["round_trips_per_second"].as_f64().unwrap_or(0.0) > 0.0,
            "{name}: {l:#}"
        );
        // Every case carries packets of the TAP's MTU (1385 for IPv4,
        // VXLAN, ESP in UDP on a 1500-byte underlay).
        assert_eq!(c["mtu"], 1385, "{name}");
    }
    assert_eq!(cases[1]["ratio_to_baseline"].as_f64(), Some(1.0));
    let tunsec = &cases[2];
    assert_eq!(tunsec["daemon"], "tunsecd");
    assert!(
        tunsec["daemon_cpu_s_per_gb"].as_f64().unwrap_or(0.0) > 0.0,
        "{tunsec:#}"
    );
    // Under `require` every frame went through ESP, and none was dropped
    // by tunsecd as undecryptable.
    let drops = tunsec["drops"].as_object().expect("drops");
    for reason in [
        "tunsecd:icv_failure",
        "tunsecd:no_sa",
        "tunsecd:unknown_spi",
    ] {
        assert!(!drops.contains_key(reason), "{reason}: {drops:?}");
    }

    let chart = std::fs::read_to_string(&svg).expect("--svg wrote no file");
    assert!(chart.starts_with("<svg "), "{chart}");
    assert!(chart.trim_end().ends_with("</svg>"));
    for case in CASES {
        assert!(chart.contains(case), "the chart lacks {case}");
    }
    assert_eq!(namespaces_left(), Vec::<String>::new());
}
