//! Interoperability with strongSwan 5.9.8 (Debian 12's charon with
//! kernel-libipsec), in network namespaces: IKE fragmentation. The lab
//! (charon in its own mount namespace, tunsecd in tunnel mode with ESP in
//! UDP 4500) is described in `strongswan/mod.rs`, which holds the helpers.
//! The cases (each its own lab, prefix `tsss-`):
//!
//! - `sswan_ike_fragmentation_tunsec_initiates` (tunsecd's
//!   `fragment_size = 576`), `sswan_ike_fragmentation_charon_initiates`
//!   (1280 on both sides): IKE fragmentation (RFC 7383) with `tunsec pki`
//!   RSA 3072 certificates; charon logs "splitting IKE message (N bytes)
//!   into M fragments" and "received fragment #i of n, reassembled
//!   fragmented IKE message"; the capture holds SKF messages (first
//!   payload 53) from both sides, none over its sender's fragment size,
//!   and no IP fragment.
//!
//! TUNSEC_E2E_LOGS=1 prints every log (charon's too) also on success. They
//! need root, iproute2, ping, tshark, iperf3, nftables and strongSwan
//! (strongswan-charon, strongswan-swanctl, libcharon-extra-plugins,
//! libstrongswan-standard-plugins, strongswan-pki: `scripts/deps.sh`
//! installs them); they fail, never skip, when something is missing.

use anyhow::{Context, ensure};
use tunsec_lab::Lab;

mod common;
mod strongswan;
use strongswan::*;

/// IKE fragmentation (RFC 7383) against charon: `tunsec pki` RSA 3072
/// certificates (and 3072-bit signatures) make both IKE_AUTH messages
/// longer than one fragment. charon's `fragment_size` is its default,
/// 1280; tunsecd's is `fragment_size` in `ike_extra` (or its default,
/// 1280). Checks, beyond `cert_case`: charon logs that it split its
/// IKE_AUTH message into fragments and reassembled tunsecd's, tunsecd's
/// status counts fragments sent and received, and the underlay capture holds no IP fragment, IKE datagrams in SKF messages from both
/// sides, none longer than its sender's fragment size.
fn fragmentation_case(lab: &mut Lab, p: Params, tunsec_size: usize) -> anyhow::Result<()> {
    let x = cert_case_with(
        lab,
        p,
        "AES_GCM_16-128/PRF_HMAC_SHA2_256/CURVE_25519",
        "ESP:AES_GCM_16-128",
    )?;
    // tunsecd counted the fragments it sent and took in.
    let ike = ike_of(&x.status(lab)?)?;
    eprintln!(
        "  tunsecd: {} IKE fragments sent, {} received",
        ike.fragments_sent, ike.fragments_received
    );
    ensure!(
        ike.fragments_sent >= 2 && ike.fragments_received >= 2,
        "tunsecd's IKE fragment counters: {ike:?}"
    );
    let log = x.charon.log_text();
    // "splitting IKE message (2206 bytes) into 2 fragments"
    let split = find_line(&log, "charon", "splitting IKE message")?;
    // 5.9.8: "received fragment #4 of 4, reassembled fragmented IKE
    // message (1734 bytes)"
    let joined = find_line(&log, "charon", "reassembled fragmented IKE message")?;
    eprintln!("  charon: {}\n  charon: {}", split.trim(), joined.trim());
    for l in log.lines().filter(|l| l.contains("EF(")).take(8) {
        eprintln!("  charon: {}", l.trim());
    }
    let ip_fragments = tshark_fields(
        &x.pcap,
        Some("ip.flags.mf == 1 || ip.frag_offset > 0"),
        &["frame.number"],
    )?
    .lines()
    .count();
    ensure!(
        ip_fragments == 0,
        "{ip_fragments} IP fragments on the underlay: IKE fragmentation was not used"
    );
    // Every IKE datagram: sender, IP length, the IKE header's first payload.
    let text = tshark_fields(
        &x.pcap,
        Some("isakmp"),
        &["ip.src", "ip.len", "isakmp.nextpayload"],
    )?;
    let (mut skf_t, mut skf_s) = (0, 0);
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        ensure!(f.len() == 3, "tshark printed {line:?}");
        let len: usize = f[1]
            .parse()
            .with_context(|| format!("ip.len in {line:?}"))?;
        let from_tunsec = f[0] == host_addr(p.tunsec);
        let limit = if from_tunsec { tunsec_size } else { 1280 };
        ensure!(
            len <= limit,
            "an IKE datagram of {len} bytes from {} (fragment size {limit}):\n{text}",
            f[0]
        );
        if f[2] == "53" {
            if from_tunsec {
                skf_t += 1;
            } else {
                skf_s += 1;
            }
        }
    }
    eprintln!("  capture: {skf_t} SKF datagrams from tunsecd, {skf_s} from charon");
    ensure!(
        skf_t >= 2 && skf_s >= 2,
        "SKF datagrams: {skf_t} from tunsecd, {skf_s} from charon; 2 or more each expected:\n{text}"
    );
    Ok(())
}

/// IKE fragmentation, tunsecd initiating with `fragment_size = 576`.
#[test]
fn sswan_ike_fragmentation_tunsec_initiates() {
    with_lab("tsss-frag-i", |lab| {
        let mut p = Params::new(1, 2, "aes128gcm16-prfsha256-x25519", "aes128gcm16")
            .with_cert(CertPki::Tunsec(tunsec::pki::KeyAlg::Rsa));
        p.ike_extra = "fragment_size = 576\n";
        fragmentation_case(lab, p, 576)
    });
}

/// IKE fragmentation, charon initiating; tunsecd's default fragment size.
#[test]
fn sswan_ike_fragmentation_charon_initiates() {
    with_lab("tsss-frag-r", |lab| {
        let p = Params::new(2, 1, "aes128gcm16-prfsha256-x25519", "aes128gcm16")
            .with_cert(CertPki::Tunsec(tunsec::pki::KeyAlg::Rsa));
        fragmentation_case(lab, p, 1280)
    });
}
