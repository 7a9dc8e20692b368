//! IPv4: parse any packet; a packet that parses re-emits (as a 20-byte
//! header without options) and parses back to the same `Repr`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunsec_wire::ipv4::{HEADER_LEN, Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let _ = tunsec_wire::ip::version(data);
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let _ = (packet.options().len(), packet.payload().len());
    let _ = (
        packet.is_fragment(),
        packet.frag_offset(),
        packet.verify_checksum(),
    );
    let Ok(repr) = Repr::parse(&packet) else {
        return;
    };
    assert!(packet.verify_checksum());
    assert_eq!(packet.payload().len(), repr.payload_len);
    assert_eq!(
        packet.header_len() + repr.payload_len,
        usize::from(packet.total_len())
    );

    let mut buf = vec![0u8; repr.buffer_len() + repr.payload_len];
    let mut out = Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    out.payload_mut().copy_from_slice(packet.payload());
    let again = Packet::new_checked(&buf[..]).expect("emitted packet checks");
    assert_eq!(again.header_len(), HEADER_LEN);
    assert!(!again.is_fragment());
    assert_eq!(again.payload(), packet.payload());
    assert_eq!(Repr::parse(&again), Ok(repr));
});
