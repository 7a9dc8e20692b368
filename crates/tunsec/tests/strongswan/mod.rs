//! The interop lab shared by the strongSwan tests (`strongswan_*.rs`):
//! strongSwan 5.9.8 (Debian 12's charon with kernel-libipsec) against
//! tunsecd, in network namespaces. The setup of the strongSwan side follows
//! shared/refs/strongswan: charon runs in its own mount namespace with a
//! private /run (its pid file is compiled in), with its own strongswan.conf
//! and swanctl.conf rendered from `tests/strongswan/*.in` into the lab's
//! directory, ESP in user space through the TUN device ipsec0, and the
//! fwmark trick that lets the Child SA's selectors be the IKE peer's own
//! address.
//!
//! ```text
//!  tenant t<n> 198.51.100.<n>          ns s: charon + kernel-libipsec
//!        | br-t + TAP ts-blue          vxlan0 198.51.100.<m> (VNI 100, 4789,
//!  ns t: tunsecd (overlay, VXLAN 100)     MTU 1350) -> route table 220 -> ipsec0
//!  eth0 192.0.2.<n>  ---- br0 (ns ul, captured) ----  eth0 192.0.2.<m>
//! ```
//!
//! libipsec does only tunnel mode and ESP in UDP on port 4500 (charon fakes
//! NAT detection to force it), without ESN; so tunsecd is configured for
//! tunnel mode and its ESP travels in UDP 4500.
//!
//! charon's side lives in `charon.rs`, tunsecd's side and the lab of one
//! case in `tunsecd.rs`, certificates in `pki.rs`; each test crate of the
//! family declares `mod common;` and `mod strongswan;`, and this module
//! re-exports `common`'s lab helpers.

// Each test crate of the family compiles this module; not every crate
// uses every helper.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tunsec::status::{IkeStatus, Status};
use tunsec_lab::Lab;

pub(crate) use crate::common::*;

mod charon;
mod pki;
mod tunsecd;
pub(crate) use charon::*;
pub(crate) use pki::*;
pub(crate) use tunsecd::*;

pub(crate) const CHARON: &str = "/usr/lib/ipsec/charon";
pub(crate) const SWANCTL: &str = "/usr/sbin/swanctl";
/// Where `scripts/deps.sh` builds strongSwan 6.0.6 (from
/// shared/refs/strongswan6): ML-KEM and IKE_INTERMEDIATE.
pub(crate) const STRONGSWAN6: &str = "/opt/strongswan6";

/// Which strongSwan plays charon's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strongswan {
    /// Debian 12's 5.9.8.
    V5,
    /// 6.0.6 in [`STRONGSWAN6`], with its `ml` plugin.
    V6,
}

impl Strongswan {
    /// The charon daemon.
    pub(crate) fn charon(self) -> String {
        match self {
            Self::V5 => CHARON.to_owned(),
            Self::V6 => format!("{STRONGSWAN6}/libexec/ipsec/charon"),
        }
    }

    /// swanctl.
    pub(crate) fn swanctl(self) -> String {
        match self {
            Self::V5 => SWANCTL.to_owned(),
            Self::V6 => format!("{STRONGSWAN6}/sbin/swanctl"),
        }
    }

    /// charon's `load` list in strongswan.conf. In 5.9.8 openssl also
    /// gives X25519 and ChaCha20-Poly1305 (Debian's standard plugins have
    /// no curve25519 or chapoly plugin); 6.0.6 adds `ml` (ML-KEM).
    pub(crate) fn load(self) -> &'static str {
        match self {
            Self::V5 => {
                "random nonce openssl aes sha1 sha2 hmac gcm gmp kdf pem pkcs1 pkcs8 x509 pubkey \
                 constraints revocation vici kernel-libipsec kernel-netlink socket-default updown"
            }
            Self::V6 => {
                "random nonce openssl ml aes sha1 sha2 hmac gcm curve25519 pem pkcs1 pkcs8 x509 \
                 pubkey constraints revocation vici kernel-libipsec kernel-netlink socket-default"
            }
        }
    }

    /// swanctl's `load` list.
    pub(crate) fn swanctl_load(self) -> &'static str {
        "pem pkcs1 pkcs8 x509 revocation constraints pubkey openssl random"
    }

    /// Fails, naming what to run, unless this strongSwan is installed.
    pub(crate) fn check_installed(self) -> anyhow::Result<()> {
        for bin in [self.charon(), self.swanctl()] {
            ensure!(
                Path::new(&bin).exists(),
                "{bin} is missing: scripts/deps.sh installs strongSwan 5.9.8 and builds 6.0.6 \
                 (shared/refs/strongswan6/build.sh)"
            );
        }
        Ok(())
    }
}
pub(crate) const TUNSEC: &str = env!("CARGO_BIN_EXE_tunsec");
pub(crate) const PLUGINS: &str = "/usr/lib/ipsec/plugins";
pub(crate) const STRONGSWAN_CONF: &str = include_str!("strongswan.conf.in");
pub(crate) const SWANCTL_CONF: &str = include_str!("swanctl.conf.in");
pub(crate) const SWANCTL_CERT_CONF: &str = include_str!("swanctl-cert.conf.in");
/// strongSwan's `pki` tool (strongswan-pki).
pub(crate) const PKI: &str = "/usr/bin/pki";
/// The IKE identities in the certificate cases: tunsecd's and charon's
/// (each a dNSName of its certificate).
pub(crate) const TUNSEC_ID: &str = "t.interop.test";
pub(crate) const CHARON_ID: &str = "s.interop.test";
/// The connection and Child SA name in swanctl.conf.
pub(crate) const CONN: &str = "tunsec";
/// tunsecd's name for the strongSwan host.
pub(crate) const PEER: &str = "sswan";
/// The VNI of tunsecd's network `blue` and of charon's host's vxlan0.
pub(crate) const VNI: &str = "100";

/// Fails (never skips) unless the tests can run: root, strongSwan with
/// kernel-libipsec, and every tool.
pub(crate) fn preflight() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let install = "apt-get install strongswan-charon strongswan-swanctl \
                       libcharon-extra-plugins libstrongswan-standard-plugins, \
                       or run scripts/deps.sh";
        assert!(
            Path::new(CHARON).exists(),
            "strongSwan's charon ({CHARON}) is missing: {install}"
        );
        for plugin in [
            "kernel-libipsec",
            "openssl",
            "gcm",
            "vici",
            "socket-default",
        ] {
            let so = format!("{PLUGINS}/libstrongswan-{plugin}.so");
            assert!(
                Path::new(&so).exists(),
                "strongSwan's {plugin} plugin ({so}) is missing: {install}"
            );
        }
        assert!(
            Path::new(SWANCTL).exists(),
            "strongSwan's swanctl ({SWANCTL}) is missing: {install}"
        );
        assert!(
            Path::new(PKI).exists(),
            "strongSwan's pki ({PKI}) is missing: apt-get install strongswan-pki, or run scripts/deps.sh"
        );
        require(
            "strongSwan interop tests",
            &[
                ("ip", &["-V"], "iproute2"),
                ("ping", &["-V"], "iputils-ping"),
                ("dumpcap", &["-v"], "tshark"),
                ("tshark", &["-v"], "tshark"),
                ("unshare", &["--version"], "util-linux"),
                ("nft", &["--version"], "nftables"),
                ("iperf3", &["--version"], "iperf3"),
            ],
        );
    });
}

/// [`common::with_lab`] after this suite's [`preflight`], and every
/// process left in the lab's namespaces (charon's) killed by pid before
/// the lab is torn down.
pub(crate) fn with_lab(prefix: &str, body: impl FnOnce(&mut Lab) -> anyhow::Result<()>) {
    with_lab_teardown(prefix, preflight, |lab| kill_leftovers(&lab.ns("")), body);
}

/// One case's settings.
#[derive(Clone, Copy)]
pub(crate) struct Params {
    /// The host numbers (192.0.2.n) of tunsecd and charon: the lower
    /// address initiates in tunsecd's rule.
    pub(crate) tunsec: u8,
    pub(crate) charon: u8,
    /// IKE and ESP proposal, strongSwan syntax, the same on both sides.
    pub(crate) ike: &'static str,
    pub(crate) esp: &'static str,
    pub(crate) psk_tunsec: &'static str,
    pub(crate) psk_charon: &'static str,
    /// Extra lines in tunsecd's `[peer.ike]`.
    pub(crate) ike_extra: &'static str,
    /// A second network, `green` (VXLAN VNI 200 on port [`GREEN_PORT`]),
    /// on both sides, each network with a Child SA of its own: tunsecd
    /// with `selectors = "ports"`, charon with a second child.
    pub(crate) green: bool,
    /// The stock OVS stack on charon's side: its connections are the ones
    /// ovs-monitor-ipsec writes for a vxlan tunnel (see
    /// [`stock_ipsec_conf`]), tunsecd has `layout = "split"`, and neither
    /// vxlan device pins its source port.
    pub(crate) stock: bool,
    /// Certificates instead of the PSK, made by this tool.
    pub(crate) cert: Option<CertPki>,
    /// What is wrong with the certificates, in the refusal cases.
    pub(crate) cert_fault: CertFault,
    /// Which strongSwan: 5.9.8 unless a case asks for 6.0.6.
    pub(crate) strongswan: Strongswan,
    /// tunsecd's IKE proposals when they differ from charon's (`ike`).
    pub(crate) tunsec_ike: &'static [&'static str],
}

/// The name of the second network and of charon's second child.
pub(crate) const GREEN: &str = "green";
/// Network green's VXLAN port (Linux's legacy VXLAN port).
pub(crate) const GREEN_PORT: u16 = 8472;
/// The VNI of network green.
pub(crate) const GREEN_VNI: &str = "200";
/// The addresses on network green: 203.0.113.<n>.
pub(crate) fn green_addr(n: u8) -> String {
    format!("203.0.113.{n}")
}

pub(crate) const PSK: &str = "interop-with-strongswan-0123456789";

impl Params {
    pub(crate) fn new(tunsec: u8, charon: u8, ike: &'static str, esp: &'static str) -> Self {
        Self {
            tunsec,
            charon,
            ike,
            esp,
            psk_tunsec: PSK,
            psk_charon: PSK,
            ike_extra: "",
            green: false,
            stock: false,
            cert: None,
            cert_fault: CertFault::None,
            strongswan: Strongswan::V5,
            tunsec_ike: &[],
        }
    }

    pub(crate) fn with_cert(mut self, pki: CertPki) -> Self {
        self.cert = Some(pki);
        self
    }
}

pub(crate) fn ike_of(s: &Status) -> anyhow::Result<IkeStatus> {
    s.peers
        .iter()
        .find(|p| p.name == PEER)
        .and_then(|p| p.ike.clone())
        .with_context(|| format!("no IKE status for peer {PEER}:\n{}", s.render()))
}

pub(crate) fn spi_of(s: &Status, direction: &str) -> Vec<u32> {
    s.peers
        .iter()
        .filter(|p| p.name == PEER)
        .flat_map(|p| p.sas.iter())
        .filter(|sa| sa.direction == direction)
        .filter_map(|sa| u32::from_str_radix(sa.spi.trim_start_matches("0x"), 16).ok())
        .collect()
}

/// A Child SA pair both sides agree on: tunsecd's inbound SPI is charon's
/// outbound and the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pair {
    /// The SPI of packets to tunsecd (tunsecd's inbound).
    pub(crate) to_tunsec: u32,
    /// The SPI of packets to charon (charon's inbound).
    pub(crate) to_charon: u32,
}

impl std::fmt::Display for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "to tunsecd {:#010x}, to charon {:#010x}",
            self.to_tunsec, self.to_charon
        )
    }
}

/// The UDP RcvbufErrors counter of namespace `ns` (datagrams the kernel
/// dropped because a socket's receive buffer was full); 0 if unreadable.
pub(crate) fn udp_rcvbuf_errors(ns: &str) -> u64 {
    let Ok(out) = exec_output(ns, "cat", &["/proc/net/snmp"]) else {
        return 0;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// What an iperf3 run moved.
#[derive(Debug)]
pub(crate) struct Iperf {
    /// Bytes the server received (tenant -> charon's host).
    pub(crate) received: u64,
    /// With --bidir, bytes the tenant received.
    pub(crate) received_back: u64,
    /// TCP retransmissions, both ways.
    pub(crate) retransmits: u64,
    pub(crate) mbps: f64,
}

impl Frame {
    pub(crate) fn is_arp(&self) -> bool {
        self.protocols.starts_with("eth:ethertype:arp")
    }

    pub(crate) fn is_esp_in_udp(&self) -> bool {
        self.protocols
            .starts_with("eth:ethertype:ip:udp:udpencap:esp")
            && self.ports(4500)
    }

    /// IKE on UDP 500, behind the non-ESP marker on UDP 4500, or an ICMP
    /// error quoting IKE (a first IKE_SA_INIT may arrive before the peer
    /// listens).
    pub(crate) fn is_ike(&self) -> bool {
        ((self.protocols.starts_with("eth:ethertype:ip:udp:isakmp")
            || self
                .protocols
                .starts_with("eth:ethertype:ip:icmp:ip:udp:isakmp"))
            && self.ports(500))
            || (self
                .protocols
                .starts_with("eth:ethertype:ip:udp:udpencap:isakmp")
                && self.ports(4500))
            // A later IP fragment of a large IKE_AUTH (RSA 3072
            // certificates do not fit in 1500 bytes) if one side turned
            // RFC 7383 IKE fragmentation off: bare IP data, no UDP header
            // (`sswan_ike_fragmentation_*` check that there is none).
            || self.protocols == "eth:ethertype:ip:data"
    }

    pub(crate) fn ports(&self, port: u16) -> bool {
        self.sport == Some(port) && self.dport == Some(port)
    }
}

/// Stops the capture and checks that the underlay carried only IKE, ESP
/// in UDP 4500 and ARP, at least `min_esp` ESP packets, and not one copy
/// of the tenant marker; returns (IKE, ESP) frame counts.
pub(crate) fn check_capture(
    lab: &mut Lab,
    x: &Interop,
    min_esp: usize,
) -> anyhow::Result<(usize, usize)> {
    stop_capture(lab, "capture");
    let raw = std::fs::read(&x.pcap)?;
    let leaked = count_marker(&raw);
    let frames = frames(&x.pcap)?;
    let other: Vec<&Frame> = frames
        .iter()
        .filter(|f| !f.is_arp() && !f.is_esp_in_udp() && !f.is_ike())
        .collect();
    let ike = frames.iter().filter(|f| f.is_ike()).count();
    let esp = frames.iter().filter(|f| f.is_esp_in_udp()).count();
    eprintln!(
        "  [{}] capture: {} frames, {ike} IKE, {esp} ESP in UDP 4500, {} other, marker {leaked} times",
        x.ul,
        frames.len(),
        other.len()
    );
    ensure!(
        other.is_empty(),
        "{} captured frames are neither IKE, ESP in UDP 4500 nor ARP (cleartext VXLAN or ICMP?):{}",
        other.len(),
        describe(&other)
    );
    ensure!(
        ike >= 4,
        "only {ike} IKE frames: IKE_SA_INIT and IKE_AUTH need 4"
    );
    ensure!(esp >= min_esp, "only {esp} ESP frames, {min_esp} expected");
    ensure!(
        leaked == 0,
        "the marker appears {leaked} times in the underlay capture: tenant bytes in the clear"
    );
    Ok((ike, esp))
}

/// The common part of the two establishment cases: SPIs agree, the
/// suites are the ones configured, pings both ways, iperf3, and the
/// capture holds only IKE and ESP in UDP.
pub(crate) fn establishes(
    lab: &mut Lab,
    x: &mut Interop,
    pair: Pair,
    ike_suite: &str,
    esp_suite: &str,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let st = x.status(lab)?;
    let ike = ike_of(&st)?;
    let sas = x.charon.list_sas()?;
    eprintln!(
        "  tunsecd: {ike:?}\n  Child SA: {pair}\n  charon:\n{}",
        sas.text
    );
    let child = sas.installed()[0].clone();
    ensure!(
        child.state.contains("TUNNEL-in-UDP") && child.state.contains(esp_suite),
        "charon's Child SA is not {esp_suite} in TUNNEL-in-UDP: {}",
        child.state
    );
    ensure!(
        sas.text.contains(ike_suite),
        "charon's IKE SA does not use {ike_suite}:\n{}",
        sas.text
    );
    // Both sides agree on the IKE SPIs.
    let spis = [ike.spi_i.clone(), ike.spi_r.clone()];
    for spi in spis.iter().flatten() {
        let bare = spi.trim_start_matches("0x");
        ensure!(
            sas.ike.iter().any(|l| l.contains(bare)),
            "charon does not show tunsecd's IKE SPI {spi}:\n{}",
            sas.text
        );
    }

    x.add_tenant(lab)?;
    x.ping_both_ways(3)?;
    phase(lab, "pings both ways", t0);
    let bytes = x.iperf(lab)?;
    phase(lab, "iperf3", t0);
    let sas = x.charon.list_sas()?;
    let child = sas
        .installed()
        .into_iter()
        .find(|c| c.spi_in == pair.to_charon)
        .context("charon lost the Child SA")?
        .clone();
    let st = x.status(lab)?;
    let tunsec_in: u64 = st
        .peers
        .iter()
        .flat_map(|p| p.sas.iter())
        .filter(|sa| sa.direction == "in")
        .map(|sa| sa.packets)
        .sum();
    eprintln!(
        "  charon: {} packets in, {} out; tunsecd: {tunsec_in} in; iperf3 {bytes} bytes",
        child.packets_in, child.packets_out
    );
    ensure!(
        child.packets_in >= 6 && child.packets_out >= 6 && tunsec_in >= 6,
        "too few packets through the Child SA:\n{}",
        x.describe(lab)
    );
    // Nothing charon sent was dropped: not for its SPI, its inner
    // header, its ICV or sequence numbers.
    let sa_drops: u64 = st
        .peers
        .iter()
        .flat_map(|p| p.sas.iter())
        .flat_map(|sa| sa.drops.values())
        .sum();
    let drops: u64 = st.drops.values().sum();
    eprintln!("  tunsecd drops: {drops}, per SA {sa_drops}");
    ensure!(
        drops == 0 && sa_drops == 0,
        "tunsecd dropped packets:\n{}",
        st.render()
    );
    check_capture(lab, x, 12)?;
    Ok(())
}

/// Starts `count` pings (0.2 s apart) from `ns` to `dst` in the
/// background.
pub(crate) fn ping_in_background(
    ns: &str,
    dst: &str,
    count: u32,
) -> anyhow::Result<std::process::Child> {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", &count.to_string()])
        .args([
            "-i",
            "0.2",
            "-W",
            "2",
            "-s",
            "200",
            "-p",
            &marker_hex(),
            dst,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start ping")
}

pub(crate) fn ping_replies(child: std::process::Child) -> anyhow::Result<u32> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(',')
        .find_map(|part| part.trim().strip_suffix(" received"))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("ping: unexpected output: {text}"))
}

/// Waits until the pair tunsecd sends on differs from `old` (and both
/// sides agree on it).
pub(crate) fn wait_new_pair(
    lab: &Lab,
    x: &Interop,
    old: Pair,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<Pair> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(pair) = x.current_pair(lab)? {
            if pair.to_tunsec != old.to_tunsec && pair.to_charon != old.to_charon {
                return Ok(pair);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: no new Child SA within {} s (old: {old})\n{}",
                timeout.as_secs(),
                x.describe(lab)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// tunsecd's IKE SPIs, once charon shows an established IKE SA with the
/// same SPIs.
pub(crate) fn agreed_ike_spis(lab: &Lab, x: &Interop) -> anyhow::Result<Option<(String, String)>> {
    let ike = ike_of(&x.status(lab)?)?;
    let (Some(i), Some(r)) = (ike.spi_i, ike.spi_r) else {
        return Ok(None);
    };
    if ike.state != "established" {
        return Ok(None);
    }
    let sas = x.charon.list_sas()?;
    let (bi, br) = (i.trim_start_matches("0x"), r.trim_start_matches("0x"));
    let agreed = sas
        .ike
        .iter()
        .any(|l| l.contains("ESTABLISHED") && l.contains(bi) && l.contains(br));
    Ok(agreed.then_some((i, r)))
}

/// Waits until both sides agree on IKE SPIs other than `old`.
pub(crate) fn wait_new_ike(
    lab: &Lab,
    x: &Interop,
    old: &(String, String),
    what: &str,
) -> anyhow::Result<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(spis) = agreed_ike_spis(lab, x)? {
            if spis.0 != old.0 && spis.1 != old.1 {
                return Ok(spis);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: no new IKE SA on both sides within 10 s (old {old:?})\n{}",
                x.describe(lab)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The first line of `log` that contains `what`.
pub(crate) fn find_line(log: &str, who: &str, what: &str) -> anyhow::Result<String> {
    log.lines()
        .find(|l| l.contains(what))
        .map(str::to_owned)
        .with_context(|| format!("{who}'s log has no line with {what:?}:\n{log}"))
}

/// Neither side has an SA.
pub(crate) fn no_sas(lab: &Lab, x: &Interop) -> anyhow::Result<()> {
    let sas = x.charon.list_sas()?;
    ensure!(
        sas.ike.iter().all(|l| !l.contains("ESTABLISHED")) && sas.children.is_empty(),
        "charon has SAs:\n{}",
        sas.text
    );
    let st = x.status(lab)?;
    ensure!(
        st.peers.iter().all(|p| p.sas.is_empty()) && ike_of(&st)?.state != "established",
        "tunsecd has SAs:\n{}",
        st.render()
    );
    Ok(())
}
