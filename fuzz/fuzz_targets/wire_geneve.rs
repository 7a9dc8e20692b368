//! Geneve: parse any packet and walk every option. A packet that parses
//! re-emits (base header with `Repr::emit`, options with `emit_options`)
//! and parses back to the same `Repr` and the same options.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunsec_wire::Error;
use tunsec_wire::geneve::{
    self, GeneveOption, HEADER_LEN, MAX_OPTION_DATA_LEN, MAX_OPTIONS_LEN, OptionIter, Packet, Repr,
};

/// Walks the options; returns them, or the error that stopped the walk.
fn walk(options: OptionIter<'_>) -> Result<Vec<GeneveOption<'_>>, Error> {
    let mut out = Vec::new();
    let mut failed = None;
    for option in options {
        // The iterator yields at most one error, and nothing after it.
        assert!(failed.is_none(), "option after an error");
        match option {
            Ok(o) => {
                assert!(o.data.len() % 4 == 0 && o.data.len() <= MAX_OPTION_DATA_LEN);
                let _ = o.critical();
                out.push(o);
            }
            Err(e) => failed = Some(e),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

fuzz_target!(|data: &[u8]| {
    // The option walker on its own, over arbitrary bytes.
    if let Ok(options) = walk(OptionIter::new(data)) {
        let total: usize = options.iter().map(GeneveOption::wire_len).sum();
        assert_eq!(total, data.len(), "options must exactly fill the field");
    }

    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let _ = (packet.version(), packet.oam(), packet.critical());
    let _ = (packet.protocol_type(), packet.vni(), packet.payload().len());
    assert!(packet.options_len() <= MAX_OPTIONS_LEN);
    let walked = walk(packet.options());
    let repr = match Repr::parse(&packet) {
        Ok(repr) => repr,
        Err(e) => {
            assert_ne!(e, Error::Truncated, "new_checked passed");
            return;
        }
    };
    let options = walked.expect("Repr::parse accepted the options");
    assert_eq!(repr.buffer_len(), packet.header_len());
    assert_eq!(geneve::options_len(&options), Ok(repr.options_len));
    assert_eq!(repr.critical, options.iter().any(GeneveOption::critical));
    let rebuilt = Repr::with_options(repr.vni, repr.oam, repr.protocol_type, &options);
    assert_eq!(rebuilt, Ok(repr));

    let mut buf = vec![0u8; data.len()];
    let mut out = Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    let written = geneve::emit_options(out.options_bytes_mut(), &options);
    assert_eq!(written, Ok(repr.options_len));
    out.payload_mut().copy_from_slice(packet.payload());

    let again = Packet::new_checked(&buf[..]).expect("emitted packet checks");
    assert_eq!(Repr::parse(&again), Ok(repr));
    assert_eq!(walk(again.options()), Ok(options.clone()));
    assert_eq!(again.payload(), packet.payload());
    assert_eq!(again.header_len(), HEADER_LEN + repr.options_len);
    // Only reserved bits differ from the input: the base header's Rsvd.
    // bits and last byte, and each option's R bits.
    let mut mask = vec![0xffu8; buf.len()];
    mask[1] = 0xc0;
    mask[7] = 0;
    let mut at = HEADER_LEN;
    for o in &options {
        mask[at + 3] = 0x1f;
        at += o.wire_len();
    }
    for (i, m) in mask.iter().enumerate() {
        assert_eq!(buf[i] & m, data[i] & m, "byte {i} changed");
    }
});
