//! The cryptography of IKEv2: the one place in this crate that calls a
//! crypto library (aws-lc-rs, and crypto-bigint for MODP-2048).
//!
//! - [`Prf`]: prf and prf+ (RFC 7296 section 2.13).
//! - [`skeyseed`], [`IkeKeys::derive`]: SKEYSEED and SK_d, SK_ai, SK_ar,
//!   SK_ei, SK_er, SK_pi, SK_pr (section 2.14); [`skeyseed_rekey`] (section
//!   2.18).
//! - [`child_sa_keys`]: Child SA KEYMAT and its keys (section 2.17).
//! - [`signed_octets`], [`shared_key_auth`]: what AUTH covers, and the PSK
//!   AUTH value (section 2.15); [`int_auth_octets`], [`int_auth`],
//!   [`signed_octets_with_int_auth`]: the IKE_INTERMEDIATE exchange's
//!   IntAuth (RFC 9242 section 3.3).
//! - [`SkCipher`]: the Encrypted payload's protection (section 3.14, RFC
//!   5282, RFC 7634).
//! - [`KeyExchange`]: X25519, ECP-256, ECP-384, MODP-2048 and
//!   ML-KEM-512/768/1024, looked up in [`GROUPS`]; an initiator
//!   [`start`]s, a responder [`respond`]s.
//!
//! Secrets live in [`Key`] (tunsec-esp's), which wipes itself on drop and
//! prints as `<redacted>`.

mod intermediate;
mod kex;
mod keys;
mod method;
mod mlkem;
mod prf;
mod sk;

pub use intermediate::{int_auth, int_auth_octets, signed_octets_with_int_auth};
pub use kex::{GROUPS, KxGroup, find_group, respond, start};
pub use keys::{
    ChildKeys, IkeKeys, IkeSuite, child_sa_keys, shared_key_auth, signed_octets, skeyseed,
    skeyseed_rekey,
};
pub use method::{Answer, KeyExchange};
pub use prf::Prf;
pub use sk::{Encr, Integ, SkCipher};
pub use tunsec_esp::Key;
