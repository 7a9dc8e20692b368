//! Interoperability with strongSwan 5.9.8 (Debian 12's charon with
//! kernel-libipsec), in network namespaces: certificates. The lab (charon
//! in its own mount namespace, tunsecd in tunnel mode with ESP in UDP 4500)
//! is described in `strongswan/mod.rs`, which holds the helpers. The cases
//! (each its own lab, prefix `tsss-`):
//!
//! - `sswan_cert_strongswan_pki_ecdsa`, `sswan_cert_strongswan_pki_rsa`:
//!   certificates (a CA, a node certificate each) made by strongSwan's
//!   `pki`, ECDSA P-256 with tunsecd initiating, RSA 2048 with charon
//!   initiating; `sswan_cert_tunsec_pki_p384` and
//!   `sswan_cert_tunsec_pki_rsa`: made by `tunsec pki` and used by charon
//!   too, ECDSA P-384 with charon initiating, RSA 3072 with tunsecd
//!   initiating; `sswan_cert_tunsec_pki_ed25519`: Ed25519 (RFC 8420),
//!   tunsecd initiating. Identities are FQDNs in the certificates' SANs; charon's
//!   log shows our signature verified (RFC 7427: ECDSA with SHA-256/384,
//!   RSASSA-PSS) and a path to its CA; then the same checks as the two
//!   establishment cases (`strongswan_psk.rs`).
//! - `sswan_cert_reload_and_reauth`: tunsecd gets a new certificate,
//!   `tunsec reload` (no SA change), `tunsec reauth`: a new IKE SA that
//!   charon authenticates, no ping lost, charon left with only the new
//!   IKE and Child SA.
//! - `sswan_cert_refusals`: tunsecd initiating on a certificate from a CA
//!   charon does not trust (charon: "no trusted ECDSA public key",
//!   tunsecd: the peer's AUTHENTICATION_FAILED), and charon initiating on
//!   a certificate that tunsecd's CRL revokes (tunsecd: "certificate
//!   revoked", charon: "received AUTHENTICATION_FAILED"); no SA.
//!
//! TUNSEC_E2E_LOGS=1 prints every log (charon's too) also on success. They
//! need root, iproute2, ping, tshark, iperf3, nftables and strongSwan
//! (strongswan-charon, strongswan-swanctl, libcharon-extra-plugins,
//! libstrongswan-standard-plugins, strongswan-pki: `scripts/deps.sh`
//! installs them); they fail, never skip, when something is missing.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tunsec_lab::Lab;

mod common;
mod strongswan;
use strongswan::*;

/// A certificate case: the first Child SA comes up (whoever initiates),
/// each side logs that it verified the other's signature, and
/// `establishes` checks traffic and the capture.
fn cert_case(lab: &mut Lab, p: Params, ike_suite: &str, esp_suite: &str) -> anyhow::Result<()> {
    cert_case_with(lab, p, ike_suite, esp_suite).map(drop)
}

/// Certificates made by strongSwan's `pki` (ECDSA P-256), used by both;
/// tunsecd initiates.
#[test]
fn sswan_cert_strongswan_pki_ecdsa() {
    with_lab("tsss-cert-se", |lab| {
        let p = Params::new(1, 2, "aes128gcm16-prfsha256-x25519", "aes128gcm16")
            .with_cert(CertPki::Strongswan("ecdsa"));
        cert_case(
            lab,
            p,
            "AES_GCM_16-128/PRF_HMAC_SHA2_256/CURVE_25519",
            "ESP:AES_GCM_16-128",
        )
    });
}

/// Certificates made by strongSwan's `pki` (RSA 2048), used by both;
/// charon initiates.
#[test]
fn sswan_cert_strongswan_pki_rsa() {
    with_lab("tsss-cert-sr", |lab| {
        let p = Params::new(2, 1, "aes256gcm16-prfsha384-ecp384", "aes256gcm16")
            .with_cert(CertPki::Strongswan("rsa"));
        cert_case(
            lab,
            p,
            "AES_GCM_16-256/PRF_HMAC_SHA2_384/ECP_384",
            "ESP:AES_GCM_16-256",
        )
    });
}

/// Certificates made by `tunsec pki` (ECDSA P-384), used by charon too;
/// charon initiates.
#[test]
fn sswan_cert_tunsec_pki_p384() {
    with_lab("tsss-cert-tp", |lab| {
        let p = Params::new(2, 1, "aes128gcm16-prfsha256-x25519", "aes128gcm16")
            .with_cert(CertPki::Tunsec(tunsec::pki::KeyAlg::EcdsaP384));
        cert_case(
            lab,
            p,
            "AES_GCM_16-128/PRF_HMAC_SHA2_256/CURVE_25519",
            "ESP:AES_GCM_16-128",
        )
    });
}

/// Certificates made by `tunsec pki` (RSA 3072), used by charon too;
/// tunsecd initiates.
#[test]
fn sswan_cert_tunsec_pki_rsa() {
    with_lab("tsss-cert-tr", |lab| {
        let p = Params::new(1, 2, "aes128gcm16-prfsha256-x25519", "aes128gcm16")
            .with_cert(CertPki::Tunsec(tunsec::pki::KeyAlg::Rsa));
        cert_case(
            lab,
            p,
            "AES_GCM_16-128/PRF_HMAC_SHA2_256/CURVE_25519",
            "ESP:AES_GCM_16-128",
        )
    });
}

/// Certificate refusals against charon (`tunsec pki` certificates): with
/// tunsecd initiating on a certificate from a CA charon does not trust,
/// charon refuses it and tunsecd logs the peer's AUTHENTICATION_FAILED;
/// with charon initiating on a certificate tunsecd's CRL revokes, tunsecd
/// refuses it (`certificate revoked` in its log and status) and charon
/// logs the AUTHENTICATION_FAILED it received. Neither side keeps an SA.
#[test]
fn sswan_cert_refusals() {
    with_lab("tsss-cert-ca", |lab| {
        let mut p = Params::new(1, 2, "aes128gcm16-prfsha256-x25519", "aes128gcm16")
            .with_cert(CertPki::Tunsec(tunsec::pki::KeyAlg::EcdsaP256));
        p.cert_fault = CertFault::TunsecOtherCa;
        let x = interop(lab, p)?;
        let error = x.first_error(lab)?;
        eprintln!("  tunsecd: {error}");
        ensure!(error.contains("AUTHENTICATION_FAILED"), "tunsecd: {error}");
        let log = x.charon.log_text();
        let line = find_line(&log, "charon", "no trusted")
            .or_else(|_| find_line(&log, "charon", "constraint"))?;
        eprintln!("  charon: {}", line.trim());
        find_line(&log, "charon", "N(AUTH_FAILED)")?;
        no_sas(lab, &x)?;
        Ok(())
    });
    with_lab("tsss-cert-rv", |lab| {
        let mut p = Params::new(2, 1, "aes128gcm16-prfsha256-x25519", "aes128gcm16")
            .with_cert(CertPki::Tunsec(tunsec::pki::KeyAlg::EcdsaP256));
        p.cert_fault = CertFault::CharonRevoked;
        let x = interop(lab, p)?;
        let out = x
            .charon
            .swanctl(&["--initiate", "--child", CONN, "--timeout", "10"]);
        ensure!(
            out.is_err(),
            "charon's initiate with a revoked certificate succeeded: {out:?}"
        );
        let error = ike_of(&x.status(lab)?)?
            .last_error
            .context("tunsecd reports no failure")?;
        eprintln!("  tunsecd: {error}");
        ensure!(error.contains("certificate revoked"), "tunsecd: {error}");
        let tlog = strip_ansi(&std::fs::read_to_string(
            lab.dir.path().join(format!("h{}.log", p.tunsec)),
        )?);
        find_line(&tlog, "tunsecd", "certificate revoked")?;
        let line = find_line(
            &x.charon.log_text(),
            "charon",
            "received AUTHENTICATION_FAILED",
        )?;
        eprintln!("  charon: {}", line.trim());
        no_sas(lab, &x)?;
        Ok(())
    });
}

/// Certificates made by `tunsec pki` with Ed25519 keys (RFC 8420 in
/// IKEv2), used by charon too; tunsecd initiates.
#[test]
fn sswan_cert_tunsec_pki_ed25519() {
    with_lab("tsss-cert-te", |lab| {
        let p = Params::new(1, 2, "aes128gcm16-prfsha256-x25519", "aes128gcm16")
            .with_cert(CertPki::Tunsec(tunsec::pki::KeyAlg::Ed25519));
        cert_case(
            lab,
            p,
            "AES_GCM_16-128/PRF_HMAC_SHA2_256/CURVE_25519",
            "ESP:AES_GCM_16-128",
        )
    });
}

/// Rotation against charon: tunsecd (initiator, `tunsec pki` ECDSA
/// certificates) gets a new certificate and key, `tunsec reload` changes
/// no SA, and `tunsec reauth` brings up a new IKE SA that charon
/// authenticates with the new certificate, make before break (no ping
/// lost); tunsecd deletes the old IKE SA, so charon then holds that one
/// IKE SA and one Child SA, and pings cross.
#[test]
fn sswan_cert_reload_and_reauth() {
    with_lab("tsss-cert-rr", |lab| {
        let p = Params::new(1, 2, "aes128gcm16-prfsha256-x25519", "aes128gcm16")
            .with_cert(CertPki::Tunsec(tunsec::pki::KeyAlg::EcdsaP256));
        let mut x = interop(lab, p)?;
        x.bring_up(lab)?;
        let first = agreed_ike_spis(lab, &x)?.context("no agreed IKE SA")?;
        x.add_tenant(lab)?;
        x.ping_both_ways(1)?;

        let d = lab.dir.path().join("pki");
        let old_fp = tunsec::pki::show(&std::fs::read(d.join("t.pem"))?)?;
        tunsec::pki::issue(
            &d.join("ca"),
            TUNSEC_ID,
            &[host_addr(p.tunsec)],
            tunsec::pki::KeyAlg::EcdsaP256,
            30,
            &d.join("new"),
        )?;
        std::fs::copy(d.join(format!("new/{TUNSEC_ID}.pem")), d.join("t.pem"))?;
        std::fs::copy(d.join(format!("new/{TUNSEC_ID}.key")), d.join("t.key"))?;
        let sock = socket_path(lab, p.tunsec);
        let sock = sock.to_string_lossy();
        let out = tunsec_lab::run(TUNSEC, &["--socket", &sock, "reload"])?;
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("  tunsec reload: {}", said.trim());
        ensure!(said.contains("new credentials for sswan"), "{said}");
        ensure!(
            agreed_ike_spis(lab, &x)? == Some(first.clone()),
            "the reload changed the IKE SA"
        );
        let log_before = x.charon.log_text().len();
        const PINGS: u32 = 20;
        let pings = ping_in_background(x.tenant(), &tenant_addr(p.charon), PINGS)?;
        std::thread::sleep(Duration::from_millis(1000));
        tunsec_lab::run(TUNSEC, &["--socket", &sock, "reauth", PEER])?;
        let second = wait_new_ike(lab, &x, &first, "tunsec reauth")?;
        eprintln!("  re-authenticated: {first:?} -> {second:?}");
        let replies = ping_replies(pings)?;
        eprintln!("  {replies}/{PINGS} pings answered across the re-authentication");
        // On a loss, both sides' SAs and tunsecd's drop counters say
        // where it happened (an `unknown_spi` drop would be charon
        // sending on the new Child SA before tunsecd installed it).
        ensure!(
            replies == PINGS,
            "{replies} of {PINGS} pings answered across the re-authentication\n{}",
            x.describe(lab)
        );
        // charon verified the new certificate's signature.
        let log = x.charon.log_text();
        let fresh = &log[log_before.min(log.len())..];
        find_line(
            fresh,
            "charon",
            &format!("authentication of '{TUNSEC_ID}' with"),
        )?;
        ensure!(old_fp != tunsec::pki::show(&std::fs::read(d.join("t.pem"))?)?);
        // One IKE SA and one Child SA left on charon.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sas = x.charon.list_sas()?;
            if sas.ike.len() == 1 && sas.installed().len() == 1 {
                break;
            }
            if Instant::now() > deadline {
                bail!("charon keeps more than the new SAs:\n{}", sas.text);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        x.ping_both_ways(3)?;
        Ok(())
    });
}
