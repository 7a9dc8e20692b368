//! Post-quantum policy against strongSwan 5.9.8, which has no ML-KEM and
//! no RFC 9370, in network namespaces (the lab of `strongswan/mod.rs`).
//! The cases (each its own lab, prefix `tsssd-`):
//!
//! - `sswan_pq_required_is_refused`: tunsecd offers only the hybrid
//!   `aes256gcm16-prfsha384-x25519-ke1_mlkem768` and initiates: charon
//!   answers NO_PROPOSAL_CHOSEN, tunsecd says so in its status and log,
//!   with what to change to let such a peer fall back, and no SA comes up.
//! - `sswan_pq_offered_falls_back`: tunsecd offers the hybrid proposal
//!   first and the classical one after it: with charon 5.9.8 they agree on
//!   X25519 alone, and status shows the suite agreed.
//!
//! They need what the other strongSwan tests need; they fail, never skip.

use std::time::Duration;

use anyhow::ensure;

mod common;
mod strongswan;
use strongswan::*;

const CLASSICAL: &str = "aes256gcm16-prfsha384-x25519";
const HYBRID: &str = "aes256gcm16-prfsha384-x25519-ke1_mlkem768";

#[test]
fn sswan_pq_required_is_refused() {
    with_lab("tsssd-req", |lab| {
        let mut p = Params::new(1, 2, CLASSICAL, "aes256gcm16");
        p.tunsec_ike = &[HYBRID];
        let x = interop(lab, p)?;
        let error = x.first_error(lab)?;
        eprintln!("  tunsecd: {error}");
        ensure!(
            error.contains("NoProposalChosen") && error.contains("classical proposal"),
            "tunsecd does not say that no proposal was chosen, and how to fall back: {error}"
        );
        let log = x.charon.log_text();
        let line = find_line(&log, "charon", "received proposals unacceptable")?;
        eprintln!("  charon: {line}");
        find_line(&log, "charon", "N(NO_PROP)")?;
        let tunsec_log = strip_ansi(&std::fs::read_to_string(
            lab.dir.path().join(format!("h{}.log", p.tunsec)),
        )?);
        find_line(&tunsec_log, "tunsecd", "names an additional key exchange")?;
        no_sas(lab, &x)?;
        Ok(())
    });
}

#[test]
fn sswan_pq_offered_falls_back() {
    with_lab("tsssd-off", |lab| {
        let mut p = Params::new(1, 2, CLASSICAL, "aes256gcm16");
        p.tunsec_ike = &[HYBRID, CLASSICAL];
        let mut x = interop(lab, p)?;
        let pair = x.wait_up(lab, "tunsecd initiating", Duration::from_secs(15))?;
        let ike = ike_of(&x.status(lab)?)?;
        ensure!(
            ike.suite.as_deref() == Some(CLASSICAL),
            "tunsecd's IKE suite with charon 5.9.8: {ike:?}"
        );
        establishes(
            lab,
            &mut x,
            pair,
            "AES_GCM_16-256/PRF_HMAC_SHA2_384/CURVE_25519",
            "ESP:AES_GCM_16-256",
        )
    });
}
