//! A spoofed IKE_SA_INIT flood against tunsecd while strongSwan 5.9.8
//! (charon, an independent IKEv2 implementation that supports cookies)
//! connects (issue 20). The lab is the strongSwan interop lab of
//! `strongswan/mod.rs`, with a third host `f` (192.0.2.3) on the underlay:
//!
//! - charon (192.0.2.1) initiates with `swanctl --initiate`; tunsecd
//!   (192.0.2.2) is a passive responder (`initiate = false`), so that the
//!   IKE SA charon shows is the one it started.
//! - `f` floods tunsecd with valid IKE_SA_INIT requests (each its own SPI,
//!   nonce and key share, made by tunsec-ike) whose source is charon's
//!   address, as fast as Scapy sends them, before and while charon
//!   connects.
//!
//! What it shows: charon is up within 5 s of `swanctl --initiate`; it
//! returned a cookie that tunsecd asked for (a request from charon's
//! address carrying a COOKIE notify, RFC 7296 section 2.6, on the
//! underlay capture); tunsecd computed a Diffie-Hellman for at most three
//! requests (`responders` in its status: the first spoofed one, charon's,
//! and one spoofed after charon's was established); the IKE SA stays the
//! same for 3 s more of flood; tunsecd reports the role it has
//! (responder); pings go both ways afterwards, and the capture holds no
//! cleartext of the tenant traffic.
//!
//! It needs root, iproute2, tshark, python3-scapy and strongSwan (see
//! `strongswan_psk.rs`); it fails, never skips, when something is missing.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

mod common;
mod strongswan;
use common::flood::*;
use strongswan::*;

/// Spoofed requests in the flood's loop.
const FLOOD: usize = 2000;
/// The flooding host's number (192.0.2.3).
const FLOODER: u8 = 3;
/// RFC 7296 section 3.10.1: the COOKIE notify message type.
const COOKIE: u16 = 16390;

#[test]
fn sswan_connects_under_a_spoofed_flood() {
    with_lab("tsss-flood", |lab| {
        require(
            "the strongSwan flood test",
            &[(PYTHON, &["-c", "import scapy.all"], "python3-scapy")],
        );
        let mut p = Params::new(2, 1, "aes128gcm16-prfsha256-x25519", "aes128gcm16");
        p.ike_extra = "initiate = false\n";
        let mut x = interop(lab, p)?;
        let f = add_host(lab, &x.ul, "f", FLOODER)?;
        let (charon, tunsec) = (host_addr(p.charon), host_addr(p.tunsec));
        let script = flood_from(lab, FLOOD, &charon, &tunsec)?;
        start_flood(lab, &f, &script)?;
        let endpoint = |lab: &_| -> anyhow::Result<_> {
            x.status(lab)?
                .ike_endpoint
                .context("no IKE endpoint status")
        };
        lab.wait_for(
            "the flood to reach tunsecd",
            Duration::from_secs(20),
            || endpoint(lab).is_ok_and(|e| e.cookies_sent > 10),
        )?;

        let started = Instant::now();
        let out = x
            .charon
            .swanctl(&["--initiate", "--child", CONN, "--timeout", "10"])
            .with_context(|| x.describe(lab))?;
        ensure!(out.contains("initiate completed successfully"), "{out}");
        let pair = x.wait_up(lab, "charon under the flood", Duration::from_secs(5))?;
        let took = started.elapsed();
        eprintln!(
            "  up {:.2} s after swanctl --initiate, under the flood; Child SA {pair}",
            took.as_secs_f64()
        );
        ensure!(
            took <= Duration::from_secs(5),
            "charon took {:.2} s to come up under the flood",
            took.as_secs_f64()
        );
        let ike = ike_of(&x.status(lab)?)?;
        ensure!(ike.role == "responder", "tunsecd's role: {ike:?}");
        let spis = (ike.spi_i.clone(), ike.spi_r.clone());
        let cookies_at_up = endpoint(lab)?.cookies_sent;

        // The IKE SA stays the same one while the flood goes on.
        std::thread::sleep(Duration::from_secs(3));
        let ike = ike_of(&x.status(lab)?)?;
        ensure!(
            ike.state == "established" && (ike.spi_i.clone(), ike.spi_r.clone()) == spis,
            "the IKE SA changed under the flood: {ike:?}"
        );
        let e = endpoint(lab)?;
        ensure!(
            e.cookies_sent > cookies_at_up,
            "the flood ended before the end of the test ({} cookies sent)",
            e.cookies_sent
        );
        lab.stop("flood");
        eprintln!("  tunsecd after 3 s more of flood: {e:?}");
        ensure!(
            e.responders <= 3,
            "tunsecd computed a Diffie-Hellman for {} requests, {} of them spoofed",
            e.responders,
            e.responders.saturating_sub(1)
        );
        let sas = x.charon.list_sas()?;
        ensure!(
            sas.ike.len() == 1 && sas.installed().len() == 1,
            "charon holds other SAs than the one pair:\n{}",
            sas.text
        );

        x.add_tenant(lab)?;
        x.ping_both_ways(3)?;
        stop_capture(lab, "capture");
        // charon returned a cookie: an IKE_SA_INIT request from its
        // address with a COOKIE notify (the flood's requests have none).
        let returned = tshark_fields(
            &x.pcap,
            Some(&format!(
                "ip.src == {charon} && isakmp.exchangetype == 34 && isakmp.notify.msgtype == {COOKIE}"
            )),
            &["frame.number"],
        )?;
        let returned = returned.lines().count();
        eprintln!("  charon's requests with a cookie: {returned}");
        ensure!(
            returned >= 1,
            "charon never returned a cookie:\n{}",
            x.charon.log_text()
        );
        let leaked = count_marker(&std::fs::read(&x.pcap)?);
        ensure!(
            leaked == 0,
            "the tenant marker appears {leaked} times in the underlay capture"
        );
        Ok(())
    });
}
