//! tunsec's IKEv2 (RFC 7296), sans IO.
//!
//! No sockets, no clock, no threads: this crate turns bytes into typed
//! messages and back, derives and applies keys, and parses proposals. The
//! state machine in [`sa`] drives the exchanges with them.
//!
//! - [`message`]: the IKE header and every payload (RFC 7296 sections 3.1
//!   to 3.16), decoded from and encoded to bytes; unknown payloads are
//!   skipped, or rejected when critical.
//! - [`crypto`]: prf and prf+ (section 2.13), SKEYSEED and the SK_* keys
//!   (section 2.14), Child SA KEYMAT (section 2.17), the protection of the
//!   Encrypted payload (section 3.14, RFC 5282, RFC 7634), and key exchange
//!   (X25519, ECP-256/384, MODP-2048) behind [`crypto::KeyExchange`].
//! - [`proposal`]: strongSwan's proposal syntax
//!   (`aes128gcm16-prfsha256-x25519`), defaults, and proposal selection
//!   (section 2.7).
//! - [`sa`]: [`sa::IkeSa`], the sans-IO state machine of one IKE SA:
//!   IKE_SA_INIT and IKE_AUTH with a pre-shared key, up to the first Child
//!   SA, with retransmission (sections 1.2, 2.1, 2.9, 2.15, 2.17), and
//!   [`sa::Endpoint`], many IKE SAs behind one socket, with cookies under
//!   load (section 2.6).
//! - [`cert`]: certificates and signature authentication (RFC 7427, RFC
//!   4754, RFC 4945): keys, AUTH data, trust per peer, peer validation.
//!
//! Logs go through the `tracing` facade (no IO of its own): at debug
//! level every IKE message sent and received, by payload names, and the
//! proposals, traffic selectors and SPIs negotiated; never keys.

#![forbid(unsafe_code)]

pub mod cert;
pub mod crypto;
mod error;
pub mod message;
pub mod proposal;
pub mod sa;

#[cfg(test)]
mod testdata;

pub use error::{Error, Fault, Result};
