//! NAT traversal: classify any UDP payload on port 4500. Each outcome
//! agrees with the bytes, and every ESP outcome parses as ESP.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunsec_wire::natt::{self, KEEPALIVE, NON_ESP_MARKER, UdpEncapPayload};
use tunsec_wire::{Error, esp};

fuzz_target!(|data: &[u8]| {
    match natt::classify(data) {
        Ok(UdpEncapPayload::Keepalive) => assert_eq!(data, [KEEPALIVE]),
        Ok(UdpEncapPayload::Ike(rest)) => {
            assert_eq!(data[..4], NON_ESP_MARKER);
            assert_eq!(rest, &data[4..]);
        }
        Ok(UdpEncapPayload::Esp(bytes)) => {
            assert_eq!(bytes, data);
            let packet = esp::Packet::new_checked(bytes).expect("ESP holds its header");
            let repr = esp::Repr::parse(&packet).expect("ESP has a non-zero SPI");
            assert_ne!(repr.spi, 0);
        }
        Err(e) => {
            assert_eq!(e, Error::Truncated);
            assert!(data.len() < esp::HEADER_LEN);
        }
    }
});
