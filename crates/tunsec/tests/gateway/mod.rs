//! Helpers shared by the gateway end-to-end tests (`gateway_*_e2e.rs`):
//! their preflight, the two- and three-host setup with vxlan devices, the
//! gateway config, transfers and forged VXLAN (Debian's python3-scapy,
//! `tests/e2e/overlay_tool.py`), capture summaries, metrics, and the
//! nftables rules and routes a gateway leaves. Each of those test crates
//! declares `mod common;` and `mod gateway;`; this module re-exports
//! `common`'s lab helpers.

// Each test crate of the family compiles this module; not every crate
// uses every helper.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tunsec::control::{self, Request, Response};
use tunsec::status::Status;
use tunsec_lab::Lab;

use crate::common;
pub(crate) use crate::common::*;

pub(crate) const TUNSEC: &str = env!("CARGO_BIN_EXE_tunsec");
pub(crate) const TOOL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/overlay_tool.py");
pub(crate) const PYTHON: &str = "/usr/bin/python3";

/// The second protected service.
pub(crate) const SERVICE_PORT: u16 = 16385;
pub(crate) const TUN: &str = "tunsec-gw";
pub(crate) const NFT_TABLE: &str = "tunsec_gw";
pub(crate) const TABLE: u32 = 0x7453;
pub(crate) const PRIORITY: u32 = 29_000;

pub(crate) fn preflight() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        require(
            "gateway end-to-end tests",
            &[
                ("ip", &["-V"], "iproute2"),
                ("nft", &["--version"], "nftables"),
                ("ping", &["-V"], "iputils-ping"),
                ("dumpcap", &["-v"], "tshark"),
                ("tshark", &["-v"], "tshark"),
                ("sha256sum", &["--version"], "coreutils"),
                (PYTHON, &["-c", "import scapy.all"], "python3-scapy"),
            ],
        );
    });
}

/// [`common::with_lab`] after this suite's [`preflight`].
pub(crate) fn with_lab(prefix: &str, body: impl FnOnce(&mut Lab) -> anyhow::Result<()>) {
    common::with_lab(prefix, preflight, body);
}

pub(crate) fn tool(ns: &str, limit_secs: u32, args: &[&str]) -> anyhow::Result<String> {
    let limit = limit_secs.to_string();
    let mut full = vec![limit.as_str(), PYTHON, TOOL];
    full.extend_from_slice(args);
    let out = exec_output(ns, "timeout", &full)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "overlay_tool.py {} in {ns} failed ({}): {stdout}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

pub(crate) fn random_bytes(len: usize) -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

pub(crate) fn sha256(path: &Path) -> anyhow::Result<String> {
    let out = tunsec_lab::run("sha256sum", &[&path.to_string_lossy()])?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .context("sha256sum printed nothing")
}

/// Host `n`'s IPv6 underlay address (`gateway_ipv6`).
pub(crate) fn host_addr6(n: u8) -> String {
    format!("2001:db8::{n}")
}

/// The overlay address of host `n`'s vxlan device.
pub(crate) fn vxlan_addr(n: u8) -> String {
    format!("10.42.0.{n}")
}

/// How a test's hosts are configured.
#[derive(Clone, Copy, Default)]
pub(crate) struct Opts {
    /// Lines added to `[gateway]` (and what follows it, such as an
    /// `[esp]` table).
    pub(crate) extra: &'static str,
    /// Keys from IKEv2 with a PSK instead of manual keys.
    pub(crate) ike: bool,
    /// Lines added to `[peer.ike]` (with `ike`).
    pub(crate) ike_extra: &'static str,
    /// IPv6 underlay addresses.
    pub(crate) ipv6: bool,
    /// tunsecd serves its metrics on the underlay address, port 9464.
    pub(crate) metrics: bool,
    /// A third selector: GRE (IP protocol 47, no ports).
    pub(crate) gre: bool,
    /// Lines added to the `udp/4789` selector (its `tunnel`, `policy`
    /// and `[[peer.selector.vni]]` rules).
    pub(crate) vxlan_extra: &'static str,
}

/// Writes the gateway config of host `n` with `peers`, with manual keys
/// (`key-<from>-<to>` files, written here) or a PSK.
pub(crate) fn write_config(lab: &Lab, n: u8, peers: &[u8], opts: Opts) -> anyhow::Result<PathBuf> {
    let gateway = opts.extra;
    let addr = if opts.ipv6 { host_addr6 } else { host_addr };
    let suite = "aes256gcm16";
    let key = |from: u8, to: u8| -> anyhow::Result<PathBuf> {
        let path = lab.dir.path().join(format!("key-{from}-{to}"));
        if !path.exists() {
            tunsec::config::write_secret(&path, hex::encode(random_bytes(36)?))?;
        }
        Ok(path)
    };
    let spi = |from: u8, to: u8| 0x2000 + u32::from(to) * 16 + u32::from(from);
    let mut c = String::new();
    writeln!(
        c,
        "[node]\nname = \"h{n}\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n{}",
        addr(n),
        socket_path(lab, n).display(),
        if opts.metrics {
            format!("metrics_listen = \"{}:9464\"\n", host_addr(n))
        } else {
            String::new()
        }
    )?;
    writeln!(c, "[gateway]\ntunnel_devices = [\"vxlan0\"]\n{gateway}\n")?;
    for &peer in peers {
        writeln!(
            c,
            "[[peer]]\nname = \"h{peer}\"\nunderlay = \"{}\"\n",
            addr(peer)
        )?;
        writeln!(
            c,
            "[[peer.selector]]\nprotocol = \"udp\"\nports = 4789\n{}\n\n[[peer.selector]]\nprotocol = \"tcp\"\nports = {SERVICE_PORT}\n",
            opts.vxlan_extra
        )?;
        if opts.gre {
            writeln!(c, "[[peer.selector]]\nprotocol = \"gre\"\n")?;
        }
        if opts.ike {
            let psk = lab.dir.path().join(format!("h{n}.psk"));
            tunsec::config::write_secret(&psk, "a gateway test key, long enough\n")?;
            writeln!(
                c,
                "[peer.ike]\npsk_file = \"{}\"\n{}",
                psk.display(),
                opts.ike_extra
            )?;
        } else {
            writeln!(
                c,
                "[peer.sa]\nspi_in = {:#x}\nspi_out = {:#x}\nsuite = \"{suite}\"\nkey_in = \"{}\"\nkey_out = \"{}\"\n",
                spi(peer, n),
                spi(n, peer),
                key(peer, n)?.display(),
                key(n, peer)?.display()
            )?;
        }
    }
    let path = lab.dir.path().join(format!("h{n}.toml"));
    std::fs::write(&path, c)?;
    Ok(path)
}

/// Starts `tunsecd` under `label` and waits for its control socket.
pub(crate) fn start_daemon(lab: &mut Lab, label: &str, ns: &str, n: u8) -> anyhow::Result<()> {
    let config = lab.dir.path().join(format!("h{n}.toml"));
    let config = config.to_string_lossy().into_owned();
    lab.spawn(label, ns, Path::new(TUNSECD), &["--config", &config])?;
    let sock = socket_path(lab, n);
    lab.wait_for(
        &format!("tunsecd {label} to answer"),
        Duration::from_secs(20),
        || {
            matches!(
                control::call(&sock, &Request::Status),
                Ok(Response::Status(_))
            )
        },
    )
}

/// A kernel vxlan device on host `n` towards `peer`, with the MTU that
/// tunsecd advises.
pub(crate) fn add_vxlan(lab: &Lab, ns: &str, n: u8, peer: u8, mtu: u16) -> anyhow::Result<()> {
    add_vxlan_between(lab, ns, n, &host_addr(n), &host_addr(peer), mtu)
}

/// A kernel vxlan device on host `n` from underlay address `local` to
/// `remote`.
pub(crate) fn add_vxlan_between(
    lab: &Lab,
    ns: &str,
    n: u8,
    local: &str,
    remote: &str,
    mtu: u16,
) -> anyhow::Result<()> {
    lab.exec(
        ns,
        "ip",
        &[
            "link", "add", "vxlan0", "type", "vxlan", "id", "42", "remote", remote, "local", local,
            "dstport", "4789",
        ],
    )?;
    lab.exec(
        ns,
        "ip",
        &["link", "set", "vxlan0", "mtu", &mtu.to_string()],
    )?;
    lab.exec(
        ns,
        "ip",
        &[
            "addr",
            "add",
            &format!("{}/24", vxlan_addr(n)),
            "dev",
            "vxlan0",
        ],
    )?;
    lab.exec(ns, "ip", &["link", "set", "vxlan0", "up"])?;
    Ok(())
}

pub(crate) struct Hosts {
    pub(crate) ul: String,
    pub(crate) h1: String,
    pub(crate) h2: String,
    pub(crate) h3: String,
}

/// The underlay, hosts 1 and 2 running tunsecd in gateway mode with
/// vxlan devices, and host 3 (the forger).
pub(crate) fn setup(lab: &mut Lab) -> anyhow::Result<Hosts> {
    setup_with(lab, Opts::default())
}

/// As [`setup`], with both hosts configured by `opts`.
pub(crate) fn setup_with(lab: &mut Lab, opts: Opts) -> anyhow::Result<Hosts> {
    let hosts = prepare(lab, opts)?;
    start_hosts(lab, &hosts)?;
    Ok(hosts)
}

/// The underlay and hosts 1 to 3, with the configs of hosts 1 and 2
/// written; nothing started yet.
pub(crate) fn prepare(lab: &mut Lab, opts: Opts) -> anyhow::Result<Hosts> {
    let ul = add_underlay(lab)?;
    let h1 = add_host(lab, &ul, "h1", 1)?;
    let h2 = add_host(lab, &ul, "h2", 2)?;
    let h3 = add_host(lab, &ul, "h3", 3)?;
    write_config(lab, 1, &[2], opts)?;
    write_config(lab, 2, &[1], opts)?;
    Ok(Hosts { ul, h1, h2, h3 })
}

/// Starts tunsecd on hosts 1 and 2, then their vxlan devices with the
/// MTU that tunsecd advises.
pub(crate) fn start_hosts(lab: &mut Lab, hosts: &Hosts) -> anyhow::Result<()> {
    start_daemon(lab, "h1", &hosts.h1, 1)?;
    start_daemon(lab, "h2", &hosts.h2, 2)?;
    let advice = gw_status(&status(lab, 1)?)?.tunnel_mtu_advice;
    add_vxlan(lab, &hosts.h1, 1, 2, advice)?;
    add_vxlan(lab, &hosts.h2, 2, 1, advice)?;
    Ok(())
}

pub(crate) fn gw_status(s: &Status) -> anyhow::Result<&tunsec::status::GatewayStatus> {
    s.gateway
        .as_ref()
        .with_context(|| format!("{}: no gateway status", s.node.name))
}

/// Packets the vxlan device of `ns` received.
pub(crate) fn vxlan_rx(ns: &str) -> anyhow::Result<u64> {
    link_rx(ns, "vxlan0")
}

/// Packets the kernel received on device `dev` of `ns` (for a TUN device:
/// packets tunsecd wrote to it).
pub(crate) fn link_rx(ns: &str, dev: &str) -> anyhow::Result<u64> {
    let path = format!("/sys/class/net/{dev}/statistics/rx_packets");
    let out = exec_output(ns, "cat", &[&path])?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("rx_packets of {dev}"))
}

/// Sends three cleartext VXLAN datagrams from `ns` to host 1 with host
/// 2's source address (spoofed): an ICMP echo for host 1's vxlan address.
pub(crate) fn forge_vxlan(ns: &str) -> anyhow::Result<()> {
    forge_vxlan_from(ns, &host_addr(2))
}

/// As [`forge_vxlan`], from source address `src`.
pub(crate) fn forge_vxlan_from(ns: &str, src: &str) -> anyhow::Result<()> {
    let script = format!(
        "from scapy.all import IP, UDP, Ether, ICMP, Raw, send\n\
         from scapy.layers.vxlan import VXLAN\n\
         p = IP(src='{h2}', dst='{h1}')/UDP(sport=40000, dport=4789)/VXLAN(vni=42, flags=8)/\
         Ether(src='02:00:00:00:00:99', dst='ff:ff:ff:ff:ff:ff')/IP(src='10.42.0.99', dst='{v1}')/ICMP()/Raw(b'FORGED')\n\
         send(p, count=3, verbose=False)\n",
        h2 = src,
        h1 = host_addr(1),
        v1 = vxlan_addr(1)
    );
    let out = exec_output(ns, PYTHON, &["-c", &script])?;
    ensure!(
        out.status.success(),
        "scapy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Transfers `bytes` of random data over TCP from `from` to `addr:port`
/// (a server in `to`); fails unless the SHA-256 of both sides match.
pub(crate) fn transfer(
    lab: &mut Lab,
    label: &str,
    from: &str,
    to: &str,
    addr: &str,
    port: u16,
    bytes: usize,
) -> anyhow::Result<f64> {
    let sent = lab.dir.path().join(format!("{label}-sent.bin"));
    let received = lab.dir.path().join(format!("{label}-received.bin"));
    let ready = lab.dir.path().join(format!("{label}.ready"));
    std::fs::write(&sent, random_bytes(bytes)?)?;
    let (received_s, ready_s, sent_s, port_s) = (
        received.to_string_lossy().into_owned(),
        ready.to_string_lossy().into_owned(),
        sent.to_string_lossy().into_owned(),
        port.to_string(),
    );
    lab.spawn(
        label,
        to,
        Path::new(PYTHON),
        &[TOOL, "server", addr, &port_s, &received_s, &ready_s],
    )?;
    lab.wait_for("the TCP server", Duration::from_secs(10), || ready.exists())?;
    let t = Instant::now();
    let report = tool(from, 600, &["client", addr, &port_s, &sent_s])?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "  [{}] {label}: TCP {} KiB in {secs:.1} s ({:.1} MB/s): {}",
        lab.ns(""),
        bytes >> 10,
        bytes as f64 / secs / 1e6,
        report.trim()
    );
    lab.stop(label);
    let (a, b) = (sha256(&sent)?, sha256(&received)?);
    let len = std::fs::metadata(&received)?.len();
    ensure!(
        len == bytes as u64 && a == b,
        "{label}: sent {bytes} bytes (SHA-256 {a}), received {len} (SHA-256 {b})"
    );
    Ok(secs)
}

/// A captured frame: `frame.protocols`, UDP source and destination
/// port, TCP source and destination port, and its length. (With UDP GSO,
/// a capture on the bridge sees super-packets of up to 64 KB rather than
/// one frame per datagram: count bytes, not frames.)
pub(crate) type Summary = (
    String,
    Option<u16>,
    Option<u16>,
    Option<u16>,
    Option<u16>,
    usize,
);

/// The bytes of the captured frames that `keep` selects.
pub(crate) fn bytes_of(frames: &[Summary], keep: impl Fn(&Summary) -> bool) -> usize {
    frames.iter().filter(|f| keep(f)).map(|f| f.5).sum()
}

/// Frames of a capture with their transport ports and protocols.
pub(crate) fn capture_summary(pcap: &Path) -> anyhow::Result<Vec<Summary>> {
    let text = tshark_fields(
        pcap,
        None,
        &[
            "frame.protocols",
            "udp.srcport",
            "udp.dstport",
            "tcp.srcport",
            "tcp.dstport",
            "frame.len",
        ],
    )?;
    Ok(text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let p = |i: usize| f.get(i).and_then(|v| v.parse().ok());
            let len = f.get(5).and_then(|v| v.parse().ok()).unwrap_or(0);
            (f[0].to_owned(), p(1), p(2), p(3), p(4), len)
        })
        .collect())
}

/// Waits until host `n`'s peer has an established IKE SA and both SAs.
pub(crate) fn wait_child_sa(lab: &Lab, n: u8) -> anyhow::Result<()> {
    lab.wait_for(&format!("h{n}'s Child SA"), Duration::from_secs(20), || {
        status(lab, n).is_ok_and(|s| {
            s.peers.first().is_some_and(|p| {
                p.ike.as_ref().is_some_and(|i| i.state == "established") && p.sas.len() == 2
            })
        })
    })
}

/// One OpenMetrics sample: name, labels, value.
pub(crate) type Sample = (String, BTreeMap<String, String>, f64);

/// Where `check_metrics` gets the metrics.
#[derive(Clone, Copy)]
pub(crate) enum MetricsFrom<'a> {
    /// `tunsec metrics`.
    Cli,
    /// tunsecd's endpoint, `GET http://ADDR/metrics` from namespace `ns`.
    Http { ns: &'a str, addr: &'a str },
}

/// Parses OpenMetrics text (from stdin) or fetches it (`URL`, checking
/// the content type, and that another path is 404) with Python's
/// prometheus_client, an independent parser that refuses malformed text,
/// and prints the samples as JSON.
pub(crate) const PARSE_METRICS: &str = r#"
import json, sys, urllib.request, urllib.error
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse
if len(sys.argv) > 1:
    r = urllib.request.urlopen(sys.argv[1], timeout=5)
    ct = r.headers.get('Content-Type', '')
    assert ct.startswith('application/openmetrics-text'), ct
    text = r.read().decode()
    try:
        urllib.request.urlopen(sys.argv[1] + 'x', timeout=5)
        raise SystemExit('another path answered 200')
    except urllib.error.HTTPError as e:
        assert e.code == 404, e.code
else:
    text = sys.stdin.read()
print(json.dumps([[s.name, s.labels, s.value] for f in parse(text) for s in f.samples]))
"#;

/// The samples of host `n`'s metrics, parsed by Python's
/// prometheus_client.
pub(crate) fn metrics(lab: &Lab, n: u8, from: MetricsFrom<'_>) -> anyhow::Result<Vec<Sample>> {
    let (mut cmd, input) = match from {
        MetricsFrom::Cli => {
            let text = Command::new(env!("CARGO_BIN_EXE_tunsec"))
                .args([
                    "--socket",
                    &socket_path(lab, n).to_string_lossy(),
                    "metrics",
                ])
                .output()?;
            ensure!(
                text.status.success(),
                "tunsec metrics: {}",
                String::from_utf8_lossy(&text.stderr)
            );
            let mut cmd = Command::new(PYTHON);
            cmd.args(["-c", PARSE_METRICS]);
            (cmd, text.stdout)
        }
        MetricsFrom::Http { ns, addr } => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, PYTHON, "-c", PARSE_METRICS])
                .arg(format!("http://{addr}/metrics"));
            (cmd, Vec::new())
        }
    };
    let mut py = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write as _;
        py.stdin
            .take()
            .context("python's stdin")?
            .write_all(&input)?;
    }
    let out = py.wait_with_output()?;
    ensure!(
        out.status.success(),
        "the OpenMetrics parser refused the metrics: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&input)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Everything of tunsecd's in `ns`: rules at its priorities or towards
/// its table, routes in its table or via its TUN device (IPv4 and IPv6),
/// its nftables table, its TUN device.
pub(crate) fn leftovers(ns: &str) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for family in ["-4", "-6"] {
        let rules = exec_output(ns, "ip", &[family, "rule"])?;
        for l in String::from_utf8_lossy(&rules.stdout).lines() {
            let ours = l.starts_with(&format!("{PRIORITY}:"))
                || l.starts_with(&format!("{}:", PRIORITY + 1))
                || l.contains(&format!("lookup {TABLE}"));
            if ours {
                found.push(format!("rule: {l}"));
            }
        }
        let routes = exec_output(ns, "ip", &[family, "route", "show", "table", "all"])?;
        for l in String::from_utf8_lossy(&routes.stdout).lines() {
            if l.contains(&format!("table {TABLE}")) || l.contains(TUN) {
                found.push(format!("route: {l}"));
            }
        }
    }
    let nft = exec_output(ns, "nft", &["list", "ruleset"])?;
    if String::from_utf8_lossy(&nft.stdout).contains(NFT_TABLE) {
        found.push(format!("nft table {NFT_TABLE}"));
    }
    if exec_output(ns, "ip", &["link", "show", TUN])?
        .status
        .success()
    {
        found.push(format!("link {TUN}"));
    }
    Ok(found)
}

pub(crate) fn rule_count(ns: &str) -> anyhow::Result<usize> {
    let rules = exec_output(ns, "ip", &["rule"])?;
    Ok(String::from_utf8_lossy(&rules.stdout)
        .lines()
        .filter(|l| {
            l.starts_with(&format!("{PRIORITY}:")) || l.starts_with(&format!("{}:", PRIORITY + 1))
        })
        .count())
}

/// Runs `tunsec gateway release` in `ns` for host `n`'s config and
/// returns what it printed.
pub(crate) fn release(lab: &Lab, ns: &str, n: u8) -> anyhow::Result<String> {
    let config = lab.dir.path().join(format!("h{n}.toml"));
    let out = exec_output(
        ns,
        TUNSEC,
        &["gateway", "release", "--config", &config.to_string_lossy()],
    )?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "tunsec gateway release: {} {said} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(said)
}
