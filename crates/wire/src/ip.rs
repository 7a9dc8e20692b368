//! What IPv4 and IPv6 have in common: protocol numbers and the version
//! nibble.
//!
//! ```text
//!  0 1 2 3 4 5 6 7
//! +-+-+-+-+-+-+-+-+
//! |Version|       |   first byte of an IPv4 or IPv6 header
//! +-+-+-+-+-+-+-+-+
//! ```

use crate::view::FieldValue;
use crate::{Error, Result};

/// An IP protocol number: the IPv4 Protocol field, the IPv6 Next Header
/// field, and the ESP Next Header field share one IANA registry.
///
/// Convert with `From<u8>` and `u8::from`; a number with no variant of its
/// own becomes [`IpProtocol::Unknown`]. `Unknown` never holds a number that
/// has a named variant when it comes from `From<u8>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    /// IPv6 Hop-by-Hop Options (0).
    HopByHop,
    /// ICMP (1).
    Icmp,
    /// IPv4 encapsulated in IP (4).
    Ipip,
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// IPv6 encapsulated in IP (41).
    Ipv6,
    /// IPv6 Routing header (43).
    Ipv6Route,
    /// IPv6 Fragment header (44).
    Ipv6Frag,
    /// Encapsulating Security Payload (50).
    Esp,
    /// Authentication Header (51).
    Ah,
    /// ICMPv6 (58).
    Icmpv6,
    /// No Next Header (59); an ESP dummy packet carries this value.
    NoNextHeader,
    /// IPv6 Destination Options (60).
    Ipv6Opts,
    /// Any other protocol number.
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(value: u8) -> Self {
        match value {
            0 => Self::HopByHop,
            1 => Self::Icmp,
            4 => Self::Ipip,
            6 => Self::Tcp,
            17 => Self::Udp,
            41 => Self::Ipv6,
            43 => Self::Ipv6Route,
            44 => Self::Ipv6Frag,
            50 => Self::Esp,
            51 => Self::Ah,
            58 => Self::Icmpv6,
            59 => Self::NoNextHeader,
            60 => Self::Ipv6Opts,
            other => Self::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(value: IpProtocol) -> Self {
        match value {
            IpProtocol::HopByHop => 0,
            IpProtocol::Icmp => 1,
            IpProtocol::Ipip => 4,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Ipv6 => 41,
            IpProtocol::Ipv6Route => 43,
            IpProtocol::Ipv6Frag => 44,
            IpProtocol::Esp => 50,
            IpProtocol::Ah => 51,
            IpProtocol::Icmpv6 => 58,
            IpProtocol::NoNextHeader => 59,
            IpProtocol::Ipv6Opts => 60,
            IpProtocol::Unknown(other) => other,
        }
    }
}

/// An IP protocol number is one byte on the wire.
impl FieldValue for IpProtocol {
    #[inline]
    fn read(bytes: &[u8]) -> Self {
        Self::from(bytes[0])
    }

    #[inline]
    fn write(self, bytes: &mut [u8]) {
        bytes[0] = self.into();
    }
}

/// The IP version of the packet in `buf`: the top four bits of its first
/// byte. Returns [`Error::Truncated`] on an empty buffer.
///
/// Any value is returned; it is up to the caller to dispatch 4 and 6 and to
/// reject the rest.
//= https://www.rfc-editor.org/rfc/rfc791#section-3.1
//# The Version field indicates the format of the internet header.
pub fn version(buf: &[u8]) -> Result<u8> {
    buf.first().map(|b| b >> 4).ok_or(Error::Truncated)
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_numbers() {
        let table = [
            (0, IpProtocol::HopByHop),
            (1, IpProtocol::Icmp),
            (4, IpProtocol::Ipip),
            (6, IpProtocol::Tcp),
            (17, IpProtocol::Udp),
            (41, IpProtocol::Ipv6),
            (43, IpProtocol::Ipv6Route),
            (44, IpProtocol::Ipv6Frag),
            (50, IpProtocol::Esp),
            (51, IpProtocol::Ah),
            (58, IpProtocol::Icmpv6),
            (59, IpProtocol::NoNextHeader),
            (60, IpProtocol::Ipv6Opts),
            (132, IpProtocol::Unknown(132)),
        ];
        for (n, p) in table {
            assert_eq!(IpProtocol::from(n), p);
            assert_eq!(u8::from(p), n);
        }
    }

    #[test]
    fn version_nibble() {
        assert_eq!(version(&[0x45, 0x00]), Ok(4));
        assert_eq!(version(&[0x60]), Ok(6));
        assert_eq!(version(&[0xf0]), Ok(15));
        assert_eq!(version(&[]), Err(Error::Truncated));
    }

    proptest! {
        #[test]
        fn protocol_round_trip(n: u8) {
            let p = IpProtocol::from(n);
            prop_assert_eq!(u8::from(p), n);
            // A number with a name never comes back as Unknown.
            if let IpProtocol::Unknown(m) = p {
                prop_assert!(![0u8, 1, 4, 6, 17, 41, 43, 44, 50, 51, 58, 59, 60].contains(&m));
            }
        }
    }
}
