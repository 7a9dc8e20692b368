//! GUE: classify the variant and parse any variant 0 header; a header that
//! parses re-emits and parses back to the same `Repr`, with the same
//! extension fields and payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunsec_wire::Error;
use tunsec_wire::gue::{self, HEADER_LEN, MAX_EXT_LEN, Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let variant = gue::variant(data);
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    assert_eq!(variant, Ok(0));
    let _ = (packet.control(), packet.proto_ctype(), packet.flags());
    let _ = (packet.extensions().len(), packet.payload().len());
    let repr = match Repr::parse(&packet) {
        Ok(repr) => repr,
        Err(e) => {
            assert_ne!(e, Error::Truncated, "new_checked passed");
            return;
        }
    };
    assert!(repr.ext_len <= MAX_EXT_LEN && repr.ext_len % 4 == 0);
    assert_eq!(repr.buffer_len(), packet.header_len());

    let mut buf = vec![0u8; data.len()];
    let mut out = Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    out.extensions_mut().copy_from_slice(packet.extensions());
    out.payload_mut().copy_from_slice(packet.payload());
    // Variant 0 has no bits outside the Repr in its first word.
    assert_eq!(buf[..], data[..]);
    let again = Packet::new_checked(&buf[..]).expect("emitted header checks");
    assert_eq!(again.header_len(), HEADER_LEN + repr.ext_len);
    assert_eq!(Repr::parse(&again), Ok(repr));
});
