//! What every packet view in this crate shares: the `Packet<T>` wrapper
//! with its constructors and plain big-endian field accessors
//! ([`packet_view!`]), and the length check of a header whose length a
//! field announces ([`check_announced`]).
//!
//! The macros expand to the same code each module used to spell out by
//! hand, so a view still costs nothing per call: the accessors are small
//! generic methods, and the byte conversions are `#[inline]`.

use core::ops::Range;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::{Error, Result};

/// Declares `pub struct Packet<T: AsRef<[u8]>>` in the calling module, with
/// `new_unchecked`, `new_checked`, `into_inner` and `AsRef<[u8]>`, and a
/// getter and a setter for each field listed after it.
///
/// ```text
/// packet_view! {
///     /// A read/write view of a UDP datagram.
///     fields {
///         /// The Source Port.
///         pub src_port, set_src_port: u16 = field::SRC_PORT;
///     }
/// }
/// ```
///
/// A field listed is a plain big-endian number or address ([`FieldValue`])
/// at a fixed place ([`FieldIndex`]). Its doc comment goes on the getter;
/// the setter's says which getter reads what it writes. Fields with flags,
/// nibbles or rules of their own keep hand-written accessors. The module
/// writes its own `check_len`, which `new_checked` calls.
macro_rules! packet_view {
    (
        $(#[$attr:meta])*
        fields {
            $($(#[$doc:meta])* $vis:vis $get:ident, $set:ident: $ty:ty = $field:expr;)*
        }
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
                $(#[$doc])*
                $vis fn $get(&self) -> $ty {
                    let range = $crate::view::FieldIndex::range($field);
                    <$ty as $crate::view::FieldValue>::read(&self.buffer.as_ref()[range])
                }
            )*
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
            $(
                #[doc = concat!("Sets the field that [`Self::", stringify!($get), "`] reads.")]
                $vis fn $set(&mut self, value: $ty) {
                    let range = $crate::view::FieldIndex::range($field);
                    $crate::view::FieldValue::write(value, &mut self.buffer.as_mut()[range]);
                }
            )*
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
