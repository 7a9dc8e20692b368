//! IKEv2 messages: decode any datagram; a message that decodes re-encodes,
//! and the encoding decodes back to the same message. The same for a bare
//! payload chain (the plaintext of an SK payload), whose first payload
//! type is the first input byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunsec_ike::message::{Message, PayloadType, decode_payloads, encode_payloads};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        let bytes = message.encode().expect("a decoded message encodes");
        let again = Message::decode(&bytes).expect("an encoded message decodes");
        assert_eq!(again.payloads, message.payloads);
        assert_eq!(again.header.exchange_type, message.header.exchange_type);
        assert_eq!(again.header.message_id, message.header.message_id);
    }
    if let Some((&first, rest)) = data.split_first() {
        let first = PayloadType::from(first);
        if let Ok(payloads) = decode_payloads(first, rest) {
            let mut out = Vec::new();
            let first_again =
                encode_payloads(&payloads, &mut out).expect("decoded payloads encode");
            let again = decode_payloads(first_again, &out).expect("encoded payloads decode");
            assert_eq!(again, payloads);
        }
    }
});
