//! The byte layout of the structured inputs (`ike_fragments`,
//! `ike_initiator`, `ike_intermediate`): fixed-size integers read
//! little-endian from the front by `arbitrary`, and byte strings as a
//! 2-byte length and then that many bytes (fewer at the end of the
//! input). The seed generator writes the same layout, so a seed decodes
//! to exactly the steps it was made from.

use arbitrary::{Result, Unstructured};

/// A byte string: a 2-byte length, then up to that many bytes.
pub fn take_bytes(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let len = usize::from(u.arbitrary::<u16>()?);
    Ok(u.bytes(len.min(u.len()))?.to_vec())
}

/// Appends a byte string as [`take_bytes`] reads it.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("a seed's byte string fits in 64 KiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Appends a `u16` as `arbitrary` reads it.
pub fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}
