//! What every key exchange method is to the rest of the crate: the
//! initiator's half ([`KeyExchange`]) and the responder's [`Answer`]. The
//! methods themselves are in `kex.rs` (Diffie-Hellman) and `mlkem.rs`.

use super::Key;
use crate::error::Result;
use crate::message::DhGroup;

/// The initiator's side of a key exchange in progress: a private key and
/// the public value to send in a KE payload.
pub trait KeyExchange: Send {
    /// The group.
    fn group(&self) -> DhGroup;

    /// The public value, encoded for the KE payload.
    fn public_value(&self) -> &[u8];

    /// Combines the private key with the responder's value (a public
    /// value, or a KEM ciphertext) into the shared secret `g^ir`, and
    /// consumes the private key.
    ///
    /// Fails with [`crate::error::Error::InvalidPublicValue`] if the value has the
    /// wrong length or is not a valid element of the group.
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<Key>;
}

/// The responder's answer in a key exchange: the value to send back in
/// its KE payload, and the shared secret.
pub type Answer = (Vec<u8>, Key);
