//! `[[network]] bridge`: tunsecd enslaves its TAP device to an existing
//! Linux bridge, at start and again after a restart (the TAP device is a
//! new one each time), in network namespaces. Two hosts, h1 and h2, on an
//! underlay bridge, keyed by IKEv2 with a pre-shared key; on each, a
//! tenant's veth is on bridge `br-t` and the config says `bridge =
//! "br-t"`: no test step touches the TAP device.
//!
//! - `bridge_missing_refused`: a bridge that does not exist, or a device
//!   that is no bridge, stops tunsecd with a message naming
//!   `network[0].bridge` and the value, and leaves no TAP device and no
//!   control socket.
//! - `bridge_enslaves_tap_across_restart`: the TAP devices join `br-t`,
//!   tenants ping across the hosts; h1's tunsecd is stopped (SIGTERM) and
//!   started again, its new TAP device joins `br-t` on its own, and the
//!   tenants ping again.
//!
//! They need root, iproute2 and ping; they fail, never skip, when
//! something is missing.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use tunsec_lab::Lab;

mod common;
use common::*;

fn preflight() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        require(
            "bridge end-to-end tests",
            &[
                ("ip", &["-V"], "iproute2"),
                ("ping", &["-V"], "iputils-ping"),
            ],
        );
    });
}

/// [`common::with_lab`] after this suite's [`preflight`].
fn with_lab(prefix: &str, body: impl FnOnce(&mut Lab) -> anyhow::Result<()>) {
    common::with_lab(prefix, preflight, body);
}

/// Host `h<n>`'s config: network `blue` (VXLAN 100) on `bridge`, and peer
/// `h<peer>` keyed by IKE with a shared PSK.
fn write_config(lab: &Lab, n: u8, peer: u8, bridge: &str) -> anyhow::Result<PathBuf> {
    let psk = lab.dir.path().join(format!("h{n}.psk"));
    tunsec::config::write_secret(&psk, "bridged-tenants\n")?;
    let mut c = String::new();
    writeln!(
        c,
        "[node]\nname = \"h{n}\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n",
        host_addr(n),
        socket_path(lab, n).display()
    )?;
    writeln!(
        c,
        "[[network]]\nname = \"blue\"\nvni = 100\nencapsulation = \"vxlan\"\nbridge = \"{bridge}\"\n"
    )?;
    writeln!(
        c,
        "[[peer]]\nname = \"h{peer}\"\nunderlay = \"{}\"\nnetworks = [\"blue\"]\n\n\
         [peer.ike]\npsk_file = \"h{n}.psk\"\n",
        host_addr(peer)
    )?;
    let path = lab.dir.path().join(format!("h{n}.toml"));
    std::fs::write(&path, c)?;
    Ok(path)
}

/// The bridge `dev` of `ns` is a port of, from `ip -o link show`.
fn master(lab: &Lab, ns: &str, dev: &str) -> anyhow::Result<Option<String>> {
    let out = lab.exec(ns, "ip", &["-o", "link", "show", dev])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    Ok(words
        .find(|w| *w == "master")
        .and_then(|_| words.next())
        .map(str::to_owned))
}

/// Pings until `dst` answers all of 3, for up to `secs` seconds.
fn ping_within(t: &str, dst: &str, secs: u64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if ping(t, dst, 3)? == 3 {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(secs) {
            bail!("{dst} did not answer {t} within {secs} s");
        }
    }
}

#[test]
fn bridge_missing_refused() {
    with_lab("exm-brx", |lab| {
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        // "eth0" exists, but is a veth, not a bridge.
        for (bridge, says) in [
            ("br-missing", "does not exist"),
            ("eth0", "is not a Linux bridge"),
        ] {
            let config = write_config(lab, 1, 2, bridge)?;
            let out = exec_output(
                &h1,
                "timeout",
                &["30", TUNSECD, "--config", &config.to_string_lossy()],
            )?;
            let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
            eprintln!("  tunsecd: {} {}", out.status, stderr.trim());
            ensure!(
                !out.status.success() && out.status.code() != Some(124),
                "tunsecd did not refuse to start ({}) with bridge {bridge:?}: {stderr}",
                out.status
            );
            ensure!(
                stderr.contains("network[0].bridge")
                    && stderr.contains(&format!("\"{bridge}\""))
                    && stderr.contains(says),
                "the message does not name network[0].bridge, {bridge:?} and {says:?}: {stderr}"
            );
            let links = lab.exec(&h1, "ip", &["-o", "link", "show"])?;
            let links = String::from_utf8_lossy(&links.stdout);
            ensure!(!links.contains(TAP), "a TAP device was left:\n{links}");
            ensure!(
                !socket_path(lab, 1).exists(),
                "a control socket was created"
            );
        }
        Ok(())
    });
}

#[test]
fn bridge_enslaves_tap_across_restart() {
    with_lab("exm-br", |lab| {
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        // The tenants' side first: bridge br-t with the tenant's veth, as
        // a cloud's host has it before tunsecd starts.
        let (t1, b1) = add_tenant_behind_bridge(lab, &h1, "t1", "t", &tenant_addr(1))?;
        let (t2, b2) = add_tenant_behind_bridge(lab, &h2, "t2", "t", &tenant_addr(2))?;
        let c1 = write_config(lab, 1, 2, &b1)?;
        let c2 = write_config(lab, 2, 1, &b2)?;
        let t0 = Instant::now();
        start_tunsecd(lab, &h1, 1, &c1)?;
        start_tunsecd(lab, &h2, 2, &c2)?;
        for (h, b) in [(&h1, &b1), (&h2, &b2)] {
            let m = master(lab, h, TAP)?;
            ensure!(
                m.as_deref() == Some(b.as_str()),
                "{TAP} in {h} is on {m:?}, not {b}"
            );
        }
        set_tenant_mtu(lab, &h1, &t1, TAP)?;
        set_tenant_mtu(lab, &h2, &t2, TAP)?;
        let took = ping_within(&t1, &tenant_addr(2), 15)?;
        ping_ok(&t2, &tenant_addr(1))?;
        phase(
            lab,
            &format!("tenants ping ({:.1} s)", took.as_secs_f64()),
            t0,
        );

        // A restart: the TAP device is gone with the old daemon...
        ensure!(lab.stop("h1"), "tunsecd h1 did not exit cleanly on SIGTERM");
        ensure!(
            !lab.try_exec(&h1, "ip", &["link", "show", TAP]),
            "{TAP} outlived tunsecd"
        );
        ensure!(
            ping(&t1, &tenant_addr(2), 1)? == 0,
            "a ping got through with h1's tunsecd stopped"
        );
        // ...and the new one joins br-t with no step of ours.
        let t1_restart = Instant::now();
        start_tunsecd(lab, &h1, 1, &c1)?;
        let m = master(lab, &h1, TAP)?;
        ensure!(
            m.as_deref() == Some(b1.as_str()),
            "after the restart, {TAP} in h1 is on {m:?}, not {b1}"
        );
        let took = ping_within(&t1, &tenant_addr(2), 15)?;
        ping_ok(&t2, &tenant_addr(1))?;
        phase(
            lab,
            &format!(
                "tenants ping again after the restart ({:.1} s of pinging)",
                took.as_secs_f64()
            ),
            t1_restart,
        );
        Ok(())
    });
}
