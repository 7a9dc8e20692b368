//! End-to-end tests of `tunsecd` with IKEv2 (pre-shared keys), in network
//! namespaces, like `overlay_e2e.rs` (whose helpers this file copies: it is
//! a separate test crate). Two hosts on an underlay bridge run the real
//! `tunsecd` with `[peer.ike]` and no manual keys:
//!
//! - `ike_psk_establishes`: with the same PSK, both daemons report the IKE
//!   SA established and a Child SA pair within seconds, tenants ping each
//!   other, and the underlay capture holds IKE on UDP 500, ESP in UDP 4500
//!   and ARP only, without one copy of the tenant marker.
//! - `ike_debug_log` and `ike_debug_log_json`: both daemons at debug level
//!   (`--log-level debug`; `[node] log_level = "debug"` with
//!   `--log-format json`), stderr to a file: the log holds IKE_SA_INIT
//!   and IKE_AUTH sent and received with message IDs and payload lists,
//!   the proposals chosen, the traffic selectors, the Child SA installed
//!   with the SPIs that status shows; no colour codes, no PSK, no key;
//!   in JSON, every line is one object.
//! - `ike_wrong_psk_fails_closed`: with different PSKs, no SA comes up,
//!   status names the authentication failure, pings fail, and nothing but
//!   IKE and ARP leaves the hosts.
//!
//! - `ike_on_the_esp_port`: an initiator (the test itself, with
//!   `tunsec_ike`, relayed through a UDP socket in h2's namespace) that
//!   speaks IKE to h1's ESP-in-UDP port behind the non-ESP marker gets its
//!   answers from that port with the marker, and the IKE and Child SAs come
//!   up on h1.
//! - `ike_crossing_attempts_keep_the_lower_nonce`: h1's IKE_SA_INIT is
//!   out, unanswered, when one of the test's (as h2) crosses it with a
//!   higher nonce: h1 ignores the test's, sends its own again, and
//!   completes it with the test as responder.
//! - `ike_tunnel_mode`: both daemons with `mode = "tunnel"` (one reading
//!   its PSK from `psk_env`) bring up tunnel-mode Child SAs; pings (also
//!   full-size with DF) and a TCP transfer get through, the capture holds
//!   only IKE, ESP in UDP and ARP, and the ESP packets carry the 20 bytes
//!   of the inner IPv4 header.
//! - `ike_mixed_modes_agree_on_tunnel`: one side configured for tunnel
//!   mode, the other for transport: both end in tunnel mode and traffic
//!   flows.
//! - `ike_peer_restart`, `ike_peer_clean_stop_and_start`: each host in
//!   turn SIGKILLed (or stopped with SIGTERM) and restarted while tenants
//!   ping: the tunnel is back within 5 s (about 2 s), the survivor holds
//!   only the new IKE SA and one Child SA pair, and the capture, which
//!   runs from before the first start, holds nothing in the clear.
//! - `ike_behind_nat`: h1 behind an nftables masquerade: NAT detection on
//!   both sides, IKE on port 4500, ESP in UDP through the NAT, tenants
//!   ping, h1 sends NAT keepalives, nothing in the clear.
//! - `ike_child_sa_stops_at_its_hard_lifetime`: with IKE cut after the
//!   first Child SA, the ESP SAs stop at `child_lifetime`: status shows
//!   them expired, pings fail (`sa_expired`), nothing in the clear.
//! - `ike_rekeys_under_traffic` and `ike_tcp_across_rekeys`: Child SA and
//!   IKE SA rekeys (by lifetime and by `tunsec rekey [--ike]`) under pings
//!   and a TCP transfer, without a drop.
//! - `ike_port_selectors` and `ike_mixed_selectors_narrow_to_ports`:
//!   `selectors = "ports"` narrows the Child SA to the tunnel ports
//!   (VXLAN and Geneve); traffic flows, sent from the tunnel port, and a
//!   `host` side is narrowed by a `ports` side either way round.
//! - `ike_workers_share_sas` and `ike_reordered_transfer`: two workers per
//!   host share every SA across rekeys; no sequence number is sent twice
//!   under one SPI, and no packet is dropped as a replay, also when a
//!   reorderer (NFQUEUE, in place of netem) holds back one ESP datagram in
//!   100 under a checksummed TCP transfer.
//! - `ike_keys_export_for_wireshark`: `tunsec keys export --wireshark`
//!   on both hosts; tshark, given either host's tables, decrypts the
//!   capture's IKE_AUTH down to the FQDN identities and its ESP down to
//!   VXLAN VNI 100 and the tenants' ICMP echoes (good ICVs), and without
//!   them shows none of it; files mode 0600, a warning on stderr and in
//!   each log, no key in a log.
//!
//! They need root, iproute2, ping, tshark (dumpcap) and nftables, and
//! `ike_reordered_transfer` iptables (nft backend) and python3; they fail,
//! never skip, when something is missing.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tunsec::control::{self, Request, Response};
use tunsec::status::{IkeStatus, Status};
use tunsec_lab::Lab;

mod common;
use common::*;

const ESP_PORT: u16 = 4500;
const IKE_PORT: u16 = 500;

/// Fails (never skips) unless the tests can run: root, and every tool.
fn preflight() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        require(
            "IKE end-to-end tests",
            &[
                ("ip", &["-V"], "iproute2"),
                ("ping", &["-V"], "iputils-ping"),
                ("dumpcap", &["-v"], "tshark"),
                ("tshark", &["-v"], "tshark"),
                ("nft", &["-v"], "nftables"),
            ],
        );
    });
}

/// [`common::with_lab`] after this suite's [`preflight`].
fn with_lab(prefix: &str, body: impl FnOnce(&mut Lab) -> anyhow::Result<()>) {
    common::with_lab(prefix, preflight, body);
}

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

    /// IKE on UDP 500, or an ICMP error quoting it (the first
    /// IKE_SA_INIT can reach the peer before its daemon listens), or IKE
    /// on the ESP-in-UDP port behind the non-ESP marker, where it moves
    /// after IKE_SA_INIT (RFC 7296 section 2.23).
    fn is_ike(&self) -> bool {
        let on_500 = (self.protocols.starts_with("eth:ethertype:ip:udp:isakmp")
            || self
                .protocols
                .starts_with("eth:ethertype:ip:icmp:ip:udp:isakmp"))
            && self.sport == Some(IKE_PORT)
            && self.dport == Some(IKE_PORT);
        let on_4500 = self
            .protocols
            .starts_with("eth:ethertype:ip:udp:udpencap:isakmp")
            && self.sport == Some(ESP_PORT)
            && self.dport == Some(ESP_PORT);
        on_500 || on_4500
    }
}

// ---------------------------------------------------------------------
// Configs

/// Writes the config of host `h<n>`: network `blue` (VXLAN 100) and one
/// peer `h<peer>` under `require`, keyed by IKE with the PSK in `psk`.
fn write_config(lab: &Lab, n: u8, peer: u8, psk: &str) -> anyhow::Result<PathBuf> {
    write_config_with(lab, n, peer, psk, "")
}

/// As [`write_config`], with extra lines in `[peer.ike]`.
fn write_config_with(
    lab: &Lab,
    n: u8,
    peer: u8,
    psk: &str,
    ike_extra: &str,
) -> anyhow::Result<PathBuf> {
    let psk_file = lab.dir.path().join(format!("h{n}.psk"));
    tunsec::config::write_secret(&psk_file, format!("{psk}\n"))?;
    let mut c = String::new();
    writeln!(
        c,
        "[node]\nname = \"h{n}\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n",
        host_addr(n),
        socket_path(lab, n).display()
    )?;
    writeln!(
        c,
        "[[network]]\nname = \"blue\"\nvni = 100\nencapsulation = \"vxlan\"\n"
    )?;
    writeln!(
        c,
        "[[peer]]\nname = \"h{peer}\"\nunderlay = \"{}\"\nnetworks = [\"blue\"]\npolicy = \"require\"\n\n\
         [peer.ike]\npsk_file = \"h{n}.psk\"\n{ike_extra}",
        host_addr(peer)
    )?;
    let path = lab.dir.path().join(format!("h{n}.toml"));
    std::fs::write(&path, c)?;
    Ok(path)
}

struct Pair {
    ul: String,
    h1: String,
    h2: String,
}

/// The underlay and hosts h1 and h2 on it.
fn two_hosts(lab: &mut Lab) -> anyhow::Result<Pair> {
    let ul = add_underlay(lab)?;
    let h1 = add_host(lab, &ul, "h1", 1)?;
    let h2 = add_host(lab, &ul, "h2", 2)?;
    Ok(Pair { ul, h1, h2 })
}

/// Writes both hosts' configs, each with its PSK and extra `[peer.ike]`
/// lines, and starts both daemons.
fn start_pair(
    lab: &mut Lab,
    pair: &Pair,
    (psk1, extra1): (&str, &str),
    (psk2, extra2): (&str, &str),
) -> anyhow::Result<()> {
    let c1 = write_config_with(lab, 1, 2, psk1, extra1)?;
    let c2 = write_config_with(lab, 2, 1, psk2, extra2)?;
    start_tunsecd(lab, &pair.h1, 1, &c1)?;
    start_tunsecd(lab, &pair.h2, 2, &c2)
}

/// The underlay and two hosts, capture running, daemons started with the
/// given PSKs.
fn ike_pair(lab: &mut Lab, psk1: &str, psk2: &str) -> anyhow::Result<(Pair, PathBuf)> {
    let pair = two_hosts(lab)?;
    let pcap = start_capture(lab, &pair.ul, "capture")?;
    start_pair(lab, &pair, (psk1, ""), (psk2, ""))?;
    Ok((pair, pcap))
}

fn ike_of(s: &Status, peer: &str) -> anyhow::Result<IkeStatus> {
    s.peers
        .iter()
        .find(|p| p.name == peer)
        .and_then(|p| p.ike.clone())
        .with_context(|| {
            format!(
                "{}: no IKE status for peer {peer}:\n{}",
                s.node.name,
                s.render()
            )
        })
}

// ---------------------------------------------------------------------
// Tests

#[test]
fn ike_psk_establishes() {
    with_lab("tsike-ok", |lab| {
        let t0 = Instant::now();
        let (pair, pcap) = ike_pair(lab, "same-secret-for-both", "same-secret-for-both")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (s1, s2) = (status(lab, 1)?, status(lab, 2)?);
            let up = |s: &Status, peer: &str| -> anyhow::Result<bool> {
                let ike = ike_of(s, peer)?;
                let sas = &s.peers.iter().find(|p| p.name == peer).unwrap().sas;
                Ok(ike.state == "established"
                    && ike.child_sas >= 1
                    && sas.iter().any(|sa| sa.direction == "in")
                    && sas.iter().any(|sa| sa.direction == "out"))
            };
            if up(&s1, "h2")? && up(&s2, "h1")? {
                let (i1, i2) = (ike_of(&s1, "h2")?, ike_of(&s2, "h1")?);
                eprintln!("  h1: {i1:?}\n  h2: {i2:?}");
                ensure!(
                    i1.role == "initiator" && i2.role == "responder",
                    "roles: {i1:?} {i2:?}"
                );
                ensure!(
                    i1.spi_i.is_some() && i1.spi_i == i2.spi_i && i1.spi_r == i2.spi_r,
                    "the two sides disagree on the IKE SPIs: {i1:?} {i2:?}"
                );
                ensure!(i1.suite.is_some(), "no IKE suite: {i1:?}");
                // A plain link: neither host is behind a NAT, and the UDP
                // encapsulation is said to be forced, not a NAT's doing.
                for (i, who) in [(&i1, "h1"), (&i2, "h2")] {
                    ensure!(
                        i.nat_local == Some(false) && i.udp_encap_forced == Some(true),
                        "{who}: NAT detection on a plain link: {i:?}"
                    );
                    ensure!(
                        i.nat.as_deref().is_some_and(|n| {
                            n.contains("this host is not behind a NAT")
                                && n.contains("UDP encapsulation forced by this host")
                        }),
                        "{who}: the NAT summary: {:?}",
                        i.nat
                    );
                }
                // The SPIs cross: h1's outbound is h2's inbound.
                let spi = |s: &Status, peer: &str, dir: &str| {
                    s.peers
                        .iter()
                        .find(|p| p.name == peer)
                        .and_then(|p| p.sas.iter().find(|sa| sa.direction == dir))
                        .map(|sa| sa.spi.clone())
                };
                ensure!(
                    spi(&s1, "h2", "out") == spi(&s2, "h1", "in")
                        && spi(&s1, "h2", "in") == spi(&s2, "h1", "out"),
                    "Child SA SPIs do not match:\n{}\n{}",
                    s1.render(),
                    s2.render()
                );
                break;
            }
            if Instant::now() > deadline {
                bail!("no IKE SA within 10 s:\n{}\n{}", s1.render(), s2.render());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        phase(lab, "IKE up", t0);

        let t1 = add_tenant(lab, &pair.h1, 1, TAP)?;
        let t2 = add_tenant(lab, &pair.h2, 2, TAP)?;
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&t2, &tenant_addr(1))?;
        phase(lab, "pings", t0);
        stop_capture(lab, "capture");

        let raw = std::fs::read(&pcap)?;
        let leaked = count_marker(&raw);
        let frames = frames(&pcap)?;
        let other: Vec<&Frame> = frames
            .iter()
            .filter(|f| !f.is_arp() && !f.is_esp_in_udp() && !f.is_ike())
            .collect();
        let ike = frames.iter().filter(|f| f.is_ike()).count();
        let esp = frames.iter().filter(|f| f.is_esp_in_udp()).count();
        eprintln!(
            "  [{}] capture: {} frames, {ike} IKE, {esp} ESP, {} other, marker {leaked} times",
            pair.ul,
            frames.len(),
            other.len()
        );
        ensure!(
            other.is_empty(),
            "{} captured frames are neither IKE on UDP 500, ESP in UDP 4500 nor ARP:{}",
            other.len(),
            describe(&other)
        );
        ensure!(
            ike >= 4,
            "only {ike} IKE frames: IKE_SA_INIT and IKE_AUTH need 4"
        );
        ensure!(esp >= 12, "only {esp} ESP frames for 6 pings each way");
        ensure!(
            leaked == 0,
            "the marker appears {leaked} times in the underlay capture: tenant bytes in the clear"
        );

        // SIGTERM: h1 deletes its IKE SA on the way out, and h2 removes
        // the SAs at once (no waiting for dead-peer detection).
        ensure!(lab.stop("h1"), "tunsecd h1 did not exit cleanly on SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let s2 = status(lab, 2)?;
            let i2 = ike_of(&s2, "h1")?;
            let no_sas = s2.peers.iter().all(|p| p.sas.is_empty());
            if no_sas && i2.state.contains("deleted by the peer") {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "h2 did not drop the SAs after h1's DELETE:\n{}",
                    s2.render()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let got = ping(&t2, &tenant_addr(1), 1)?;
        ensure!(got == 0, "a ping was answered after the SAs were deleted");
        Ok(())
    });
}

/// The PSK of the debug-log tests: it must never reach a log.
const LOG_PSK: &str = "log-psk-Zq8vW2xR7tY4";

/// Starts h1 and h2 with IKE (PSK) at debug level, each config changed by
/// `config` and each daemon started with `args`; waits until both have a
/// Child SA pair, stops both (the log is complete), and returns the two
/// logs and each host's inbound and outbound SPI, as status showed them.
fn debug_log_pair(
    lab: &mut Lab,
    config: impl Fn(String) -> String,
    args: &[&str],
) -> anyhow::Result<[(String, String, String); 2]> {
    let pair = two_hosts(lab)?;
    for (n, peer, ns) in [(1, 2, &pair.h1), (2, 1, &pair.h2)] {
        let path = write_config(lab, n, peer, LOG_PSK)?;
        std::fs::write(&path, config(std::fs::read_to_string(&path)?))?;
        start_tunsecd_with(lab, ns, n, &path, args)?;
    }
    let spi = |s: &Status, dir: &str| {
        s.peers
            .iter()
            .flat_map(|p| &p.sas)
            .find(|sa| sa.direction == dir)
            .map(|sa| sa.spi.clone())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let spis = loop {
        let (s1, s2) = (status(lab, 1)?, status(lab, 2)?);
        let got = [&s1, &s2].map(|s| spi(s, "in").zip(spi(s, "out")));
        if let [Some(a), Some(b)] = got {
            break [a, b];
        }
        if Instant::now() > deadline {
            bail!("no Child SA within 10 s:\n{}\n{}", s1.render(), s2.render());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(lab.stop("h1"), "tunsecd h1 did not exit cleanly");
    ensure!(lab.stop("h2"), "tunsecd h2 did not exit cleanly");
    let log = |n: u8| std::fs::read_to_string(lab.dir.path().join(format!("h{n}.log")));
    let [(in1, out1), (in2, out2)] = spis;
    Ok([(log(1)?, in1, out1), (log(2)?, in2, out2)])
}

/// What neither log format may hold: colour codes, the PSK, keys.
fn assert_clean(host: &str, log: &str) -> anyhow::Result<()> {
    ensure!(
        !log.contains("\x1b["),
        "{host}: the log holds ANSI escape codes"
    );
    ensure!(!log.contains(LOG_PSK), "{host}: the PSK is in the log");
    ensure!(
        !log.lines()
            .any(|l| l.contains("SK_") || l.to_lowercase().contains("keymat")),
        "{host}: a line names key material:\n{log}"
    );
    Ok(())
}

/// The first line of `log` that holds every one of `parts`.
fn log_line<'a>(host: &str, log: &'a str, parts: &[&str]) -> anyhow::Result<&'a str> {
    log.lines()
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .with_context(|| format!("{host}: no log line with {parts:?}:\n{log}"))
}

#[test]
fn ike_debug_log() {
    with_lab("log1", |lab| {
        let t0 = Instant::now();
        let [(h1, in1, out1), (h2, in2, out2)] =
            debug_log_pair(lab, |c| c, &["--log-level", "debug"])?;
        phase(lab, "IKE up, daemons stopped", t0);
        ensure!(in1 == out2 && in2 == out1, "the SPIs do not cross");
        for (host, log) in [("h1", &h1), ("h2", &h2)] {
            assert_clean(host, log)?;
        }
        // h1 initiates (the lower address): each exchange both ways, with
        // its message ID, flags and payloads.
        let init = log_line(
            "h1",
            &h1,
            &[
                "DEBUG",
                "IKE sent IKE_SA_INIT request 0",
                "peer=192.0.2.2:500",
                "message_id=0",
                "response=false",
                "initiator=true",
                "payloads=SA,KE,No,",
            ],
        )?;
        eprintln!("  h1: {init}");
        log_line(
            "h2",
            &h2,
            &[
                "IKE received IKE_SA_INIT request 0",
                "peer=192.0.2.1:500",
                "payloads=SA,KE,No,",
            ],
        )?;
        log_line(
            "h2",
            &h2,
            &[
                "IKE sent IKE_SA_INIT response 0",
                "response=true",
                "initiator=false",
                "payloads=SA,KE,No,",
            ],
        )?;
        log_line(
            "h1",
            &h1,
            &["IKE received IKE_SA_INIT response 0", "payloads=SA,KE,No,"],
        )?;
        // IKE moves to the ESP-in-UDP port after IKE_SA_INIT (NAT-T forced).
        let auth = log_line(
            "h1",
            &h1,
            &[
                "IKE sent IKE_AUTH request 1",
                "peer=192.0.2.2:4500",
                "message_id=1",
                "payloads=IDi,",
                "N(INITIAL_CONTACT),AUTH,N(USE_TRANSPORT_MODE),SA,TSi,TSr",
            ],
        )?;
        eprintln!("  h1: {auth}");
        log_line(
            "h2",
            &h2,
            &["IKE received IKE_AUTH request 1", "payloads=IDi,"],
        )?;
        log_line(
            "h2",
            &h2,
            &[
                "IKE sent IKE_AUTH response 1",
                "payloads=IDr,AUTH,N(USE_TRANSPORT_MODE),SA,TSi,TSr",
            ],
        )?;
        log_line(
            "h1",
            &h1,
            &["IKE received IKE_AUTH response 1", "payloads=IDr,AUTH"],
        )?;
        // Proposals and selectors.
        log_line(
            "h1",
            &h1,
            &[
                "IKE proposals offered",
                "proposals=aes128gcm16-prfsha256-x25519",
            ],
        )?;
        log_line(
            "h2",
            &h2,
            &["IKE proposal chosen", "chosen=aes128gcm16-prfsha256-x25519"],
        )?;
        log_line(
            "h1",
            &h1,
            &[
                "IKE proposal chosen by the peer",
                "chosen=aes128gcm16-prfsha256-x25519",
            ],
        )?;
        log_line("h2", &h2, &["ESP proposal chosen", "chosen=aes128gcm16"])?;
        log_line(
            "h1",
            &h1,
            &[
                "traffic selectors offered (IKE_AUTH)",
                "tsi=192.0.2.1/32[udp]",
                "tsr=192.0.2.2/32[udp]",
            ],
        )?;
        log_line(
            "h2",
            &h2,
            &[
                "traffic selectors narrowed",
                "tsi=192.0.2.1/32[udp]",
                "tsr=192.0.2.2/32[udp]",
            ],
        )?;
        log_line("h1", &h1, &["traffic selectors narrowed by the peer"])?;
        // The Child SA, installed with the SPIs status shows.
        for (host, log, spi_in, spi_out, local, remote) in [
            ("h1", &h1, &in1, &out1, "192.0.2.1", "192.0.2.2"),
            ("h2", &h2, &in2, &out2, "192.0.2.2", "192.0.2.1"),
        ] {
            let line = log_line(
                host,
                log,
                &[
                    "Child SA installed",
                    &format!("spi_in={spi_in}"),
                    &format!("spi_out={spi_out}"),
                    "mode=transport",
                    "suite=aes128gcm16",
                    &format!("local_ts={local}/32[udp]"),
                    &format!("remote_ts={remote}/32[udp]"),
                ],
            )?;
            eprintln!("  {host}: {line}");
            // The ESP SPI is in the IKE_AUTH proposals too.
            log_line(host, log, &["ESP proposal", &format!("spi_out={spi_out}")])?;
        }
        Ok(())
    });
}

#[test]
fn ike_debug_log_json() {
    with_lab("log2", |lab| {
        let t0 = Instant::now();
        // The level from the configuration this time.
        let debug = |c: String| c.replacen("[node]\n", "[node]\nlog_level = \"debug\"\n", 1);
        let [(h1, in1, _), (h2, ..)] = debug_log_pair(lab, debug, &["--log-format", "json"])?;
        phase(lab, "IKE up, daemons stopped", t0);
        for (host, log) in [("h1", &h1), ("h2", &h2)] {
            assert_clean(host, log)?;
            ensure!(
                log.lines().count() > 10,
                "{host}: only {} lines",
                log.lines().count()
            );
            for line in log.lines() {
                let v: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("{host}: not JSON: {line}"))?;
                ensure!(
                    v.is_object() && v["level"].is_string() && v["message"].is_string(),
                    "{host}: not a log object: {line}"
                );
            }
        }
        let events = |log: &str| -> Vec<serde_json::Value> {
            log.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        };
        let (e1, e2) = (events(&h1), events(&h2));
        let sent = e1
            .iter()
            .find(|e| e["message"] == "IKE sent IKE_AUTH request 1")
            .context("h1: no IKE_AUTH request sent")?;
        ensure!(
            sent["exchange"] == "IKE_AUTH"
                && sent["message_id"] == 1
                && sent["response"] == false
                && sent["level"] == "DEBUG"
                && sent["payloads"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("SA,TSi,TSr")),
            "h1: {sent}"
        );
        ensure!(
            e2.iter()
                .any(|e| e["message"] == "IKE received IKE_SA_INIT request 0"
                    && e["peer"] == "192.0.2.1:500"),
            "h2: no IKE_SA_INIT request received"
        );
        let child = e1
            .iter()
            .find(|e| e["message"] == "Child SA installed")
            .context("h1: no Child SA installed")?;
        ensure!(child["spi_in"] == in1.as_str(), "h1: {child}");
        ensure!(
            e1.iter().any(|e| e["source"] == "node.log_level"),
            "h1 does not say the level came from the config"
        );
        Ok(())
    });
}

#[test]
fn ike_wrong_psk_fails_closed() {
    with_lab("tsike-bad", |lab| {
        let t0 = Instant::now();
        let (pair, pcap) = ike_pair(lab, "the-first-secret", "another-secret")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let (e1, e2) = loop {
            let (s1, s2) = (status(lab, 1)?, status(lab, 2)?);
            let (i1, i2) = (ike_of(&s1, "h2")?, ike_of(&s2, "h1")?);
            if let (Some(e1), Some(e2)) = (&i1.last_error, &i2.last_error) {
                break (e1.clone(), e2.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "no failure reported within 10 s:\n{}\n{}",
                    s1.render(),
                    s2.render()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        eprintln!("  h1: {e1}\n  h2: {e2}");
        ensure!(
            e2.contains("authentication failed"),
            "h2 (responder) does not name the authentication failure: {e2}"
        );
        ensure!(
            e1.to_lowercase().contains("authentication"),
            "h1 (initiator) does not name the authentication failure: {e1}"
        );
        phase(lab, "IKE failed", t0);

        let t1 = add_tenant(lab, &pair.h1, 1, TAP)?;
        let _t2 = add_tenant(lab, &pair.h2, 2, TAP)?;
        let got = ping(&t1, &tenant_addr(2), 3)?;
        ensure!(got == 0, "{got} pings answered without an SA");
        for (n, peer) in [(1, "h2"), (2, "h1")] {
            let s = status(lab, n)?;
            let p = s.peers.iter().find(|p| p.name == peer).unwrap();
            ensure!(p.sas.is_empty(), "h{n} has SAs:\n{}", s.render());
            ensure!(
                ike_of(&s, peer)?.state != "established",
                "h{n}: IKE SA established with the wrong PSK:\n{}",
                s.render()
            );
        }
        let s1 = status(lab, 1)?;
        ensure!(
            s1.drops.get("no_sa").copied().unwrap_or(0) > 0,
            "h1 dropped nothing as no_sa:\n{}",
            s1.render()
        );
        stop_capture(lab, "capture");

        let raw = std::fs::read(&pcap)?;
        let leaked = count_marker(&raw);
        let frames = frames(&pcap)?;
        let other: Vec<&Frame> = frames
            .iter()
            .filter(|f| !f.is_arp() && !f.is_ike())
            .collect();
        ensure!(
            other.is_empty(),
            "{} captured frames are neither IKE nor ARP:{}",
            other.len(),
            describe(&other)
        );
        ensure!(
            leaked == 0,
            "the marker appears {leaked} times in the clear"
        );
        Ok(())
    });
}

/// The IKE config of a test that speaks IKE as h2 (address `a2`) to h1
/// (`a1`) with `psk`: IP identities, UDP between the two addresses.
fn as_h2(psk: &str, a1: IpAddr, a2: IpAddr) -> tunsec_ike::sa::Config {
    use tunsec_ike::message::Identity;
    use tunsec_ike::sa::{Config, ts};
    Config::new(
        Identity::Ipv4("192.0.2.2".parse().expect("an address")),
        Some(Identity::Ipv4("192.0.2.1".parse().expect("an address"))),
        tunsec_esp::Key::from_slice(psk.as_bytes()),
    )
    .with_selectors(
        vec![ts::host(a2, 17, 0, u16::MAX)],
        vec![ts::host(a1, 17, 0, u16::MAX)],
    )
}

/// Fails unless the test's own IKE SA (its `role`) reported the IKE SA
/// and a Child SA up.
fn ensure_sas_up(sa: &mut tunsec_ike::sa::IkeSa, role: &str) -> anyhow::Result<()> {
    use tunsec_ike::sa::Event;
    let mut events = Vec::new();
    while let Some(e) = sa.poll_event() {
        events.push(e);
    }
    ensure!(
        events.contains(&Event::IkeSaEstablished)
            && events.iter().any(|e| matches!(e, Event::ChildSaUp { .. })),
        "the test's {role} did not get its SAs: {events:?}"
    );
    Ok(())
}

/// A two-port UDP relay in h2's namespace for a test that speaks IKE as
/// h2: binds 192.0.2.2 ports 500 and 4500, prints each datagram from h1
/// as `LOCAL_PORT REMOTE_PORT HEX`, and sends each stdin line `LOCAL_PORT
/// REMOTE_PORT HEX` from that port to 192.0.2.1.
const RELAY2: &str = r#"
import select, socket, sys, threading
socks = {}
for port in (500, 4500):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("192.0.2.2", port))
    socks[port] = s
def send():
    for line in sys.stdin:
        local, remote, data = line.split()
        socks[int(local)].sendto(bytes.fromhex(data), ("192.0.2.1", int(remote)))
threading.Thread(target=send, daemon=True).start()
while True:
    ready, _, _ = select.select(list(socks.values()), [], [], 30)
    if not ready:
        break
    for s in ready:
        data, addr = s.recvfrom(65535)
        if addr[0] == "192.0.2.1":
            print(s.getsockname()[1], addr[1], data.hex(), flush=True)
"#;

/// Crossing IKE_SA_INITs (RFC 7296 section 2.8.1's rule for colliding
/// rekeys, applied to a simultaneous start): h1's attempt is out,
/// unanswered, when h2's crosses it. Both sides keep the attempt with the
/// lower nonce. Here the test is h2 with the highest nonce there is, so
/// h1 must refuse it, send its own IKE_SA_INIT again at once, and
/// complete its own attempt with the test as responder. (Before, both
/// sides could give way to each other and wait as responders forever.)
#[test]
fn ike_crossing_attempts_keep_the_lower_nonce() {
    use tunsec_ike::message::{ExchangeType, Header};
    use tunsec_ike::sa::{IkeSa, SystemRandom};

    with_lab("tsike-x", |lab| {
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        let psk = "crossing-attempts";
        let c1 = write_config(lab, 1, 2, psk)?;
        let mut relay = Command::new("ip")
            .args(["netns", "exec", &h2, "/usr/bin/python3", "-c", RELAY2])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the UDP relay")?;
        let mut to_relay = relay.stdin.take().context("relay stdin")?;
        let from_relay = BufReader::new(relay.stdout.take().context("relay stdout")?);
        let (tx, rx) = std::sync::mpsc::channel::<(u16, u16, Vec<u8>)>();
        std::thread::spawn(move || {
            for line in from_relay.lines().map_while(Result::ok) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if let (Some(l), Some(r), Some(Ok(d))) = (
                    f.first().and_then(|v| v.parse().ok()),
                    f.get(1).and_then(|v| v.parse().ok()),
                    f.get(2).map(hex::decode),
                ) {
                    let _ = tx.send((l, r, d));
                }
            }
        });
        let next = |what: &str| {
            rx.recv_timeout(Duration::from_secs(10))
                .with_context(|| format!("nothing from h1 while waiting for {what}"))
        };
        let is_init_request = |d: &[u8]| {
            Header::decode(d).is_ok_and(|h| {
                h.exchange_type == ExchangeType::IkeSaInit && !h.response && h.initiator
            })
        };
        let result = (|| -> anyhow::Result<()> {
            start_tunsecd(lab, &h1, 1, &c1)?;
            // h1's IKE_SA_INIT and its first retransmission: left
            // unanswered (before, an attempt in that state gave way to any
            // of the peer's).
            for what in ["h1's IKE_SA_INIT", "its retransmission"] {
                let (_, _, d) = next(what)?;
                ensure!(is_init_request(&d), "h1 sent something else than {what}");
            }
            let (a1, a2): (IpAddr, IpAddr) = (host_addr(1).parse()?, host_addr(2).parse()?);
            let config = || as_h2(psk, a1, a2);
            // Ours crosses it, with the highest nonce.
            let h1_500 = SocketAddr::new(a1, 500);
            let mut ours =
                IkeSa::initiate(config(), h1_500, Instant::now(), Box::new(NonceOf(0xff, 0)))?;
            let request = ours.poll_transmit().context("no IKE_SA_INIT of ours")?;
            let sent = Instant::now();
            writeln!(to_relay, "500 500 {}", hex::encode(&request.bytes))?;
            // h1 does not answer ours, and sends its own IKE_SA_INIT.
            let (our_spi, _) = ours.spis();
            let again = loop {
                let (_, _, d) = next("h1's IKE_SA_INIT after ours")?;
                let h = Header::decode(&d)?;
                ensure!(
                    h.initiator_spi != our_spi,
                    "h1 answered the attempt with the higher nonce"
                );
                if is_init_request(&d) {
                    break d;
                }
            };
            eprintln!(
                "  h1 sent its IKE_SA_INIT {:?} after ours crossed it",
                sent.elapsed()
            );
            // The test gives way: it answers h1's attempt as responder.
            let mut responder = IkeSa::respond(config(), Box::new(SystemRandom));
            responder.handle_datagram(Instant::now(), h1_500, &again);
            let answer = responder.poll_transmit().context("no IKE_SA_INIT answer")?;
            writeln!(to_relay, "500 500 {}", hex::encode(&answer.bytes))?;
            // IKE_AUTH (retransmissions of h1's IKE_SA_INIT may come
            // first): on port 4500 behind the non-ESP marker once h1 moved
            // there (RFC 7296 section 2.23), else on port 500.
            let (port, auth) = loop {
                let (local, remote, d) = next("h1's IKE_AUTH")?;
                ensure!(local == remote, "h1 sent from {remote} to {local}");
                let d = match local {
                    4500 => d
                        .strip_prefix(&[0u8; 4])
                        .context("IKE on 4500 without the non-ESP marker")?
                        .to_vec(),
                    _ => d,
                };
                if !is_init_request(&d) {
                    break (local, d);
                }
            };
            responder.handle_datagram(Instant::now(), SocketAddr::new(a1, port), &auth);
            let answer = responder.poll_transmit().context("no IKE_AUTH answer")?;
            let marker = if port == 4500 { "00000000" } else { "" };
            writeln!(
                to_relay,
                "{port} {port} {marker}{}",
                hex::encode(&answer.bytes)
            )?;
            ensure_sas_up(&mut responder, "responder")?;
            let (spi_i, spi_r) = responder.spis();
            lab.wait_for("h1's IKE SA", Duration::from_secs(10), || {
                status(lab, 1).is_ok_and(|s| {
                    ike_of(&s, "h2").is_ok_and(|i| {
                        i.state == "established"
                            && i.role == "initiator"
                            && i.spi_i == Some(format!("{spi_i:#018x}"))
                            && i.spi_r == Some(format!("{spi_r:#018x}"))
                    })
                })
            })?;
            Ok(())
        })();
        drop(to_relay);
        let _ = relay.kill();
        let _ = relay.wait();
        result
    });
}

/// A UDP relay in a namespace: binds 192.0.2.2:4500, sends each hex line
/// of stdin to 192.0.2.1:4500 and prints the answer from there in hex.
const RELAY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("192.0.2.2", 4500))
s.settimeout(5)
for line in sys.stdin:
    s.sendto(bytes.fromhex(line.strip()), ("192.0.2.1", 4500))
    while True:
        data, addr = s.recvfrom(65535)
        if addr == ("192.0.2.1", 4500):
            break
    print(data.hex(), flush=True)
"#;

#[test]
fn ike_on_the_esp_port() {
    use tunsec_ike::sa::IkeSa;

    with_lab("tsike-esp", |lab| {
        let t0 = Instant::now();
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        let psk = "shared-over-the-esp-port";
        let c1 = write_config(lab, 1, 2, psk)?;
        start_tunsecd(lab, &h1, 1, &c1)?;

        // h2 runs no tunsecd: the test is h2's IKE initiator. h1, the
        // designated initiator, tries first; its unanswered attempt gives
        // way to ours because our nonce is the lowest there is (all zero).
        std::thread::sleep(Duration::from_millis(800));
        let mut relay = Command::new("ip")
            .args(["netns", "exec", &h2, "/usr/bin/python3", "-c", RELAY])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the UDP relay")?;
        let mut to_relay = relay.stdin.take().context("relay stdin")?;
        let mut from_relay = BufReader::new(relay.stdout.take().context("relay stdout")?);
        let (a1, a2): (IpAddr, IpAddr) = (host_addr(1).parse()?, host_addr(2).parse()?);
        let config = as_h2(psk, a1, a2);
        let remote = SocketAddr::new(a1, ESP_PORT);
        let mut sa = IkeSa::initiate(config, remote, Instant::now(), Box::new(NonceOf(0x00, 0)))?;
        let result = (|| -> anyhow::Result<()> {
            // IKE_SA_INIT, then IKE_AUTH.
            for exchange in ["IKE_SA_INIT", "IKE_AUTH"] {
                let request = sa
                    .poll_transmit()
                    .with_context(|| format!("no {exchange} request"))?;
                writeln!(to_relay, "00000000{}", hex::encode(&request.bytes))?;
                let mut line = String::new();
                from_relay.read_line(&mut line)?;
                let answer = hex::decode(line.trim()).with_context(|| {
                    format!("no {exchange} answer from h1's port 4500: {line:?}")
                })?;
                ensure!(
                    answer.len() > 4 && answer[..4] == [0, 0, 0, 0],
                    "h1's {exchange} answer on port 4500 lacks the non-ESP marker"
                );
                sa.handle_datagram(Instant::now(), remote, &answer[4..]);
            }
            Ok(())
        })();
        drop(to_relay);
        let _ = relay.kill();
        let _ = relay.wait();
        result?;
        ensure_sas_up(&mut sa, "initiator")?;

        // h1's side: established, SAs installed, the messages counted.
        let (spi_i, spi_r) = sa.spis();
        let s1 = status(lab, 1)?;
        let ike = ike_of(&s1, "h2")?;
        ensure!(
            ike.state == "established"
                && ike.child_sas == 1
                && ike.spi_i == Some(format!("{spi_i:#018x}"))
                && ike.spi_r == Some(format!("{spi_r:#018x}")),
            "h1 does not show the IKE SA the test made ({spi_i:#x}/{spi_r:#x}):\n{}",
            s1.render()
        );
        let p = s1
            .peers
            .iter()
            .find(|p| p.name == "h2")
            .context("no peer h2")?;
        ensure!(
            p.sas.len() == 2,
            "h1 has {} SAs for h2:\n{}",
            p.sas.len(),
            s1.render()
        );
        ensure!(
            s1.ike_on_esp_port >= 2 && s1.drops.get("ike").copied().unwrap_or(0) == 0,
            "h1 counted {} IKE messages on port 4500 (and {:?} dropped)",
            s1.ike_on_esp_port,
            s1.drops.get("ike")
        );
        phase(lab, "IKE on port 4500", t0);
        Ok(())
    });
}

/// Waits until `check` holds on both hosts' status, or fails after 10 s.
fn wait_status(
    lab: &Lab,
    what: &str,
    check: impl Fn(&Status, &Status) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s1, s2) = (status(lab, 1)?, status(lab, 2)?);
        if check(&s1, &s2)? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within 10 s:\n{}\n{}", s1.render(), s2.render());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sa_count(s: &Status, peer: &str) -> usize {
    s.peers
        .iter()
        .find(|p| p.name == peer)
        .map_or(0, |p| p.sas.len())
}

/// `tunsec down h2` on h1 deletes the IKE SA on both sides, stops the
/// traffic (fail closed) and keeps it down; `tunsec up h2` brings it back.
#[test]
fn ike_down_and_up() {
    with_lab("tsike-du", |lab| {
        let (pair, _pcap) = ike_pair(lab, "same-secret-for-both", "same-secret-for-both")?;
        let established = |s1: &Status, s2: &Status| -> anyhow::Result<bool> {
            Ok(ike_of(s1, "h2")?.state == "established"
                && ike_of(s2, "h1")?.state == "established"
                && sa_count(s1, "h2") == 2
                && sa_count(s2, "h1") == 2)
        };
        wait_status(lab, "IKE up", established)?;
        let t1 = add_tenant(lab, &pair.h1, 1, TAP)?;
        let t2 = add_tenant(lab, &pair.h2, 2, TAP)?;
        ping_ok(&t1, &tenant_addr(2))?;
        stop_capture(lab, "capture");

        match control::call(&socket_path(lab, 1), &Request::Down { peer: "h2".into() })? {
            Response::Done { .. } => {}
            other => bail!("down: {other:?}"),
        }
        // Both sides lose their SAs: h1 at once, h2 when the DELETE
        // arrives.
        wait_status(lab, "down on both sides", |s1, s2| {
            Ok(sa_count(s1, "h2") == 0
                && sa_count(s2, "h1") == 0
                && ike_of(s2, "h1")?.state != "established")
        })?;
        let before = status(lab, 1)?.drops["no_sa"];
        ensure!(
            ping(&t1, &tenant_addr(2), 3)? == 0,
            "ping got through while down"
        );
        ensure!(
            status(lab, 1)?.drops["no_sa"] > before,
            "no_sa did not count"
        );
        // It stays down: h2 (the responder) does not bring it back, and
        // h1 does not retry.
        std::thread::sleep(Duration::from_secs(3));
        let s1 = status(lab, 1)?;
        ensure!(
            sa_count(&s1, "h2") == 0 && ike_of(&s1, "h2")?.state != "established",
            "came back by itself:\n{}",
            s1.render()
        );
        // Manual peers refuse the command by name.
        match control::call(&socket_path(lab, 1), &Request::Down { peer: "h9".into() })? {
            Response::Error { message } => ensure!(message.contains("\"h9\""), "{message}"),
            other => bail!("down h9: {other:?}"),
        }

        match control::call(&socket_path(lab, 1), &Request::Up { peer: "h2".into() })? {
            Response::Done { .. } => {}
            other => bail!("up: {other:?}"),
        }
        wait_status(lab, "up again", established)?;
        ping_ok(&t2, &tenant_addr(1))?;
        Ok(())
    });
}

/// Two hosts whose Child SAs live `lifetime` seconds, IKE up, a tenant
/// behind each that can ping the other; returns the tenants.
fn rekeying_pair(lab: &mut Lab, lifetime: u32, extra: &str) -> anyhow::Result<(String, String)> {
    let pair = two_hosts(lab)?;
    let extra = format!("child_lifetime = {lifetime}\n{extra}");
    let psk = "rekey-secret";
    start_pair(lab, &pair, (psk, &extra), (psk, &extra))?;
    let Pair { h1, h2, .. } = pair;
    wait_status(lab, "IKE up", |s1, s2| {
        Ok(sa_count(s1, "h2") == 2 && sa_count(s2, "h1") == 2)
    })?;
    let t1 = add_tenant(lab, &h1, 1, TAP)?;
    let t2 = add_tenant(lab, &h2, 2, TAP)?;
    ping_ok(&t1, &tenant_addr(2))?;
    Ok((t1, t2))
}

/// The hard end of a Child SA's lifetime (RFC 4301 section 4.4.2.1):
/// with IKE cut between the hosts after the first Child SA, no rekey can
/// happen, and at `child_lifetime` both hosts' ESP SAs stop. Status shows
/// them expired, the tenants' pings fail and are counted as
/// `sa_expired`, and nothing of theirs crosses the underlay in the clear.
/// (Before, the SAs went on for ever.)
#[test]
fn ike_child_sa_stops_at_its_hard_lifetime() {
    with_lab("tsike-hl", |lab| {
        let pair = two_hosts(lab)?;
        let pcap = start_capture(lab, &pair.ul, "capture")?;
        let extra = "child_lifetime = 8\n";
        start_pair(
            lab,
            &pair,
            ("hard-lifetime", extra),
            ("hard-lifetime", extra),
        )?;
        wait_status(lab, "IKE up", |s1, s2| {
            Ok(sa_count(s1, "h2") == 2 && sa_count(s2, "h1") == 2)
        })?;
        let t1 = add_tenant(lab, &pair.h1, 1, TAP)?;
        let _t2 = add_tenant(lab, &pair.h2, 2, TAP)?;
        ping_ok(&t1, &tenant_addr(2))?;
        cut_ike(lab, &[&pair.h1, &pair.h2])?;
        let expired = |s: &Status, peer: &str| {
            s.peers
                .iter()
                .find(|p| p.name == peer)
                .is_some_and(|p| !p.sas.is_empty() && p.sas.iter().all(|sa| sa.state == "expired"))
        };
        lab.wait_for("the Child SAs to expire", Duration::from_secs(20), || {
            matches!((status(lab, 1), status(lab, 2)), (Ok(s1), Ok(s2)) if expired(&s1, "h2") && expired(&s2, "h1"))
        })?;
        let got = ping(&t1, &tenant_addr(2), 3)?;
        ensure!(got == 0, "{got} pings answered over expired SAs");
        let s1 = status(lab, 1)?;
        let sa_expired: u64 = s1
            .peers
            .iter()
            .flat_map(|p| &p.sas)
            .map(|sa| sa.drops.get("sa_expired").copied().unwrap_or(0))
            .sum();
        ensure!(
            sa_expired >= 3,
            "h1 counted {sa_expired} sa_expired drops:\n{}",
            s1.render()
        );
        stop_capture(lab, "capture");
        let leaked = count_marker(&std::fs::read(&pcap)?);
        ensure!(
            leaked == 0,
            "the marker appears {leaked} times in the clear"
        );
        Ok(())
    });
}

/// Child SAs with a 3-second lifetime rekey again and again while tenants
/// ping every 0.2 s: make before break, so not one ping is lost, and
/// nothing is dropped for a missing SA or as a replay.
#[test]
fn ike_rekeys_under_traffic() {
    with_lab("tsike-rk", |lab| {
        let (t1, _t2) = rekeying_pair(lab, 3, "")?;
        let rekeys_before = ike_of(&status(lab, 1)?, "h2")?.child_sas;
        // 12 s of pings: about four lifetimes.
        let replies = ping(&t1, &tenant_addr(2), 60)?;
        let (s1, s2) = (status(lab, 1)?, status(lab, 2)?);
        let rekeys = ike_of(&s1, "h2")?.child_sas - rekeys_before;
        eprintln!("  {replies}/60 replies, {rekeys} new Child SAs");
        ensure!(
            rekeys >= 3,
            "only {rekeys} rekeys in 12 s:\n{}",
            s1.render()
        );
        ensure!(
            replies == 60,
            "{replies} of 60 pings answered across {rekeys} rekeys"
        );
        for (s, peer) in [(&s1, "h2"), (&s2, "h1")] {
            assert_no_drops(s, &["no_sa", "unknown_spi"])?;
            assert_no_sa_drops(s, peer, &["replay"])?;
            let p = s.peers.iter().find(|p| p.name == peer).unwrap();
            ensure!(
                p.sas.len() <= 3,
                "{}: old SAs pile up: {:?}",
                s.node.name,
                p.sas
            );
        }

        // `tunsec rekey h1 --ike` and `tunsec rekey h1` on the responder:
        // both sides see the new IKE SPIs and one more Child SA, and the
        // tenants still reach each other.
        for ike in [true, false] {
            let (b1, b2) = (
                ike_of(&status(lab, 1)?, "h2")?,
                ike_of(&status(lab, 2)?, "h1")?,
            );
            let request = Request::Rekey {
                peer: "h1".to_owned(),
                ike,
            };
            match control::call(&socket_path(lab, 2), &request)? {
                Response::Done { .. } => {}
                other => bail!("rekey: {other:?}"),
            }
            wait_status(lab, "the rekey by command", |s1, s2| {
                let (a1, a2) = (ike_of(s1, "h2")?, ike_of(s2, "h1")?);
                Ok(if ike {
                    a1.ike_rekeys > b1.ike_rekeys
                        && a2.ike_rekeys > b2.ike_rekeys
                        && a1.spi_i == a2.spi_i
                        && a1.spi_i != b1.spi_i
                } else {
                    a1.child_sas > b1.child_sas && a2.child_sas > b2.child_sas
                })
            })?;
            ping_ok(&t1, &tenant_addr(2))?;
        }
        Ok(())
    });
}

const TCP_SERVER: &str = r#"
import hashlib, socket, sys
addr = sys.argv[1] if len(sys.argv) > 1 else "198.51.100.2"
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, 5001))
s.listen(1)
c, _ = s.accept()
h, n = hashlib.sha256(), 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    h.update(d)
    n += len(d)
print(n, h.hexdigest(), flush=True)
"#;

const TCP_CLIENT: &str = r#"
import hashlib, os, socket, sys, time
seconds = float(sys.argv[1])
addr = sys.argv[2] if len(sys.argv) > 2 else "198.51.100.2"
block = os.urandom(1 << 16)
h, n = hashlib.sha256(), 0
c = socket.create_connection((addr, 5001), timeout=30)
end = time.monotonic() + seconds
while time.monotonic() < end:
    c.sendall(block)
    h.update(block)
    n += len(block)
c.close()
print(n, h.hexdigest(), flush=True)
"#;

/// A TCP transfer runs across 20 or more Child SA rekeys (2-second
/// lifetimes) and several rekeys of the IKE SA (5-second lifetimes) and
/// completes intact, with no ESP packet dropped for a missing SA or as a
/// replay on either side.
#[test]
fn ike_tcp_across_rekeys() {
    with_lab("tsike-tcp", |lab| {
        let (t1, t2) = rekeying_pair(lab, 2, "ike_lifetime = 5\n")?;
        let before = ike_of(&status(lab, 1)?, "h2")?.child_sas;
        let ike_before = ike_of(&status(lab, 1)?, "h2")?.ike_rekeys;

        let server = lab.dir.path().join("server.py");
        let client = lab.dir.path().join("client.py");
        std::fs::write(&server, TCP_SERVER)?;
        std::fs::write(&client, TCP_CLIENT)?;
        let server_log = lab.spawn(
            "server",
            &t2,
            Path::new("python3"),
            &[&server.to_string_lossy()],
        )?;
        std::thread::sleep(Duration::from_millis(500));
        let out = exec_output(&t1, "python3", &[&client.to_string_lossy(), "40"])?;
        ensure!(
            out.status.success(),
            "client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sent = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        lab.wait_for("the server's digest", Duration::from_secs(30), || {
            std::fs::read_to_string(&server_log).is_ok_and(|s| !s.trim().is_empty())
        })?;
        let received = std::fs::read_to_string(&server_log)?.trim().to_owned();
        let (s1, s2) = (status(lab, 1)?, status(lab, 2)?);
        let rekeys = ike_of(&s1, "h2")?.child_sas - before;
        let (i1, i2) = (ike_of(&s1, "h2")?, ike_of(&s2, "h1")?);
        let ike_rekeys = i1.ike_rekeys - ike_before;
        eprintln!(
            "  sent {sent}; received {received}; {rekeys} Child SA rekeys, {ike_rekeys} IKE SA rekeys"
        );
        ensure!(received == sent, "sent {sent}, received {received}");
        ensure!(rekeys >= 20, "only {rekeys} rekeys during the transfer");
        ensure!(
            ike_rekeys >= 3,
            "only {ike_rekeys} IKE SA rekeys during the transfer"
        );
        ensure!(
            i1.state == "established" && i1.spi_i == i2.spi_i && i1.spi_r == i2.spi_r,
            "the two sides disagree on the IKE SA after its rekeys: {i1:?} {i2:?}"
        );
        // Status tells the IKE SA's age, when both SAs are rekeyed next,
        // and what NAT detection found (both force UDP encapsulation).
        // While a rekey is under way its time is not shown: look again
        // until neither side is in one.
        let told = |i: &IkeStatus| {
            // A rekey that met a busy peer is retried 1-3 s later, so the
            // IKE SA may outlive its 5 s lifetime a little.
            i.age_secs.is_some_and(|a| a <= 15)
                && i.rekey_in_secs.is_some_and(|r| r <= 5)
                && i.child_rekey_in_secs.is_some_and(|r| r <= 2)
                && i.nat
                    .as_deref()
                    .is_some_and(|n| n.contains("UDP encapsulation"))
        };
        wait_status(lab, "IKE status with age, rekey times and NAT", |s1, s2| {
            Ok(told(&ike_of(s1, "h2")?) && told(&ike_of(s2, "h1")?))
        })?;
        let s1 = status(lab, 1)?;
        let text = s1.render();
        ensure!(
            text.contains("rekey in") && text.contains(" age "),
            "the status text lacks the rekey times:\n{text}"
        );
        for (s, peer) in [(&s1, "h2"), (&s2, "h1")] {
            assert_no_drops(s, &["no_sa", "unknown_spi"])?;
            assert_no_sa_drops(s, peer, &["replay"])?;
        }
        Ok(())
    });
}

/// The IKE SPIs a host shows for its peer, once its IKE SA is established
/// with exactly one Child SA pair installed (no stale SAs beside it).
fn clean_ike_sa(s: &Status, peer: &str) -> anyhow::Result<Option<(String, String)>> {
    let ike = ike_of(s, peer)?;
    let sas = &s
        .peers
        .iter()
        .find(|p| p.name == peer)
        .context("no such peer")?
        .sas;
    let (ins, outs) = (
        sas.iter().filter(|sa| sa.direction == "in").count(),
        sas.iter().filter(|sa| sa.direction == "out").count(),
    );
    Ok(
        match (ike.state.as_str(), ike.spi_i, ike.spi_r, ins, outs) {
            ("established", Some(i), Some(r), 1, 1) => Some((i, r)),
            _ => None,
        },
    )
}

/// Peer restart (RFC 7296 section 2.4): each host in turn is killed with
/// SIGKILL and started again while tenants ping across. The tunnel is
/// back within 5 s of the restart, the survivor holds only the new IKE SA
/// and one Child SA pair (the old ones are gone, not left to time out),
/// and the underlay capture never holds a tenant byte in the clear: only
/// IKE, ESP in UDP, ARP, and ICMP errors quoting IKE or ESP (sent by the
/// restarting host while its sockets are closed).
#[test]
fn ike_peer_restart() {
    peer_restarts("tsike-rs", Stop::Kill);
}

/// As [`ike_peer_restart`], with a clean stop (SIGTERM) in place of
/// SIGKILL: the stopping host deletes its SAs with the peer, its TAP
/// device goes, and nothing of the tenants' leaves in the clear while it
/// is stopped or as it starts again.
#[test]
fn ike_peer_clean_stop_and_start() {
    peer_restarts("tsike-cs", Stop::Term);
}

/// How [`peer_restarts`] stops a daemon.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGKILL: no clean-up at all.
    Kill,
    /// SIGTERM: tunsecd's clean stop.
    Term,
}

fn peer_restarts(prefix: &str, stop: Stop) {
    with_lab(prefix, |lab| {
        let t0 = Instant::now();
        let (pair, pcap) = ike_pair(lab, "restart-secret", "restart-secret")?;
        let t1 = add_tenant(lab, &pair.h1, 1, TAP)?;
        let t2 = add_tenant(lab, &pair.h2, 2, TAP)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while ping(&t1, &tenant_addr(2), 1)? != 1 {
            ensure!(Instant::now() < deadline, "the tunnel never came up");
        }
        phase(lab, "tunnel up", t0);

        for (victim, survivor, ns, tenant) in [(1u8, 2u8, &pair.h1, &t1), (2, 1, &pair.h2, &t2)] {
            let label = format!("h{victim}");
            let before = clean_ike_sa(&status(lab, survivor)?, &label)?
                .context("the survivor's IKE SA is not clean before the restart")?;
            if stop == Stop::Kill {
                let pid = lab.pid(&label).context("no daemon pid")?;
                ensure!(
                    Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status()?
                        .success(),
                    "kill -KILL {pid} failed"
                );
                lab.stop(&label);
            } else {
                ensure!(lab.stop(&label), "tunsecd {label} did not exit cleanly");
            }
            let log = lab.dir.path().join(format!("{label}.log"));
            std::fs::rename(&log, lab.dir.path().join(format!("{label}.killed.log")))?;
            // The survivor keeps sending with its old SA meanwhile, and
            // the tenant behind the dead host keeps trying.
            let other_tenant = if victim == 1 { &t2 } else { &t1 };
            let _ = ping(other_tenant, &tenant_addr(victim), 2)?;

            let config = lab.dir.path().join(format!("{label}.toml"));
            let restarted = Instant::now();
            start_tunsecd(lab, ns, victim, &config)?;
            // A restarted daemon makes a new TAP device: back on the bridge.
            lab.wait_for("the new TAP", Duration::from_secs(5), || {
                lab.try_exec(ns, "ip", &["link", "show", TAP])
            })?;
            lab.exec(ns, "ip", &["link", "set", TAP, "master", "br-t"])?;
            let peer_tenant = tenant_addr(survivor);
            let back = loop {
                if ping(tenant, &peer_tenant, 1)? == 1 {
                    break restarted.elapsed();
                }
                ensure!(
                    restarted.elapsed() < Duration::from_secs(15),
                    "h{victim} restarted, and the tunnel is still down after 15 s:\n{}\n{}",
                    status(lab, victim)?.render(),
                    status(lab, survivor)?.render()
                );
            };
            eprintln!("  h{victim} stopped and restarted: tunnel back after {back:?}");
            ensure!(
                back < Duration::from_secs(5),
                "h{victim} restarted: the tunnel took {back:?} to come back (at most 5 s)"
            );
            // The survivor holds the new IKE SA, the same one the
            // restarted host holds, and one Child SA pair: nothing stale.
            let (sv, rs) = (status(lab, survivor)?, status(lab, victim)?);
            let new_sv = clean_ike_sa(&sv, &label)?
                .with_context(|| format!("the survivor is not clean:\n{}", sv.render()))?;
            let new_rs = clean_ike_sa(&rs, &format!("h{survivor}"))?
                .with_context(|| format!("the restarted host is not clean:\n{}", rs.render()))?;
            ensure!(
                new_sv == new_rs && new_sv != before,
                "IKE SPIs: before {before:?}, survivor {new_sv:?}, restarted {new_rs:?}"
            );
            phase(lab, &format!("h{victim} restarted"), t0);
        }
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&t2, &tenant_addr(1))?;
        stop_capture(lab, "capture");

        let raw = std::fs::read(&pcap)?;
        let leaked = count_marker(&raw);
        let frames = frames(&pcap)?;
        let icmp_about_ours = |f: &Frame| {
            f.protocols.starts_with("eth:ethertype:ip:icmp:ip:udp")
                && (f.protocols.contains(":esp") || f.protocols.contains(":isakmp"))
        };
        let other: Vec<&Frame> = frames
            .iter()
            .filter(|f| !f.is_arp() && !f.is_esp_in_udp() && !f.is_ike() && !icmp_about_ours(f))
            .collect();
        eprintln!(
            "  capture: {} frames, {} other, marker {leaked} times",
            frames.len(),
            other.len()
        );
        ensure!(
            other.is_empty() && leaked == 0,
            "cleartext on the underlay during the restarts (marker {leaked} times):{}",
            describe(&other)
        );
        Ok(())
    });
}

/// The UDP lengths of the ESP-in-UDP frames in a capture.
fn esp_udp_lengths(pcap: &Path) -> anyhow::Result<Vec<u16>> {
    let text = tshark_fields(pcap, Some("udpencap && esp"), &["udp.length"])?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Both daemons ask for tunnel mode (`[peer.ike] mode = "tunnel"`; h2 reads
/// its PSK from the environment, `psk_env`): the Child SAs come up in
/// tunnel mode, the TAP MTU leaves room for the inner IP header, tenants
/// ping each other (full-size, DF, too) and move data over TCP, and the
/// underlay carries only IKE, ESP in UDP and ARP, unfragmented, with the
/// ESP packets 20 bytes longer than transport mode's: the inner IPv4
/// header.
#[test]
fn ike_tunnel_mode() {
    const PSK_VAR: &str = "TSE2E_TUNNEL_PSK";
    with_lab("tsike-tun", |lab| {
        let t0 = Instant::now();
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        let pcap = start_capture(lab, &ul, "capture")?;
        let psk = "tunnel-mode-secret";
        let mode = "mode = \"tunnel\"\n";
        let c1 = write_config_with(lab, 1, 2, psk, mode)?;
        let c2 = write_config_with(lab, 2, 1, "unused", mode)?;
        let text = std::fs::read_to_string(&c2)?;
        ensure!(text.contains("psk_file = \"h2.psk\""), "{text}");
        std::fs::write(
            &c2,
            text.replace("psk_file = \"h2.psk\"", &format!("psk_env = \"{PSK_VAR}\"")),
        )?;
        start_tunsecd(lab, &h1, 1, &c1)?;
        // h2's daemon with the PSK in its environment only.
        let c2s = c2.to_string_lossy().into_owned();
        let var = format!("{PSK_VAR}={psk}");
        lab.spawn(
            "h2",
            &h2,
            Path::new("/usr/bin/env"),
            &[&var, TUNSECD, "--config", &c2s],
        )?;
        let sock = socket_path(lab, 2);
        lab.wait_for("tunsecd h2 to answer", Duration::from_secs(20), || {
            matches!(
                control::call(&sock, &Request::Status),
                Ok(Response::Status(_))
            )
        })?;

        let tunnel_sas = |s: &Status, peer: &str| -> bool {
            s.peers.iter().find(|p| p.name == peer).is_some_and(|p| {
                p.sas.len() == 2
                    && p.sas.iter().any(|sa| sa.direction == "in")
                    && p.sas.iter().any(|sa| sa.direction == "out")
                    && p.sas.iter().all(|sa| sa.mode.as_deref() == Some("tunnel"))
            })
        };
        wait_status(lab, "tunnel-mode Child SAs", |s1, s2| {
            Ok(ike_of(s1, "h2")?.state == "established"
                && ike_of(s2, "h1")?.state == "established"
                && tunnel_sas(s1, "h2")
                && tunnel_sas(s2, "h1"))
        })?;
        phase(lab, "IKE up in tunnel mode", t0);

        // The TAP MTU: 1500 - 121 (IPv4, ESP in UDP, inner IPv4, VXLAN)
        // - 14 (Ethernet) = 1365, 20 below transport mode's 1385.
        let mtu = link_mtu(lab, &h1, TAP)?;
        ensure!(mtu == 1365, "TAP MTU {mtu}, expected 1365");

        let t1 = add_tenant(lab, &h1, 1, TAP)?;
        let t2 = add_tenant(lab, &h2, 2, TAP)?;
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&t2, &tenant_addr(1))?;
        // Full-size packets with DF: they fit the underlay unfragmented.
        let size = (mtu - 28).to_string();
        let out = exec_output(
            &t1,
            "ping",
            &[
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                &size,
                "-p",
                &marker_hex(),
                &tenant_addr(2),
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            text.contains(" 3 received"),
            "full-size pings through the tunnel: {text}"
        );
        phase(lab, "pings", t0);
        stop_capture(lab, "capture");

        // TCP through the tunnel, intact.
        let server = lab.dir.path().join("server.py");
        let client = lab.dir.path().join("client.py");
        std::fs::write(&server, TCP_SERVER)?;
        std::fs::write(&client, TCP_CLIENT)?;
        let server_log = lab.spawn(
            "server",
            &t2,
            Path::new("python3"),
            &[&server.to_string_lossy()],
        )?;
        std::thread::sleep(Duration::from_millis(500));
        let out = exec_output(&t1, "python3", &[&client.to_string_lossy(), "3"])?;
        ensure!(
            out.status.success(),
            "client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sent = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        lab.wait_for("the server's digest", Duration::from_secs(30), || {
            std::fs::read_to_string(&server_log).is_ok_and(|s| !s.trim().is_empty())
        })?;
        let received = std::fs::read_to_string(&server_log)?.trim().to_owned();
        eprintln!("  TCP: sent {sent}; received {received}");
        ensure!(received == sent, "sent {sent}, received {received}");
        phase(lab, "TCP", t0);

        // tunsec status: tunnel-mode SAs that carried the traffic, and no
        // drops on the way.
        let (s1, s2) = (status(lab, 1)?, status(lab, 2)?);
        for (s, peer) in [(&s1, "h2"), (&s2, "h1")] {
            let rendered = s.render();
            ensure!(
                rendered.contains(" tunnel esn="),
                "{}: status does not show tunnel mode:\n{rendered}",
                s.node.name
            );
            let p = s.peers.iter().find(|p| p.name == peer).unwrap();
            for sa in &p.sas {
                ensure!(
                    sa.packets > 100 && sa.drops.values().all(|&d| d == 0),
                    "{}: {sa:?}",
                    s.node.name
                );
            }
            assert_no_drops(
                s,
                &["inner_header", "policy", "no_sa", "too_big", "malformed"],
            )?;
        }

        let raw = std::fs::read(&pcap)?;
        let leaked = count_marker(&raw);
        let frames = frames(&pcap)?;
        let other: Vec<&Frame> = frames
            .iter()
            .filter(|f| !f.is_arp() && !f.is_esp_in_udp() && !f.is_ike())
            .collect();
        ensure!(
            other.is_empty(),
            "{} captured frames are neither IKE, ESP in UDP nor ARP (cleartext VXLAN? fragments?):{}",
            other.len(),
            describe(&other)
        );
        ensure!(
            leaked == 0,
            "the marker appears {leaked} times in the underlay capture"
        );
        // A 200-byte ping is a 242-byte frame; under aes128gcm16 (IV 8,
        // ICV 16) transport mode makes it UDP 8 + ESP 8 + IV 8 + (UDP 8 +
        // VXLAN 8 + 242 + trailer 2) + ICV 16 = 300 bytes of UDP; tunnel
        // mode adds the 20-byte inner IPv4 header: 320.
        let lengths = esp_udp_lengths(&pcap)?;
        let tunnel = lengths.iter().filter(|&&l| l == 320).count();
        let transport = lengths.iter().filter(|&&l| l == 300).count();
        eprintln!(
            "  capture: {} frames, {} ESP, {tunnel} of 320 bytes (tunnel), {transport} of 300 (transport)",
            frames.len(),
            lengths.len()
        );
        ensure!(
            tunnel >= 12 && transport == 0,
            "ESP lengths do not show the inner IP header: {lengths:?}"
        );
        Ok(())
    });
}

/// Mixed configs end in tunnel mode on both sides, and traffic flows: a
/// transport-configured responder follows an initiator that does not ask
/// for transport mode, and a tunnel-configured responder declines an
/// initiator's USE_TRANSPORT_MODE (RFC 7296 section 1.3.1).
#[test]
fn ike_mixed_modes_agree_on_tunnel() {
    for (prefix, extra1, extra2) in [
        ("tsike-mx1", "mode = \"tunnel\"\n", ""),
        ("tsike-mx2", "", "mode = \"tunnel\"\n"),
    ] {
        with_lab(prefix, |lab| {
            let pair = two_hosts(lab)?;
            start_pair(lab, &pair, ("mixed-modes", extra1), ("mixed-modes", extra2))?;
            let Pair { h1, h2, .. } = pair;
            let tunnel = |s: &Status, peer: &str| {
                s.peers.iter().find(|p| p.name == peer).is_some_and(|p| {
                    p.sas.len() == 2 && p.sas.iter().all(|sa| sa.mode.as_deref() == Some("tunnel"))
                })
            };
            wait_status(lab, "tunnel-mode Child SAs", |s1, s2| {
                Ok(tunnel(s1, "h2") && tunnel(s2, "h1"))
            })?;
            let t1 = add_tenant(lab, &h1, 1, TAP)?;
            let t2 = add_tenant(lab, &h2, 2, TAP)?;
            ping_ok(&t1, &tenant_addr(2))?;
            ping_ok(&t2, &tenant_addr(1))?;
            Ok(())
        });
    }
}

/// A real NAT (nftables masquerade in a router namespace) between h1
/// (10.0.0.1, private) and h2: NAT detection finds it (RFC 7296 section
/// 2.23), IKE moves to port 4500, ESP travels in UDP through the NAT's
/// mapping, tenants ping across, and h1, behind the NAT, sends NAT
/// keepalives (RFC 3948 section 2.3: one byte, 0xFF) every
/// `nat_keepalive` second. Nothing leaves the router in the clear.
#[test]
fn ike_behind_nat() {
    with_lab("tsike-nat", |lab| {
        let t0 = Instant::now();
        let ul = add_underlay(lab)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        // The router: 192.0.2.1 outside, 10.0.0.254 inside, masquerading.
        let nat = add_host(lab, &ul, "nat", 1)?;
        let h1 = lab.add_ns("h1")?;
        lab.veth(&nat, "in0", &h1, "eth0")?;
        lab.exec(&nat, "ip", &["addr", "add", "10.0.0.254/24", "dev", "in0"])?;
        lab.exec(&h1, "ip", &["addr", "add", "10.0.0.1/24", "dev", "eth0"])?;
        lab.exec(&h1, "ip", &["route", "add", "default", "via", "10.0.0.254"])?;
        lab.exec(&nat, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        let rules = "table ip masq {\n chain post {\n  type nat hook postrouting priority 100;\n  \
                     oifname \"eth0\" masquerade\n }\n}\n";
        let rules_file = lab.dir.path().join("nat.nft");
        std::fs::write(&rules_file, rules)?;
        lab.exec(&nat, "nft", &["-f", &rules_file.to_string_lossy()])?;
        let pcap = start_capture(lab, &ul, "capture")?;

        let psk = "behind-the-nat";
        tunsec::config::write_secret(lab.dir.path().join("h1.psk"), psk)?;
        tunsec::config::write_secret(lab.dir.path().join("h2.psk"), psk)?;
        let config = |n: u8, underlay: &str, peer: u8, peer_underlay: &str, extra: &str| {
            format!(
                "[node]\nname = \"h{n}\"\nunderlay = \"{underlay}\"\ncontrol_socket = \"{}\"\n\n\
                 [[network]]\nname = \"blue\"\nvni = 100\nencapsulation = \"vxlan\"\n\n\
                 [[peer]]\nname = \"h{peer}\"\nunderlay = \"{peer_underlay}\"\n\
                 networks = [\"blue\"]\npolicy = \"require\"\n\n\
                 [peer.ike]\npsk_file = \"h{n}.psk\"\n{extra}",
                socket_path(lab, n).display()
            )
        };
        // h1 knows h2 by its address; h2 knows h1 by the NAT's, and h1
        // proves its own (private) address as its identity.
        let c1 = lab.dir.path().join("h1.toml");
        let c2 = lab.dir.path().join("h2.toml");
        std::fs::write(
            &c1,
            config(1, "10.0.0.1", 2, "192.0.2.2", "nat_keepalive = 1\n"),
        )?;
        std::fs::write(
            &c2,
            config(2, "192.0.2.2", 1, "192.0.2.1", "remote_id = \"10.0.0.1\"\n"),
        )?;
        start_tunsecd(lab, &h1, 1, &c1)?;
        start_tunsecd(lab, &h2, 2, &c2)?;
        wait_status(lab, "IKE through the NAT", |s1, s2| {
            Ok(sa_count(s1, "h2") == 2 && sa_count(s2, "h1") == 2)
        })?;
        let (i1, i2) = (
            ike_of(&status(lab, 1)?, "h2")?,
            ike_of(&status(lab, 2)?, "h1")?,
        );
        eprintln!("  h1: {:?}\n  h2: {:?}", i1.nat, i2.nat);
        ensure!(
            i1.nat_local == Some(true)
                && i1.udp_encap_forced == Some(true)
                && i1
                    .nat
                    .as_deref()
                    .is_some_and(|n| n.contains("this host is behind a NAT")),
            "h1 did not find itself behind the NAT: {i1:?}"
        );
        ensure!(
            i2.nat_local == Some(false)
                && i2.nat_peer_mismatch == Some(true)
                && i2.udp_encap_forced == Some(true),
            "h2 did not find h1's address translated: {i2:?}"
        );
        phase(lab, "IKE up through the NAT", t0);

        let t1 = add_tenant(lab, &h1, 1, TAP)?;
        let t2 = add_tenant(lab, &h2, 2, TAP)?;
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&t2, &tenant_addr(1))?;
        std::thread::sleep(Duration::from_secs(3));
        stop_capture(lab, "capture");

        // Keepalives: UDP 192.0.2.1:4500 -> 192.0.2.2:4500 with one byte.
        let keepalives = tshark_fields(
            &pcap,
            Some("ip.src == 192.0.2.1 && udp.srcport == 4500 && udp.length == 9"),
            &["udp.payload"],
        )?
        .lines()
        .filter(|l| l.trim() == "ff")
        .count();
        let raw = std::fs::read(&pcap)?;
        let leaked = count_marker(&raw);
        let frames = frames(&pcap)?;
        let ike_4500 = frames
            .iter()
            .filter(|f| f.is_ike() && f.sport == Some(ESP_PORT))
            .count();
        let other: Vec<&Frame> = frames
            .iter()
            .filter(|f| !f.is_arp() && !f.is_esp_in_udp() && !f.is_ike())
            .filter(|f| !(f.sport == Some(ESP_PORT) && f.dport == Some(ESP_PORT)))
            .collect();
        eprintln!(
            "  capture: {} frames, {ike_4500} IKE on 4500, {keepalives} keepalives, marker {leaked} times",
            frames.len()
        );
        ensure!(ike_4500 >= 2, "IKE never moved to port 4500");
        ensure!(
            keepalives >= 2,
            "only {keepalives} NAT keepalives from h1 in 3 s"
        );
        ensure!(
            other.is_empty() && leaked == 0,
            "cleartext through the NAT (marker {leaked} times):{}",
            describe(&other)
        );
        Ok(())
    });
}

/// The selectors a host shows on its SAs with `peer`, each SA's once
/// (`None` if it has no SA pair yet).
fn sa_selectors(s: &Status, peer: &str) -> Option<Vec<String>> {
    let p = s.peers.iter().find(|p| p.name == peer)?;
    (p.sas.len() == 2).then(|| {
        p.sas
            .iter()
            .map(|sa| sa.selectors.clone().unwrap_or_default())
            .collect()
    })
}

/// The SPIs of a host's SAs with `peer`.
fn spis(s: &Status, peer: &str) -> Vec<String> {
    s.peers
        .iter()
        .filter(|p| p.name == peer)
        .flat_map(|p| p.sas.iter().map(|sa| sa.spi.clone()))
        .collect()
}

/// Adds network `green` (Geneve, VNI 200, port 6081) to a config written
/// by [`write_config_with`], carried by its peer.
fn add_geneve_network(config: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)?;
    ensure!(text.contains("networks = [\"blue\"]"), "{text}");
    let text = text.replace("networks = [\"blue\"]", "networks = [\"blue\", \"green\"]")
        + "\n[[network]]\nname = \"green\"\nvni = 200\nencapsulation = \"geneve\"\n";
    std::fs::write(config, text)?;
    Ok(())
}

/// The TCP transfer of [`TCP_CLIENT`] from `t1` to `t2` (at `addr`) for
/// `secs` seconds, checked end to end by its digest.
fn tcp_transfer(lab: &mut Lab, t1: &str, t2: &str, addr: &str, secs: &str) -> anyhow::Result<()> {
    let server = lab.dir.path().join("server.py");
    let client = lab.dir.path().join("client.py");
    std::fs::write(&server, TCP_SERVER)?;
    std::fs::write(&client, TCP_CLIENT)?;
    let server_log = lab.spawn(
        &format!("server-{t2}"),
        t2,
        Path::new("python3"),
        &[&server.to_string_lossy(), addr],
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let out = exec_output(t1, "python3", &[&client.to_string_lossy(), secs, addr])?;
    ensure!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    lab.wait_for("the server's digest", Duration::from_secs(30), || {
        std::fs::read_to_string(&server_log).is_ok_and(|s| !s.trim().is_empty())
    })?;
    let received = std::fs::read_to_string(&server_log)?.trim().to_owned();
    eprintln!("  TCP: sent {sent}; received {received}");
    ensure!(received == sent, "sent {sent}, received {received}");
    Ok(())
}

/// Both hosts with `selectors = "ports"` and two networks (VXLAN 4789,
/// Geneve 6081): one Child SA per tunnel port, the first in IKE_AUTH and
/// the second by CREATE_CHILD_SA (RFC 7296 section 1.3.1). Status shows
/// two SA pairs on each side, narrowed to exactly `[udp/4789] ===
/// [udp/4789]` and `[udp/6081] === [udp/6081]`; tenants of both networks
/// ping each other and move data over TCP, each network's traffic on its
/// own Child SA, nothing dropped for being outside the selectors; a rekey
/// replaces both pairs and traffic goes on; and the underlay carries only
/// IKE, ESP in UDP and ARP.
#[test]
fn ike_port_selectors() {
    with_lab("tsike-ts", |lab| {
        let t0 = Instant::now();
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        let pcap = start_capture(lab, &ul, "capture")?;
        let ports = "selectors = \"ports\"\n";
        let c1 = write_config_with(lab, 1, 2, "port-selectors", ports)?;
        let c2 = write_config_with(lab, 2, 1, "port-selectors", ports)?;
        add_geneve_network(&c1)?;
        add_geneve_network(&c2)?;
        start_tunsecd(lab, &h1, 1, &c1)?;
        start_tunsecd(lab, &h2, 2, &c2)?;

        // Exactly one SA per direction and port, each one port wide.
        let per_port = |s: &Status, peer: &str| {
            let Some(p) = s.peers.iter().find(|p| p.name == peer) else {
                return false;
            };
            let mut sel: Vec<String> = p
                .sas
                .iter()
                .map(|sa| sa.selectors.clone().unwrap_or_default())
                .collect();
            sel.sort();
            sel.len() == 4
                && sel[..2]
                    .iter()
                    .all(|t| t.matches("[udp/4789]").count() == 2)
                && sel[2..]
                    .iter()
                    .all(|t| t.matches("[udp/6081]").count() == 2)
                && sel.iter().all(|t| t.split(", ").count() == 1)
        };
        wait_status(lab, "one Child SA per tunnel port", |s1, s2| {
            Ok(ike_of(s1, "h2")?.state == "established"
                && ike_of(s2, "h1")?.state == "established"
                && per_port(s1, "h2")
                && per_port(s2, "h1"))
        })?;
        let s1 = status(lab, 1)?;
        let rendered = s1.render();
        eprintln!("{rendered}");
        for port in [4789, 6081] {
            ensure!(
                rendered.contains(&format!(
                    "selectors 192.0.2.1/32[udp/{port}] === 192.0.2.2/32[udp/{port}]"
                )),
                "status does not show the {port} selectors:\n{rendered}"
            );
        }
        phase(lab, "IKE up, one Child SA per tunnel port", t0);

        let t1 = add_tenant(lab, &h1, 1, TAP)?;
        let t2 = add_tenant(lab, &h2, 2, TAP)?;
        let g1 = add_tenant_on(lab, &h1, "g1", "g", "ts-green", "203.0.113.1")?;
        let g2 = add_tenant_on(lab, &h2, "g2", "g", "ts-green", "203.0.113.2")?;
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&t2, &tenant_addr(1))?;
        ping_ok(&g1, "203.0.113.2")?;
        ping_ok(&g2, "203.0.113.1")?;
        phase(lab, "pings on both networks", t0);
        tcp_transfer(lab, &t1, &t2, &tenant_addr(2), "2")?;
        tcp_transfer(lab, &g1, &g2, "203.0.113.2", "2")?;
        phase(lab, "TCP on both networks", t0);

        // A rekey of both Child SAs; both networks go on.
        let before = spis(&status(lab, 1)?, "h2");
        let request = Request::Rekey {
            peer: "h2".to_owned(),
            ike: false,
        };
        match control::call(&socket_path(lab, 1), &request)? {
            Response::Done { .. } => {}
            other => bail!("rekey: {other:?}"),
        }
        wait_status(lab, "both Child SAs rekeyed", |s1, s2| {
            let now = spis(s1, "h2");
            Ok(per_port(s1, "h2")
                && per_port(s2, "h1")
                && now.len() == 4
                && now.iter().all(|spi| !before.contains(spi)))
        })?;
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&g1, "203.0.113.2")?;
        phase(lab, "rekeyed, pings on both networks", t0);

        // A re-authentication (a new IKE SA beside the old one): both
        // Child SAs are replaced make before break, none is left over.
        let before = spis(&status(lab, 1)?, "h2");
        let ike_before = ike_of(&status(lab, 1)?, "h2")?.spi_i;
        let request = Request::Reauth {
            peer: "h2".to_owned(),
        };
        match control::call(&socket_path(lab, 1), &request)? {
            Response::Done { .. } => {}
            other => bail!("reauth: {other:?}"),
        }
        wait_status(lab, "both Child SAs re-authenticated", |s1, s2| {
            let now = spis(s1, "h2");
            Ok(ike_of(s1, "h2")?.spi_i != ike_before
                && per_port(s1, "h2")
                && per_port(s2, "h1")
                && now.iter().all(|spi| !before.contains(spi)))
        })?;
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&g1, "203.0.113.2")?;
        phase(lab, "re-authenticated, pings on both networks", t0);
        stop_capture(lab, "capture");

        let (s1, s2) = (status(lab, 1)?, status(lab, 2)?);
        for (s, peer) in [(&s1, "h2"), (&s2, "h1")] {
            assert_no_drops(s, &["selector", "policy", "no_sa", "malformed"])?;
            let p = s.peers.iter().find(|p| p.name == peer).unwrap();
            for sa in &p.sas {
                ensure!(
                    sa.packets > 0 && sa.drops.values().all(|&d| d == 0),
                    "{}: {sa:?}",
                    s.node.name
                );
            }
        }

        let raw = std::fs::read(&pcap)?;
        let leaked = count_marker(&raw);
        let frames = frames(&pcap)?;
        let other: Vec<&Frame> = frames
            .iter()
            .filter(|f| !f.is_arp() && !f.is_esp_in_udp() && !f.is_ike())
            .collect();
        let esp = frames.iter().filter(|f| f.is_esp_in_udp()).count();
        eprintln!(
            "  capture: {} frames, {esp} ESP, {} other, marker {leaked} times",
            frames.len(),
            other.len()
        );
        ensure!(
            other.is_empty(),
            "{} captured frames are neither IKE, ESP in UDP nor ARP:{}",
            other.len(),
            describe(&other)
        );
        ensure!(esp >= 100, "only {esp} ESP frames");
        ensure!(
            leaked == 0,
            "the marker appears {leaked} times in the underlay capture"
        );
        Ok(())
    });
}

/// One host with `selectors = "ports"`, the other host to host: the
/// responder narrows (h2 configured for ports narrows h1's host-to-host
/// offer) or keeps (h2 host to host accepts h1's port offer), so both
/// sides end with `[udp/4789]` selectors, send from port 4789, and
/// traffic flows with no `selector` drops.
#[test]
fn ike_mixed_selectors_narrow_to_ports() {
    for (prefix, extra1, extra2) in [
        ("tsike-ts1", "selectors = \"ports\"\n", ""),
        ("tsike-ts2", "", "selectors = \"ports\"\n"),
    ] {
        with_lab(prefix, |lab| {
            let pair = two_hosts(lab)?;
            start_pair(
                lab,
                &pair,
                ("mixed-selectors", extra1),
                ("mixed-selectors", extra2),
            )?;
            let Pair { h1, h2, .. } = pair;
            let want = |a: u8, b: u8| {
                format!(
                    "{}/32[udp/4789] === {}/32[udp/4789]",
                    host_addr(a),
                    host_addr(b)
                )
            };
            wait_status(lab, "port-narrowed Child SAs", |s1, s2| {
                Ok(
                    sa_selectors(s1, "h2").is_some_and(|v| v.iter().all(|t| *t == want(1, 2)))
                        && sa_selectors(s2, "h1")
                            .is_some_and(|v| v.iter().all(|t| *t == want(2, 1))),
                )
            })?;
            let t1 = add_tenant(lab, &h1, 1, TAP)?;
            let t2 = add_tenant(lab, &h2, 2, TAP)?;
            ping_ok(&t1, &tenant_addr(2))?;
            ping_ok(&t2, &tenant_addr(1))?;
            for n in [1, 2] {
                assert_no_drops(&status(lab, n)?, &["selector"])?;
            }
            Ok(())
        });
    }
}

/// CPU ticks (user + system) of each thread of process `pid`, by thread
/// name (`/proc/PID/task/TID/stat`).
fn thread_ticks(pid: u32) -> anyhow::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        let name = std::fs::read_to_string(dir.join("comm"))?.trim().to_owned();
        let stat = std::fs::read_to_string(dir.join("stat"))?;
        // After the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = fields
            .get(11)
            .and_then(|u| u.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
        out.push((name, ticks));
    }
    Ok(out)
}

/// Two worker pairs on each host (`node.workers = 2`: a TAP queue and
/// SO_REUSEPORT sockets each), sharing every SA, with 3-second Child SA
/// lifetimes so that several SAs come and go: sixteen TCP streams at
/// once keep both transmit workers busy (with four, all of them hashed to
/// one queue in about one run of eight). In the underlay capture no ESP
/// sequence number appears twice under one SPI (RFC 4303 section 3.3.3),
/// although the two workers put them on the wire out of order; and no
/// SA drops a packet as a replay, nor does the data path for a missing
/// SA. (`tc qdisc netem` is not in this kernel; here the workers' own
/// interleaving is the reordering, and `ike_reordered_transfer` adds a
/// reorderer on the underlay.)
#[test]
fn ike_workers_share_sas() {
    with_lab("tsike-wk", |lab| {
        let t0 = Instant::now();
        let pair = two_hosts(lab)?;
        let extra = "child_lifetime = 3\n";
        let c1 = write_config_with(lab, 1, 2, "two-workers", extra)?;
        let c2 = write_config_with(lab, 2, 1, "two-workers", extra)?;
        for c in [&c1, &c2] {
            // Without UDP GSO every ESP datagram is a packet of its own in
            // the capture (a GSO run shows only its first header there).
            let text = std::fs::read_to_string(c)?.replacen("[node]\n", "[node]\nworkers = 2\n", 1)
                + "\n[offload]\nudp_gso = false\n";
            std::fs::write(c, text)?;
        }
        // Headers only: the ESP SPI and sequence number are in the first
        // 8 bytes after UDP.
        let pcap = start_capture_headers(lab, &pair.ul, "esp", 96)?;
        start_tunsecd(lab, &pair.h1, 1, &c1)?;
        start_tunsecd(lab, &pair.h2, 2, &c2)?;
        wait_status(lab, "IKE up", |s1, s2| {
            Ok(sa_count(s1, "h2") >= 2 && sa_count(s2, "h1") >= 2)
        })?;
        let t1 = add_tenant(lab, &pair.h1, 1, TAP)?;
        let t2 = add_tenant(lab, &pair.h2, 2, TAP)?;
        ping_ok(&t1, &tenant_addr(2))?;
        phase(lab, "IKE up, two workers each", t0);

        let pid = lab.pid("h1").context("tunsecd h1's pid")?;
        let before = thread_ticks(pid)?;
        lab.spawn(
            "iperf3-server",
            &t2,
            Path::new("iperf3"),
            &["-s", "-1", "-B", &tenant_addr(2)],
        )?;
        std::thread::sleep(Duration::from_millis(500));
        let out = exec_output(
            &t1,
            "iperf3",
            &[
                "-c",
                &tenant_addr(2),
                "-P",
                "16",
                "-t",
                "7",
                "-b",
                "40M",
                "--json",
            ],
        )?;
        ensure!(
            out.status.success(),
            "iperf3 failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let after = thread_ticks(pid)?;
        lab.stop("esp");
        phase(lab, "sixteen TCP streams for 7 s", t0);

        // Both transmit workers worked.
        let busy = |name: &str| {
            let t = |v: &[(String, u64)]| v.iter().find(|(n, _)| n == name).map_or(0, |(_, t)| *t);
            t(&after) - t(&before)
        };
        let (tx0, tx1) = (busy("tunsec-tx0"), busy("tunsec-tx1"));
        eprintln!("  h1's transmit workers: tx0 {tx0} ticks, tx1 {tx1} ticks");
        ensure!(
            tx0 > 0 && tx1 > 0,
            "a transmit worker stayed idle: {after:?}"
        );

        // No sequence number twice under one SPI.
        let EspSequences {
            packets,
            spis,
            out_of_order,
            ..
        } = esp_sequences(&pcap, &[])?;
        eprintln!(
            "  capture: {packets} ESP packets under {spis} SPIs, {out_of_order} out of order"
        );
        ensure!(packets > 100_000 && spis >= 4, "too little ESP captured");

        for (n, peer) in [(1, "h2"), (2, "h1")] {
            let s = status(lab, n)?;
            // `esp` counts every SA's refusals, of SAs gone by now too.
            assert_no_drops(&s, &["no_sa", "unknown_spi", "esp"])?;
            assert_no_sa_drops(&s, peer, &["replay"])?;
        }
        Ok(())
    });
}

/// The ESP headers of a capture.
struct EspSequences {
    /// ESP packets.
    packets: u64,
    /// Distinct SPIs.
    spis: usize,
    /// Packets that came after one with a higher sequence number under
    /// the same SPI.
    out_of_order: u64,
    /// Of the packets watched for, those in the capture.
    watched: u64,
    /// Of those, the ones out of order.
    watched_out_of_order: u64,
}

/// Reads the SPI and sequence number of every ESP packet in `pcap`, and
/// fails if one sequence number appears twice under one SPI (RFC 4303
/// section 3.3.3: it is never reused under one key). `watch` lists
/// (SPI, sequence number) pairs to look for in particular.
fn esp_sequences(pcap: &Path, watch: &[(u32, u32)]) -> anyhow::Result<EspSequences> {
    let text = tshark_fields(pcap, Some("esp"), &["esp.spi", "esp.sequence"])?;
    let watch: std::collections::HashSet<(u32, u32)> = watch.iter().copied().collect();
    let mut seen = std::collections::HashSet::new();
    let mut last: std::collections::HashMap<u32, u32> = Default::default();
    let (mut packets, mut out_of_order) = (0u64, 0u64);
    let (mut watched, mut watched_out_of_order) = (0u64, 0u64);
    for line in text.lines() {
        let Some((spi, seq)) = line.split_once('\t') else {
            continue;
        };
        let spi = spi.trim();
        let spi = match spi.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => spi.parse(),
        }
        .with_context(|| format!("tshark printed SPI {spi:?}"))?;
        let seq: u32 = seq.trim().parse()?;
        packets += 1;
        ensure!(
            seen.insert((spi, seq)),
            "sequence number {seq} sent twice under SPI {spi:#010x}"
        );
        let top = last.entry(spi).or_insert(0);
        let late = seq < *top;
        out_of_order += u64::from(late);
        if watch.contains(&(spi, seq)) {
            watched += 1;
            watched_out_of_order += u64::from(late);
        }
        *top = (*top).max(seq);
    }
    Ok(EspSequences {
        packets,
        spis: last.len(),
        out_of_order,
        watched,
        watched_out_of_order,
    })
}

/// Receives `conns` TCP connections on port 5001 at the given address and
/// prints, once all have closed, the byte count and SHA-256 of each, sorted.
const TCP_MULTI_SERVER: &str = r#"
import hashlib, socket, sys, threading
addr, conns = sys.argv[1], int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, 5001))
s.listen(conns)
results, threads = [], []
def serve(c):
    h, n = hashlib.sha256(), 0
    while True:
        d = c.recv(1 << 16)
        if not d:
            break
        h.update(d)
        n += len(d)
    results.append(f"{n} {h.hexdigest()}")
for _ in range(conns):
    c, _ = s.accept()
    t = threading.Thread(target=serve, args=(c,))
    t.start()
    threads.append(t)
for t in threads:
    t.join()
print("\n".join(sorted(results)), flush=True)
"#;

/// Sends `each` bytes (random, every 64 KiB block numbered) over each of
/// `conns` TCP connections at once and prints what the server prints.
const TCP_MULTI_CLIENT: &str = r#"
import hashlib, os, socket, sys, threading
addr, conns, each = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
results = []
def send():
    block = os.urandom(1 << 16)
    h, n = hashlib.sha256(), 0
    c = socket.create_connection((addr, 5001), timeout=30)
    while n < each:
        data = n.to_bytes(8, "big") + block[8:]
        c.sendall(data)
        h.update(data)
        n += len(data)
    c.close()
    results.append(f"{n} {h.hexdigest()}")
threads = [threading.Thread(target=send) for _ in range(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("\n".join(sorted(results)), flush=True)
"#;

/// Issue 7's reordering test: across two workers per host (both of h1's
/// transmit workers busy) and several Child SAs (3-second lifetimes), a
/// 256 MB TCP transfer (sixteen connections, each checked by its SHA-256
/// at both ends) crosses an underlay that reorders ESP datagrams; no sequence number is sent twice
/// under one SPI, and no legitimate packet is dropped as a replay.
///
/// It is not `tc qdisc netem reorder`: this kernel has no `sch_netem`.
/// Instead a reorderer (`common/reorder.rs`) on each host's OUTPUT chain
/// (an iptables `NFQUEUE` rule, no bypass) holds one ESP datagram in 100
/// until 3 to 20 later ones have gone out (at most 2 ms), as netem's
/// reorder would. The underlay capture shows it: at least 0.5% of the ESP
/// packets on the wire are out of order (the two workers' interleaving
/// adds to that), and nine in ten of the datagrams that the reorderers
/// held back are there, after higher sequence numbers of their SA.
#[test]
fn ike_reordered_transfer() {
    require(
        "reordering test",
        &[
            ("iptables-nft", &["-V"], "iptables"),
            ("python3", &["-V"], "python3"),
        ],
    );
    with_lab("tsreord", |lab| {
        let t0 = Instant::now();
        let pair = two_hosts(lab)?;
        let extra = "child_lifetime = 3\n";
        let c1 = write_config_with(lab, 1, 2, "reordered", extra)?;
        let c2 = write_config_with(lab, 2, 1, "reordered", extra)?;
        for c in [&c1, &c2] {
            // Without UDP GSO every ESP datagram is an skb of its own in
            // OUTPUT, and a packet of its own in the capture.
            let text = std::fs::read_to_string(c)?.replacen("[node]\n", "[node]\nworkers = 2\n", 1)
                + "\n[offload]\nudp_gso = false\n";
            std::fs::write(c, text)?;
        }
        // Headers only: the ESP SPI and sequence number are in the first
        // 8 bytes after UDP.
        let pcap = start_capture_headers(lab, &pair.ul, "esp", 96)?;
        let mut r1 = reorder::Reorderer::start(lab, &pair.h1, &host_addr(2), ESP_PORT)?;
        let mut r2 = reorder::Reorderer::start(lab, &pair.h2, &host_addr(1), ESP_PORT)?;
        start_tunsecd(lab, &pair.h1, 1, &c1)?;
        start_tunsecd(lab, &pair.h2, 2, &c2)?;
        wait_status(lab, "IKE up", |s1, s2| {
            Ok(sa_count(s1, "h2") >= 2 && sa_count(s2, "h1") >= 2)
        })?;
        let t1 = add_tenant(lab, &pair.h1, 1, TAP)?;
        let t2 = add_tenant(lab, &pair.h2, 2, TAP)?;
        ping_ok(&t1, &tenant_addr(2))?;
        let child_before = ike_of(&status(lab, 1)?, "h2")?.child_sas;
        phase(lab, "IKE up through the reorderers", t0);

        let pid = lab.pid("h1").context("tunsecd h1's pid")?;
        let before = thread_ticks(pid)?;
        let (conns, each) = (16, 16 << 20);
        let server = lab.dir.path().join("server.py");
        let client = lab.dir.path().join("client.py");
        std::fs::write(&server, TCP_MULTI_SERVER)?;
        std::fs::write(&client, TCP_MULTI_CLIENT)?;
        let server_log = lab.spawn(
            "server",
            &t2,
            Path::new("python3"),
            &[
                &server.to_string_lossy(),
                &tenant_addr(2),
                &conns.to_string(),
            ],
        )?;
        std::thread::sleep(Duration::from_millis(500));
        let out = exec_output(
            &t1,
            "python3",
            &[
                &client.to_string_lossy(),
                &tenant_addr(2),
                &conns.to_string(),
                &each.to_string(),
            ],
        )?;
        ensure!(
            out.status.success(),
            "client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sent = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        lab.wait_for("the server's digests", Duration::from_secs(30), || {
            std::fs::read_to_string(&server_log).is_ok_and(|s| s.lines().count() >= conns)
        })?;
        let received = std::fs::read_to_string(&server_log)?.trim().to_owned();
        ensure!(
            received == sent,
            "sent (bytes, SHA-256 per connection):\n{sent}\nreceived:\n{received}"
        );
        let after = thread_ticks(pid)?;
        let rekeys = ike_of(&status(lab, 1)?, "h2")?.child_sas - child_before;
        phase(
            lab,
            &format!("{} MB over {conns} connections", (conns * each) >> 20),
            t0,
        );
        stop_capture(lab, "esp");
        let (q1, q2) = (r1.finish()?, r2.finish()?);
        for (host, q) in [("h1", &q1), ("h2", &q2)] {
            eprintln!(
                "  reorderer on {host}: {} ESP datagrams, {} held back, {} others",
                q.esp, q.held, q.other
            );
        }
        // Both transmit workers worked.
        let busy = |name: &str| {
            let t = |v: &[(String, u64)]| v.iter().find(|(n, _)| n == name).map_or(0, |(_, t)| *t);
            t(&after) - t(&before)
        };
        let (tx0, tx1) = (busy("tunsec-tx0"), busy("tunsec-tx1"));
        eprintln!("  h1's transmit workers: tx0 {tx0} ticks, tx1 {tx1} ticks");
        ensure!(
            tx0 > 0 && tx1 > 0,
            "a transmit worker stayed idle: {after:?}"
        );
        eprintln!("  {rekeys} Child SA rekeys during the transfer");

        for (n, peer) in [(1, "h2"), (2, "h1")] {
            let s = status(lab, n)?;
            // `esp` counts every SA's refusals, replays included, of SAs
            // gone by now too.
            assert_no_drops(&s, &["no_sa", "unknown_spi", "esp"])?;
            assert_no_sa_drops(&s, peer, &["replay"])?;
        }

        let held: Vec<(u32, u32)> = q1
            .held_packets
            .iter()
            .chain(&q2.held_packets)
            .copied()
            .collect();
        let EspSequences {
            packets,
            spis,
            out_of_order,
            watched,
            watched_out_of_order,
        } = esp_sequences(&pcap, &held)?;
        eprintln!(
            "  capture: {packets} ESP packets under {spis} SPIs, {out_of_order} out of order; \
             of the {} held back, {watched} captured, {watched_out_of_order} of them out of order",
            held.len()
        );
        ensure!(rekeys >= 2, "only {rekeys} Child SA rekeys in the transfer");
        ensure!(
            packets > 150_000 && spis >= 6,
            "too little ESP captured: {packets} packets under {spis} SPIs"
        );
        for (host, q) in [("h1", &q1), ("h2", &q2)] {
            ensure!(
                q.held >= q.esp / reorder::EVERY && q.held >= 100,
                "the reorderer on {host} held too few: {} of {}",
                q.held,
                q.esp
            );
        }
        ensure!(
            q1.esp + q2.esp >= packets,
            "the capture shows more ESP than went through the reorderers: \
             {packets} > {} + {}",
            q1.esp,
            q2.esp
        );
        // The workers' interleaving reorders too; the datagrams held back
        // show that the reorderer did, on the wire.
        ensure!(
            out_of_order * 200 > packets,
            "too little reordering on the wire: {out_of_order} of {packets} out of order"
        );
        ensure!(
            watched * 10 >= held.len() as u64 * 9 && watched_out_of_order * 10 >= watched * 9,
            "of {} datagrams held back, {watched} captured, only {watched_out_of_order} \
             of them out of order",
            held.len()
        );
        Ok(())
    });
}

// ---------------------------------------------------------------------
// Key export for Wireshark

/// What tshark found in a capture.
#[derive(Debug, PartialEq, Eq)]
struct Decrypted {
    /// IKE_AUTH frames, and the identities decoded in them.
    ike_auth: usize,
    ids: Vec<String>,
    /// ESP frames, those with a good ICV, and those decoded to VXLAN VNI
    /// 100.
    esp: usize,
    icv_good: usize,
    vni_100: usize,
    /// Tenant echo requests and replies, by (inner source, inner
    /// destination).
    echo: Vec<(String, u8, String)>,
}

fn decrypted(rows: &[Dissected]) -> Decrypted {
    let mut d = Decrypted {
        ike_auth: 0,
        ids: Vec::new(),
        esp: 0,
        icv_good: 0,
        vni_100: 0,
        echo: Vec::new(),
    };
    for r in rows {
        if r.has("isakmp.exchangetype", "35") {
            d.ike_auth += 1;
            d.ids.extend(
                r.get("isakmp.id.data.fqdn")
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
        if !r.get("esp.spi").is_empty() {
            d.esp += 1;
            d.icv_good += usize::from(r.has("esp.icv_good", "1") || r.has("esp.icv_good", "True"));
            d.vni_100 += usize::from(r.has("vxlan.vni", "100"));
            // The outer header first, then the tenant's.
            let (src, dst) = (r.get("ip.src"), r.get("ip.dst"));
            if let (Some(src), Some(dst), Ok(t)) = (
                src.split(',').nth(1),
                dst.split(',').nth(1),
                r.get("icmp.type").parse::<u8>(),
            ) {
                d.echo.push((src.to_owned(), t, dst.to_owned()));
            }
        }
    }
    d.ids.sort();
    d.ids.dedup();
    d
}

/// Every run of at least 32 hex digits in `text` (keys; SPIs are
/// shorter, and a "0x" prefix splits off), lowercase.
fn hex_runs(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() >= 32)
        .map(str::to_lowercase)
        .collect()
}

/// `tunsec keys export --wireshark DIR` (issue 15): a capture runs from
/// before the daemons start; the tunnel comes up with FQDN identities,
/// the tenants ping, and both hosts export their keys. tshark, given
/// either host's exported tables as its configuration, decrypts the
/// IKE_AUTH exchange down to both identities and the ESP traffic down to
/// the VXLAN VNI and the tenants' ICMP echoes with good ICVs; without
/// them, the same capture shows none of it. The files are mode 0600, the
/// CLI warns on stderr, each daemon logs a warning naming the export, and
/// no log holds a key.
#[test]
fn ike_keys_export_for_wireshark() {
    with_lab("key1", |lab| {
        let t0 = Instant::now();
        let pair = two_hosts(lab)?;
        let pcap = start_capture(lab, &pair.ul, "capture")?;
        let ids = |me: u8, peer: u8| {
            format!("local_id = \"fqdn:h{me}.keys.test\"\nremote_id = \"fqdn:h{peer}.keys.test\"\n")
        };
        start_pair(
            lab,
            &pair,
            ("wireshark-psk", &ids(1, 2)),
            ("wireshark-psk", &ids(2, 1)),
        )?;
        wait_status(lab, "Child SAs up", |s1, s2| {
            Ok(sa_count(s1, "h2") >= 2 && sa_count(s2, "h1") >= 2)
        })?;
        let t1 = add_tenant(lab, &pair.h1, 1, TAP)?;
        let t2 = add_tenant(lab, &pair.h2, 2, TAP)?;
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&t2, &tenant_addr(1))?;
        phase(lab, "IKE up, pings", t0);

        let mut exported = Vec::new();
        for (n, ns) in [(1u8, &pair.h1), (2, &pair.h2)] {
            let dir = lab.dir.path().join(format!("keys-h{n}"));
            let (dir_s, sock) = (
                dir.to_string_lossy().into_owned(),
                socket_path(lab, n).to_string_lossy().into_owned(),
            );
            let out = exec_output(
                ns,
                env!("CARGO_BIN_EXE_tunsec"),
                &["keys", "export", "--wireshark", &dir_s, "--socket", &sock],
            )?;
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            eprintln!("  h{n}: tunsec keys export:\n{stdout}{stderr}");
            ensure!(out.status.success(), "h{n}: tunsec keys export failed");
            ensure!(
                stderr.contains("WARNING: SECRET KEYS WRITTEN"),
                "h{n}: no warning on stderr: {stderr}"
            );
            // One IKE SA, and the Child SA pair, each direction.
            ensure!(
                stdout.contains("esp_sa (2 SAs)")
                    && stdout.contains("ikev2_decryption_table (1 SAs)"),
                "h{n}: {stdout}"
            );
            for file in [tunsec::keys::ESP_SA_FILE, tunsec::keys::IKEV2_FILE] {
                let mode = std::os::unix::fs::PermissionsExt::mode(
                    &std::fs::metadata(dir.join(file))?.permissions(),
                ) & 0o777;
                ensure!(mode == 0o600, "h{n}: {file} is mode {mode:o}");
            }
            exported.push(dir);
        }
        stop_capture(lab, "capture");
        phase(lab, "keys exported, capture stopped", t0);

        // Without the tables: the exchanges and the ESP are there, and
        // nothing inside them is readable.
        let empty = lab.dir.path().join("no-keys");
        std::fs::create_dir_all(&empty)?;
        let plain = decrypted(&tshark_decrypt(lab, &pcap, &empty)?);
        eprintln!("  without the keys: {plain:?}");
        ensure!(
            plain.ike_auth >= 2 && plain.esp >= 12,
            "the capture lacks IKE_AUTH or ESP: {plain:?}"
        );
        ensure!(
            plain.ids.is_empty()
                && plain.vni_100 == 0
                && plain.echo.is_empty()
                && plain.icv_good == 0,
            "tshark read the traffic without the keys: {plain:?}"
        );

        // With either host's tables: everything.
        let (a, b) = (tenant_addr(1), tenant_addr(2));
        for (n, dir) in exported.iter().enumerate() {
            let d = decrypted(&tshark_decrypt(lab, &pcap, dir)?);
            eprintln!("  with h{}'s keys: {d:?}", n + 1);
            ensure!(
                d.ike_auth == plain.ike_auth && d.esp == plain.esp,
                "h{}: a different dissection: {d:?}",
                n + 1
            );
            ensure!(
                d.ids == ["h1.keys.test", "h2.keys.test"],
                "h{}: the IKE_AUTH identities: {:?}",
                n + 1,
                d.ids
            );
            ensure!(
                d.vni_100 == d.esp && d.icv_good == d.esp,
                "h{}: of {} ESP frames {} decode to VNI 100, {} with a good ICV",
                n + 1,
                d.esp,
                d.vni_100,
                d.icv_good
            );
            for (src, t, dst) in [(&a, 8, &b), (&b, 0, &a), (&b, 8, &a), (&a, 0, &b)] {
                let count = d
                    .echo
                    .iter()
                    .filter(|e| (&e.0, e.1, &e.2) == (src, t, dst))
                    .count();
                ensure!(
                    count >= 3,
                    "h{}: {count} ICMP type {t} from {src} to {dst}: {:?}",
                    n + 1,
                    d.echo
                );
            }
        }

        // The daemons logged the export, and no key.
        for n in [1u8, 2] {
            let log = std::fs::read_to_string(lab.dir.path().join(format!("h{n}.log")))?;
            let warning = log
                .lines()
                .find(|l| l.contains("WARN") && l.contains("KEYS EXPORTED"))
                .with_context(|| format!("h{n}: no warning of the export in the log"))?;
            eprintln!("  h{n}: {}", strip_ansi(warning));
            let log = log.to_lowercase();
            for dir in &exported {
                let mut keys = Vec::new();
                for file in [tunsec::keys::ESP_SA_FILE, tunsec::keys::IKEV2_FILE] {
                    keys.extend(hex_runs(&std::fs::read_to_string(dir.join(file))?));
                }
                ensure!(
                    keys.len() >= 4,
                    "too few keys in {}: {keys:?}",
                    dir.display()
                );
                for key in keys {
                    ensure!(!log.contains(&key), "h{n}: a key is in the log");
                }
            }
        }
        Ok(())
    });
}

/// Host `n`'s config with `peers`, all on network blue with the same PSK.
fn write_config_peers(lab: &Lab, n: u8, peers: &[u8]) -> anyhow::Result<PathBuf> {
    let psk_file = lab.dir.path().join(format!("h{n}.psk"));
    tunsec::config::write_secret(&psk_file, "one secret for all of them\n")?;
    let mut c = format!(
        "[node]\nname = \"h{n}\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n\n\
         [[network]]\nname = \"blue\"\nvni = 100\nencapsulation = \"vxlan\"\n\n",
        host_addr(n),
        socket_path(lab, n).display()
    );
    for p in peers {
        writeln!(
            c,
            "[[peer]]\nname = \"h{p}\"\nunderlay = \"{}\"\nnetworks = [\"blue\"]\npolicy = \"require\"\n\n\
             [peer.ike]\npsk_file = \"h{n}.psk\"\n",
            host_addr(*p)
        )?;
    }
    let path = lab.dir.path().join(format!("h{n}.toml"));
    std::fs::write(&path, c)?;
    Ok(path)
}

fn reload(lab: &Lab, n: u8) -> anyhow::Result<String> {
    match control::call(&socket_path(lab, n), &Request::Reload)? {
        Response::Done { message } => Ok(message),
        other => bail!("h{n}'s reload: {other:?}"),
    }
}

/// Overlay peers that come and go at run time, by `tunsec reload` of a
/// changed file: h1 starts with h2 as its only peer; h3 is added (its IKE
/// SA and Child SA come up, h1's tenant reaches h3's) and removed again
/// (h3 sees the DELETE, h3's tenant is unreachable), while h1's tenant
/// pings h2's through all of it and loses nothing, and the IKE SA with h2
/// stays the same one. A file whose networks changed is refused.
#[test]
fn ike_peers_at_run_time() {
    with_lab("tsike-rt", |lab| {
        let ul = add_underlay(lab)?;
        let hosts: Vec<String> = (1..=3)
            .map(|n| add_host(lab, &ul, &format!("h{n}"), n))
            .collect::<anyhow::Result<_>>()?;
        for (n, peers) in [(1u8, &[2u8][..]), (2, &[1]), (3, &[1])] {
            let config = write_config_peers(lab, n, peers)?;
            start_tunsecd(lab, &hosts[usize::from(n) - 1], n, &config)?;
        }
        let tenants: Vec<String> = (1..=3)
            .map(|n| add_tenant(lab, &hosts[usize::from(n) - 1], n, TAP))
            .collect::<anyhow::Result<_>>()?;
        let up = |n: u8, peer: &str| {
            status(lab, n).is_ok_and(|s| clean_ike_sa(&s, peer).is_ok_and(|sa| sa.is_some()))
        };
        lab.wait_for("h1-h2 up", Duration::from_secs(20), || {
            up(1, "h2") && up(2, "h1")
        })?;
        ping_ok(&tenants[0], &tenant_addr(2))?;
        let h2_sa = clean_ike_sa(&status(lab, 1)?, "h2")?.context("no IKE SA with h2")?;
        let pinger = pings(&tenants[0], &tenant_addr(2), 150)?;
        std::thread::sleep(Duration::from_millis(300));

        // Networks change only with a restart: refused, nothing changed.
        let config = lab.dir.path().join("h1.toml");
        let good = write_config_peers(lab, 1, &[2, 3])?;
        let text = std::fs::read_to_string(&good)?;
        std::fs::write(&config, text.replace("vni = 100", "vni = 101"))?;
        match control::call(&socket_path(lab, 1), &Request::Reload)? {
            Response::Error { message } => ensure!(
                message.contains("network[0]") && message.contains("nothing changed"),
                "{message}"
            ),
            other => bail!("a reload with another VNI was accepted: {other:?}"),
        }
        ensure!(
            status(lab, 1)?.peers.len() == 1,
            "the refused reload added a peer"
        );

        // h3 added.
        write_config_peers(lab, 1, &[2, 3])?;
        let message = reload(lab, 1)?;
        eprintln!("  h1: {message}");
        ensure!(message.contains("added: h3"), "{message}");
        lab.wait_for("h1-h3 up", Duration::from_secs(20), || {
            up(1, "h3") && up(3, "h1")
        })?;
        ping_ok(&tenants[0], &tenant_addr(3))?;

        // h3 removed.
        write_config_peers(lab, 1, &[2])?;
        let message = reload(lab, 1)?;
        eprintln!("  h1: {message}");
        ensure!(message.contains("removed: h3"), "{message}");
        lab.wait_for("h3 to see the DELETE", Duration::from_secs(5), || {
            status(lab, 3).is_ok_and(|s| sa_count(&s, "h1") == 0)
        })?;
        let s1 = status(lab, 1)?;
        ensure!(
            s1.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>() == ["h2"],
            "h1's peers:\n{}",
            s1.render()
        );
        ensure!(
            ping(&tenants[0], &tenant_addr(3), 2)? == 0,
            "h3's tenant still reachable after its removal"
        );

        let received = pings_received(pinger)?;
        eprintln!("  pings to h2 across the add and the removal: {received} of 150");
        ensure!(received == 150, "{} pings to h2 lost", 150 - received);
        ensure!(
            clean_ike_sa(&status(lab, 1)?, "h2")? == Some(h2_sa),
            "the IKE SA with h2 changed"
        );
        Ok(())
    });
}
