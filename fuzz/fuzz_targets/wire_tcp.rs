//! TCP: parse any segment and verify its checksum against addresses taken
//! from the input. A segment that parses keeps its header and payload
//! inside the buffer, and after `fill_checksum` its checksum verifies.
//!
//! Input: one byte for the address family (bit 0: IPv6), the source and
//! destination addresses (4 or 16 bytes each), then the segment.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use tunsec_wire::tcp::{HEADER_LEN, MAX_HEADER_LEN, Packet};

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
    let Some((&family, mut data)) = input.split_first() else {
        return;
    };
    let v6 = family & 1 != 0;
    let Some(src) = take_addr(&mut data, v6) else {
        return;
    };
    let Some(dst) = take_addr(&mut data, v6) else {
        return;
    };
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let header_len = packet.header_len();
    assert!((HEADER_LEN..=MAX_HEADER_LEN).contains(&header_len));
    assert_eq!(header_len + packet.payload().len(), data.len());
    assert_eq!(packet.options().len(), header_len - HEADER_LEN);
    let _ = (
        packet.seq_number(),
        packet.ack_number(),
        packet.flags(),
        packet.window(),
        packet.urgent(),
        packet.verify_checksum(src, dst),
    );

    let mut buf = data.to_vec();
    let mut out = Packet::new_checked(&mut buf[..]).expect("the same bytes check");
    out.fill_checksum(src, dst).expect("one family");
    assert!(out.verify_checksum(src, dst));
    assert_eq!(buf[..16], data[..16]);
    assert_eq!(buf[18..], data[18..]);
});
