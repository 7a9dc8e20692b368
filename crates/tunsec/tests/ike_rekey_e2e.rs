//! End-to-end tests of `tunsecd` with IKEv2 (pre-shared keys), in network
//! namespaces: Child SA lifetimes and rekeys. Two hosts on an underlay
//! bridge run the real `tunsecd` with `[peer.ike]` and no manual keys
//! (helpers in `ike/`).
//!
//! - `ike_child_sa_stops_at_its_hard_lifetime`: with IKE cut after the
//!   first Child SA, the ESP SAs stop at `child_lifetime`: status shows
//!   them expired, pings fail (`sa_expired`), nothing in the clear.
//! - `ike_rekeys_under_traffic` and `ike_tcp_across_rekeys`: Child SA and
//!   IKE SA rekeys (by lifetime and by `tunsec rekey [--ike]`) under pings
//!   and a TCP transfer, without a drop.
//!
//! They need root, iproute2, ping, tshark (dumpcap) and nftables, and
//! python3; they fail, never skip, when something is missing.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure};
use tunsec::control::{self, Request, Response};
use tunsec::status::{IkeStatus, Status};
use tunsec_lab::Lab;

mod common;
mod ike;
use ike::*;

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
            assert_no_sa_drops(s, peer, &["replay", "too_old"])?;
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
                network: None,
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
            assert_no_sa_drops(s, peer, &["replay", "too_old"])?;
        }
        Ok(())
    });
}
