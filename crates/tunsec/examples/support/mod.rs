//! What the examples share: the `tunsecd` binary beside them, a pair of
//! hosts' configs, and the control calls that tell a tunnel is up.

// Each example compiles this module; not every example uses every helper.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use tunsec::control::{self, Request, Response};
use tunsec::status::Status;
use tunsec_lab::Lab;

/// The `tunsecd` of the same build as the running example
/// (`target/<profile>/tunsecd`).
pub(crate) fn tunsecd() -> anyhow::Result<PathBuf> {
    let tunsecd = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .context("no target directory")?
        .join("tunsecd");
    ensure!(
        tunsecd.exists(),
        "{} is missing: cargo build --release -p tunsec --bins --examples",
        tunsecd.display()
    );
    Ok(tunsecd)
}

/// Host `n`'s config (1 or 2, at 192.0.2.`n`): one VXLAN network, the
/// other host as an IKE peer under `require` with the pre-shared key
/// `secret`, and its control socket in the lab's directory
/// (`h<n>.sock`).
pub(crate) fn write_pair_config(lab: &Lab, n: u8, secret: &str) -> anyhow::Result<PathBuf> {
    let peer = 3 - n;
    let psk = lab.dir.path().join(format!("h{n}.psk"));
    tunsec::config::write_secret(&psk, format!("{secret}\n"))?;
    let mut c = String::new();
    writeln!(
        c,
        "[node]\nname = \"h{n}\"\nunderlay = \"192.0.2.{n}\"\ncontrol_socket = \"{}\"\n",
        lab.dir.path().join(format!("h{n}.sock")).display()
    )?;
    writeln!(
        c,
        "[[network]]\nname = \"blue\"\nvni = 100\nencapsulation = \"vxlan\"\n"
    )?;
    writeln!(
        c,
        "[[peer]]\nname = \"h{peer}\"\nunderlay = \"192.0.2.{peer}\"\nnetworks = [\"blue\"]\n\
         policy = \"require\"\n\n[peer.ike]\npsk_file = \"{}\"\n",
        psk.display()
    )?;
    let path = lab.dir.path().join(format!("h{n}.toml"));
    std::fs::write(&path, c)?;
    Ok(path)
}

/// Whether host `sock` holds an established IKE SA with `peer` and both
/// SAs of its Child SA.
pub(crate) fn established(sock: &Path, peer: &str) -> bool {
    let Ok(Response::Status(s)) = control::call(sock, &Request::Status) else {
        return false;
    };
    peer_up(&s, peer)
}

fn peer_up(s: &Status, peer: &str) -> bool {
    s.peers.iter().any(|p| {
        p.name == peer
            && p.ike
                .as_ref()
                .is_some_and(|i| i.state == "established" && i.child_sas >= 1)
            && p.sas.iter().any(|sa| sa.direction == "in")
            && p.sas.iter().any(|sa| sa.direction == "out")
    })
}

/// A control request that must not fail.
pub(crate) fn call(sock: &Path, request: Request) -> anyhow::Result<()> {
    match control::call(sock, &request)? {
        Response::Error { message } => bail!("{request:?}: {message}"),
        _ => Ok(()),
    }
}
