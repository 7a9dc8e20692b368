//! The control socket's request parser fed arbitrary bytes: as the server
//! does (`tunsec::control::server`), the input up to its first newline is
//! one request, decoded with `serde_json::from_slice::<Request>`; the same
//! line also goes through the client's decoding of an answer
//! (`serde_json` into `tunsec::control::Response`, as `control::call`
//! does).
//!
//! Errors are fine; a panic is not. And whatever decodes round-trips: it
//! encodes to one line of JSON that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tunsec::control::{Request, Response};

fuzz_target!(|data: &[u8]| {
    let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    if let Ok(request) = serde_json::from_slice::<Request>(line) {
        round_trip(&request);
    }
    if let Ok(response) = serde_json::from_slice::<Response>(line) {
        round_trip(&response);
    }
});

/// A decoded value encodes to one line that decodes back to it.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let text = serde_json::to_string(value).expect("a decoded value encodes");
    assert!(!text.contains('\n'), "not one line: {text}");
    let back: T = serde_json::from_str(&text).expect("an encoded value decodes");
    assert_eq!(&back, value);
}
