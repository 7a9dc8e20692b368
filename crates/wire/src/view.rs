//! What every packet view in this crate shares: the `Packet<T>` wrapper
//! with its constructors, its length check, and the accessors of its
//! big-endian fields, of the flags and small numbers packed in them, and
//! of the parts of the buffer they bound ([`packet_view!`]); and the
//! length check of a header whose length a field announces
//! ([`check_announced`]).
//!
//! The macros expand to the same code each module used to spell out by
//! hand, so a view still costs nothing per call: the accessors are small
//! generic methods, and the byte conversions are `#[inline]`.

use core::ops::Range;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::{Error, Result};

/// Declares `pub struct Packet<T: AsRef<[u8]>>` in the calling module, with
/// `new_unchecked`, `new_checked`, `into_inner` and `AsRef<[u8]>`, and
/// accessors for what is listed after it:
///
/// ```text
/// packet_view! {
///     /// A read/write view of a UDP datagram.
///     fields {
///         /// The Source Port.
///         pub src_port, set_src_port: u16 = field::SRC_PORT;
///     }
///     /// Checks that the buffer holds the header and the Length it
///     /// announces.
///     check_len: HEADER_LEN, |p| usize::from(p.len());
///     bits {
///         /// The O bit: the packet carries a control message.
///         pub oam, set_oam: bool = field::FLAGS, mask FLAG_OAM;
///     }
///     slices {
///         /// The data after the header, up to Length.
///         pub payload, payload_mut = |p| HEADER_LEN..usize::from(p.len());
///     }
/// }
/// ```
///
/// - `fields`: a getter and a setter each. A field is a plain big-endian
///   number or address ([`FieldValue`]) at a fixed place ([`FieldIndex`]).
/// - `check_len` (optional): `check_len` by [`check_announced`], for a
///   header of at least the fixed length that announces its length, as
///   the closure reads it (a header of fixed length announces itself).
///   Without it, the module writes its own `check_len`, which
///   `new_checked` calls.
/// - `bits` (optional): a flag or a small number kept in the bits `mask`
///   selects of a `u8`, `u16` or `u32` field (the mask's type says which);
///   a getter, and a setter where one is named. The setter leaves the
///   other bits of the field alone.
/// - `slices` (optional): a part of the buffer whose bounds the closure
///   computes from the packet, read-only and writable.
///
/// Each doc comment goes on the getter; the setter's says which getter
/// reads what it writes. Fields with rules of their own (lengths counted
/// in words, tags that move other fields) keep hand-written accessors.
macro_rules! packet_view {
    (
        $(#[$attr:meta])*
        fields {
            $($(#[$doc:meta])* $vis:vis $get:ident, $set:ident: $ty:ty = $field:expr;)*
        }
        $($(#[$len_doc:meta])* check_len: $fixed:expr, |$len_p:ident| $announced:expr;)?
        $(bits {
            $($(#[$bits_doc:meta])*
              $bits_vis:vis $bits_get:ident $(, $bits_set:ident)?: $bits_ty:ty = $bits_field:expr, mask $mask:expr;)*
        })?
        $(slices {
            $($(#[$slice_doc:meta])*
              $slice_vis:vis $slice:ident, $slice_mut:ident = |$p:ident| $range:expr;)*
        })?
    ) => {
        $(#[$attr])*
        #[derive(Debug, Clone)]
        pub struct Packet<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> Packet<T> {
            /// Wraps a buffer without checking it.
            pub const fn new_unchecked(buffer: T) -> Self {
                Self { buffer }
            }

            /// Wraps a buffer after [`Self::check_len`].
            pub fn new_checked(buffer: T) -> $crate::Result<Self> {
                let packet = Self::new_unchecked(buffer);
                packet.check_len()?;
                Ok(packet)
            }

            /// Returns the underlying buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }

            $(
                $(#[$len_doc])*
                pub fn check_len(&self) -> $crate::Result<()> {
                    $crate::view::check_announced(self.buffer.as_ref().len(), $fixed, || {
                        #[allow(unused_variables)]
                        let $len_p = self;
                        $announced
                    })?;
                    Ok(())
                }
            )?

            $(
                $(#[$doc])*
                $vis fn $get(&self) -> $ty {
                    let range = $crate::view::FieldIndex::range($field);
                    <$ty as $crate::view::FieldValue>::read(&self.buffer.as_ref()[range])
                }
            )*

            $($(
                $(#[$bits_doc])*
                $bits_vis fn $bits_get(&self) -> $bits_ty {
                    let range = $crate::view::FieldIndex::range($bits_field);
                    $crate::view::read_bits(&self.buffer.as_ref()[range], $mask)
                }
            )*)?

            $($(
                $(#[$slice_doc])*
                $slice_vis fn $slice(&self) -> &[u8] {
                    let range = {
                        #[allow(unused_variables)]
                        let $p = self;
                        $range
                    };
                    &self.buffer.as_ref()[range]
                }
            )*)?
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
            $(
                #[doc = concat!("Sets the field that [`Self::", stringify!($get), "`] reads.")]
                $vis fn $set(&mut self, value: $ty) {
                    let range = $crate::view::FieldIndex::range($field);
                    $crate::view::FieldValue::write(value, &mut self.buffer.as_mut()[range]);
                }
            )*

            $($($(
                #[doc = concat!("Sets the bits that [`Self::", stringify!($bits_get), "`] reads.")]
                $bits_vis fn $bits_set(&mut self, value: $bits_ty) {
                    let range = $crate::view::FieldIndex::range($bits_field);
                    $crate::view::write_bits(&mut self.buffer.as_mut()[range], $mask, value);
                }
            )?)*)?

            $($(
                #[doc = concat!("[`Self::", stringify!($slice), "`], writable.")]
                $slice_vis fn $slice_mut(&mut self) -> &mut [u8] {
                    let range = {
                        #[allow(unused_variables)]
                        let $p = &*self;
                        $range
                    };
                    &mut self.buffer.as_mut()[range]
                }
            )*)?
        }

        impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
            fn as_ref(&self) -> &[u8] {
                self.buffer.as_ref()
            }
        }
    };
}

pub(crate) use packet_view;

/// Where a field sits: a byte range, or one byte's offset.
pub(crate) trait FieldIndex {
    /// The field's bytes as a range.
    fn range(self) -> Range<usize>;
}

impl FieldIndex for Range<usize> {
    #[inline]
    fn range(self) -> Range<usize> {
        self
    }
}

impl FieldIndex for usize {
    #[inline]
    fn range(self) -> Range<usize> {
        self..self + 1
    }
}

/// A value stored in network byte order in a field exactly its size.
pub(crate) trait FieldValue: Sized {
    /// Reads the value from the field's bytes.
    fn read(bytes: &[u8]) -> Self;
    /// Writes the value into the field's bytes.
    fn write(self, bytes: &mut [u8]);
}

impl FieldValue for u8 {
    #[inline]
    fn read(bytes: &[u8]) -> Self {
        bytes[0]
    }
    #[inline]
    fn write(self, bytes: &mut [u8]) {
        bytes[0] = self;
    }
}

/// The big-endian integers and addresses, which convert through a byte
/// array of their size.
macro_rules! be_value {
    ($($ty:ty: $n:literal, $from:path, $to:ident;)+) => {$(
        impl FieldValue for $ty {
            #[inline]
            fn read(bytes: &[u8]) -> Self {
                let mut array = [0u8; $n];
                array.copy_from_slice(bytes);
                $from(array)
            }
            #[inline]
            fn write(self, bytes: &mut [u8]) {
                bytes.copy_from_slice(&self.$to());
            }
        }
    )+};
}

be_value! {
    u16: 2, u16::from_be_bytes, to_be_bytes;
    u32: 4, u32::from_be_bytes, to_be_bytes;
    Ipv4Addr: 4, Ipv4Addr::from, octets;
    Ipv6Addr: 16, Ipv6Addr::from, octets;
}

/// A field that holds bits of several values: a `u8`, `u16` or `u32`.
pub(crate) trait BitsField: FieldValue + Copy {
    /// The field as a `u32`.
    fn widen(self) -> u32;
    /// A `u32` that [`Self::widen`] made, back in the field's type.
    fn narrow(bits: u32) -> Self;
}

/// A value kept in some bits of a field: a flag, or a number of at most as
/// many bits as the mask has.
pub(crate) trait BitsValue {
    /// The value of bits already shifted down to bit 0.
    fn from_bits(bits: u32) -> Self;
    /// The value as bits from bit 0 up.
    fn into_bits(self) -> u32;
}

macro_rules! bits_number {
    ($($ty:ty),+) => {$(
        impl BitsField for $ty {
            #[inline]
            fn widen(self) -> u32 {
                self.into()
            }
            #[inline]
            fn narrow(bits: u32) -> Self {
                // Only the widened field itself comes back here.
                bits as $ty
            }
        }

        impl BitsValue for $ty {
            #[inline]
            fn from_bits(bits: u32) -> Self {
                // The mask keeps at most as many bits as the type has.
                bits as $ty
            }
            #[inline]
            fn into_bits(self) -> u32 {
                self.into()
            }
        }
    )+};
}

bits_number!(u8, u16, u32);

impl BitsValue for bool {
    #[inline]
    fn from_bits(bits: u32) -> Self {
        bits != 0
    }
    #[inline]
    fn into_bits(self) -> u32 {
        self.into()
    }
}

/// Reads the bits of the field in `bytes` that `mask` selects, shifted
/// down to bit 0.
#[inline]
pub(crate) fn read_bits<F: BitsField, V: BitsValue>(bytes: &[u8], mask: F) -> V {
    let mask = mask.widen();
    V::from_bits((F::read(bytes).widen() & mask) >> mask.trailing_zeros())
}

/// Writes `value` into the bits of the field in `bytes` that `mask`
/// selects; what does not fit the mask is dropped, the other bits are
/// kept.
#[inline]
pub(crate) fn write_bits<F: BitsField, V: BitsValue>(bytes: &mut [u8], mask: F, value: V) {
    let mask = mask.widen();
    let bits = (value.into_bits() << mask.trailing_zeros()) & mask;
    F::narrow((F::read(bytes).widen() & !mask) | bits).write(bytes);
}

/// Checks a header whose length a field announces, and returns that length.
///
/// The buffer must hold the `fixed` bytes that contain the field
/// ([`Error::Truncated`]); the length that `announced` reads from them must
/// be at least `fixed` ([`Error::BadLength`]) and fit in the buffer
/// ([`Error::Truncated`]). `announced` is called only once the fixed bytes
/// are known to be there.
pub(crate) fn check_announced(
    buf_len: usize,
    fixed: usize,
    announced: impl FnOnce() -> usize,
) -> Result<usize> {
    if buf_len < fixed {
        return Err(Error::Truncated);
    }
    let len = announced();
    if len < fixed {
        return Err(Error::BadLength);
    }
    if buf_len < len {
        return Err(Error::Truncated);
    }
    Ok(len)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn values_round_trip() {
        let mut buf = [0u8; 16];
        0x1234u16.write(&mut buf[..2]);
        assert_eq!(buf[..2], [0x12, 0x34]);
        assert_eq!(u16::read(&buf[..2]), 0x1234);
        0xdead_beefu32.write(&mut buf[..4]);
        assert_eq!(buf[..4], [0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(
            Ipv4Addr::read(&buf[..4]),
            Ipv4Addr::new(0xde, 0xad, 0xbe, 0xef)
        );
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        v6.write(&mut buf);
        assert_eq!(Ipv6Addr::read(&buf), v6);
        7u8.write(&mut buf[3..4]);
        assert_eq!(u8::read(&buf[3..4]), 7);
        assert_eq!(FieldIndex::range(3usize), 3..4);
    }

    #[test]
    fn bits_read_and_write_in_place() {
        let mut buf = [0x45u8, 0xff, 0x40, 0x00];
        // A nibble, a flag, and the other bits kept.
        assert_eq!(read_bits::<u8, u8>(&buf[..1], 0xf0), 4);
        assert_eq!(read_bits::<u8, u8>(&buf[..1], 0x0f), 5);
        write_bits(&mut buf[..1], 0x0fu8, 6u8);
        assert_eq!(buf[0], 0x46);
        // What does not fit the mask is dropped.
        write_bits(&mut buf[..1], 0xf0u8, 0x1fu8);
        assert_eq!(buf[0], 0xf6);
        assert!(read_bits::<u16, bool>(&buf[2..4], 0x4000));
        write_bits(&mut buf[2..4], 0x4000u16, false);
        write_bits(&mut buf[2..4], 0x2000u16, true);
        assert_eq!(buf[2..4], [0x20, 0x00]);
        assert_eq!(buf[1], 0xff);
        // A field of a 32-bit word.
        let mut word = [0x60u8, 0x00, 0x00, 0x00];
        write_bits(&mut word, 0x000f_ffffu32, 0xabcde_u32);
        assert_eq!(word, [0x60, 0x0a, 0xbc, 0xde]);
        assert_eq!(read_bits::<u32, u32>(&word, 0xf000_0000), 6);
    }

    #[test]
    fn announced_lengths() {
        // Too short for the fixed part: the field is not read.
        assert_eq!(
            check_announced(3, 4, || unreachable!()),
            Err(Error::Truncated)
        );
        assert_eq!(check_announced(8, 4, || 3), Err(Error::BadLength));
        assert_eq!(check_announced(8, 4, || 9), Err(Error::Truncated));
        assert_eq!(check_announced(8, 4, || 8), Ok(8));
        assert_eq!(check_announced(8, 4, || 4), Ok(4));
    }
}
