//! Ethernet: parse any frame; a frame that parses re-emits to the same
//! header and parses back to the same `Repr`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunsec_wire::ethernet::{EtherType, Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    // Every accessor is in bounds once the length check passed.
    let _ = (packet.dst_addr(), packet.src_addr(), packet.vlan());
    let _ = (packet.ethertype(), packet.payload().len());
    let Ok(repr) = Repr::parse(&packet) else {
        return;
    };
    assert_eq!(repr.buffer_len(), packet.header_len());
    // An untagged frame never reads as EtherType VLAN: that would be a tag.
    assert!(repr.vlan.is_some() || repr.ethertype != EtherType::Vlan);

    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    assert_eq!(buf, data[..repr.buffer_len()], "emit changed the header");
    let again = Packet::new_checked(&buf[..]).expect("emitted header checks");
    assert_eq!(Repr::parse(&again), Ok(repr));
});
