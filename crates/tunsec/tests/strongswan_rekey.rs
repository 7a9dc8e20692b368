//! Interoperability with strongSwan 5.9.8 (Debian 12's charon with
//! kernel-libipsec), in network namespaces: rekeys and a charon restart.
//! The lab (charon in its own mount namespace, tunsecd in tunnel mode with
//! ESP in UDP 4500) is described in `strongswan/mod.rs`, which holds the
//! helpers. The cases (each its own lab, prefix `tsss-`):
//!
//! - `sswan_rekeys_both_ways`: Child SA rekeys by `swanctl --rekey`,
//!   `tunsec rekey` and tunsecd's `child_lifetime` under pings; ESP
//!   aes128gcm16-x25519 (no D-H in IKE_AUTH, PFS with X25519 on rekeys).
//! - `sswan_rekeys_under_tcp`: rekeys by both sides under iperf3 --bidir.
//! - `sswan_ike_rekeys`: charon initiates; IKE SA rekeys by `swanctl
//!   --rekey --ike` and `tunsec rekey --ike`, then Child SA rekeys over the
//!   new IKE SA, with PFS (ESP aes128gcm16-modp2048).
//! - `sswan_charon_restarts`: charon killed (SIGKILL) and started again;
//!   it initiates with INITIAL_CONTACT, tunsecd replaces the old SAs.
//!
//! TUNSEC_E2E_LOGS=1 prints every log (charon's too) also on success. They
//! need root, iproute2, ping, tshark, iperf3, nftables and strongSwan
//! (strongswan-charon, strongswan-swanctl, libcharon-extra-plugins,
//! libstrongswan-standard-plugins, strongswan-pki: `scripts/deps.sh`
//! installs them); they fail, never skip, when something is missing.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tunsec::status::Status;

mod common;
mod strongswan;
use strongswan::*;

/// The Child SA is rekeyed by charon (`swanctl --rekey`), then by tunsecd
/// twice, at once (`tunsec rekey`) and when its `child_lifetime` runs out,
/// while the tenant pings charon's host: new SPIs on both sides each time,
/// the old ones gone, and the pings keep flowing. The ESP proposal names
/// X25519: none in IKE_AUTH, PFS on every rekey.
#[test]
fn sswan_rekeys_both_ways() {
    const PINGS: u32 = 70;
    with_lab("tsss-rekey", |lab| {
        let mut p = Params::new(1, 2, "aes128gcm16-prfsha256-x25519", "aes128gcm16-x25519");
        // tunsecd rekeys at 90% of 12 s less up to 10%: 9.7 to 10.8 s
        // after the last rekey, and again 10 s later, after the checks.
        p.ike_extra = "child_lifetime = 12\n";
        let mut x = interop(lab, p)?;
        let first = x.wait_up(lab, "first Child SA", Duration::from_secs(15))?;
        let t0 = Instant::now();
        x.add_tenant(lab)?;
        x.ping_both_ways(1)?;
        // 14 s of pings, across the three rekeys.
        let pings = ping_in_background(x.tenant(), &tenant_addr(p.charon), PINGS)?;

        let out = x.charon.swanctl(&["--rekey", "--child", CONN])?;
        ensure!(out.contains("rekey completed successfully"), "{out}");
        let second = wait_new_pair(lab, &x, first, "rekey by charon", Duration::from_secs(10))?;
        eprintln!(
            "  rekeyed by charon after {:.1} s: {first} -> {second}",
            t0.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_secs(1));
        let sock = socket_path(lab, p.tunsec);
        let out = tunsec_lab::run(
            TUNSEC,
            &["--socket", &sock.to_string_lossy(), "rekey", PEER],
        )?;
        eprintln!(
            "  tunsec rekey {PEER}: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
        let third = wait_new_pair(lab, &x, second, "tunsec rekey", Duration::from_secs(10))?;
        eprintln!(
            "  rekeyed by tunsec rekey after {:.1} s: {second} -> {third}",
            t0.elapsed().as_secs_f64()
        );
        let fourth = wait_new_pair(
            lab,
            &x,
            third,
            "rekey by child_lifetime",
            Duration::from_secs(15),
        )?;
        eprintln!(
            "  rekeyed by tunsecd's child_lifetime after {:.1} s: {third} -> {fourth}",
            t0.elapsed().as_secs_f64()
        );
        let replies = ping_replies(pings)?;
        eprintln!("  {replies}/{PINGS} pings answered across the rekeys");
        ensure!(
            replies >= PINGS - 2,
            "{replies} of {PINGS} pings answered across the rekeys"
        );

        // The old pairs are gone on both sides (tunsecd keeps an old
        // inbound SA for 2 s; charon shows one as DELETED for 5 s, its
        // delete_rekeyed_delay).
        std::thread::sleep(Duration::from_secs(3));
        let sas = x.charon.list_sas()?;
        let st = x.status(lab)?;
        for old in [first, second, third] {
            ensure!(
                !sas.installed().iter().any(|c| c.spi_in == old.to_charon),
                "charon still has the old Child SA {old}:\n{}",
                sas.text
            );
            ensure!(
                !spi_of(&st, "in").contains(&old.to_tunsec)
                    && !spi_of(&st, "out").contains(&old.to_charon),
                "tunsecd still has the old Child SA {old}:\n{}",
                st.render()
            );
        }
        // tunsecd lost nothing across the rekeys: no packet without an
        // SA, under an SPI it no longer knew, or replayed.
        let drops = nonzero_drops(&st);
        ensure!(
            drops.is_empty(),
            "tunsecd dropped packets across the rekeys: {drops:?}\n{}",
            st.render()
        );
        // The newest pair carries the traffic, both ways, on both sides.
        x.ping_both_ways(3)?;
        let newest = x
            .current_pair(lab)?
            .with_context(|| format!("no Child SA after the rekeys\n{}", x.describe(lab)))?;
        let sas = x.charon.list_sas()?;
        let child = sas
            .installed()
            .into_iter()
            .find(|c| c.spi_in == newest.to_charon)
            .with_context(|| format!("charon lost {newest}:\n{}", sas.text))?
            .clone();
        let st = x.status(lab)?;
        let tunsec_in = st
            .peers
            .iter()
            .flat_map(|p| p.sas.iter())
            .find(|sa| sa.direction == "in" && sa.spi == format!("{:#010x}", newest.to_tunsec))
            .map_or(0, |sa| sa.packets);
        eprintln!(
            "  on {newest}: charon {} packets in, {} out; tunsecd {tunsec_in} in",
            child.packets_in, child.packets_out
        );
        ensure!(
            child.packets_in >= 3 && child.packets_out >= 3 && tunsec_in >= 3,
            "the traffic does not use the new Child SA {newest}:\n{}",
            x.describe(lab)
        );
        Ok(())
    });
}

/// tunsecd's drop counters that are not zero, engine and SAs.
fn nonzero_drops(st: &Status) -> Vec<(String, u64)> {
    st.drops
        .iter()
        .chain(
            st.peers
                .iter()
                .flat_map(|p| p.sas.iter())
                .flat_map(|sa| sa.drops.iter()),
        )
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k.clone(), *n))
        .collect()
}

/// A TCP transfer both ways (iperf3 --bidir) runs while charon and then
/// tunsecd rekey the Child SA: it completes, and tunsecd drops nothing.
#[test]
fn sswan_rekeys_under_tcp() {
    with_lab("tsss-rktcp", |lab| {
        let p = Params::new(1, 2, "aes128gcm16-prfsha256-x25519", "aes256-sha256");
        let mut x = interop(lab, p)?;
        let first = x.wait_up(lab, "first Child SA", Duration::from_secs(15))?;
        x.add_tenant(lab)?;
        x.ping_both_ways(1)?;
        let client = x.iperf_start(lab, 6, true)?;
        std::thread::sleep(Duration::from_millis(1500));
        let t0 = Instant::now();
        x.charon.swanctl(&["--rekey", "--child", CONN])?;
        let second = wait_new_pair(lab, &x, first, "rekey by charon", Duration::from_secs(10))?;
        eprintln!(
            "  rekeyed by charon after {:.1} s: {first} -> {second}",
            t0.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(1500));
        let sock = socket_path(lab, p.tunsec);
        tunsec_lab::run(
            TUNSEC,
            &["--socket", &sock.to_string_lossy(), "rekey", PEER],
        )?;
        let third = wait_new_pair(lab, &x, second, "tunsec rekey", Duration::from_secs(10))?;
        eprintln!(
            "  rekeyed by tunsecd after {:.1} s: {second} -> {third}",
            t0.elapsed().as_secs_f64()
        );
        let result = x.iperf_finish(lab, client)?;
        ensure!(
            result.received_back > 0,
            "nothing came back to the tenant: {result:?}"
        );
        let st = x.status(lab)?;
        let drops = nonzero_drops(&st);
        ensure!(
            drops.is_empty(),
            "tunsecd dropped packets across the rekeys: {drops:?}\n{}",
            st.render()
        );
        Ok(())
    });
}

/// The IKE SA is rekeyed by charon (`swanctl --rekey --ike`), then by
/// tunsecd (`tunsec rekey --ike`), under pings: new IKE SPIs on both
/// sides, the Child SA kept, and a Child SA rekey over the new IKE SA
/// (keyed from its SK_d) works. charon initiates; the ESP proposal names
/// MODP-2048 (PFS on the Child SA rekeys).
#[test]
fn sswan_ike_rekeys() {
    const PINGS: u32 = 30;
    with_lab("tsss-ikerk", |lab| {
        let p = Params::new(2, 1, "aes256gcm16-sha256-modp2048", "aes128gcm16-modp2048");
        let mut x = interop(lab, p)?;
        let pair = x.bring_up(lab)?;
        let first = agreed_ike_spis(lab, &x)?.context("no agreed IKE SA")?;
        x.add_tenant(lab)?;
        x.ping_both_ways(1)?;
        let pings = ping_in_background(x.tenant(), &tenant_addr(p.charon), PINGS)?;
        let t0 = Instant::now();

        let out = x.charon.swanctl(&["--rekey", "--ike", CONN])?;
        ensure!(out.contains("rekey completed successfully"), "{out}");
        let second = wait_new_ike(lab, &x, &first, "IKE rekey by charon")?;
        eprintln!(
            "  IKE SA rekeyed by charon after {:.1} s: {first:?} -> {second:?}",
            t0.elapsed().as_secs_f64()
        );
        let sock = socket_path(lab, p.tunsec);
        let sock = sock.to_string_lossy();
        tunsec_lab::run(TUNSEC, &["--socket", &sock, "rekey", PEER, "--ike"])?;
        let third = wait_new_ike(lab, &x, &second, "tunsec rekey --ike")?;
        eprintln!(
            "  IKE SA rekeyed by tunsecd after {:.1} s: {second:?} -> {third:?}",
            t0.elapsed().as_secs_f64()
        );
        let replies = ping_replies(pings)?;
        eprintln!("  {replies}/{PINGS} pings answered across the IKE rekeys");
        ensure!(
            replies >= PINGS - 1,
            "{replies} of {PINGS} pings answered across the IKE rekeys"
        );
        ensure!(
            x.current_pair(lab)? == Some(pair),
            "the Child SA {pair} did not stay across the IKE rekeys\n{}",
            x.describe(lab)
        );
        let ike = ike_of(&x.status(lab)?)?;
        ensure!(
            ike.ike_rekeys == 2,
            "tunsecd counts {} IKE rekeys: {ike:?}",
            ike.ike_rekeys
        );
        // Only the newest IKE SA is left on charon's side.
        std::thread::sleep(Duration::from_secs(1));
        let sas = x.charon.list_sas()?;
        ensure!(
            sas.ike.len() == 1,
            "charon keeps old IKE SAs:\n{}",
            sas.text
        );

        // The new IKE SA's SK_d keys Child SA rekeys, by either side.
        x.charon.swanctl(&["--rekey", "--child", CONN])?;
        let second_pair = wait_new_pair(
            lab,
            &x,
            pair,
            "Child SA rekey by charon",
            Duration::from_secs(10),
        )?;
        tunsec_lab::run(TUNSEC, &["--socket", &sock, "rekey", PEER])?;
        let third_pair = wait_new_pair(
            lab,
            &x,
            second_pair,
            "tunsec rekey",
            Duration::from_secs(10),
        )?;
        eprintln!(
            "  Child SA rekeyed over the new IKE SA: {pair} -> {second_pair} -> {third_pair}"
        );
        x.ping_both_ways(3)?;
        let st = x.status(lab)?;
        let drops = nonzero_drops(&st);
        ensure!(
            drops.is_empty(),
            "tunsecd dropped packets: {drops:?}\n{}",
            st.render()
        );
        Ok(())
    });
}

/// charon crashes (SIGKILL) and starts again; it initiates, and the
/// tunnel comes back with a new IKE SA.
#[test]
fn sswan_charon_restarts() {
    with_lab("tsss-restart", |lab| {
        let p = Params::new(2, 1, "aes128gcm16-prfsha256-x25519", "aes128gcm16");
        let mut x = interop(lab, p)?;
        x.charon
            .swanctl(&["--initiate", "--child", CONN, "--timeout", "15"])
            .with_context(|| x.describe(lab))?;
        let first = x.wait_up(lab, "first IKE SA", Duration::from_secs(10))?;
        let ike_before = ike_of(&x.status(lab)?)?;
        x.add_tenant(lab)?;
        x.ping_both_ways(2)?;

        let t0 = Instant::now();
        x.charon.kill(lab)?;
        let got = ping(x.tenant(), &tenant_addr(p.charon), 2)?;
        ensure!(got == 0, "{got} pings answered with charon dead");
        x.charon.start(lab)?;
        x.charon
            .swanctl(&["--initiate", "--child", CONN, "--timeout", "15"])
            .with_context(|| x.describe(lab))?;
        let second = wait_new_pair(
            lab,
            &x,
            first,
            "after charon's restart",
            Duration::from_secs(10),
        )?;
        let ike_after = ike_of(&x.status(lab)?)?;
        eprintln!(
            "  back after {:.1} s: {first} -> {second}\n  IKE SA before {ike_before:?}\n  after {ike_after:?}",
            t0.elapsed().as_secs_f64()
        );
        ensure!(
            ike_after.spi_i != ike_before.spi_i,
            "tunsecd still shows the old IKE SA: {ike_after:?}"
        );
        x.ping_both_ways(3)?;
        // The restarted charon's INITIAL_CONTACT: tunsecd dropped the old
        // IKE SA and its Child SAs as soon as the new one was up.
        let st = x.status(lab)?;
        ensure!(
            !spi_of(&st, "in").contains(&first.to_tunsec)
                && !spi_of(&st, "out").contains(&first.to_charon),
            "tunsecd still holds the SAs of charon's first run {first}:\n{}",
            st.render()
        );
        // tunsecd's liveness check of the old IKE SA (every 15 s, dead
        // after about 15 s more) must not take the new SAs down.
        std::thread::sleep(Duration::from_secs(32));
        let pair = x.current_pair(lab)?;
        ensure!(
            pair == Some(second),
            "the new Child SA did not survive the old IKE SA's end: {pair:?}\n{}",
            x.describe(lab)
        );
        x.ping_both_ways(2)?;
        Ok(())
    });
}
