//! End-to-end tests of `tunsecd` with IKEv2 (pre-shared keys), in network
//! namespaces: peers added and removed by `tunsec reload`. Two hosts on an
//! underlay bridge run the real `tunsecd` with `[peer.ike]` and no manual
//! keys (helpers in `ike/`).
//!
//! - `ike_peers_at_run_time`: h1 starts with h2 as its only peer; h3 is
//!   added by a reload (its IKE SA and Child SA come up, h1's tenant
//!   reaches h3's) and removed again (h3 sees the DELETE), while h1's
//!   tenant pings h2's through all of it and loses nothing, and the IKE SA
//!   with h2 stays the same one; a file whose networks changed is refused.
//!   A capture from before the first start holds ESP and no cleartext
//!   VXLAN.
//!
//! They need root, iproute2, ping, tshark (dumpcap) and nftables; they
//! fail, never skip, when something is missing.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tunsec::control::{self, Request, Response};
use tunsec_lab::Lab;

mod common;
mod ike;
use ike::*;

/// Host `n`'s config with `peers`, all on network blue with the same PSK.
fn write_config_peers(lab: &Lab, n: u8, peers: &[u8]) -> anyhow::Result<PathBuf> {
    let psk_file = lab.dir.path().join(format!("h{n}.psk"));
    tunsec::config::write_secret(&psk_file, "one secret for all of them\n")?;
    let mut c = format!(
        "[node]\nname = \"h{n}\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n\n\
         [[network]]\nname = \"blue\"\nvni = 100\nencapsulation = \"vxlan\"\n\n",
        host_addr(n),
        socket_path(lab, n).display()
    );
    for p in peers {
        writeln!(
            c,
            "[[peer]]\nname = \"h{p}\"\nunderlay = \"{}\"\nnetworks = [\"blue\"]\npolicy = \"require\"\n\n\
             [peer.ike]\npsk_file = \"h{n}.psk\"\n",
            host_addr(*p)
        )?;
    }
    let path = lab.dir.path().join(format!("h{n}.toml"));
    std::fs::write(&path, c)?;
    Ok(path)
}

fn reload(lab: &Lab, n: u8) -> anyhow::Result<String> {
    match control::call(&socket_path(lab, n), &Request::Reload)? {
        Response::Done { message } => Ok(message),
        other => bail!("h{n}'s reload: {other:?}"),
    }
}

/// Overlay peers that come and go at run time, by `tunsec reload` of a
/// changed file: h1 starts with h2 as its only peer; h3 is added (its IKE
/// SA and Child SA come up, h1's tenant reaches h3's) and removed again
/// (h3 sees the DELETE, h3's tenant is unreachable), while h1's tenant
/// pings h2's through all of it and loses nothing, and the IKE SA with h2
/// stays the same one. A file whose networks changed is refused.
#[test]
fn ike_peers_at_run_time() {
    with_lab("tsike-rt", |lab| {
        let ul = add_underlay(lab)?;
        let hosts: Vec<String> = (1..=3)
            .map(|n| add_host(lab, &ul, &format!("h{n}"), n))
            .collect::<anyhow::Result<_>>()?;
        // From before the first start: every `require` frame, to any
        // peer, through the add and the removal, crosses as ESP only.
        let pcap = start_capture(lab, &ul, "capture")?;
        for (n, peers) in [(1u8, &[2u8][..]), (2, &[1]), (3, &[1])] {
            let config = write_config_peers(lab, n, peers)?;
            start_tunsecd(lab, &hosts[usize::from(n) - 1], n, &config)?;
        }
        let tenants: Vec<String> = (1..=3)
            .map(|n| add_tenant(lab, &hosts[usize::from(n) - 1], n, TAP))
            .collect::<anyhow::Result<_>>()?;
        let up = |n: u8, peer: &str| {
            status(lab, n).is_ok_and(|s| clean_ike_sa(&s, peer).is_ok_and(|sa| sa.is_some()))
        };
        lab.wait_for("h1-h2 up", Duration::from_secs(20), || {
            up(1, "h2") && up(2, "h1")
        })?;
        ping_ok(&tenants[0], &tenant_addr(2))?;
        let h2_sa = clean_ike_sa(&status(lab, 1)?, "h2")?.context("no IKE SA with h2")?;
        let pinger = pings(&tenants[0], &tenant_addr(2), 150)?;
        std::thread::sleep(Duration::from_millis(300));

        // Networks change only with a restart: refused, nothing changed.
        let config = lab.dir.path().join("h1.toml");
        let good = write_config_peers(lab, 1, &[2, 3])?;
        let text = std::fs::read_to_string(&good)?;
        std::fs::write(&config, text.replace("vni = 100", "vni = 101"))?;
        match control::call(&socket_path(lab, 1), &Request::Reload)? {
            Response::Error { message } => ensure!(
                message.contains("network[0]") && message.contains("nothing changed"),
                "{message}"
            ),
            other => bail!("a reload with another VNI was accepted: {other:?}"),
        }
        ensure!(
            status(lab, 1)?.peers.len() == 1,
            "the refused reload added a peer"
        );

        // h3 added.
        write_config_peers(lab, 1, &[2, 3])?;
        let message = reload(lab, 1)?;
        eprintln!("  h1: {message}");
        ensure!(message.contains("added: h3"), "{message}");
        lab.wait_for("h1-h3 up", Duration::from_secs(20), || {
            up(1, "h3") && up(3, "h1")
        })?;
        ping_ok(&tenants[0], &tenant_addr(3))?;

        // h3 removed.
        write_config_peers(lab, 1, &[2])?;
        let message = reload(lab, 1)?;
        eprintln!("  h1: {message}");
        ensure!(message.contains("removed: h3"), "{message}");
        lab.wait_for("h3 to see the DELETE", Duration::from_secs(5), || {
            status(lab, 3).is_ok_and(|s| sa_count(&s, "h1") == 0)
        })?;
        let s1 = status(lab, 1)?;
        ensure!(
            s1.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>() == ["h2"],
            "h1's peers:\n{}",
            s1.render()
        );
        ensure!(
            ping(&tenants[0], &tenant_addr(3), 2)? == 0,
            "h3's tenant still reachable after its removal"
        );

        let received = pings_received(pinger)?;
        eprintln!("  pings to h2 across the add and the removal: {received} of 150");
        ensure!(received == 150, "{} pings to h2 lost", 150 - received);
        ensure!(
            clean_ike_sa(&status(lab, 1)?, "h2")? == Some(h2_sa),
            "the IKE SA with h2 changed"
        );
        stop_capture(lab, "capture");
        let all = frames(&pcap)?;
        let esp = all.iter().filter(|f| f.protocols.contains("esp")).count();
        ensure!(esp > 100, "the capture holds {esp} ESP frames");
        let clear: Vec<&Frame> = all.iter().filter(|f| f.vni.is_some()).collect();
        ensure!(
            clear.is_empty(),
            "{} cleartext VXLAN frames:{}",
            clear.len(),
            describe(&clear)
        );
        Ok(())
    });
}
