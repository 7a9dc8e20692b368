//! A bounds-checked cursor over received bytes, and helpers to write.
//!
//! Every length read from the wire is checked here, once, before any slice
//! is taken: nothing in the decoders indexes a slice directly.

use crate::error::{Error, Result};

/// Reads big-endian fields from a byte slice, never past its end.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; errors name `what`.
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes the next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(Error::Truncated {
                what: self.what,
                needed: n,
                available: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes the next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Takes everything that is left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    /// Checks that nothing is left.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes {
                what: self.what,
                count: self.buf.len(),
            })
        }
    }
}

/// Converts a length to the width of its length field, or fails.
pub(crate) fn len_u16(what: &'static str, length: usize) -> Result<u16> {
    u16::try_from(length).map_err(|_| Error::Encode { what, length })
}

/// Converts a count or size to one octet, or fails.
pub(crate) fn len_u8(what: &'static str, length: usize) -> Result<u8> {
    u8::try_from(length).map_err(|_| Error::Encode { what, length })
}

/// Writes at `out[at..at + 2]` the length of `out[start..]`, the structure
/// that begins at `start` and ends where `out` ends.
pub(crate) fn patch_len_u16(
    out: &mut [u8],
    at: usize,
    start: usize,
    what: &'static str,
) -> Result<()> {
    let length = len_u16(what, out.len() - start)?;
    out[at..at + 2].copy_from_slice(&length.to_be_bytes());
    Ok(())
}
