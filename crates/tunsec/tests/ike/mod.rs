//! Helpers shared by the IKE end-to-end tests (`ike_*_e2e.rs`): their
//! preflight, configs for two hosts with `[peer.ike]` and a PSK, starting a
//! pair, reading IKE status, the TCP transfer scripts, and the frame
//! classes of their captures. Each of those test crates declares `mod
//! common;` and `mod ike;`; this module re-exports `common`'s lab helpers.

// Each test crate of the family compiles this module; not every crate
// uses every helper.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tunsec::status::{IkeStatus, Status};
use tunsec_lab::Lab;

use crate::common;
pub(crate) use crate::common::*;

pub(crate) const ESP_PORT: u16 = 4500;
pub(crate) const IKE_PORT: u16 = 500;

/// Fails (never skips) unless the tests can run: root, and every tool.
pub(crate) fn preflight() {
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
pub(crate) fn with_lab(prefix: &str, body: impl FnOnce(&mut Lab) -> anyhow::Result<()>) {
    common::with_lab(prefix, preflight, body);
}

impl Frame {
    pub(crate) fn is_arp(&self) -> bool {
        self.protocols.starts_with("eth:ethertype:arp")
    }

    pub(crate) fn is_esp_in_udp(&self) -> bool {
        self.protocols
            .starts_with("eth:ethertype:ip:udp:udpencap:esp")
            && self.sport == Some(ESP_PORT)
            && self.dport == Some(ESP_PORT)
    }

    /// IKE on UDP 500, or an ICMP error quoting it (the first
    /// IKE_SA_INIT can reach the peer before its daemon listens), or IKE
    /// on the ESP-in-UDP port behind the non-ESP marker, where it moves
    /// after IKE_SA_INIT (RFC 7296 section 2.23).
    pub(crate) fn is_ike(&self) -> bool {
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

/// Writes the config of host `h<n>`: network `blue` (VXLAN 100) and one
/// peer `h<peer>` under `require`, keyed by IKE with the PSK in `psk`.
pub(crate) fn write_config(lab: &Lab, n: u8, peer: u8, psk: &str) -> anyhow::Result<PathBuf> {
    write_config_with(lab, n, peer, psk, "")
}

/// As [`write_config`], with extra lines in `[peer.ike]`.
pub(crate) fn write_config_with(
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

pub(crate) struct Pair {
    pub(crate) ul: String,
    pub(crate) h1: String,
    pub(crate) h2: String,
}

/// The underlay and hosts h1 and h2 on it.
pub(crate) fn two_hosts(lab: &mut Lab) -> anyhow::Result<Pair> {
    let ul = add_underlay(lab)?;
    let h1 = add_host(lab, &ul, "h1", 1)?;
    let h2 = add_host(lab, &ul, "h2", 2)?;
    Ok(Pair { ul, h1, h2 })
}

/// Writes both hosts' configs, each with its PSK and extra `[peer.ike]`
/// lines, and starts both daemons.
pub(crate) fn start_pair(
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
pub(crate) fn ike_pair(lab: &mut Lab, psk1: &str, psk2: &str) -> anyhow::Result<(Pair, PathBuf)> {
    let pair = two_hosts(lab)?;
    let pcap = start_capture(lab, &pair.ul, "capture")?;
    start_pair(lab, &pair, (psk1, ""), (psk2, ""))?;
    Ok((pair, pcap))
}

pub(crate) fn ike_of(s: &Status, peer: &str) -> anyhow::Result<IkeStatus> {
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

/// Waits until `check` holds on both hosts' status, or fails after 10 s.
pub(crate) fn wait_status(
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

pub(crate) fn sa_count(s: &Status, peer: &str) -> usize {
    s.peers
        .iter()
        .find(|p| p.name == peer)
        .map_or(0, |p| p.sas.len())
}

/// The IKE SPIs a host shows for its peer, once its IKE SA is established
/// with exactly one Child SA pair installed (no stale SAs beside it).
pub(crate) fn clean_ike_sa(s: &Status, peer: &str) -> anyhow::Result<Option<(String, String)>> {
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

/// The SPIs of a host's SAs with `peer`.
pub(crate) fn spis(s: &Status, peer: &str) -> Vec<String> {
    s.peers
        .iter()
        .filter(|p| p.name == peer)
        .flat_map(|p| p.sas.iter().map(|sa| sa.spi.clone()))
        .collect()
}
