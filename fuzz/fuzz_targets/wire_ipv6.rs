//! IPv6: parse any packet; a packet that parses re-emits and parses back
//! to the same `Repr`, with the same fixed header bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunsec_wire::ipv6::{HEADER_LEN, MAX_FLOW_LABEL, Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let _ = (
        packet.traffic_class(),
        packet.flow_label(),
        packet.payload().len(),
    );
    let Ok(repr) = Repr::parse(&packet) else {
        return;
    };
    assert!(repr.flow_label <= MAX_FLOW_LABEL);
    assert_eq!(packet.payload().len(), repr.payload_len);

    let mut buf = vec![0u8; repr.buffer_len() + repr.payload_len];
    let mut out = Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    out.payload_mut().copy_from_slice(packet.payload());
    assert_eq!(buf[..], data[..HEADER_LEN + repr.payload_len]);
    let again = Packet::new_checked(&buf[..]).expect("emitted packet checks");
    assert_eq!(Repr::parse(&again), Ok(repr));
});
