//! UDP: parse any datagram and verify its checksum against addresses taken
//! from the input (IPv4, IPv6 or mixed). A datagram that parses re-emits
//! to the same `Repr`, and after `fill_checksum` its checksum verifies.
//!
//! Input: one byte for the address families, then the source and
//! destination addresses (4 or 16 bytes each), then the datagram.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use tunsec_wire::udp::{HEADER_LEN, Packet, Repr};

fn take_addr(data: &mut &[u8], v6: bool) -> Option<IpAddr> {
    if v6 {
        let (a, rest) = data.split_first_chunk::<16>()?;
        *data = rest;
        Some(Ipv6Addr::from(*a).into())
    } else {
        let (a, rest) = data.split_first_chunk::<4>()?;
        *data = rest;
        Some(Ipv4Addr::from(*a).into())
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&families, mut data)) = input.split_first() else {
        return;
    };
    let Some(src) = take_addr(&mut data, families & 1 != 0) else {
        return;
    };
    let Some(dst) = take_addr(&mut data, families & 2 != 0) else {
        return;
    };
    let same_family = src.is_ipv4() == dst.is_ipv4();

    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let verified = packet.verify_checksum(src, dst);
    if !same_family {
        assert!(!verified, "mixed families must never verify");
    }
    if packet.checksum() == 0 {
        assert_eq!(verified, src.is_ipv4() && dst.is_ipv4());
    }
    let Ok(repr) = Repr::parse(&packet) else {
        return;
    };
    assert_eq!(repr.payload_len, packet.payload().len());

    // Re-emit, copy the data, and parse again.
    let mut buf = vec![0u8; repr.buffer_len() + repr.payload_len];
    let mut out = Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    out.payload_mut().copy_from_slice(packet.payload());
    assert_eq!(out.checksum(), 0);
    let reparsed = Repr::parse(&Packet::new_checked(&buf[..]).expect("emitted datagram checks"));
    assert_eq!(reparsed, Ok(repr));

    // With the original checksum put back, the bytes are the original
    // datagram (up to Length) and verify the same way.
    let mut out = Packet::new_unchecked(&mut buf[..]);
    out.set_checksum(packet.checksum());
    assert_eq!(buf[..], data[..HEADER_LEN + repr.payload_len]);
    assert_eq!(
        Packet::new_unchecked(&buf[..]).verify_checksum(src, dst),
        verified
    );

    // A filled checksum verifies for the same addresses, and is never 0.
    let mut out = Packet::new_unchecked(&mut buf[..]);
    match out.fill_checksum(src, dst) {
        Ok(()) => {
            assert!(same_family);
            assert_ne!(out.checksum(), 0);
            assert!(out.verify_checksum(src, dst), "filled checksum must verify");
        }
        Err(_) => assert!(!same_family),
    }
});
