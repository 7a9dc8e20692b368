//! IKE under a spoofed flood (issue 20), in network namespaces.
//!
//! `ike_spoofed_flood_from_the_peer_address`: a third host floods h2 with
//! valid IKE_SA_INIT requests (each its own SPI, nonce and key share,
//! made by tunsec-ike) whose source is h1's address, as fast as Scapy
//! sends them, while h1 starts and connects. With one half-open IKE SA
//! per source address at most before cookies (RFC 7296 section 2.6),
//! every later spoofed request is answered with a cookie request, which
//! the spoofer never sees: h1 returns its cookie and is up within 5 s,
//! the IKE SA stays the same one for 3 s more of flood, h2 sent cookies,
//! and h2 computed a Diffie-Hellman for at most three requests (the first
//! spoofed one, h1's, and one spoofed after h1's became established and
//! no longer half open: it waits among h1's half-open IKE SAs, and
//! replaces nothing, as it never authenticates): `responders` in its
//! status. Before h1 starts, h2's status shows the spoofed handshake for
//! what it is: state `connecting` with a half-open IKE SA of h1's
//! address, not a dead peer.
//!
//! `ike_flood_from_ten_thousand_sources`: a flood from 10,000 spoofed
//! addresses: memory bounded, an established tunnel loses no ping, and a
//! new peer still connects within 5 s.
//!
//! It needs root, iproute2 and Debian's python3-scapy; it fails, never
//! skips, when something is missing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tunsec_lab::Lab;

mod common;
use common::flood::*;
use common::*;

/// Spoofed requests sent.
const FLOOD: usize = 2000;

fn preflight() {
    require(
        "IKE flood tests",
        &[
            ("ip", &["-V"], "iproute2"),
            (PYTHON, &["-c", "import scapy.all"], "python3-scapy"),
        ],
    );
}

/// Host `n`'s config: overlay mode, network blue, `peer` with a PSK.
fn write_config(lab: &Lab, n: u8, peer: u8) -> anyhow::Result<PathBuf> {
    write_config_peers(lab, n, &[peer])
}

/// Host `n`'s config with `peers`.
fn write_config_peers(lab: &Lab, n: u8, peers: &[u8]) -> anyhow::Result<PathBuf> {
    let psk = lab.dir.path().join(format!("h{n}.psk"));
    tunsec::config::write_secret(&psk, "a flood test key, long enough\n")?;
    let mut c = String::new();
    writeln!(
        c,
        "[node]\nname = \"h{n}\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n\n\
         [[network]]\nname = \"blue\"\nvni = 100\nencapsulation = \"vxlan\"\n",
        host_addr(n),
        socket_path(lab, n).display(),
    )?;
    for peer in peers {
        writeln!(
            c,
            "[[peer]]\nname = \"h{peer}\"\nunderlay = \"{}\"\nnetworks = [\"blue\"]\n\n\
             [peer.ike]\npsk_file = \"{}\"\n",
            host_addr(*peer),
            psk.display()
        )?;
    }
    let path = lab.dir.path().join(format!("h{n}.toml"));
    std::fs::write(&path, c)?;
    Ok(path)
}

#[test]
fn ike_spoofed_flood_from_the_peer_address() {
    with_lab("ikeflood", preflight, |lab| {
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        let h3 = add_host(lab, &ul, "h3", 3)?;
        let script = flood_from(lab, FLOOD, &host_addr(1), &host_addr(2))?;
        let c2 = write_config(lab, 2, 1)?;
        start_tunsecd(lab, &h2, 2, &c2)?;
        start_flood(lab, &h3, &script)?;
        // Let the flood get going before the real peer starts.
        lab.wait_for("the flood to reach h2", Duration::from_secs(20), || {
            status(lab, 2)
                .ok()
                .and_then(|s| s.ike_endpoint)
                .is_some_and(|e| e.cookies_sent > 10)
        })?;
        let before = status(lab, 2)?;
        let ike = before.peers[0]
            .ike
            .clone()
            .context("no IKE status for h1")?;
        eprintln!("  h2 before h1 starts: {ike:?}");
        ensure!(
            ike.state == "connecting" && ike.half_open == 1,
            "h2 shows the spoofed handshake as {:?} with {} half-open IKE SAs",
            ike.state,
            ike.half_open
        );
        let c1 = write_config(lab, 1, 2)?;
        let started = Instant::now();
        start_tunsecd(lab, &h1, 1, &c1)?;
        lab.wait_for(
            "h1 and h2 up under the flood",
            Duration::from_secs(5),
            || {
                [(1u8, "h2"), (2, "h1")].iter().all(|&(n, peer)| {
                    status(lab, n).is_ok_and(|s| {
                        s.peers.iter().any(|p| {
                            p.name == peer
                                && p.ike.as_ref().is_some_and(|i| i.state == "established")
                                && p.sas.len() == 2
                        })
                    })
                })
            },
        )?;
        let took = started.elapsed();
        let sa = |n: u8| -> anyhow::Result<Option<(String, String)>> {
            let s = status(lab, n)?;
            Ok(s.peers
                .first()
                .and_then(|p| p.ike.as_ref())
                .and_then(|i| i.spi_i.clone().zip(i.spi_r.clone())))
        };
        let up = sa(1)?;
        let cookies = |lab: &Lab| -> anyhow::Result<u64> {
            let e = status(lab, 2)?
                .ike_endpoint
                .context("no IKE endpoint status")?;
            Ok(e.cookies_sent)
        };
        let cookies_at_up = cookies(lab)?;
        // The tunnel stays the same one while the flood goes on.
        std::thread::sleep(Duration::from_secs(3));
        ensure!(
            sa(1)? == up && sa(2)? == up,
            "the IKE SA changed under the flood"
        );
        let e = status(lab, 2)?
            .ike_endpoint
            .context("no IKE endpoint status")?;
        ensure!(
            e.cookies_sent > cookies_at_up,
            "the flood ended before the end of the test ({} cookies sent)",
            e.cookies_sent
        );
        lab.stop("flood");
        eprintln!(
            "  up {:.2} s after h1 started, under the flood; h2 after 3 s more: {e:?}",
            took.as_secs_f64()
        );
        ensure!(e.cookies_sent > 10, "h2 sent {} cookies", e.cookies_sent);
        ensure!(
            e.responders <= 3,
            "h2 computed a Diffie-Hellman for {} requests, {} of them spoofed",
            e.responders,
            e.responders.saturating_sub(1)
        );
        Ok(())
    });
}

/// Resident memory of tunsecd `h<n>`, in KiB.
fn rss_kib(lab: &Lab, n: u8) -> anyhow::Result<u64> {
    let pid = lab.pid(&format!("h{n}")).context("no such tunsecd")?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// A flood of IKE_SA_INIT requests from spoofed addresses drawn at
/// random from the 16,384 of 100.64.0.0/18 (which exists nowhere) at h2, which has an established
/// tunnel with h1 and a configured peer h4 that has not started: h2's
/// memory grows by less than 16 MiB, the tenants behind h1 and h2 ping
/// each other throughout with no ping lost, and h4, started during the
/// flood, is up within 5 s. A request from an address that is no peer's
/// is refused before any state (`refused`), so the flood costs no
/// Diffie-Hellman (`responders` stays at h1's and h4's).
#[test]
fn ike_flood_from_ten_thousand_sources() {
    with_lab("ikeflood2", preflight, |lab| {
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        let h3 = add_host(lab, &ul, "h3", 3)?;
        let h4 = add_host(lab, &ul, "h4", 4)?;
        let c1 = write_config(lab, 1, 2)?;
        let c2 = write_config_peers(lab, 2, &[1, 4])?;
        start_tunsecd(lab, &h1, 1, &c1)?;
        start_tunsecd(lab, &h2, 2, &c2)?;
        let t1 = add_tenant(lab, &h1, 1, TAP)?;
        add_tenant(lab, &h2, 2, TAP)?;
        lab.wait_for("h1-h2 up", Duration::from_secs(20), || {
            status(lab, 1).is_ok_and(|s| s.peers[0].sas.len() == 2)
        })?;
        ping_ok(&t1, &tenant_addr(2))?;
        let rss_before = rss_kib(lab, 2)?;

        // One request per source, 10,000 sources, each a valid
        // IKE_SA_INIT (Scapy rewrites the source address).
        let requests = lab.dir.path().join("requests.hex");
        std::fs::write(
            &requests,
            spoofed_requests(500, &host_addr(3), &host_addr(2))?,
        )?;
        let script = lab.dir.path().join("flood.py");
        std::fs::write(
            &script,
            format!(
                "from scapy.all import IP, UDP, Raw, RandIP, send, conf\n\
                 conf.verb = 0\n\
                 reqs = [bytes.fromhex(l) for l in open('{file}').read().split()]\n\
                 p = IP(src=RandIP('100.64.0.0/18'), dst='{h2}')/UDP(sport=500, dport=500)\n\
                 while True:\n\
                 \x20   for r in reqs:\n\
                 \x20       send(p/Raw(r), count=20, inter=0)\n",
                h2 = host_addr(2),
                file = requests.display()
            ),
        )?;
        let script_s = script.to_string_lossy().into_owned();
        let pinger = pings(&t1, &tenant_addr(2), 100)?;
        lab.spawn("flood", &h3, Path::new(PYTHON), &[&script_s])?;
        let reached = lab.wait_for("the flood to reach h2", Duration::from_secs(30), || {
            status(lab, 2)
                .ok()
                .and_then(|s| s.ike_endpoint)
                .is_some_and(|e| e.refused > 1000)
        });
        if reached.is_err() {
            eprintln!("  h2: {:?}", status(lab, 2)?.ike_endpoint);
        }
        reached?;
        let c4 = write_config(lab, 4, 2)?;
        let started = Instant::now();
        start_tunsecd(lab, &h4, 4, &c4)?;
        lab.wait_for("h4 up under the flood", Duration::from_secs(5), || {
            status(lab, 4).is_ok_and(|s| {
                s.peers[0]
                    .ike
                    .as_ref()
                    .is_some_and(|i| i.state == "established")
                    && s.peers[0].sas.len() == 2
            })
        })?;
        let took = started.elapsed();
        let received = pings_received(pinger)?;
        let e = status(lab, 2)?
            .ike_endpoint
            .context("no IKE endpoint status")?;
        let rss_after = rss_kib(lab, 2)?;
        lab.stop("flood");
        eprintln!(
            "  h4 up {:.2} s after it started; pings {received} of 100; h2 RSS {rss_before} -> {rss_after} KiB; {e:?}",
            took.as_secs_f64()
        );
        ensure!(
            received == 100,
            "{} pings lost under the flood",
            100 - received
        );
        ensure!(
            rss_after < rss_before + 16 * 1024,
            "h2 grew from {rss_before} to {rss_after} KiB"
        );
        // Requests from addresses that are no peer are refused before
        // any state or Diffie-Hellman: h2 kept a responder for h1 and for
        // h4 only.
        ensure!(e.refused > 1000, "{e:?}");
        ensure!(
            e.responders <= 2,
            "h2 computed a Diffie-Hellman for a spoofed request: {e:?}"
        );
        Ok(())
    });
}
