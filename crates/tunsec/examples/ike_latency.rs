//! Measures IKE handshake latency between two `tunsecd` (overlay mode,
//! PSK), in network namespaces on this machine: `tunsec down` then `up`
//! on the initiator, and the time from `up` until both hosts hold the new
//! IKE SA and Child SA pair (IKE_SA_INIT on port 500, IKE_AUTH on the
//! ESP-in-UDP port after the move of RFC 7296 section 2.23, which the
//! receive worker hands to the IKE driver). A benchmark, not a test: it
//! prints the figures and asserts nothing about them.
//!
//! ```sh
//! cargo build --release -p tunsec --bins --examples
//! target/release/examples/ike_latency [ROUNDS]
//! ```
//!
//! Needs root and iproute2. The status is polled every 2 ms, so each
//! figure is late by up to that much plus one status call.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tunsec::control::Request;
use tunsec_lab::Lab;

mod support;
use support::*;

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()
        .context("ROUNDS: a whole number")?
        .unwrap_or(20);
    let tunsecd = tunsecd()?;
    let mut lab = Lab::new("tsikelat")?;
    let ul = lab.add_ns("ul")?;
    lab.exec(&ul, "ip", &["link", "add", "br0", "type", "bridge"])?;
    lab.exec(&ul, "ip", &["link", "set", "br0", "up"])?;
    let mut sockets = Vec::new();
    for n in 1..=2u8 {
        let h = lab.add_ns(&format!("h{n}"))?;
        let port = format!("ul-h{n}");
        lab.veth(&h, "eth0", &ul, &port)?;
        lab.exec(&ul, "ip", &["link", "set", &port, "master", "br0"])?;
        lab.exec(
            &h,
            "ip",
            &["addr", "add", &format!("192.0.2.{n}/24"), "dev", "eth0"],
        )?;
        let config = write_pair_config(&lab, n, "a latency measurement key")?;
        lab.spawn(
            &format!("h{n}"),
            &h,
            &tunsecd,
            &["--config", &config.to_string_lossy()],
        )?;
        sockets.push(lab.dir.path().join(format!("h{n}.sock")));
    }
    let up = || established(&sockets[0], "h2") && established(&sockets[1], "h1");
    if let Err(e) = lab.wait_for("the first IKE SA", Duration::from_secs(20), up) {
        for n in 1..=2 {
            let log = lab.dir.path().join(format!("h{n}.log"));
            eprintln!(
                "--- h{n}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        return Err(e);
    }

    let mut took = Vec::new();
    for _ in 0..rounds {
        call(&sockets[0], Request::Down { peer: "h2".into() })?;
        lab.wait_for("the IKE SA to go", Duration::from_secs(10), || {
            !established(&sockets[0], "h2") && !established(&sockets[1], "h1")
        })?;
        let t = Instant::now();
        call(&sockets[0], Request::Up { peer: "h2".into() })?;
        while !up() {
            ensure!(
                t.elapsed() < Duration::from_secs(10),
                "no IKE SA 10 s after up"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        took.push(t.elapsed());
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "IKE handshake, up to Child SA installed on both hosts, {rounds} rounds: \
         median {:.1} ms, min {:.1} ms, max {:.1} ms",
        ms(took[took.len() / 2]),
        ms(took[0]),
        ms(took[took.len() - 1])
    );
    Ok(())
}
