//! Interoperability with strongSwan 5.9.8 (Debian 12's charon with
//! kernel-libipsec), in network namespaces: pre-shared keys, each side
//! initiating. The lab (charon in its own mount namespace, tunsecd in
//! tunnel mode with ESP in UDP 4500) is described in `strongswan/mod.rs`,
//! which holds the helpers. The cases (each its own lab, prefix `tsss-`):
//!
//! - `sswan_tunsec_initiates`: tunsecd has the lower address and
//!   initiates; IKE aes128gcm16-prfsha256-x25519, ESP aes128gcm16.
//! - `sswan_charon_initiates`: `swanctl --initiate`, tunsecd responds; IKE
//!   aes256gcm16-sha256-modp2048, ESP aes256-sha256.
//!
//!   Both: the SPIs agree, charon shows TUNNEL-in-UDP, pings both ways
//!   between the tenant and vxlan0, an iperf3 transfer, no tunsecd drops,
//!   and the capture holds only IKE (500, then 4500) and ESP in UDP 4500,
//!   without one copy of the tenant marker.
//! - `sswan_wrong_psk`: different PSKs, each side initiating once: both
//!   logs name the failure, neither side has an SA.
//! - `sswan_child_sa_per_network`: two VXLAN networks (4789 and 8472),
//!   one Child SA each (the second by CREATE_CHILD_SA), each side
//!   initiating once; pings on both networks both ways. Then again with
//!   tunsecd set for keys per network, which charon does not know: the
//!   same two shared Child SAs, and status says so.
//!
//! TUNSEC_E2E_LOGS=1 prints every log (charon's too) also on success. They
//! need root, iproute2, ping, tshark, iperf3, nftables and strongSwan
//! (strongswan-charon, strongswan-swanctl, libcharon-extra-plugins,
//! libstrongswan-standard-plugins, strongswan-pki: `scripts/deps.sh`
//! installs them); they fail, never skip, when something is missing.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

mod common;
mod strongswan;
use strongswan::*;

/// tunsecd (192.0.2.1, the lower address) initiates; IKE
/// aes128gcm16-prfsha256-x25519, ESP aes128gcm16.
#[test]
fn sswan_tunsec_initiates() {
    with_lab("tsss-init", |lab| {
        let p = Params::new(1, 2, "aes128gcm16-prfsha256-x25519", "aes128gcm16");
        let mut x = interop(lab, p)?;
        let pair = x.wait_up(lab, "tunsecd initiating", Duration::from_secs(15))?;
        let ike = ike_of(&x.status(lab)?)?;
        ensure!(ike.role == "initiator", "tunsecd's role: {ike:?}");
        establishes(
            lab,
            &mut x,
            pair,
            "AES_GCM_16-128/PRF_HMAC_SHA2_256/CURVE_25519",
            "ESP:AES_GCM_16-128",
        )
    });
}

/// charon (192.0.2.1) initiates with `swanctl --initiate`, tunsecd
/// responds; IKE aes256gcm16-sha256-modp2048, ESP aes256-sha256.
#[test]
fn sswan_charon_initiates() {
    with_lab("tsss-resp", |lab| {
        let p = Params::new(2, 1, "aes256gcm16-sha256-modp2048", "aes256-sha256");
        let mut x = interop(lab, p)?;
        let pair = x.charon_initiates(lab)?;
        establishes(
            lab,
            &mut x,
            pair,
            "AES_GCM_16-256/PRF_HMAC_SHA2_256/MODP_2048",
            "ESP:AES_CBC-256/HMAC_SHA2_256_128",
        )
    });
}

/// Different PSKs: tunsecd initiates, charon refuses its AUTH; then charon
/// initiates and tunsecd refuses. Both sides say why each time, and
/// neither has an SA.
#[test]
fn sswan_wrong_psk() {
    with_lab("tsss-psk", |lab| {
        let mut p = Params::new(1, 2, "aes128gcm16-prfsha256-x25519", "aes128gcm16");
        p.psk_charon = "not-the-same-secret-at-all";
        let x = interop(lab, p)?;
        let error = x.first_error(lab)?;
        eprintln!("  tunsecd: {error}");
        ensure!(
            error.contains("AUTHENTICATION_FAILED")
                || error.to_lowercase().contains("authentication failed"),
            "tunsecd does not name the authentication failure: {error}"
        );
        // charon, the responder, found the AUTH wrong and answered so.
        let log = x.charon.log_text();
        let line = find_line(&log, "charon", "MAC mismatched")?;
        eprintln!("  charon: {line}");
        find_line(&log, "charon", "N(AUTH_FAILED)")?;
        let tunsec_log = || -> anyhow::Result<String> {
            Ok(strip_ansi(&std::fs::read_to_string(
                lab.dir.path().join(format!("h{}.log", p.tunsec)),
            )?))
        };
        let tline = find_line(&tunsec_log()?, "tunsecd", "AUTHENTICATION_FAILED")?;
        eprintln!("  tunsecd: {tline}");
        no_sas(lab, &x)?;

        // The other way round: charon initiates, tunsecd refuses its AUTH.
        let out = x
            .charon
            .swanctl(&["--initiate", "--child", CONN, "--timeout", "10"]);
        ensure!(
            out.is_err(),
            "charon's initiate with the wrong PSK succeeded: {out:?}"
        );
        let log = x.charon.log_text();
        let line = find_line(&log, "charon", "received AUTHENTICATION_FAILED")?;
        eprintln!("  charon as initiator: {line}");
        let tlog = tunsec_log()?;
        let tline = tlog
            .lines()
            .filter(|l| l.contains("authentication failed"))
            .find(|l| !l.contains("the peer answered"))
            .with_context(|| {
                format!("tunsecd's log names no failed authentication of charon:\n{tlog}")
            })?;
        eprintln!("  tunsecd as responder: {tline}");
        no_sas(lab, &x)?;
        Ok(())
    });
}

/// One Child SA per network (RFC 7296 section 1.3.1), each side
/// initiating once: two VXLAN networks (blue on 4789, green on
/// [`GREEN_PORT`]), tunsecd with `selectors = "ports"` and charon with
/// two children narrowed to those ports. The first Child SA comes up in
/// IKE_AUTH, the second by CREATE_CHILD_SA: tunsecd creates it itself
/// when it initiates, and accepts charon's `swanctl --initiate --child
/// green` when charon does. Both sides then hold the same two pairs, each
/// narrowed to its port, and both networks carry pings both ways with no
/// drop in tunsecd.
///
/// Then the same with tunsecd configured for keys per network (`keys =
/// "per_network"`): charon does not know the label notify, so tunsecd
/// falls back to the same two unlabelled Child SAs, and its status says
/// `shared: the peer does not do keys per network`.
#[test]
fn sswan_child_sa_per_network() {
    const PER_NETWORK: &str = "keys = \"per_network\"\n";
    for (prefix, tunsec, charon, extra) in [
        ("tsss-cc1", 1, 2, ""),
        ("tsss-cc2", 2, 1, ""),
        ("tsss-cc3", 1, 2, PER_NETWORK),
        ("tsss-cc4", 2, 1, PER_NETWORK),
    ] {
        with_lab(prefix, |lab| {
            let t0 = Instant::now();
            let mut p = Params::new(
                tunsec,
                charon,
                "aes128gcm16-prfsha256-x25519",
                "aes128gcm16",
            );
            p.green = true;
            p.ike_extra = extra;
            let mut x = interop(lab, p)?;
            if charon < tunsec {
                for child in [CONN, GREEN] {
                    x.charon
                        .swanctl(&["--initiate", "--child", child, "--timeout", "15"])
                        .with_context(|| x.describe(lab))?;
                }
            }
            // Both pairs on both sides, crosswise, each one port wide.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let st = x.status(lab)?;
                let sas = x.charon.list_sas()?;
                let installed = sas.installed();
                let (ins, outs) = (spi_of(&st, "in"), spi_of(&st, "out"));
                let agree = installed.len() == 2
                    && ins.len() == 2
                    && outs.len() == 2
                    && installed
                        .iter()
                        .all(|c| outs.contains(&c.spi_in) && ins.contains(&c.spi_out));
                if agree {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "no two Child SAs on both sides:\n{}",
                    x.describe(lab)
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            let st = x.status(lab)?;
            let rendered = st.render();
            eprintln!("{rendered}");
            let (me, peer) = (host_addr(tunsec), host_addr(charon));
            for port in [4789, GREEN_PORT] {
                let line = format!("selectors {me}/32[udp/{port}] === {peer}/32[udp/{port}]");
                ensure!(
                    rendered.matches(&line).count() == 2,
                    "tunsecd does not show one SA pair for port {port}:\n{rendered}"
                );
            }
            let ike = ike_of(&st)?;
            let role = if tunsec < charon {
                "initiator"
            } else {
                "responder"
            };
            ensure!(ike.role == role, "tunsecd's role: {ike:?}");
            let keys = if extra.is_empty() {
                "shared"
            } else {
                "shared: the peer does not do keys per network"
            };
            ensure!(ike.keys.as_deref() == Some(keys), "tunsecd's keys: {ike:?}");
            phase(lab, "two Child SAs", t0);

            x.add_tenant(lab)?;
            let green = add_tenant_on(lab, &x.t, "g", "g", "ts-green", &green_addr(tunsec))?;
            x.ping_both_ways(3)?;
            let to_s = ping(&green, &green_addr(charon), 3)?;
            let to_t = ping(&x.s, &green_addr(tunsec), 3)?;
            ensure!(
                to_s == 3 && to_t == 3,
                "network green: {to_s} and {to_t} of 3 replies\n{}",
                x.describe(lab)
            );
            phase(lab, "pings both ways on both networks", t0);
            // Each network's packets went through its own pair.
            let st = x.status(lab)?;
            for sa in st.peers.iter().flat_map(|p| p.sas.iter()) {
                ensure!(
                    sa.packets >= 3 && sa.drops.values().all(|&d| d == 0),
                    "SA {} carried {} packets, drops {:?}\n{}",
                    sa.spi,
                    sa.packets,
                    sa.drops,
                    st.render()
                );
            }
            let drops: u64 = st.drops.values().sum();
            ensure!(drops == 0, "tunsecd dropped packets:\n{}", st.render());
            for child in x.charon.list_sas()?.installed() {
                ensure!(
                    child.packets_in >= 3 && child.packets_out >= 3,
                    "charon's Child SA carried too little: {child:?}"
                );
            }
            Ok(())
        });
    }
}
