//! End-to-end tests of `tunsecd` in overlay mode, in network namespaces.
//!
//! Every test builds its own lab with [`tunsec_lab::Lab`] (its own
//! namespace prefix, so the tests run in parallel; addresses only inside
//! its namespaces; everything removed on drop): hosts on an underlay
//! bridge (192.0.2.0/24), each running the real `tunsecd` binary, with
//! tenants (198.51.100.0/24) bridged to its TAP device. They prove that:
//!
//! - `overlay_vxlan`, `overlay_geneve`, `overlay_gue`: for each tunnel
//!   format (and a different suite each), tenants on two hosts ping each
//!   other and move 50 MiB over TCP intact (SHA-256 of what was sent and
//!   what arrived), while a capture of the underlay holds only ESP in UDP
//!   4500 (and ARP) and not one copy of a marker that the transferred data
//!   and the pings carry tens of thousands of times.
//! - `interop_linux_vxlan`: a host whose peer policy is `clear` exchanges
//!   frames both ways with the Linux vxlan device; the capture shows plain
//!   VXLAN, UDP port 4789, VNI 100, in both directions.
//! - `fail_closed_without_sa`, `fail_closed_after_sa_delete`: under
//!   `require`, with no SA configured or after `tunsec sa delete`, tenant
//!   pings and a UDP flood put not one packet from the host on the
//!   underlay, and the data path counts every frame as `no_sa`.
//! - `bad_traffic_is_counted`: forged ESP injected on the underlay with
//!   Scapy (a replayed packet, a tampered one, one sealed with the wrong
//!   key, an unknown SPI, a packet from an address that is not the SA's
//!   peer) is dropped and counted under its own reason in `tunsec status`,
//!   and the tunnel keeps working.
//! - `bad_config_is_refused`: an out-of-range VNI stops `tunsecd` with
//!   exit code 2, a message naming `network[0].vni` and the value, and no
//!   TAP device or control socket.
//!
//! The tests need root, iproute2, ping, tshark (dumpcap) and Debian's
//! python3-scapy (`scripts/deps.sh` installs them). They fail, never skip,
//! when something is missing. On a failure they print every log of the lab
//! (the daemons' included).

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use tunsec::control::{self, Request, Response};
use tunsec::status::{SaStatus, Status};
use tunsec_lab::Lab;

mod common;
use common::*;

/// The traffic helpers (stdlib Python, and Scapy for `inject`).
const TOOL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/overlay_tool.py");
/// Debian's python3, the one python3-scapy installs into.
const PYTHON: &str = "/usr/bin/python3";
/// The size of the TCP transfer.
const TRANSFER_BYTES: usize = 50 << 20;
const ESP_PORT: u16 = 4500;

// ---------------------------------------------------------------------
// Preconditions and the lab

/// Fails (never skips) unless the tests can run: root, and every tool.
fn preflight() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        require(
            "overlay end-to-end tests",
            &[
                ("ip", &["-V"], "iproute2"),
                ("ping", &["-V"], "iputils-ping"),
                ("dumpcap", &["-v"], "tshark"),
                ("tshark", &["-v"], "tshark"),
                ("sha256sum", &["--version"], "coreutils"),
                (
                    PYTHON,
                    &["-c", "import scapy.all, cryptography"],
                    "python3-scapy",
                ),
            ],
        );
    });
}

/// [`common::with_lab`] after this suite's [`preflight`].
fn with_lab(prefix: &str, body: impl FnOnce(&mut Lab) -> anyhow::Result<()>) {
    common::with_lab(prefix, preflight, body);
}

/// Runs the traffic helper in a namespace (killed after `limit_secs`) and
/// fails with its output if it fails.
fn tool(ns: &str, limit_secs: u32, args: &[&str]) -> anyhow::Result<String> {
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

// ---------------------------------------------------------------------
// Topology

fn link_mac(lab: &Lab, ns: &str, dev: &str) -> anyhow::Result<String> {
    let out = lab.exec(ns, "ip", &["-o", "link", "show", dev])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words
        .find(|w| *w == "link/ether")
        .and_then(|_| words.next())
        .map(str::to_owned)
        .with_context(|| format!("no MAC for {dev} in {ns}: {text}"))
}

// ---------------------------------------------------------------------
// Configs, keys and daemons

/// The virtual network every test uses (named `blue`, TAP `ts-blue`).
#[derive(Clone, Copy)]
struct Net {
    encap: &'static str,
    vni: u32,
    port: Option<u16>,
}

const VXLAN_100: Net = Net {
    encap: "vxlan",
    vni: 100,
    port: None,
};

/// One side of a manually keyed SA pair.
struct SaFiles {
    spi_in: u32,
    spi_out: u32,
    suite: &'static str,
    key_in: PathBuf,
    key_out: PathBuf,
}

struct PeerConf {
    n: u8,
    policy: &'static str,
    sa: Option<SaFiles>,
}

/// The SPI of packets from host `from` to host `to`.
fn spi(from: u8, to: u8) -> u32 {
    0x1000 + u32::from(to) * 16 + u32::from(from)
}

fn random_bytes(len: usize) -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// Fresh random keys for hosts `a` and `b`: returns the SA of `a` (towards
/// `b`) and of `b` (towards `a`).
fn sa_pair(lab: &Lab, suite: &'static str, a: u8, b: u8) -> anyhow::Result<(SaFiles, SaFiles)> {
    let s: tunsec_esp::Suite = suite
        .parse()
        .map_err(|e| anyhow::anyhow!("suite {suite}: {e:?}"))?;
    let len = s.encryption_key_len() + s.integrity_key_len();
    let key = |from: u8, to: u8| -> anyhow::Result<PathBuf> {
        let path = lab.dir.path().join(format!("key-{from}-{to}"));
        tunsec::config::write_secret(&path, hex::encode(random_bytes(len)?))?;
        Ok(path)
    };
    let (ab, ba) = (key(a, b)?, key(b, a)?);
    Ok((
        SaFiles {
            spi_in: spi(b, a),
            spi_out: spi(a, b),
            suite,
            key_in: ba.clone(),
            key_out: ab.clone(),
        },
        SaFiles {
            spi_in: spi(a, b),
            spi_out: spi(b, a),
            suite,
            key_in: ab,
            key_out: ba,
        },
    ))
}

/// Writes the config of host `h<n>`: network `blue` and `peers`.
fn write_config(lab: &Lab, n: u8, net: Net, peers: &[PeerConf]) -> anyhow::Result<PathBuf> {
    let mut c = String::new();
    writeln!(
        c,
        "[node]\nname = \"h{n}\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n",
        host_addr(n),
        socket_path(lab, n).display()
    )?;
    writeln!(
        c,
        "[[network]]\nname = \"blue\"\nvni = {}\nencapsulation = \"{}\"",
        net.vni, net.encap
    )?;
    if let Some(port) = net.port {
        writeln!(c, "port = {port}")?;
    }
    for p in peers {
        writeln!(
            c,
            "\n[[peer]]\nname = \"h{}\"\nunderlay = \"{}\"\nnetworks = [\"blue\"]\npolicy = \"{}\"",
            p.n,
            host_addr(p.n),
            p.policy
        )?;
        if let Some(sa) = &p.sa {
            writeln!(
                c,
                "\n[peer.sa]\nspi_in = {:#x}\nspi_out = {:#x}\nsuite = \"{}\"\nkey_in = \"{}\"\nkey_out = \"{}\"",
                sa.spi_in,
                sa.spi_out,
                sa.suite,
                sa.key_in.display(),
                sa.key_out.display()
            )?;
        }
    }
    let path = lab.dir.path().join(format!("h{n}.toml"));
    std::fs::write(&path, c)?;
    Ok(path)
}

/// The namespaces of a two-host lab with an ESP pair under `require`.
struct EspPair {
    ul: String,
    t1: String,
    t2: String,
}

/// Builds the underlay, two hosts running `tunsecd` with a manual ESP pair
/// (`require` both ways) on network `net`, and a tenant behind each.
fn esp_pair(lab: &mut Lab, net: Net, suite: &'static str) -> anyhow::Result<EspPair> {
    esp_pair_with(lab, net, suite, "")
}

/// As [`esp_pair`], with `extra` appended to both hosts' configs.
fn esp_pair_with(
    lab: &mut Lab,
    net: Net,
    suite: &'static str,
    extra: &str,
) -> anyhow::Result<EspPair> {
    let ul = add_underlay(lab)?;
    let h1 = add_host(lab, &ul, "h1", 1)?;
    let h2 = add_host(lab, &ul, "h2", 2)?;
    let (sa1, sa2) = sa_pair(lab, suite, 1, 2)?;
    for (n, peer, sa, host) in [(1, 2, sa1, &h1), (2, 1, sa2, &h2)] {
        let config = write_config(
            lab,
            n,
            net,
            &[PeerConf {
                n: peer,
                policy: "require",
                sa: Some(sa),
            }],
        )?;
        if !extra.is_empty() {
            let mut text = std::fs::read_to_string(&config)?;
            text.push_str(extra);
            std::fs::write(&config, text)?;
        }
        start_tunsecd(lab, host, n, &config)?;
    }
    let t1 = add_tenant(lab, &h1, 1, TAP)?;
    let t2 = add_tenant(lab, &h2, 2, TAP)?;
    Ok(EspPair { ul, t1, t2 })
}

fn data_drop(s: &Status, reason: &str) -> u64 {
    s.drops.get(reason).copied().unwrap_or(0)
}

/// The SA of `peer` in direction `dir` ("in" or "out").
fn sa_of<'a>(s: &'a Status, peer: &str, dir: &str) -> anyhow::Result<&'a SaStatus> {
    s.peers
        .iter()
        .find(|p| p.name == peer)
        .and_then(|p| p.sas.iter().find(|sa| sa.direction == dir))
        .with_context(|| format!("{}: no {dir} SA for peer {peer}", s.node.name))
}

fn sa_drop(sa: &SaStatus, reason: &str) -> u64 {
    sa.drops.get(reason).copied().unwrap_or(0)
}

// ---------------------------------------------------------------------
// Traffic

fn sha256(path: &Path) -> anyhow::Result<String> {
    let out = tunsec_lab::run("sha256sum", &[&path.to_string_lossy()])?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .context("sha256sum printed nothing")
}

// ---------------------------------------------------------------------
// Captures

impl Frame {
    fn is_arp(&self) -> bool {
        self.protocols.starts_with("eth:ethertype:arp")
    }

    fn is_esp_in_udp(&self) -> bool {
        self.protocols
            .starts_with("eth:ethertype:ip:udp:udpencap:esp")
            && self.sport == Some(ESP_PORT)
            && self.dport == Some(ESP_PORT)
    }

    fn is_vxlan(&self, vni: u32) -> bool {
        self.protocols.starts_with("eth:ethertype:ip:udp:vxlan:eth")
            && self.dport == Some(4789)
            && self.vni == Some(vni)
    }
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

// ---------------------------------------------------------------------
// 1. Overlay mode, per tunnel format

#[test]
fn overlay_vxlan() {
    with_lab("tse2e-vx", |lab| overlay(lab, VXLAN_100, "aes128gcm16"));
}

#[test]
fn overlay_geneve() {
    let net = Net {
        encap: "geneve",
        vni: 200,
        port: None,
    };
    with_lab("tse2e-gn", |lab| overlay(lab, net, "aes256gcm16"));
}

/// Every offload setting moves 200 MiB over TCP intact: TAP TSO and
/// checksum offload with GRO, UDP GSO and UDP GRO (the default), without
/// UDP GRO, without UDP GSO,
/// without GRO, and with no offload at all (`[offload]`).
#[test]
fn offload_tcp_transfers() {
    for (prefix, extra) in [
        ("tsov-off-all", ""),
        ("tsov-off-nogro", "\n[offload]\ngro = false\n"),
        ("tsov-off-noudpgro", "\n[offload]\nudp_gro = false\n"),
        ("tsov-off-noudpgso", "\n[offload]\nudp_gso = false\n"),
        (
            "tsov-off-none",
            "\n[offload]\ntap = false\ngro = false\nudp_gso = false\nudp_gro = false\n",
        ),
    ] {
        with_lab(prefix, |lab| {
            overlay_with(lab, VXLAN_100, "aes128gcm16", extra, 200 << 20)
        });
    }
}

#[test]
fn overlay_gue() {
    let net = Net {
        encap: "gue",
        vni: 300,
        port: Some(6080),
    };
    with_lab("tse2e-gu", |lab| overlay(lab, net, "chacha20poly1305"));
}

/// Two hosts with an ESP pair; tenants ping and move 50 MiB over TCP.
fn overlay(lab: &mut Lab, net: Net, suite: &'static str) -> anyhow::Result<()> {
    overlay_with(lab, net, suite, "", TRANSFER_BYTES)
}

/// As [`overlay`], with `extra` in both configs and `bytes` over TCP.
fn overlay_with(
    lab: &mut Lab,
    net: Net,
    suite: &'static str,
    extra: &str,
    bytes: usize,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let EspPair { ul, t1, t2 } = esp_pair_with(lab, net, suite, extra)?;
    phase(lab, "setup", t0);

    // The data: random, with the marker every 512 bytes, so every
    // full-size TCP segment carries it at least twice.
    let sent = lab.dir.path().join("sent.bin");
    let received = lab.dir.path().join("received.bin");
    let mut data = random_bytes(bytes)?;
    for chunk in data.chunks_mut(512) {
        let n = chunk.len().min(MARKER.len());
        chunk[..n].copy_from_slice(&MARKER[..n]);
    }
    let markers_sent = count_marker(&data);
    ensure!(markers_sent >= bytes / 512, "the data lacks markers");
    std::fs::write(&sent, &data)?;
    drop(data);

    let pcap = start_capture(lab, &ul, "capture")?;
    let t = Instant::now();
    ping_ok(&t1, &tenant_addr(2))?;
    ping_ok(&t2, &tenant_addr(1))?;
    phase(lab, "pings", t);

    let ready = lab.dir.path().join("server.ready");
    let (received_s, ready_s, sent_s) = (
        received.to_string_lossy().into_owned(),
        ready.to_string_lossy().into_owned(),
        sent.to_string_lossy().into_owned(),
    );
    let addr2 = tenant_addr(2);
    lab.spawn(
        "server",
        &t2,
        Path::new(PYTHON),
        &[TOOL, "server", &addr2, "5001", &received_s, &ready_s],
    )?;
    lab.wait_for("the TCP server", Duration::from_secs(10), || ready.exists())?;
    let t = Instant::now();
    let report = tool(&t1, 900, &["client", &addr2, "5001", &sent_s])?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "  [{}] TCP {} MiB in {secs:.1} s ({:.1} MB/s): {}",
        lab.ns(""),
        bytes >> 20,
        bytes as f64 / secs / 1e6,
        report.trim()
    );
    lab.stop("server");
    stop_capture(lab, "capture");

    let t = Instant::now();
    let (hash_sent, hash_received) = (sha256(&sent)?, sha256(&received)?);
    let received_len = std::fs::metadata(&received)?.len();
    ensure!(
        received_len == bytes as u64 && hash_sent == hash_received,
        "the transfer was corrupted: sent {bytes} bytes (SHA-256 {hash_sent}), \
         received {received_len} (SHA-256 {hash_received})"
    );

    // The underlay: ESP in UDP 4500 and ARP, nothing else, and no marker.
    let raw = std::fs::read(&pcap)?;
    let leaked = count_marker(&raw);
    let frames = frames(&pcap)?;
    let other: Vec<&Frame> = frames
        .iter()
        .filter(|f| !f.is_arp() && !f.is_esp_in_udp())
        .collect();
    let esp_1to2 = frames
        .iter()
        .filter(|f| f.is_esp_in_udp() && f.src == host_addr(1) && f.dst == host_addr(2))
        .count();
    phase(lab, "checks", t);
    eprintln!(
        "  [{}] capture: {} frames, {} MB, {esp_1to2} ESP h1->h2, {} other, marker {leaked} times \
         (sent {markers_sent} times)",
        lab.ns(""),
        frames.len(),
        raw.len() / 1_000_000,
        other.len()
    );
    ensure!(
        other.is_empty(),
        "{} captured frames are neither ESP in UDP {ESP_PORT} nor ARP:{}",
        other.len(),
        describe(&other)
    );
    ensure!(
        leaked == 0,
        "the marker appears {leaked} times in the underlay capture: tenant bytes in the clear"
    );
    // The capture saw the transfer: ESP from h1 to h2, and at least as
    // many bytes as were sent. (With UDP GSO a capture on the bridge sees
    // super-packets of up to 64 KB, not one packet per segment, so the
    // packet count proves nothing.)
    ensure!(
        esp_1to2 > 0 && raw.len() >= bytes,
        "the capture missed the transfer: {esp_1to2} ESP packets from h1 to h2, {} bytes \
         captured for {bytes} sent",
        raw.len()
    );

    // Every ESP packet one side sealed, the other opened: no sequence
    // number was skipped (a gap is a packet lost between the two SA
    // counters, which TCP would hide by retransmitting). A flush that
    // left datagrams behind once cost 1% of all packets this way.
    let mut last = String::new();
    let settled = lab.wait_for("the ESP counters to settle", Duration::from_secs(5), || {
        let (Ok(s1), Ok(s2)) = (status(lab, 1), status(lab, 2)) else {
            return false;
        };
        let (Ok(out1), Ok(in2), Ok(out2), Ok(in1)) = (
            sa_of(&s1, "h2", "out"),
            sa_of(&s2, "h1", "in"),
            sa_of(&s2, "h1", "out"),
            sa_of(&s1, "h2", "in"),
        ) else {
            return false;
        };
        last = format!(
            "h1->h2: sealed {} (last seq {}), opened {} (last seq {}); \
             h2->h1: sealed {} (last seq {}), opened {} (last seq {})",
            out1.packets,
            out1.last_seq,
            in2.packets,
            in2.last_seq,
            out2.packets,
            out2.last_seq,
            in1.packets,
            in1.last_seq
        );
        [(out1, in2), (out2, in1)].iter().all(|(o, i)| {
            o.packets == o.last_seq && i.packets == o.packets && i.last_seq == o.last_seq
        })
    });
    eprintln!("  [{}] ESP counters: {last}", lab.ns(""));
    settled.with_context(|| format!("ESP packets were lost between the SAs: {last}"))?;

    // Nothing went wrong along the way.
    for (n, peer) in [(1, "h2"), (2, "h1")] {
        let s = status(lab, n)?;
        let sa_in = sa_of(&s, peer, "in")?;
        let sa_out = sa_of(&s, peer, "out")?;
        ensure!(
            sa_in.drops.values().all(|&v| v == 0) && sa_in.packets > 0 && sa_out.packets > 0,
            "h{n}: unexpected SA counters:\n{}",
            s.render()
        );
        assert_no_drops(
            &s,
            &[
                "no_sa",
                "too_big",
                "policy",
                "unknown_spi",
                "esp",
                "malformed",
            ],
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------
// 2. Interop with the Linux vxlan device

#[test]
fn interop_linux_vxlan() {
    with_lab("tse2e-ki", |lab| {
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        let c1 = write_config(
            lab,
            1,
            VXLAN_100,
            &[PeerConf {
                n: 2,
                policy: "clear",
                sa: None,
            }],
        )?;
        start_tunsecd(lab, &h1, 1, &c1)?;
        let t1 = add_tenant(lab, &h1, 1, TAP)?;
        // h2 runs no tunsecd: the kernel's vxlan device is its VTEP, with
        // the tenant address on it directly.
        lab.exec(
            &h2,
            "ip",
            &[
                "link",
                "add",
                "vx0",
                "type",
                "vxlan",
                "id",
                "100",
                "local",
                "192.0.2.2",
                "remote",
                "192.0.2.1",
                "dstport",
                "4789",
                "dev",
                "eth0",
            ],
        )?;
        lab.exec(
            &h2,
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", tenant_addr(2)),
                "dev",
                "vx0",
            ],
        )?;
        lab.exec(&h2, "ip", &["link", "set", "vx0", "up"])?;
        let vx0_mac = link_mac(lab, &h2, "vx0")?;

        let pcap = start_capture(lab, &ul, "capture")?;
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&h2, &tenant_addr(1))?;
        stop_capture(lab, "capture");

        let frames = frames(&pcap)?;
        let vxlan = |src: u8, dst: u8| {
            frames
                .iter()
                .filter(|f| f.is_vxlan(100) && f.src == host_addr(src) && f.dst == host_addr(dst))
                .count()
        };
        let (to_kernel, from_kernel) = (vxlan(1, 2), vxlan(2, 1));
        let other: Vec<&Frame> = frames
            .iter()
            .filter(|f| !f.is_arp() && !f.is_vxlan(100))
            .collect();
        eprintln!(
            "  capture: {} frames, VXLAN VNI 100: {to_kernel} tunsec->kernel, \
             {from_kernel} kernel->tunsec, {} other",
            frames.len(),
            other.len()
        );
        // 6 echo requests and 6 replies, plus ARP inside the tunnel.
        ensure!(
            to_kernel >= 6 && from_kernel >= 6,
            "too little VXLAN: {to_kernel} tunsec->kernel, {from_kernel} kernel->tunsec"
        );
        ensure!(
            other.is_empty(),
            "frames other than VXLAN VNI 100 and ARP:{}",
            describe(&other)
        );
        // The capture shows cleartext when there is some: the same marker
        // search that finds nothing under ESP finds the pings here.
        ensure!(
            count_marker(&std::fs::read(&pcap)?) >= 12,
            "the pings' marker is not in the cleartext capture"
        );

        let s = status(lab, 1)?;
        let net = &s.networks[0];
        ensure!(
            net.tx_frames >= 6 && net.rx_frames >= 6,
            "h1 counted tx {} rx {} frames",
            net.tx_frames,
            net.rx_frames
        );
        ensure!(
            s.fdb
                .iter()
                .any(|e| e.mac == vx0_mac && e.peer == "h2" && e.kind == "learned"),
            "h1 did not learn vx0's MAC {vx0_mac} behind h2:\n{}",
            s.render()
        );
        assert_no_drops(&s, EVERY_REASON)?;
        Ok(())
    });
}

// ---------------------------------------------------------------------
// 3. Fail closed

const FLOOD: u64 = 2000;

/// Sends `FLOOD` UDP datagrams from tenant `t` to `dst`.
fn udp_flood(t: &str, dst: &str) -> anyhow::Result<()> {
    tool(
        t,
        120,
        &["flood", dst, "9", &FLOOD.to_string(), &marker_hex()],
    )?;
    Ok(())
}

/// Underlay frames from host `n` other than ARP.
fn sent_by(frames: &[Frame], n: u8) -> Vec<&Frame> {
    frames
        .iter()
        .filter(|f| !f.is_arp() && f.src == host_addr(n))
        .collect()
}

#[test]
fn fail_closed_without_sa() {
    with_lab("tse2e-fa", |lab| {
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        // `require`, and no [peer.sa].
        let c1 = write_config(
            lab,
            1,
            VXLAN_100,
            &[PeerConf {
                n: 2,
                policy: "require",
                sa: None,
            }],
        )?;
        start_tunsecd(lab, &h1, 1, &c1)?;
        let t1 = add_tenant(lab, &h1, 1, TAP)?;
        // A neighbour entry, so that the tenant sends unicast frames (and
        // no ARP): each one is exactly one frame for the daemon.
        lab.exec(
            &t1,
            "ip",
            &[
                "neigh",
                "add",
                &tenant_addr(2),
                "lladdr",
                "02:00:00:00:00:02",
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )?;
        let before = status(lab, 1)?;

        let pcap = start_capture(lab, &ul, "capture")?;
        let replies = ping(&t1, &tenant_addr(2), 3)?;
        udp_flood(&t1, &tenant_addr(2))?;
        // Proof that the capture sees the underlay: the peer sends h1 a
        // cleartext VXLAN datagram, which `require` refuses.
        tool(
            &h2,
            30,
            &["vxlan", &host_addr(2), &host_addr(1), "100", &marker_hex()],
        )?;
        // Every frame the tenant sent is dropped for no_sa, unless the
        // kernel dropped it first, when the TAP device's queue towards
        // tunsecd was full (its tx_dropped; seen on a loaded machine).
        let want = data_drop(&before, "no_sa") + FLOOD + 3;
        let tap_dropped = || -> u64 {
            exec_output(
                &h1,
                "cat",
                &[&format!("/sys/class/net/{TAP}/statistics/tx_dropped")],
            )
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0)
        };
        lab.wait_for("h1 to count the drops", Duration::from_secs(10), || {
            status(lab, 1).is_ok_and(|s| {
                data_drop(&s, "no_sa") + tap_dropped() >= want
                    && data_drop(&s, "clear_refused") >= 1
            })
        })
        .or_else(|e| {
            let s = status(lab, 1)?;
            bail!(
                "{e}: want no_sa + the TAP's tx_dropped ({}) >= {want}, clear_refused >= 1:\n{}",
                tap_dropped(),
                s.render()
            )
        })?;
        eprintln!(
            "  the TAP device dropped {} frames before tunsecd read them",
            tap_dropped()
        );
        stop_capture(lab, "capture");

        let after = status(lab, 1)?;
        let frames = frames(&pcap)?;
        let from_h1 = sent_by(&frames, 1);
        let from_h2 = frames
            .iter()
            .filter(|f| f.is_vxlan(100) && f.src == host_addr(2))
            .count();
        eprintln!(
            "  capture: {} frames, {} from h1 (not ARP), {from_h2} VXLAN from h2; no_sa {} -> {}",
            frames.len(),
            from_h1.len(),
            data_drop(&before, "no_sa"),
            data_drop(&after, "no_sa")
        );
        ensure!(replies == 0, "{replies} ping replies without an SA");
        ensure!(
            from_h1.is_empty(),
            "h1 sent {} packets without an SA:{}",
            from_h1.len(),
            describe(&from_h1)
        );
        ensure!(from_h2 == 1, "the capture missed h2's VXLAN datagram");
        ensure!(
            sa_of(&after, "h2", "out").is_err() && after.networks[0].tx_frames == 0,
            "h1 has an SA or sent frames:\n{}",
            after.render()
        );
        Ok(())
    });
}

#[test]
fn fail_closed_after_sa_delete() {
    with_lab("tse2e-fd", |lab| {
        let EspPair { ul, t1, t2 } = esp_pair(lab, VXLAN_100, "aes128gcm16")?;

        let pcap = start_capture(lab, &ul, "capture")?;
        ping_ok(&t1, &tenant_addr(2))?;
        // Pin t2's MAC in t1, so that after the delete every datagram is
        // one unicast frame (no ARP).
        let t2_mac = link_mac(lab, &t2, "eth0")?;
        lab.exec(
            &t1,
            "ip",
            &[
                "neigh",
                "replace",
                &tenant_addr(2),
                "lladdr",
                &t2_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )?;
        let before = status(lab, 1)?;
        ensure!(
            data_drop(&before, "no_sa") == 0,
            "no_sa before the delete:\n{}",
            before.render()
        );

        // Only root may talk to the daemon.
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(socket_path(lab, 1))?.permissions().mode() & 0o777;
            ensure!(mode == 0o600, "control socket mode {mode:o}, want 600");
        }
        // `tunsec sa delete h2` on h1.
        match control::call(
            &socket_path(lab, 1),
            &Request::DeleteSa { peer: "h2".into() },
        )? {
            Response::Done { .. } => {}
            other => bail!("delete_sa: {other:?}"),
        }
        let deleted_at = now_epoch();
        let s = status(lab, 1)?;
        ensure!(
            s.peers.iter().all(|p| p.sas.is_empty()),
            "SAs left after the delete:\n{}",
            s.render()
        );

        let replies = ping(&t1, &tenant_addr(2), 3)?;
        udp_flood(&t1, &tenant_addr(2))?;
        let want = FLOOD + 3;
        lab.wait_for("h1 to count the drops", Duration::from_secs(10), || {
            status(lab, 1).is_ok_and(|s| data_drop(&s, "no_sa") >= want)
        })
        .or_else(|e| {
            let s = status(lab, 1)?;
            bail!("{e}: want no_sa >= {want}:\n{}", s.render())
        })?;
        stop_capture(lab, "capture");

        let after = status(lab, 1)?;
        let frames = frames(&pcap)?;
        let (early, late): (Vec<&Frame>, Vec<&Frame>) = sent_by(&frames, 1)
            .into_iter()
            .partition(|f| f.time < deleted_at);
        let esp_before = early.iter().filter(|f| f.is_esp_in_udp()).count();
        eprintln!(
            "  capture: {} frames; from h1 (not ARP): {} before the delete ({esp_before} ESP), \
             {} after; no_sa {} -> {}",
            frames.len(),
            early.len(),
            late.len(),
            data_drop(&before, "no_sa"),
            data_drop(&after, "no_sa")
        );
        ensure!(
            esp_before >= 3,
            "no ESP from h1 before the delete: is the capture live?"
        );
        ensure!(replies == 0, "{replies} ping replies after the delete");
        ensure!(
            late.is_empty(),
            "h1 sent {} packets after its SA was deleted:{}",
            late.len(),
            describe(&late)
        );
        Ok(())
    });
}

// ---------------------------------------------------------------------
// 4. Bad traffic from the underlay

#[test]
fn bad_traffic_is_counted() {
    with_lab("tse2e-bt", |lab| {
        let EspPair { ul, t1, t2 } = esp_pair(lab, VXLAN_100, "aes128gcm16")?;
        // The attacker: a third namespace on the underlay.
        let x = add_host(lab, &ul, "x", 9)?;

        // Real ESP from h2 to h1, captured for the attacker.
        let pcap = start_capture(lab, &ul, "capture")?;
        ping_ok(&t2, &tenant_addr(1))?;
        stop_capture(lab, "capture");

        let before = status(lab, 1)?;
        let in_before = sa_of(&before, "h2", "in")?.clone();
        ensure!(
            in_before.drops.values().all(|&v| v == 0) && in_before.packets > 0,
            "h1's inbound SA before the attack:\n{}",
            before.render()
        );
        let fresh_seq = in_before.last_seq + 100;
        let report = tool(
            &x,
            120,
            &[
                "inject",
                &pcap.to_string_lossy(),
                &host_addr(2),
                &host_addr(1),
                &format!("{:#x}", spi(2, 1)),
                &fresh_seq.to_string(),
                &host_addr(9),
            ],
        )?;
        eprintln!("  {}", report.trim().replace('\n', "\n  "));

        let d = |s: &Status, r: &str| data_drop(s, r) - data_drop(&before, r);
        let check = |s: &Status| -> anyhow::Result<(u64, u64)> {
            let sa = sa_of(s, "h2", "in")?;
            Ok((sa_drop(sa, "replay"), sa_drop(sa, "icv_failure")))
        };
        let settled = lab.wait_for(
            "h1 to count the injected packets",
            Duration::from_secs(10),
            || {
                status(lab, 1).is_ok_and(|s| {
                    check(&s).is_ok_and(|c| c == (1, 2))
                        && d(&s, "unknown_spi") == 1
                        && d(&s, "policy") == 1
                })
            },
        );
        let after = status(lab, 1)?;
        let in_after = sa_of(&after, "h2", "in")?;
        eprintln!("  h1 after the attack:\n{}", after.render());
        settled?;
        let others: u64 = in_after
            .drops
            .iter()
            .filter(|(r, _)| !["replay", "icv_failure"].contains(&r.as_str()))
            .map(|(_, v)| v)
            .sum();
        ensure!(others == 0, "other SA drops than replay and icv_failure");
        ensure!(
            d(&after, "esp") == 3,
            "data path esp drops: {}",
            d(&after, "esp")
        );
        ensure!(
            in_after.packets == in_before.packets && in_after.last_seq < fresh_seq,
            "a forged packet was accepted: packets {} -> {}, last_seq {} -> {}",
            in_before.packets,
            in_after.packets,
            in_before.last_seq,
            in_after.last_seq
        );
        // The tunnel still works.
        ping_ok(&t2, &tenant_addr(1))?;
        ping_ok(&t1, &tenant_addr(2))?;
        Ok(())
    });
}

// ---------------------------------------------------------------------
// 5. A bad config changes nothing

#[test]
fn bad_config_is_refused() {
    with_lab("tse2e-bc", |lab| {
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let bad = Net {
            vni: 16_777_216,
            ..VXLAN_100
        };
        let config = write_config(
            lab,
            1,
            bad,
            &[PeerConf {
                n: 2,
                policy: "clear",
                sa: None,
            }],
        )?;
        let out = exec_output(
            &h1,
            "timeout",
            &["30", TUNSECD, "--config", &config.to_string_lossy()],
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("  tunsecd: {} {}", out.status, stderr.trim());
        ensure!(
            out.status.code() == Some(2),
            "tunsecd exited with {} for an invalid config: {stderr}",
            out.status
        );
        ensure!(
            stderr.contains("network[0].vni") && stderr.contains("16777216"),
            "the message does not name network[0].vni and 16777216: {stderr}"
        );
        let links = lab.exec(&h1, "ip", &["-o", "link", "show"])?;
        let links = String::from_utf8_lossy(&links.stdout);
        ensure!(!links.contains("ts-"), "a TAP device was created:\n{links}");
        ensure!(
            !socket_path(lab, 1).exists(),
            "a control socket was created"
        );

        // The same config with a valid VNI does create the TAP device (so
        // the check above can see one), and removes it on SIGTERM.
        let config = write_config(
            lab,
            1,
            VXLAN_100,
            &[PeerConf {
                n: 2,
                policy: "clear",
                sa: None,
            }],
        )?;
        start_tunsecd(lab, &h1, 1, &config)?;
        ensure!(
            lab.try_exec(&h1, "ip", &["link", "show", TAP]),
            "no {TAP} with a valid config"
        );
        ensure!(lab.stop("h1"), "tunsecd did not exit cleanly on SIGTERM");
        ensure!(
            !lab.try_exec(&h1, "ip", &["link", "show", TAP]),
            "{TAP} left behind"
        );
        ensure!(!socket_path(lab, 1).exists(), "control socket left behind");
        Ok(())
    });
}
