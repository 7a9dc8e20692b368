//! End-to-end tests of `tunsecd` with post-quantum key exchange (ML-KEM,
//! FIPS 203; draft-ietf-ipsecme-ikev2-mlkem), tunsec to tunsec, in network
//! namespaces (helpers in `ike/`).
//!
//! - `ike_ml_kem_alone`: both hosts offer only
//!   `aes256gcm16-prfsha384-mlkem768` for IKE and `aes256gcm16-mlkem768`
//!   for ESP. The IKE SA comes up on ML-KEM-768 (status names the suite on
//!   both sides), tenants ping, and a Child SA rekey (ML-KEM for PFS) and
//!   an IKE SA rekey lose no ping. On the underlay, tshark finds
//!   IKE_SA_INIT's KE payloads of method 36 with a 1,184-byte
//!   encapsulation key and a 1,088-byte ciphertext, and nothing but IKE,
//!   ESP in UDP and ARP.
//!
//! - `ike_hybrid_two_additional_key_exchanges`: IKE
//!   `aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke2_mlkem1024` (RFC 9370):
//!   two IKE_INTERMEDIATE exchanges on the wire (tshark), both sides show
//!   the suite; a Child SA rekey with ESP
//!   `aes256gcm16-x25519-ke1_mlkem768-ke2_mlkem1024` runs two
//!   IKE_FOLLOWUP_KE exchanges (tshark) and both sides show its key
//!   exchanges `x25519+mlkem768+mlkem1024`; the IKE SA's rekey runs them
//!   too; neither loses a ping.
//!
//! They need root, iproute2, ping and tshark (dumpcap); they fail, never
//! skip, when something is missing.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use tunsec::control::{self, Request, Response};

mod common;
mod ike;
use ike::*;

/// Both sides' `[peer.ike]` lines: ML-KEM-768 alone, for IKE and for PFS.
const ML_KEM_768: &str = "ike_proposals = [\"aes256gcm16-prfsha384-mlkem768\"]\n\
                          esp_proposals = [\"aes256gcm16-mlkem768\"]\n";

/// Both sides' `[peer.ike]` lines: X25519, then ML-KEM-768 and ML-KEM-1024
/// in IKE_INTERMEDIATE exchanges (RFC 9370).
const HYBRID: &str = "aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke2_mlkem1024";

/// Brings up h1 and h2 with `ike` as both `[peer.ike]` sections, checks
/// that both show the IKE suite `suite`, then a Child SA rekey (after
/// which both show `child_kex` as its key exchanges) and an IKE SA rekey
/// under 40 pings, none lost.
/// Returns the capture of the underlay.
fn up_and_renew(
    lab: &mut tunsec_lab::Lab,
    ike: &str,
    suite: &str,
    child_kex: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let t0 = Instant::now();
    let pair = two_hosts(lab)?;
    let pcap = start_capture(lab, &pair.ul, "capture")?;
    start_pair(lab, &pair, ("pq-secret", ike), ("pq-secret", ike))?;
    wait_status(lab, "the IKE SA", |s1, s2| {
        Ok(clean_ike_sa(s1, "h2")?.is_some() && clean_ike_sa(s2, "h1")?.is_some())
    })?;
    phase(lab, "IKE up", t0);
    for (n, peer) in [(1, "h2"), (2, "h1")] {
        let status = ike_of(&status(lab, n)?, peer)?;
        ensure!(
            status.suite.as_deref() == Some(suite),
            "h{n}: the IKE suite is not {suite}: {status:?}"
        );
    }
    let t1 = add_tenant(lab, &pair.h1, 1, TAP)?;
    let t2 = add_tenant(lab, &pair.h2, 2, TAP)?;
    ping_ok(&t1, &tenant_addr(2))?;
    ping_ok(&t2, &tenant_addr(1))?;

    // A Child SA rekey, then an IKE SA rekey, under pings: 40 at 0.1 s.
    let pinger = pings(&t1, &tenant_addr(2), 40)?;
    std::thread::sleep(Duration::from_millis(500));
    for ike in [false, true] {
        let before = ike_of(&status(lab, 1)?, "h2")?;
        let request = Request::Rekey {
            peer: "h2".to_owned(),
            ike,
            network: None,
        };
        match control::call(&socket_path(lab, 1), &request)? {
            Response::Done { .. } => {}
            other => bail!("rekey: {other:?}"),
        }
        wait_status(lab, "the rekey", |s1, s2| {
            let now = ike_of(s1, "h2")?;
            Ok(if ike {
                now.spi_i != before.spi_i && clean_ike_sa(s2, "h1")?.is_some()
            } else {
                now.child_sas > before.child_sas
            })
        })?;
        if !ike {
            for (n, peer) in [(1, "h2"), (2, "h1")] {
                let children = ike_of(&status(lab, n)?, peer)?.children;
                ensure!(
                    !children.is_empty() && children.iter().all(|c| c.key_exchange == child_kex),
                    "h{n}: the rekeyed Child SA's key exchanges are not {child_kex}: {children:?}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(1000));
    }
    let received = pings_received(pinger)?;
    eprintln!("  pings across the rekeys: {received} of 40");
    ensure!(
        received == 40,
        "{} pings lost across the rekeys",
        40 - received
    );
    let after = ike_of(&status(lab, 1)?, "h2")?;
    ensure!(
        after.suite.as_deref() == Some(suite),
        "the IKE suite after the rekeys: {after:?}"
    );
    phase(lab, "rekeys", t0);
    stop_capture(lab, "capture");
    Ok(pcap)
}

#[test]
fn ike_ml_kem_alone() {
    with_lab("tspq-kem", |lab| {
        let pcap = up_and_renew(
            lab,
            ML_KEM_768,
            "aes256gcm16-prfsha384-mlkem768",
            "mlkem768",
        )?;
        // IKE_SA_INIT's KE payloads (the first two IKE messages), as
        // tshark's ISAKMP dissector reads them.
        let ke = tshark_fields(
            &pcap,
            Some("isakmp.exchangetype == 34"),
            &["isakmp.key_exchange.dh_group", "isakmp.key_exchange.data"],
        )?;
        let lines: Vec<(&str, usize)> = ke
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(group, data)| (group, data.len() / 2))
            .collect();
        eprintln!("  IKE_SA_INIT KE payloads (method, bytes): {lines:?}");
        ensure!(
            lines.contains(&("36", 1184)) && lines.contains(&("36", 1088)),
            "no ML-KEM-768 encapsulation key and ciphertext in IKE_SA_INIT: {lines:?}"
        );
        let frames = frames(&pcap)?;
        let other: Vec<&Frame> = frames
            .iter()
            .filter(|f| !f.is_arp() && !f.is_esp_in_udp() && !f.is_ike())
            .collect();
        ensure!(
            other.is_empty(),
            "{} captured frames are neither IKE, ESP in UDP nor ARP:{}",
            other.len(),
            describe(&other)
        );
        Ok(())
    });
}

/// Hybrid, tunsec to tunsec: X25519 in IKE_SA_INIT, then ML-KEM-768 and
/// ML-KEM-1024 in two IKE_INTERMEDIATE exchanges (message IDs 1 and 2,
/// their key shares in encrypted fragments), IKE_AUTH with ID 3. tshark
/// sees the IKE_INTERMEDIATE exchanges on the wire. The Child SA is
/// rekeyed with the same three key exchanges (ESP
/// `aes256gcm16-x25519-ke1_mlkem768-ke2_mlkem1024`): X25519 in
/// CREATE_CHILD_SA, the ML-KEMs in two IKE_FOLLOWUP_KE exchanges (RFC
/// 9370 section 2.2.2), which tshark sees too; the IKE SA is rekeyed the
/// same way, hybrid again, without a lost ping.
#[test]
fn ike_hybrid_two_additional_key_exchanges() {
    with_lab("tspq-hyb", |lab| {
        let ike = format!(
            "ike_proposals = [\"{HYBRID}\"]\n\
             esp_proposals = [\"aes256gcm16-x25519-ke1_mlkem768-ke2_mlkem1024\"]\n"
        );
        let pcap = up_and_renew(lab, &ike, HYBRID, "x25519+mlkem768+mlkem1024")?;
        let followups = tshark_fields(
            &pcap,
            Some("isakmp.exchangetype == 44"),
            &["isakmp.messageid"],
        )?;
        let mut followups: Vec<&str> = followups.lines().collect();
        followups.sort_unstable();
        followups.dedup();
        eprintln!("  IKE_FOLLOWUP_KE message IDs: {followups:?}");
        ensure!(
            followups.len() >= 2,
            "no two IKE_FOLLOWUP_KE exchanges on the wire: {followups:?}"
        );
        let ids = tshark_fields(
            &pcap,
            Some("isakmp.exchangetype == 43"),
            &["isakmp.messageid"],
        )?;
        let mut ids: Vec<&str> = ids.lines().collect();
        ids.sort_unstable();
        ids.dedup();
        eprintln!("  IKE_INTERMEDIATE message IDs: {ids:?}");
        ensure!(
            ids.contains(&"0x00000001") && ids.contains(&"0x00000002"),
            "no two IKE_INTERMEDIATE exchanges on the wire: {ids:?}"
        );
        Ok(())
    });
}
