//! The inbound ESP path on untrusted bytes.
//!
//! The first input byte picks one of the fixed SAs (see
//! `tunsec_fuzz::Config`: suite, mode, encapsulation, ESN, null cipher,
//! replay window position). The rest goes, each time into a fresh SA and a
//! fresh copy, through `Sa::open_esp` (as an ESP packet), `Sa::open` (as an
//! IP packet) and `Engine::inbound` (an engine with the inbound SA and a few
//! policies). Each returns `Ok` or `Err`, never panics, writes nothing
//! outside the packet's window, and when it succeeds leaves a well-formed
//! result.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tunsec_esp::{DropReason, FlowKey, Inbound, PacketBuf};
use tunsec_fuzz::{Config, ModeKind, SPI};
use tunsec_wire::ip::IpProtocol;
use tunsec_wire::{ipv4, ipv6};

/// Bytes around the packet, which must stay untouched.
const GUARD: usize = 16;
const SENTINEL: u8 = 0xa5;

/// The packet in the middle of a buffer with guard bytes on both sides.
fn guarded(packet: &[u8]) -> Vec<u8> {
    let mut buf = vec![SENTINEL; GUARD + packet.len() + GUARD];
    buf[GUARD..GUARD + packet.len()].copy_from_slice(packet);
    buf
}

/// Checks that nothing was written to the guards and that the window
/// stayed inside the original packet; returns the window.
fn check_guards(buf: &[u8], len: usize, window: (usize, usize)) -> (usize, usize) {
    assert!(
        buf[..GUARD].iter().all(|&b| b == SENTINEL),
        "wrote before the packet"
    );
    assert!(
        buf[GUARD + len..].iter().all(|&b| b == SENTINEL),
        "wrote after the packet"
    );
    assert!(GUARD <= window.0 && window.0 <= window.1 && window.1 <= GUARD + len);
    window
}

/// A packet that `Sa::open` or `Engine::inbound` hands back decrypted must
/// be a whole, well-formed IP packet.
fn assert_well_formed_ip(packet: &[u8], config: &Config) {
    match tunsec_wire::ip::version(packet) {
        Ok(4) => {
            let p = ipv4::Packet::new_checked(packet).expect("decrypted IPv4 checks");
            assert!(p.verify_checksum(), "decrypted IPv4 checksum");
            assert_eq!(usize::from(p.total_len()), packet.len());
        }
        Ok(6) => {
            let p = ipv6::Packet::new_checked(packet).expect("decrypted IPv6 checks");
            assert_eq!(
                ipv6::HEADER_LEN + usize::from(p.payload_len()),
                packet.len()
            );
        }
        other => panic!("decrypted packet of version {other:?}"),
    }
    if config.mode == ModeKind::TransportSelectors {
        let flow = FlowKey::from_ip_packet(packet).expect("decrypted packet has a flow");
        assert_eq!(
            flow.protocol,
            u8::from(IpProtocol::Udp),
            "selector is UDP only"
        );
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&byte, packet)) = input.split_first() else {
        return;
    };
    let config = Config::from_byte(byte);
    let now = Instant::now();
    let len = packet.len();

    // 1. The bytes as an ESP packet (SPI to ICV).
    let mut sa = config.inbound_sa(now);
    let mut bytes = guarded(packet);
    let mut buf = PacketBuf::new(&mut bytes, GUARD, GUARD + len);
    let result = sa.open_esp(&mut buf, now);
    let window = (buf.start(), buf.end());
    check_guards(&bytes, len, window);
    match result {
        Ok(next_header) => {
            assert_ne!(next_header, u8::from(IpProtocol::NoNextHeader));
            let overhead = sa.esp_overhead();
            assert!(window.1 - window.0 + overhead.head + 2 + config.suite.icv_len() <= len);
            assert_eq!(sa.counters().packets, 1);
            // The same packet again is a replay.
            let mut again = packet.to_vec();
            let mut buf = PacketBuf::whole(&mut again);
            assert_eq!(sa.open_esp(&mut buf, now), Err(DropReason::Replay));
        }
        Err(reason) => assert_eq!(sa.counters().drops.get(reason), 1),
    }

    // 2. The bytes as an IP packet carrying ESP for this SA.
    let mut sa = config.inbound_sa(now);
    let mut bytes = guarded(packet);
    let mut buf = PacketBuf::new(&mut bytes, GUARD, GUARD + len);
    let result = sa.open(&mut buf, now);
    let window = (buf.start(), buf.end());
    check_guards(&bytes, len, window);
    if result.is_ok() {
        assert_well_formed_ip(&bytes[window.0..window.1], &config);
    }

    // 3. The bytes as an IP packet received by an engine.
    let mut engine = config.engine(now);
    let mut bytes = guarded(packet);
    let mut buf = PacketBuf::new(&mut bytes, GUARD, GUARD + len);
    let result = engine.inbound(&mut buf, now);
    let window = (buf.start(), buf.end());
    check_guards(&bytes, len, window);
    match result {
        Ok(Inbound::Decrypted(spi)) => {
            assert_eq!(spi, SPI);
            assert_well_formed_ip(&bytes[window.0..window.1], &config);
        }
        Ok(Inbound::Bypass | Inbound::Ike | Inbound::Keepalive) => {
            assert_eq!(
                window,
                (GUARD, GUARD + len),
                "a packet let through is unchanged"
            );
            assert_eq!(&bytes[GUARD..GUARD + len], packet);
        }
        Err(_) => {}
    }
});
