//! End-to-end tests of `tunsecd` with IKEv2 (pre-shared keys), in network
//! namespaces: traffic selectors narrowed to the tunnel ports. Two hosts on
//! an underlay bridge run the real `tunsecd` with `[peer.ike]` and no
//! manual keys (helpers in `ike/`).
//!
//! - `ike_port_selectors` and `ike_mixed_selectors_narrow_to_ports`:
//!   `selectors = "ports"` narrows the Child SA to the tunnel ports
//!   (VXLAN and Geneve); traffic flows, sent from the tunnel port, and a
//!   `host` side is narrowed by a `ports` side either way round.
//!
//! They need root, iproute2, ping, tshark (dumpcap) and nftables, and
//! python3; they fail, never skip, when something is missing.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use tunsec::control::{self, Request, Response};
use tunsec::status::Status;
use tunsec_lab::Lab;

mod common;
mod ike;
use ike::*;

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
            network: None,
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
