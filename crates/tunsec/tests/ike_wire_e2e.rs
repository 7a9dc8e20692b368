//! End-to-end tests of `tunsecd` with IKEv2 (pre-shared keys), in network
//! namespaces: the test itself speaks IKE to a daemon. Two hosts on an
//! underlay bridge run the real `tunsecd` with `[peer.ike]` and no manual
//! keys (helpers in `ike/`).
//!
//! - `ike_on_the_esp_port`: an initiator (the test itself, with
//!   `tunsec_ike`, relayed through a UDP socket in h2's namespace) that
//!   speaks IKE to h1's ESP-in-UDP port behind the non-ESP marker gets its
//!   answers from that port with the marker, and the IKE and Child SAs come
//!   up on h1.
//! - `ike_crossing_attempts_keep_the_lower_nonce`: h1's IKE_SA_INIT is
//!   out, unanswered, when one of the test's (as h2) crosses it with a
//!   higher nonce: h1 ignores the test's, sends its own again, and
//!   completes it with the test as responder.
//!
//! They need root, iproute2, ping, tshark (dumpcap) and nftables, and
//! python3; they fail, never skip, when something is missing.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

mod common;
mod ike;
use ike::*;

/// The IKE config of a test that speaks IKE as h2 (address `a2`) to h1
/// (`a1`) with `psk`: IP identities, UDP between the two addresses.
fn as_h2(psk: &str, a1: IpAddr, a2: IpAddr) -> tunsec_ike::sa::Config {
    use tunsec_ike::message::Identity;
    use tunsec_ike::sa::{Config, ts};
    Config::new(
        Identity::Ipv4("192.0.2.2".parse().expect("an address")),
        Some(Identity::Ipv4("192.0.2.1".parse().expect("an address"))),
        tunsec_esp::Key::from_slice(psk.as_bytes()),
    )
    .with_selectors(
        vec![ts::host(a2, 17, 0, u16::MAX)],
        vec![ts::host(a1, 17, 0, u16::MAX)],
    )
}

/// Fails unless the test's own IKE SA (its `role`) reported the IKE SA
/// and a Child SA up.
fn ensure_sas_up(sa: &mut tunsec_ike::sa::IkeSa, role: &str) -> anyhow::Result<()> {
    use tunsec_ike::sa::Event;
    let mut events = Vec::new();
    while let Some(e) = sa.poll_event() {
        events.push(e);
    }
    ensure!(
        events.contains(&Event::IkeSaEstablished)
            && events.iter().any(|e| matches!(e, Event::ChildSaUp { .. })),
        "the test's {role} did not get its SAs: {events:?}"
    );
    Ok(())
}

/// A two-port UDP relay in h2's namespace for a test that speaks IKE as
/// h2: binds 192.0.2.2 ports 500 and 4500, prints each datagram from h1
/// as `LOCAL_PORT REMOTE_PORT HEX`, and sends each stdin line `LOCAL_PORT
/// REMOTE_PORT HEX` from that port to 192.0.2.1.
const RELAY2: &str = r#"
import select, socket, sys, threading
socks = {}
for port in (500, 4500):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("192.0.2.2", port))
    socks[port] = s
def send():
    for line in sys.stdin:
        local, remote, data = line.split()
        socks[int(local)].sendto(bytes.fromhex(data), ("192.0.2.1", int(remote)))
threading.Thread(target=send, daemon=True).start()
while True:
    ready, _, _ = select.select(list(socks.values()), [], [], 30)
    if not ready:
        break
    for s in ready:
        data, addr = s.recvfrom(65535)
        if addr[0] == "192.0.2.1":
            print(s.getsockname()[1], addr[1], data.hex(), flush=True)
"#;

/// Crossing IKE_SA_INITs (RFC 7296 section 2.8.1's rule for colliding
/// rekeys, applied to a simultaneous start): h1's attempt is out,
/// unanswered, when h2's crosses it. Both sides keep the attempt with the
/// lower nonce. Here the test is h2 with the highest nonce there is, so
/// h1 must refuse it, send its own IKE_SA_INIT again at once, and
/// complete its own attempt with the test as responder. (Before, both
/// sides could give way to each other and wait as responders forever.)
#[test]
fn ike_crossing_attempts_keep_the_lower_nonce() {
    use tunsec_ike::message::{ExchangeType, Header};
    use tunsec_ike::sa::{IkeSa, SystemRandom};

    with_lab("tsike-x", |lab| {
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        let psk = "crossing-attempts";
        let c1 = write_config(lab, 1, 2, psk)?;
        let mut relay = Command::new("ip")
            .args(["netns", "exec", &h2, "/usr/bin/python3", "-c", RELAY2])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the UDP relay")?;
        let mut to_relay = relay.stdin.take().context("relay stdin")?;
        let from_relay = BufReader::new(relay.stdout.take().context("relay stdout")?);
        let (tx, rx) = std::sync::mpsc::channel::<(u16, u16, Vec<u8>)>();
        std::thread::spawn(move || {
            for line in from_relay.lines().map_while(Result::ok) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if let (Some(l), Some(r), Some(Ok(d))) = (
                    f.first().and_then(|v| v.parse().ok()),
                    f.get(1).and_then(|v| v.parse().ok()),
                    f.get(2).map(hex::decode),
                ) {
                    let _ = tx.send((l, r, d));
                }
            }
        });
        let next = |what: &str| {
            rx.recv_timeout(Duration::from_secs(10))
                .with_context(|| format!("nothing from h1 while waiting for {what}"))
        };
        let is_init_request = |d: &[u8]| {
            Header::decode(d).is_ok_and(|h| {
                h.exchange_type == ExchangeType::IkeSaInit && !h.response && h.initiator
            })
        };
        let result = (|| -> anyhow::Result<()> {
            start_tunsecd(lab, &h1, 1, &c1)?;
            // h1's IKE_SA_INIT and its first retransmission: left
            // unanswered (before, an attempt in that state gave way to any
            // of the peer's).
            for what in ["h1's IKE_SA_INIT", "its retransmission"] {
                let (_, _, d) = next(what)?;
                ensure!(is_init_request(&d), "h1 sent something else than {what}");
            }
            let (a1, a2): (IpAddr, IpAddr) = (host_addr(1).parse()?, host_addr(2).parse()?);
            let config = || as_h2(psk, a1, a2);
            // Ours crosses it, with the highest nonce.
            let h1_500 = SocketAddr::new(a1, 500);
            let mut ours =
                IkeSa::initiate(config(), h1_500, Instant::now(), Box::new(NonceOf(0xff, 0)))?;
            let request = ours.poll_transmit().context("no IKE_SA_INIT of ours")?;
            let sent = Instant::now();
            writeln!(to_relay, "500 500 {}", hex::encode(&request.bytes))?;
            // h1 does not answer ours, and sends its own IKE_SA_INIT.
            let (our_spi, _) = ours.spis();
            let again = loop {
                let (_, _, d) = next("h1's IKE_SA_INIT after ours")?;
                let h = Header::decode(&d)?;
                ensure!(
                    h.initiator_spi != our_spi,
                    "h1 answered the attempt with the higher nonce"
                );
                if is_init_request(&d) {
                    break d;
                }
            };
            eprintln!(
                "  h1 sent its IKE_SA_INIT {:?} after ours crossed it",
                sent.elapsed()
            );
            // The test gives way: it answers h1's attempt as responder.
            let mut responder = IkeSa::respond(config(), Box::new(SystemRandom));
            responder.handle_datagram(Instant::now(), h1_500, &again);
            let answer = responder.poll_transmit().context("no IKE_SA_INIT answer")?;
            writeln!(to_relay, "500 500 {}", hex::encode(&answer.bytes))?;
            // IKE_AUTH (retransmissions of h1's IKE_SA_INIT may come
            // first): on port 4500 behind the non-ESP marker once h1 moved
            // there (RFC 7296 section 2.23), else on port 500.
            let (port, auth) = loop {
                let (local, remote, d) = next("h1's IKE_AUTH")?;
                ensure!(local == remote, "h1 sent from {remote} to {local}");
                let d = match local {
                    4500 => d
                        .strip_prefix(&[0u8; 4])
                        .context("IKE on 4500 without the non-ESP marker")?
                        .to_vec(),
                    _ => d,
                };
                if !is_init_request(&d) {
                    break (local, d);
                }
            };
            responder.handle_datagram(Instant::now(), SocketAddr::new(a1, port), &auth);
            let answer = responder.poll_transmit().context("no IKE_AUTH answer")?;
            let marker = if port == 4500 { "00000000" } else { "" };
            writeln!(
                to_relay,
                "{port} {port} {marker}{}",
                hex::encode(&answer.bytes)
            )?;
            ensure_sas_up(&mut responder, "responder")?;
            let (spi_i, spi_r) = responder.spis();
            lab.wait_for("h1's IKE SA", Duration::from_secs(10), || {
                status(lab, 1).is_ok_and(|s| {
                    ike_of(&s, "h2").is_ok_and(|i| {
                        i.state == "established"
                            && i.role == "initiator"
                            && i.spi_i == Some(format!("{spi_i:#018x}"))
                            && i.spi_r == Some(format!("{spi_r:#018x}"))
                    })
                })
            })?;
            Ok(())
        })();
        drop(to_relay);
        let _ = relay.kill();
        let _ = relay.wait();
        result
    });
}

/// A UDP relay in a namespace: binds 192.0.2.2:4500, sends each hex line
/// of stdin to 192.0.2.1:4500 and prints the answer from there in hex.
const RELAY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("192.0.2.2", 4500))
s.settimeout(5)
for line in sys.stdin:
    s.sendto(bytes.fromhex(line.strip()), ("192.0.2.1", 4500))
    while True:
        data, addr = s.recvfrom(65535)
        if addr == ("192.0.2.1", 4500):
            break
    print(data.hex(), flush=True)
"#;

#[test]
fn ike_on_the_esp_port() {
    use tunsec_ike::sa::IkeSa;

    with_lab("tsike-esp", |lab| {
        let t0 = Instant::now();
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        let psk = "shared-over-the-esp-port";
        let c1 = write_config(lab, 1, 2, psk)?;
        start_tunsecd(lab, &h1, 1, &c1)?;

        // h2 runs no tunsecd: the test is h2's IKE initiator. h1, the
        // designated initiator, tries first; its unanswered attempt gives
        // way to ours because our nonce is the lowest there is (all zero).
        std::thread::sleep(Duration::from_millis(800));
        let mut relay = Command::new("ip")
            .args(["netns", "exec", &h2, "/usr/bin/python3", "-c", RELAY])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the UDP relay")?;
        let mut to_relay = relay.stdin.take().context("relay stdin")?;
        let mut from_relay = BufReader::new(relay.stdout.take().context("relay stdout")?);
        let (a1, a2): (IpAddr, IpAddr) = (host_addr(1).parse()?, host_addr(2).parse()?);
        let config = as_h2(psk, a1, a2);
        let remote = SocketAddr::new(a1, ESP_PORT);
        let mut sa = IkeSa::initiate(config, remote, Instant::now(), Box::new(NonceOf(0x00, 0)))?;
        let result = (|| -> anyhow::Result<()> {
            // IKE_SA_INIT, then IKE_AUTH.
            for exchange in ["IKE_SA_INIT", "IKE_AUTH"] {
                let request = sa
                    .poll_transmit()
                    .with_context(|| format!("no {exchange} request"))?;
                writeln!(to_relay, "00000000{}", hex::encode(&request.bytes))?;
                let mut line = String::new();
                from_relay.read_line(&mut line)?;
                let answer = hex::decode(line.trim()).with_context(|| {
                    format!("no {exchange} answer from h1's port 4500: {line:?}")
                })?;
                ensure!(
                    answer.len() > 4 && answer[..4] == [0, 0, 0, 0],
                    "h1's {exchange} answer on port 4500 lacks the non-ESP marker"
                );
                sa.handle_datagram(Instant::now(), remote, &answer[4..]);
            }
            Ok(())
        })();
        drop(to_relay);
        let _ = relay.kill();
        let _ = relay.wait();
        result?;
        ensure_sas_up(&mut sa, "initiator")?;

        // h1's side: established, SAs installed, the messages counted.
        let (spi_i, spi_r) = sa.spis();
        let s1 = status(lab, 1)?;
        let ike = ike_of(&s1, "h2")?;
        ensure!(
            ike.state == "established"
                && ike.child_sas == 1
                && ike.spi_i == Some(format!("{spi_i:#018x}"))
                && ike.spi_r == Some(format!("{spi_r:#018x}")),
            "h1 does not show the IKE SA the test made ({spi_i:#x}/{spi_r:#x}):\n{}",
            s1.render()
        );
        let p = s1
            .peers
            .iter()
            .find(|p| p.name == "h2")
            .context("no peer h2")?;
        ensure!(
            p.sas.len() == 2,
            "h1 has {} SAs for h2:\n{}",
            p.sas.len(),
            s1.render()
        );
        ensure!(
            s1.ike_on_esp_port >= 2 && s1.drops.get("ike").copied().unwrap_or(0) == 0,
            "h1 counted {} IKE messages on port 4500 (and {:?} dropped)",
            s1.ike_on_esp_port,
            s1.drops.get("ike")
        );
        phase(lab, "IKE on port 4500", t0);
        Ok(())
    });
}
