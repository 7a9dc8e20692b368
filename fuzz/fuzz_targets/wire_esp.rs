//! ESP: parse the header of any packet, and the trailer at the end of any
//! plaintext. Both re-emit and parse back to the same `Repr`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunsec_wire::esp::{HEADER_LEN, MAX_PADDING, Packet, Repr, TRAILER_LEN, TrailerRepr};

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = Packet::new_checked(data) {
        let _ = packet.payload().len();
        if let Ok(repr) = Repr::parse(&packet) {
            assert_ne!(repr.spi, 0);
            let mut buf = data.to_vec();
            repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
            assert_eq!(buf, data, "the header has no bits outside the Repr");
            let again = Packet::new_checked(&buf[..]).expect("emitted header checks");
            assert_eq!(Repr::parse(&again), Ok(repr));
        }
        assert_eq!(packet.payload().len(), data.len() - HEADER_LEN);
    }

    // The same bytes as a decrypted payload with its trailer.
    let Ok((trailer, payload_len)) = TrailerRepr::parse(data) else {
        return;
    };
    assert!(usize::from(trailer.pad_len) <= MAX_PADDING);
    assert_eq!(payload_len + trailer.buffer_len(), data.len());
    let mut buf = data.to_vec();
    trailer.emit(&mut buf[payload_len..]);
    assert_eq!(buf, data, "padding, pad length and next header re-emit");
    assert_eq!(TrailerRepr::parse(&buf), Ok((trailer, payload_len)));
    assert_eq!(
        TrailerRepr::parse(&buf[payload_len..]),
        Ok((trailer, 0)),
        "the trailer alone parses"
    );
    // The padding a sender would pick for this payload also parses.
    for align in [4, 16] {
        let pad_len = TrailerRepr::pad_len_for(payload_len, align);
        let t = TrailerRepr {
            pad_len,
            next_header: trailer.next_header,
        };
        let mut sealed = data[..payload_len].to_vec();
        sealed.resize(payload_len + t.buffer_len(), 0);
        t.emit(&mut sealed[payload_len..]);
        assert_eq!(sealed.len() % align, 0);
        assert!(sealed.len() - payload_len >= TRAILER_LEN);
        assert_eq!(TrailerRepr::parse(&sealed), Ok((t, payload_len)));
    }
});
