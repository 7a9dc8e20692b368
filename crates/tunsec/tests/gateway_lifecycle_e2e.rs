//! End-to-end tests of `tunsecd` in gateway mode, in network namespaces:
//! start, stop, cleanup and the control socket. Two hosts on an underlay
//! bridge (192.0.2.0/24) each run a kernel vxlan device (VNI 42, UDP 4789,
//! 10.42.0.0/24 inside) and a plain TCP service on port 16385, and
//! `tunsecd` in gateway mode with selectors `udp/4789` and `tcp/16385`; a
//! third namespace on the underlay forges traffic (helpers in `gateway/`).
//! They prove that:
//!
//! - `gateway_without_nft_fails_clearly`: without the `nft` tool tunsecd
//!   refuses to start, names nftables, and leaves nothing behind.
//! - `gateway_cleanup`: a second daemon with the same config fails on
//!   the ESP port and leaves the running one's rules alone; `tunsec
//!   gateway release` is refused while tunsecd runs; a clean stop leaves
//!   the rules, the `unreachable` route and the guard (no vxlan ping
//!   answered, forged VXLAN still dropped) and only `tunsec gateway
//!   release` removes them, after which the same forged VXLAN reaches
//!   the vxlan device (the guard was what dropped it); after SIGKILL the
//!   stale rules and guard are there, a restart adopts them as exactly
//!   one set, the tunnel works again; with `on_stop = "release"` a stop
//!   leaves nothing.
//! - `gateway_fail_closed_across_stop_and_start`: a capture that runs
//!   from before the first start, across a clean stop of one host under
//!   pings, 2 s stopped, its start and a new IKE SA, and both stops,
//!   holds ESP and not one cleartext packet of the protected flows.
//! - `gateway_control_socket_under_idle_clients`: with 1,000 idle clients
//!   and one that sent half a request connected, `tunsec status` answers
//!   within 100 ms (median of 10) and the tunnel works.
//! - `gateway_bad_config_is_refused`: `tunsecd --check` refuses a
//!   selector whose port range holds the ESP port 4500, exits with 2 and
//!   names `peer[0].selector[0].ports`.
//!
//! They need root, iproute2, nftables, ping, tshark (dumpcap) and Debian's
//! python3-scapy; they fail, never skip, when something is missing.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tunsec::control::{self, Request, Response};

mod common;
mod gateway;
use gateway::*;

#[test]
fn gateway_without_nft_fails_clearly() {
    with_lab("gw9", |lab| {
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let config = write_config(lab, 1, &[2], Opts::default())?;
        // No `nft` on the PATH.
        let out = exec_output(
            &h1,
            "env",
            &[
                "-i",
                "PATH=/nonexistent",
                TUNSECD,
                "--config",
                &config.to_string_lossy(),
            ],
        )?;
        let err = strip_ansi(&String::from_utf8_lossy(&out.stderr));
        ensure!(
            !out.status.success() && err.contains("nft") && err.contains("nftables"),
            "tunsecd without nft: {} {err}",
            out.status
        );
        let left = leftovers(&h1)?;
        ensure!(left.is_empty(), "after the failed start: {left:#?}");
        Ok(())
    });
}

#[test]
fn gateway_cleanup() {
    with_lab("gw2", |lab| {
        let Hosts { h1, h2, h3, .. } = setup(lab)?;
        ping_ok(&h1, &vxlan_addr(2))?;
        // 1 bypass rule, 2 rules per selector (2 selectors).
        let n = rule_count(&h1)?;
        ensure!(n == 5, "{n} rules while running, want 5");
        ensure!(
            !leftovers(&h1)?.is_empty(),
            "the running daemon's entries are not visible"
        );

        // A second daemon with the same config (another control socket)
        // fails on the ESP port, before it touches the first one's rules.
        let config = std::fs::read_to_string(lab.dir.path().join("h1.toml"))?;
        let dup = lab.dir.path().join("h1-dup.toml");
        std::fs::write(&dup, config.replace("h1.sock", "h1-dup.sock"))?;
        let out = exec_output(
            &h1,
            "timeout",
            &["10", TUNSECD, "--config", &dup.to_string_lossy()],
        )?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains("esp.port"),
            "a second tunsecd: {} {err}",
            out.status
        );
        let n = rule_count(&h1)?;
        ensure!(n == 5, "{n} rules after a second daemon failed, want 5");
        ping_ok(&h1, &vxlan_addr(2))?;

        // `tunsec gateway release` is refused while the daemon runs.
        let config = lab.dir.path().join("h1.toml");
        let out = exec_output(
            &h1,
            TUNSEC,
            &["gateway", "release", "--config", &config.to_string_lossy()],
        )?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains("tunsecd is running"),
            "release while running: {} {err}",
            out.status
        );
        ensure!(rule_count(&h1)? == 5, "a refused release changed the rules");

        // A clean stop leaves the guard, the rules and the unreachable
        // route (fail closed); the TUN device goes.
        ensure!(lab.stop("h1"), "tunsecd h1 did not exit cleanly");
        let left = leftovers(&h1)?;
        ensure!(
            rule_count(&h1)? == 5
                && left.iter().any(|l| l.contains("unreachable"))
                && left.iter().any(|l| l.starts_with("nft"))
                && !left.iter().any(|l| l.starts_with("link")),
            "after a clean stop: {left:#?}"
        );
        // The steered vxlan packets find no route: nothing answers, and
        // the guard still drops the forged VXLAN.
        let got = ping(&h1, &vxlan_addr(2), 2)?;
        ensure!(got == 0, "{got} vxlan pings answered while stopped");
        let before = vxlan_rx(&h1)?;
        forge_vxlan(&h3)?;
        std::thread::sleep(Duration::from_millis(500));
        ensure!(
            vxlan_rx(&h1)? == before,
            "forged VXLAN reached vxlan0 while tunsecd was stopped"
        );
        // Only the release removes them; then the forged VXLAN reaches
        // vxlan0: the guard was what dropped it.
        let said = release(lab, &h1, 1)?;
        ensure!(
            said.contains("5 rules") && said.contains("guard removed"),
            "release said: {said}"
        );
        let left = leftovers(&h1)?;
        ensure!(left.is_empty(), "after the release: {left:#?}");
        forge_vxlan(&h3)?;
        std::thread::sleep(Duration::from_millis(500));
        ensure!(
            vxlan_rx(&h1)? > before,
            "forged VXLAN did not reach vxlan0 even without tunsecd"
        );

        // SIGKILL: the rules and the guard stay behind. (With manual
        // keys a restarted sender starts its sequence numbers at 1 again,
        // which the peer's replay window refuses: h2 restarts too.)
        ensure!(lab.stop("h2"), "tunsecd h2 did not exit cleanly");
        start_daemon(lab, "h2-second", &h2, 2)?;
        start_daemon(lab, "h1-second", &h1, 1)?;
        ping_ok(&h1, &vxlan_addr(2))?;
        let pid = lab.pid("h1-second").context("no pid")?;
        let ok = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()?
            .success();
        ensure!(ok, "kill -KILL {pid}");
        lab.wait_for("the TUN device to go", Duration::from_secs(5), || {
            !exec_output(&h1, "ip", &["link", "show", TUN]).is_ok_and(|o| o.status.success())
        })?;
        let stale = leftovers(&h1)?;
        ensure!(
            stale.iter().any(|l| l.starts_with("rule"))
                && stale.iter().any(|l| l.starts_with("nft")),
            "after SIGKILL the rules and the guard should still be there: {stale:#?}"
        );
        // Meanwhile the stale rules point at the unreachable route: the
        // kernel's vxlan packets find no route (fail closed), they do not
        // leave in the clear.
        let got = ping(&h1, &vxlan_addr(2), 2)?;
        ensure!(got == 0, "{got} vxlan pings answered with stale rules");

        // A restart adopts the entries left behind: one set of rules.
        ensure!(lab.stop("h2-second"), "tunsecd h2 did not exit cleanly");
        start_daemon(lab, "h2-third", &h2, 2)?;
        start_daemon(lab, "h1-third", &h1, 1)?;
        let n = rule_count(&h1)?;
        ensure!(n == 5, "{n} rules after the restart, want 5");
        ping_ok(&h1, &vxlan_addr(2))?;
        ensure!(lab.stop("h1-third"), "tunsecd h1 did not exit cleanly");

        // With `on_stop = "release"` a clean stop removes everything.
        let config = lab.dir.path().join("h1.toml");
        let text = std::fs::read_to_string(&config)?;
        std::fs::write(
            &config,
            text.replace("[gateway]\n", "[gateway]\non_stop = \"release\"\n"),
        )?;
        ensure!(lab.stop("h2-third"), "tunsecd h2 did not exit cleanly");
        start_daemon(lab, "h2-fourth", &h2, 2)?;
        start_daemon(lab, "h1-fourth", &h1, 1)?;
        ensure!(rule_count(&h1)? == 5, "rules with on_stop = release");
        ping_ok(&h1, &vxlan_addr(2))?;
        ensure!(lab.stop("h1-fourth"), "tunsecd h1 did not exit cleanly");
        let left = leftovers(&h1)?;
        ensure!(
            left.is_empty(),
            "after a stop with on_stop = release: {left:#?}"
        );
        Ok(())
    });
}

#[test]
fn gateway_fail_closed_across_stop_and_start() {
    with_lab("gwfc", |lab| {
        // The capture runs from before the first start of any tunsecd.
        let hosts = prepare(
            lab,
            Opts {
                ike: true,
                ..Opts::default()
            },
        )?;
        let pcap = start_capture(lab, &hosts.ul, "capture")?;
        start_hosts(lab, &hosts)?;
        let Hosts { h1, .. } = hosts;
        wait_child_sa(lab, 1)?;
        ping_ok(&h1, &vxlan_addr(2))?;

        // Pings at 10 a second across a clean stop of h1, 2 s stopped,
        // and its start again (IKE anew: h1 told h2 with a DELETE).
        let pinger = pings(&h1, &vxlan_addr(2), 150)?;
        std::thread::sleep(Duration::from_secs(2));
        ensure!(lab.stop("h1"), "tunsecd h1 did not exit cleanly");
        std::thread::sleep(Duration::from_secs(2));
        let left = leftovers(&h1)?;
        ensure!(
            left.iter().any(|l| l.starts_with("nft")) && rule_count(&h1)? == 5,
            "while stopped: {left:#?}"
        );
        start_daemon(lab, "h1-again", &h1, 1)?;
        wait_child_sa(lab, 1)?;
        ping_ok(&h1, &vxlan_addr(2))?;
        let out = pinger.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            text.contains("150 packets transmitted"),
            "the pinger: {text}"
        );
        ensure!(lab.stop("h1-again"), "tunsecd h1 did not exit cleanly");
        ensure!(lab.stop("h2"), "tunsecd h2 did not exit cleanly");
        // Pings after both stopped: blocked too.
        let got = ping(&h1, &vxlan_addr(2), 3)?;
        ensure!(got == 0, "{got} vxlan pings answered after both stopped");
        stop_capture(lab, "capture");

        let frames = capture_summary(&pcap)?;
        let clear: Vec<&Summary> = frames
            .iter()
            .filter(|f| {
                [f.1, f.2].contains(&Some(4789)) || [f.3, f.4].contains(&Some(SERVICE_PORT))
            })
            .collect();
        let esp = frames.iter().filter(|f| f.0.contains("esp")).count();
        ensure!(
            clear.is_empty() && esp > 40,
            "{} cleartext frames of the protected flows (want 0), {esp} ESP frames; \
             the first: {:?}; pinger: {text}",
            clear.len(),
            clear.first()
        );
        Ok(())
    });
}

/// 1,000 clients that connect and say nothing, and one that sent half a
/// request, do not stall `tunsec status`: the control server serves
/// clients concurrently (before, one silent client held the daemon for
/// 5 s).
#[test]
fn gateway_control_socket_under_idle_clients() {
    with_lab("gwcs", |lab| {
        let Hosts { h1, .. } = setup(lab)?;
        // The test holds a descriptor per client too.
        let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
        nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_NOFILE,
            hard.min(65_536),
            hard,
        )?;
        let sock = socket_path(lab, 1);
        let idle = (0..1000)
            .map(|_| std::os::unix::net::UnixStream::connect(&sock))
            .collect::<Result<Vec<_>, _>>()?;
        let mut half = std::os::unix::net::UnixStream::connect(&sock)?;
        std::io::Write::write_all(&mut half, b"{\"cmd\":\"sta")?;
        let mut took = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let r = control::call(&sock, &Request::Status)?;
            took.push(t.elapsed());
            ensure!(matches!(r, Response::Status(_)), "status: {r:?}");
        }
        took.sort();
        let median = took[took.len() / 2];
        eprintln!("  status under 1,000 idle clients: median {median:?}, all {took:?}");
        ensure!(
            median < Duration::from_millis(100),
            "status took {median:?} (median of 10) under 1,000 idle clients: {took:?}"
        );
        // The tunnel works meanwhile, and the idle clients are closed by
        // the daemon once their 5 s are up.
        ping_ok(&h1, &vxlan_addr(2))?;
        drop(idle);
        drop(half);
        Ok(())
    });
}

#[test]
fn gateway_bad_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[node]\nname = \"h1\"\nunderlay = \"192.0.2.1\"\n\n[gateway]\n\n\
         [[peer]]\nname = \"h2\"\nunderlay = \"192.0.2.2\"\n\n\
         [[peer.selector]]\nprotocol = \"udp\"\nports = \"4000-5000\"\n",
    )
    .unwrap();
    let out = Command::new(TUNSECD)
        .args(["--check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("peer[0].selector[0].ports") && err.contains("4500"),
        "{err}"
    );
}
