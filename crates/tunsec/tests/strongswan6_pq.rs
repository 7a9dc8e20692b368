//! Interoperability with strongSwan 6.0.6 (built from
//! shared/refs/strongswan6 by `scripts/deps.sh`, with its `ml` plugin and
//! kernel-libipsec) on post-quantum key exchange, in network namespaces.
//! The lab is the one of `strongswan/mod.rs`, with charon 6 in place of
//! 5.9.8. The cases (each its own lab, prefix `tsss6-`):
//!
//! - `sswan6_ml_kem_tunsec_initiates`: tunsecd initiates with IKE
//!   `aes256gcm16-prfsha384-mlkem768`, ML-KEM-768 alone as the key
//!   exchange (draft-ietf-ipsecme-ikev2-mlkem), ESP aes256gcm16.
//! - `sswan6_ml_kem_charon_initiates`: the same, `swanctl --initiate`.
//! - `sswan6_ml_kem_rekeys`: ESP `aes256gcm16-mlkem768` (ML-KEM-768 for
//!   PFS): Child SA rekeys by charon (`swanctl --rekey`) and by tunsecd
//!   (`tunsec rekey`), then IKE SA rekeys by each, under pings; charon
//!   logs the ESP proposal with ML_KEM_768.
//! - `sswan6_two_additional_tunsec_initiates`,
//!   `sswan6_two_additional_charon_initiates`: the same as the two below
//!   with IKE `aes128gcm16-prfsha256-ecp256-ke1_mlkem768-ke2_mlkem1024`
//!   and ESP `aes128gcm16-ecp256-ke1_mlkem768-ke2_mlkem1024`: two
//!   IKE_INTERMEDIATE exchanges, and two IKE_FOLLOWUP_KE in each rekey.
//! - `sswan6_hybrid_tunsec_initiates`, `sswan6_hybrid_charon_initiates`:
//!   IKE `aes256gcm16-prfsha384-x25519-ke1_mlkem768` (RFC 9370: ML-KEM-768
//!   in IKE_INTERMEDIATE, RFC 9242), each side initiating: charon selects
//!   the hybrid proposal and logs IKE_INTERMEDIATE, tunsecd's status shows
//!   the suite; pings, iperf3; then under 100 pings, IKE SA rekeys by
//!   charon and by tunsecd and Child SA rekeys by each side with ESP
//!   `aes256gcm16-x25519-ke1_mlkem768`, each with ML-KEM-768 in
//!   IKE_FOLLOWUP_KE (RFC 9370 section 2.2.2; charon logs it both as
//!   initiator and as responder, and tunsecd's status shows
//!   `x25519+mlkem768` for the IKE SA and each Child SA): no ping lost,
//!   every IKE SA hybrid.
//!
//!   Both: charon's log shows the selected proposal with `ML_KEM_768`,
//!   its `--list-sas` the IKE SA on it, tunsecd's status the suite; pings
//!   both ways, an iperf3 transfer, and the capture holds only IKE and ESP
//!   in UDP 4500.
//!
//! They need root, iproute2, ping, tshark, iperf3, nftables and strongSwan
//! 6.0.6 in /opt/strongswan6; they fail, never skip, when something is
//! missing.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

mod common;
mod strongswan;
use strongswan::*;

/// The IKE proposal: ML-KEM-768 as the only key exchange.
const IKE: &str = "aes256gcm16-prfsha384-mlkem768";
/// How charon 6 names it in `--list-sas`.
const CHARON_IKE: &str = "AES_GCM_16-256/PRF_HMAC_SHA2_384/ML_KEM_768";

fn params(tunsec: u8, charon: u8) -> Params {
    let mut p = Params::new(tunsec, charon, IKE, "aes256gcm16");
    p.strongswan = Strongswan::V6;
    p
}

/// charon's log names the proposal it selected, with ML-KEM-768, and
/// tunsecd's status the suite.
fn ml_kem_agreed(lab: &mut tunsec_lab::Lab, x: &Interop) -> anyhow::Result<()> {
    let log = x.charon.log_text();
    let line = find_line(&log, "charon", "selected proposal: IKE:")?;
    eprintln!("  charon: {line}");
    ensure!(
        line.contains("ML_KEM_768"),
        "charon did not select ML-KEM-768: {line}"
    );
    let ike = ike_of(&x.status(lab)?)?;
    ensure!(
        ike.suite.as_deref() == Some(IKE),
        "tunsecd's IKE suite: {ike:?}"
    );
    Ok(())
}

#[test]
fn sswan6_ml_kem_tunsec_initiates() {
    with_lab("tsss6-init", |lab| {
        let mut x = interop(lab, params(1, 2))?;
        let pair = x.wait_up(lab, "tunsecd initiating", Duration::from_secs(15))?;
        let ike = ike_of(&x.status(lab)?)?;
        ensure!(ike.role == "initiator", "tunsecd's role: {ike:?}");
        ml_kem_agreed(lab, &x)?;
        establishes(lab, &mut x, pair, CHARON_IKE, "ESP:AES_GCM_16-256")
    });
}

#[test]
fn sswan6_ml_kem_charon_initiates() {
    with_lab("tsss6-resp", |lab| {
        let mut x = interop(lab, params(2, 1))?;
        let pair = x.charon_initiates(lab)?;
        ml_kem_agreed(lab, &x)?;
        establishes(lab, &mut x, pair, CHARON_IKE, "ESP:AES_GCM_16-256")
    });
}

/// Rekeys with ML-KEM-768 for PFS, by either side: the Child SA
/// (CREATE_CHILD_SA with a KE payload: tunsecd's encapsulation key or
/// ciphertext), then the IKE SA, under 100 pings at 0.2 s.
#[test]
fn sswan6_ml_kem_rekeys() {
    const PINGS: u32 = 100;
    with_lab("tsss6-rekey", |lab| {
        let mut p = params(1, 2);
        p.esp = "aes256gcm16-mlkem768";
        let mut x = interop(lab, p)?;
        let first = x.wait_up(lab, "first Child SA", Duration::from_secs(15))?;
        let t0 = Instant::now();
        x.add_tenant(lab)?;
        x.ping_both_ways(1)?;
        let pings = ping_in_background(x.tenant(), &tenant_addr(p.charon), PINGS)?;

        let out = x.charon.swanctl(&["--rekey", "--child", CONN])?;
        ensure!(out.contains("rekey completed successfully"), "{out}");
        let second = wait_new_pair(lab, &x, first, "rekey by charon", Duration::from_secs(10))?;
        eprintln!("  Child SA rekeyed by charon: {first} -> {second}");
        let line = find_line(&x.charon.log_text(), "charon", "selected proposal: ESP:")?;
        eprintln!("  charon: {line}");
        std::thread::sleep(Duration::from_secs(1));
        let sock = socket_path(lab, p.tunsec).to_string_lossy().into_owned();
        tunsec_lab::run(TUNSEC, &["--socket", &sock, "rekey", PEER])?;
        let third = wait_new_pair(lab, &x, second, "tunsec rekey", Duration::from_secs(10))?;
        eprintln!("  Child SA rekeyed by tunsecd: {second} -> {third}");
        let log = x.charon.log_text();
        let pfs: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("selected proposal: ESP:") && l.contains("ML_KEM_768"))
            .collect();
        ensure!(
            pfs.len() >= 2,
            "charon selected ML-KEM-768 for PFS in {} rekeys, not 2:\n{log}",
            pfs.len()
        );

        std::thread::sleep(Duration::from_secs(1));
        let ike = agreed_ike_spis(lab, &x)?.context("no agreed IKE SA")?;
        let out = x.charon.swanctl(&["--rekey", "--ike", CONN])?;
        ensure!(out.contains("rekey completed successfully"), "{out}");
        let ike2 = wait_new_ike(lab, &x, &ike, "IKE rekey by charon")?;
        std::thread::sleep(Duration::from_secs(1));
        tunsec_lab::run(TUNSEC, &["--socket", &sock, "rekey", PEER, "--ike"])?;
        let ike3 = wait_new_ike(lab, &x, &ike2, "tunsec rekey --ike")?;
        eprintln!("  IKE SA rekeyed: {ike:?} -> {ike2:?} -> {ike3:?}");
        let status = ike_of(&x.status(lab)?)?;
        ensure!(
            status.suite.as_deref() == Some(IKE),
            "tunsecd's IKE suite after the rekeys: {status:?}"
        );

        let replies = ping_replies(pings)?;
        eprintln!(
            "  {replies}/{PINGS} pings answered across the rekeys ({:.1} s)",
            t0.elapsed().as_secs_f64()
        );
        ensure!(
            replies == PINGS,
            "{} of {PINGS} pings lost across the rekeys",
            PINGS - replies
        );
        Ok(())
    });
}

/// A hybrid case: the proposals and what each side shows of them.
struct Hybrid {
    /// The IKE and ESP proposals, on both sides.
    ike: &'static str,
    esp: &'static str,
    /// What charon's log shows of the selected IKE proposal, its
    /// `--list-sas` of the IKE SA, and of the Child SA.
    charon_selected: &'static str,
    charon_ike: &'static str,
    charon_esp: &'static str,
    /// tunsecd's status: the key exchanges of the IKE SA and of each
    /// Child SA after the rekeys.
    key_exchange: &'static str,
}

/// X25519, then ML-KEM-768.
const ONE_ADDITIONAL: Hybrid = Hybrid {
    ike: "aes256gcm16-prfsha384-x25519-ke1_mlkem768",
    esp: "aes256gcm16-x25519-ke1_mlkem768",
    charon_selected: "CURVE_25519/KE1_ML_KEM_768",
    charon_ike: "AES_GCM_16-256/PRF_HMAC_SHA2_384/CURVE_25519/KE1_ML_KEM_768",
    charon_esp: "ESP:AES_GCM_16-256",
    key_exchange: "x25519+mlkem768",
};

/// ECP-256, then ML-KEM-768 and ML-KEM-1024.
const TWO_ADDITIONAL: Hybrid = Hybrid {
    ike: "aes128gcm16-prfsha256-ecp256-ke1_mlkem768-ke2_mlkem1024",
    esp: "aes128gcm16-ecp256-ke1_mlkem768-ke2_mlkem1024",
    charon_selected: "ECP_256/KE1_ML_KEM_768/KE2_ML_KEM_1024",
    charon_ike: "AES_GCM_16-128/PRF_HMAC_SHA2_256/ECP_256/KE1_ML_KEM_768/KE2_ML_KEM_1024",
    charon_esp: "ESP:AES_GCM_16-128",
    key_exchange: "ecp256+mlkem768+mlkem1024",
};

/// The hybrid IKE proposal `h.ike` with `initiate` by tunsecd
/// (`by_tunsec`) or charon: the first key exchange in IKE_SA_INIT, the
/// ML-KEMs in IKE_INTERMEDIATE (RFC 9370, RFC 9242). charon selects the
/// hybrid proposal; pings, iperf3, only IKE and ESP on the wire.
fn hybrid(lab: &mut tunsec_lab::Lab, h: &Hybrid, by_tunsec: bool) -> anyhow::Result<()> {
    let mut p = if by_tunsec {
        params(1, 2)
    } else {
        params(2, 1)
    };
    p.ike = h.ike;
    p.esp = h.esp;
    let mut x = interop(lab, p)?;
    if !by_tunsec {
        let out = x
            .charon
            .swanctl(&["--initiate", "--child", CONN, "--timeout", "15"]);
        let out = out.with_context(|| x.describe(lab))?;
        ensure!(out.contains("initiate completed successfully"), "{out}");
    }
    let pair = x.wait_up(lab, "the hybrid IKE SA", Duration::from_secs(15))?;
    let log = x.charon.log_text();
    let line = find_line(&log, "charon", "selected proposal: IKE:")?;
    eprintln!("  charon: {line}");
    ensure!(
        line.contains(h.charon_selected),
        "charon did not select the hybrid proposal: {line}"
    );
    find_line(&log, "charon", "IKE_INTERMEDIATE")?;
    let ike = ike_of(&x.status(lab)?)?;
    ensure!(
        ike.suite.as_deref() == Some(h.ike),
        "tunsecd's IKE suite: {ike:?}"
    );
    establishes(lab, &mut x, pair, h.charon_ike, h.charon_esp)?;

    // Rekeys under pings, each running the first key exchange in
    // CREATE_CHILD_SA and the ML-KEMs in IKE_FOLLOWUP_KE (RFC 9370
    // section 2.2.2): of the IKE SA by charon and by tunsecd, then of the
    // Child SA by each side with ESP `h.esp`.
    const PINGS: u32 = 100;
    let pings = ping_in_background(x.tenant(), &tenant_addr(p.charon), PINGS)?;
    let sock = socket_path(lab, p.tunsec).to_string_lossy().into_owned();
    let ike0 = agreed_ike_spis(lab, &x)?.context("no agreed IKE SA")?;
    let out = x.charon.swanctl(&["--rekey", "--ike", CONN])?;
    ensure!(out.contains("rekey completed successfully"), "{out}");
    let ike1 = wait_new_ike(lab, &x, &ike0, "charon's IKE rekey")?;
    std::thread::sleep(Duration::from_secs(2));
    tunsec_lab::run(TUNSEC, &["--socket", &sock, "rekey", PEER, "--ike"])?;
    let ike2 = wait_new_ike(lab, &x, &ike1, "tunsec rekey --ike")?;
    eprintln!("  IKE SA rekeyed: {ike0:?} -> {ike1:?} -> {ike2:?}");
    let rekeys = ike_of(&x.status(lab)?)?.ike_rekeys;
    ensure!(
        rekeys >= 2,
        "tunsecd counts {rekeys} IKE SA rekeys, not 2 (a re-authentication instead?)"
    );
    std::thread::sleep(Duration::from_secs(2));
    let first = x.current_pair(lab)?.context("no Child SA")?;
    let out = x.charon.swanctl(&["--rekey", "--child", CONN])?;
    ensure!(out.contains("rekey completed successfully"), "{out}");
    let second = wait_new_pair(lab, &x, first, "rekey by charon", Duration::from_secs(10))?;
    tunsec_lab::run(TUNSEC, &["--socket", &sock, "rekey", PEER])?;
    wait_new_pair(lab, &x, second, "tunsec rekey", Duration::from_secs(10))?;
    let ike = ike_of(&x.status(lab)?)?;
    ensure!(
        ike.suite.as_deref() == Some(h.ike),
        "tunsecd's IKE suite after the renewals: {ike:?}"
    );
    ensure!(
        ike.key_exchange.as_deref() == Some(h.key_exchange),
        "tunsecd's IKE key exchanges: {ike:?}"
    );
    ensure!(
        !ike.children.is_empty()
            && ike
                .children
                .iter()
                .all(|c| c.key_exchange == h.key_exchange),
        "tunsecd's Child SAs after the hybrid rekeys: {:?}",
        ike.children
    );
    let log = x.charon.log_text();
    for (what, needle) in [
        ("charon's rekeys", "generating IKE_FOLLOWUP_KE request"),
        ("tunsecd's rekeys", "parsed IKE_FOLLOWUP_KE request"),
        ("charon's IKE rekey", "] rekeyed between"),
    ] {
        let line = find_line(&log, "charon", needle).with_context(|| what.to_owned())?;
        eprintln!("  charon ({what}): {line}");
    }
    let hybrid_children = log
        .lines()
        .filter(|l| l.contains("selected proposal: ESP:") && l.contains("KE1_ML_KEM_768"))
        .count();
    ensure!(
        hybrid_children >= 2,
        "charon selected the hybrid ESP proposal {hybrid_children} times, not 2:\n{log}"
    );
    let hybrid_sas = log
        .lines()
        .filter(|l| l.contains("selected proposal: IKE:") && l.contains("KE1_ML_KEM_768"))
        .count();
    ensure!(
        hybrid_sas >= 3,
        "charon selected the hybrid proposal {hybrid_sas} times, not 3:\n{log}"
    );
    let replies = ping_replies(pings)?;
    eprintln!("  {replies}/{PINGS} pings answered across the renewals");
    ensure!(
        replies == PINGS,
        "{} of {PINGS} pings lost across the renewals",
        PINGS - replies
    );
    Ok(())
}

#[test]
fn sswan6_hybrid_tunsec_initiates() {
    with_lab("tsss6-hyi", |lab| hybrid(lab, &ONE_ADDITIONAL, true));
}

#[test]
fn sswan6_hybrid_charon_initiates() {
    with_lab("tsss6-hyr", |lab| hybrid(lab, &ONE_ADDITIONAL, false));
}

#[test]
fn sswan6_two_additional_tunsec_initiates() {
    with_lab("tsss6-h2i", |lab| hybrid(lab, &TWO_ADDITIONAL, true));
}

#[test]
fn sswan6_two_additional_charon_initiates() {
    with_lab("tsss6-h2r", |lab| hybrid(lab, &TWO_ADDITIONAL, false));
}
