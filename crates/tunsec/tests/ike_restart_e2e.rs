//! End-to-end tests of `tunsecd` with IKEv2 (pre-shared keys), in network
//! namespaces: a peer taken down, restarted or stopped. Two hosts on an
//! underlay bridge run the real `tunsecd` with `[peer.ike]` and no manual
//! keys (helpers in `ike/`).
//!
//! - `ike_down_and_up`: `tunsec down h2` on h1 deletes the IKE SA on both
//!   sides, stops the traffic (fail closed) and keeps it down; `tunsec up
//!   h2` brings it back.
//! - `ike_peer_restart`, `ike_peer_clean_stop_and_start`: each host in
//!   turn SIGKILLed (or stopped with SIGTERM) and restarted while tenants
//!   ping: the tunnel is back within 5 s (about 2 s), the survivor holds
//!   only the new IKE SA and one Child SA pair, and the capture, which
//!   runs from before the first start, holds nothing in the clear.
//!
//! They need root, iproute2, ping, tshark (dumpcap) and nftables; they
//! fail, never skip, when something is missing.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tunsec::control::{self, Request, Response};
use tunsec::status::Status;

mod common;
mod ike;
use ike::*;

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
