//! tunsecd under the conditions of `dist/tunsecd.service`, in network
//! namespaces: systemd's notify protocol and the unit's capabilities.
//!
//! Each test binds a Unix datagram socket, as systemd's notify socket,
//! and starts tunsecd with `NOTIFY_SOCKET` and `WATCHDOG_USEC` pointing at
//! it, under `setpriv` with the unit's `CapabilityBoundingSet`
//! ([`UNIT_CAPS`]: CAP_NET_ADMIN, CAP_NET_RAW, CAP_NET_BIND_SERVICE, read
//! from the unit file) and `NoNewPrivileges`. They prove that:
//!
//! - `overlay_notify`: in overlay mode (IKE on port 500, raw ESP) tunsecd
//!   starts with only those capabilities; READY=1 comes once the control
//!   socket answers; WATCHDOG=1 comes at about half of WATCHDOG_USEC,
//!   not once per turn of the loop; `tunsec reload` gives RELOADING=1
//!   (with MONOTONIC_USEC) then READY=1; SIGTERM gives STOPPING=1. Without
//!   CAP_NET_ADMIN it fails and never says READY=1 (so the bounding set
//!   really binds).
//! - `gateway_notify`: in gateway mode (rules, routes, the nft guard, the
//!   TUN device's sysctls) the same capabilities suffice, READY=1 comes
//!   once the control socket answers and the nft table is in place, and
//!   SIGTERM gives STOPPING=1.
//!
//! Run as root; namespaces `pkg1-*` and `pkg2-*`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::{TUNSECD, add_host, add_underlay, dump_logs, socket_path};
use tunsec::control::{self, Request, Response};
use tunsec_lab::Lab;

const TUNSEC: &str = env!("CARGO_BIN_EXE_tunsec");
/// The unit the package installs.
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../dist/tunsecd.service");
/// WATCHDOG_USEC for the tests: 400 ms, so a ping every 200 ms.
const WATCHDOG_USEC: u64 = 400_000;

/// The capabilities of the unit's `CapabilityBoundingSet=`, for
/// `setpriv --bounding-set` (`-all,+net_admin,...`).
fn unit_caps() -> anyhow::Result<String> {
    let unit = std::fs::read_to_string(UNIT).with_context(|| format!("cannot read {UNIT}"))?;
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .context("no CapabilityBoundingSet= in the unit")?;
    let caps: Vec<String> = line
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    ensure!(!caps.is_empty(), "empty CapabilityBoundingSet=");
    Ok(format!("-all,{}", caps.join(",")))
}

/// The notify socket of one daemon, and what it has received so far.
struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
    got: Vec<(Instant, String)>,
}

impl Notify {
    fn bind(lab: &Lab, name: &str) -> anyhow::Result<Self> {
        let path = lab.dir.path().join(format!("{name}.notify"));
        let socket = UnixDatagram::bind(&path)?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(Self {
            socket,
            path,
            got: Vec::new(),
        })
    }

    /// Receives until a message contains `what` (returning it), or fails
    /// after `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.got.push((Instant::now(), msg.clone()));
                    if msg.lines().any(|l| l == what) {
                        return Ok(msg);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        bail!(
            "no {what} within {timeout:?}; received: {:?}",
            self.got.iter().map(|(_, m)| m).collect::<Vec<_>>()
        )
    }

    /// Everything that arrives during `time`.
    fn collect(&mut self, time: Duration) -> Vec<(Instant, String)> {
        let start = self.got.len();
        let deadline = Instant::now() + time;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.got.push((Instant::now(), msg));
            }
        }
        self.got[start..].to_vec()
    }
}

/// Starts tunsecd (as `label`, its log `label.log`) in `ns` as the unit
/// would: under `setpriv` with bounding set `caps` and no new privileges,
/// with the notify socket and a watchdog.
fn start_as_unit(
    lab: &mut Lab,
    label: &str,
    ns: &str,
    config: &Path,
    notify: &Notify,
    caps: &str,
) -> anyhow::Result<()> {
    let notify_env = format!("NOTIFY_SOCKET={}", notify.path.display());
    let watchdog_env = format!("WATCHDOG_USEC={WATCHDOG_USEC}");
    let config = config.to_string_lossy().into_owned();
    lab.spawn(
        label,
        ns,
        Path::new("env"),
        &[
            &notify_env,
            &watchdog_env,
            "setpriv",
            "--no-new-privs",
            "--bounding-set",
            caps,
            "--inh-caps",
            "-all",
            "--",
            TUNSECD,
            "--config",
            &config,
        ],
    )?;
    Ok(())
}

/// Host h1 (192.0.2.1) on an underlay bridge; the peer, 192.0.2.2, is
/// never there: IKE keeps trying, which is all these tests need.
fn host(lab: &mut Lab) -> anyhow::Result<String> {
    let ul = add_underlay(lab)?;
    add_host(lab, &ul, "h1", 1)
}

/// The config of h1: `mode` is the overlay's network or the gateway's
/// section; one IKE peer (PSK) at 192.0.2.2.
fn write_config(lab: &Lab, body: &str) -> anyhow::Result<PathBuf> {
    let psk = lab.dir.path().join("h1.psk");
    std::fs::write(&psk, "a systemd test key, long enough\n")?;
    std::fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let config = format!(
        "[node]\nname = \"h1\"\nunderlay = \"192.0.2.1\"\ncontrol_socket = \"{}\"\n\n{body}\n\
         [peer.ike]\npsk_file = \"h1.psk\"\n",
        socket_path(lab, 1).display()
    );
    let path = lab.dir.path().join("h1.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

fn answers(lab: &Lab) -> bool {
    matches!(
        control::call(&socket_path(lab, 1), &Request::Status),
        Ok(Response::Status(_))
    )
}

fn with_logs(lab: &Lab, result: anyhow::Result<()>) {
    if let Err(e) = result {
        dump_logs(lab);
        panic!("{e:#}");
    }
}

#[test]
fn overlay_notify() {
    let mut lab = Lab::new("pkg1").expect("lab");
    let result = overlay_notify_in(&mut lab);
    with_logs(&lab, result);
}

fn overlay_notify_in(lab: &mut Lab) -> anyhow::Result<()> {
    let h = host(lab)?;
    let config = write_config(
        lab,
        "[esp]\nencapsulation = \"esp\"\n\n\
         [[network]]\nname = \"blue\"\nvni = 100\nencapsulation = \"vxlan\"\n\n\
         [[peer]]\nname = \"h2\"\nunderlay = \"192.0.2.2\"\nnetworks = [\"blue\"]\n",
    )?;
    let caps = unit_caps()?;
    ensure!(
        caps.contains("+net_admin") && caps.contains("+net_raw"),
        "{caps}"
    );

    // Without CAP_NET_ADMIN: no TAP device, no start, no READY=1.
    let mut notify = Notify::bind(lab, "nocap")?;
    let without = caps.replace(",+net_admin", "");
    start_as_unit(lab, "nocap", &h, &config, &notify, &without)?;
    let failed = notify.wait_for("READY=1", Duration::from_secs(3));
    ensure!(failed.is_err(), "READY=1 without CAP_NET_ADMIN: {failed:?}");
    ensure!(!lab.stop("nocap"), "tunsecd ran without CAP_NET_ADMIN");
    let log = std::fs::read_to_string(lab.dir.path().join("nocap.log"))?;
    ensure!(log.contains("TAP"), "tunsecd without CAP_NET_ADMIN: {log}");

    // With the unit's capabilities.
    let mut notify = Notify::bind(lab, "h1")?;
    start_as_unit(lab, "h1", &h, &config, &notify, &caps)?;
    let ready = notify.wait_for("READY=1", Duration::from_secs(20))?;
    // Ready means ready: the control socket answers at once.
    ensure!(
        answers(lab),
        "READY=1 ({ready:?}) but no answer on the control socket"
    );
    // It runs with exactly the unit's capabilities: CAP_NET_BIND_SERVICE
    // (bit 10), CAP_NET_ADMIN (12), CAP_NET_RAW (13).
    let pid = lab.pid("h1").context("h1 is gone")?;
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let eff = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim);
    ensure!(
        eff == Some("0000000000003400"),
        "tunsecd's effective capabilities: {eff:?}"
    );

    // The watchdog: a ping every WATCHDOG_USEC / 2 (200 ms), not one per
    // turn of the 20 ms loop.
    let window = Duration::from_secs(2);
    let pings = notify
        .collect(window)
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    ensure!(
        (5..=15).contains(&pings),
        "{pings} WATCHDOG=1 in {window:?}, expected about 10"
    );

    // A reload: RELOADING=1 with the time, then READY=1.
    let out = tunsec_lab::run(
        TUNSEC,
        &["reload", "--socket", &socket_path(lab, 1).to_string_lossy()],
    )?;
    ensure!(out.status.success(), "tunsec reload: {out:?}");
    let reloading = notify.wait_for("RELOADING=1", Duration::from_secs(5))?;
    ensure!(
        reloading.contains("MONOTONIC_USEC="),
        "RELOADING=1 without the time: {reloading:?}"
    );
    notify.wait_for("READY=1", Duration::from_secs(5))?;

    // The stop.
    let pid = lab.pid("h1").context("h1 is gone")?;
    tunsec_lab::run("kill", &["-TERM", &pid.to_string()])?;
    notify.wait_for("STOPPING=1", Duration::from_secs(5))?;
    ensure!(lab.stop("h1"), "tunsecd did not exit cleanly");
    Ok(())
}

#[test]
fn gateway_notify() {
    let mut lab = Lab::new("pkg2").expect("lab");
    let result = gateway_notify_in(&mut lab);
    with_logs(&lab, result);
}

fn gateway_notify_in(lab: &mut Lab) -> anyhow::Result<()> {
    let h = host(lab)?;
    let config = write_config(
        lab,
        "[gateway]\nnft_table = \"pkg2_gw\"\n\n\
         [[peer]]\nname = \"h2\"\nunderlay = \"192.0.2.2\"\n\n\
         [[peer.selector]]\nprotocol = \"udp\"\nports = 4789\n",
    )?;
    let mut notify = Notify::bind(lab, "h1")?;
    start_as_unit(lab, "h1", &h, &config, &notify, &unit_caps()?)?;
    notify.wait_for("READY=1", Duration::from_secs(20))?;
    ensure!(answers(lab), "READY=1 but no answer on the control socket");
    // Everything gateway mode sets up is in place by then: the guard, the
    // steering rule, the TUN device with its sysctls.
    let nft = lab.exec(&h, "nft", &["list", "table", "inet", "pkg2_gw"])?;
    ensure!(
        String::from_utf8_lossy(&nft.stdout).contains("4789"),
        "nft guard: {}",
        String::from_utf8_lossy(&nft.stdout)
    );
    let rules = lab.exec(&h, "ip", &["rule", "show"])?;
    ensure!(
        String::from_utf8_lossy(&rules.stdout).contains("4789"),
        "rules: {}",
        String::from_utf8_lossy(&rules.stdout)
    );
    let rp = lab.exec(&h, "cat", &["/proc/sys/net/ipv4/conf/tunsec-gw/rp_filter"])?;
    ensure!(
        String::from_utf8_lossy(&rp.stdout).trim() == "0",
        "rp_filter of the TUN device: {:?}",
        String::from_utf8_lossy(&rp.stdout)
    );
    notify.wait_for("WATCHDOG=1", Duration::from_secs(2))?;
    let pid = lab.pid("h1").context("h1 is gone")?;
    tunsec_lab::run("kill", &["-TERM", &pid.to_string()])?;
    notify.wait_for("STOPPING=1", Duration::from_secs(5))?;
    ensure!(lab.stop("h1"), "tunsecd did not exit cleanly");
    Ok(())
}
