//! Spoofed IKE_SA_INIT floods (issue 20): valid requests made by
//! tunsec-ike, and the Scapy scripts that send them with a forged source
//! address. Shared by `ike_flood_e2e.rs` (tunsecd as the connecting peer)
//! and `strongswan_flood.rs` (charon as the connecting peer).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use tunsec_ike::message::Identity;
use tunsec_ike::sa::{Config, IkeSa, SystemRandom};
use tunsec_lab::Lab;

/// Debian's Python, which has Scapy (python3-scapy).
pub(crate) const PYTHON: &str = "/usr/bin/python3";

/// `count` IKE_SA_INIT requests as `from` would send them to `to` on port
/// 500, each a new IKE SA (its own SPI, nonce and key share, with
/// tunsec-ike's default proposals), hex, one a line.
pub(crate) fn spoofed_requests(count: usize, from: &str, to: &str) -> anyhow::Result<String> {
    let dst: SocketAddr = format!("{to}:500").parse()?;
    let mut out = String::new();
    for _ in 0..count {
        let config = Config::new(
            Identity::Ipv4(from.parse()?),
            Some(Identity::Ipv4(to.parse()?)),
            tunsec_esp::Key::from_slice(b"not the key"),
        );
        let mut sa = IkeSa::initiate(config, dst, Instant::now(), Box::new(SystemRandom))?;
        let t = sa.poll_transmit().context("no IKE_SA_INIT")?;
        writeln!(out, "{}", hex::encode(&t.bytes))?;
    }
    Ok(out)
}

/// Writes a Scapy script into the lab's directory that sends `count`
/// requests (see [`spoofed_requests`]) from `from` to `to`, with `from`
/// as their source, over and over as fast as Scapy can until it is
/// killed. Returns its path.
pub(crate) fn flood_from(lab: &Lab, count: usize, from: &str, to: &str) -> anyhow::Result<PathBuf> {
    let requests = lab.dir.path().join("requests.hex");
    std::fs::write(&requests, spoofed_requests(count, from, to)?)?;
    let script = lab.dir.path().join("flood.py");
    std::fs::write(
        &script,
        format!(
            "from scapy.all import IP, UDP, Raw, send, conf\n\
             conf.verb = 0\n\
             pkts = [IP(src='{from}', dst='{to}')/UDP(sport=500, dport=500)/Raw(bytes.fromhex(l))\n\
             \x20       for l in open('{file}').read().split()]\n\
             while True:\n\
             \x20   send(pkts, inter=0)\n",
            file = requests.display()
        ),
    )?;
    Ok(script)
}

/// Starts the flood script `script` in namespace `ns` as the lab's
/// process `flood` (stop it with `lab.stop("flood")`).
pub(crate) fn start_flood(lab: &mut Lab, ns: &str, script: &Path) -> anyhow::Result<()> {
    let script = script.to_string_lossy().into_owned();
    lab.spawn("flood", ns, Path::new(PYTHON), &[&script])?;
    Ok(())
}
