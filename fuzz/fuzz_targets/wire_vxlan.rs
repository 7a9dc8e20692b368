//! VXLAN: parse any header; a header that parses re-emits and parses back
//! to the same `Repr`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunsec_wire::vxlan::{HEADER_LEN, Packet, Repr, Vni};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let _ = (packet.flags(), packet.vni_valid(), packet.payload().len());
    assert!(packet.vni() <= Vni::MAX);
    let Ok(repr) = Repr::parse(&packet) else {
        assert!(!packet.vni_valid());
        return;
    };
    assert_eq!(Vni::new(repr.vni.get()), Some(repr.vni));
    assert_eq!(Vni::try_from(u32::from(repr.vni)), Ok(repr.vni));

    let mut buf = data.to_vec();
    let mut out = Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    // The payload is untouched; the header is the canonical one.
    assert_eq!(buf[HEADER_LEN..], data[HEADER_LEN..]);
    let again = Packet::new_checked(&buf[..]).expect("emitted header checks");
    assert_eq!(again.flags(), 0x08);
    assert_eq!(Repr::parse(&again), Ok(repr));
});
