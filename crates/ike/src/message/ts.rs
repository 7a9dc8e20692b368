//! Traffic Selector payloads, TSi and TSr (RFC 7296 section 3.13).
//!
//! ```text
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Number of TSs |                 RESERVED                      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ~                       <Traffic Selectors>                     ~
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!
//! One traffic selector (section 3.13.1):
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   TS Type     |IP Protocol ID*|       Selector Length         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           Start Port*         |           End Port*           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ~                         Starting Address*                     ~
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ~                         Ending Address*                       ~
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::codec::{Reader, len_u8, len_u16};
use super::types::TsType;
use crate::error::{Error, Result};

/// Length of an IPv4 address range selector.
const IPV4_LEN: usize = 16;
/// Length of an IPv6 address range selector.
const IPV6_LEN: usize = 40;

/// One traffic selector.
///
/// Ports and addresses are kept as sent: RFC 7296 section 3.13.1 uses a
/// start port of 65535 and an end port of 0 for "OPAQUE" ports, so a start
/// above the end is not malformed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TrafficSelector {
    /// TS_IPV4_ADDR_RANGE.
    Ipv4 {
        /// IP protocol number; 0 for any.
        ip_protocol: u8,
        /// First port (or ICMP type and code); 0 for any.
        start_port: u16,
        /// Last port; 65535 for any.
        end_port: u16,
        /// First address.
        start: Ipv4Addr,
        /// Last address.
        end: Ipv4Addr,
    },
    /// TS_IPV6_ADDR_RANGE.
    Ipv6 {
        /// IP protocol number; 0 for any.
        ip_protocol: u8,
        /// First port; 0 for any.
        start_port: u16,
        /// Last port; 65535 for any.
        end_port: u16,
        /// First address.
        start: Ipv6Addr,
        /// Last address.
        end: Ipv6Addr,
    },
    /// A selector type without a name here (for example RFC 9478's
    /// security labels). Kept whole so that it can be sent back unchanged
    /// or narrowed away.
    Unknown {
        /// The TS type.
        ts_type: u8,
        /// The octet after the type (the IP protocol in address
        /// selectors, reserved in others).
        second: u8,
        /// Everything after the selector length field.
        data: Vec<u8>,
    },
}

/// The fields of an address range selector of either IP version, with the
/// addresses as [`IpAddr`]: the one shape that [`TrafficSelector::Ipv4`] and
/// [`TrafficSelector::Ipv6`] share, for code that treats both alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrRange {
    /// IP protocol number; 0 for any.
    pub ip_protocol: u8,
    /// First port (or ICMP type and code); 0 for any.
    pub start_port: u16,
    /// Last port; 65535 for any.
    pub end_port: u16,
    /// First address.
    pub start: IpAddr,
    /// Last address, of the same version as `start`.
    pub end: IpAddr,
}

impl AddrRange {
    /// The addresses as numbers, and their width in bits (32 or 128).
    pub fn bits(&self) -> (u128, u128, u32) {
        match (self.start, self.end) {
            (IpAddr::V4(s), IpAddr::V4(e)) => (u32::from(s).into(), u32::from(e).into(), 32),
            (s, e) => (to_v6(s).into(), to_v6(e).into(), 128),
        }
    }
}

fn to_v6(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

impl TrafficSelector {
    /// The fields of an address range selector; `None` for
    /// [`Self::Unknown`].
    pub fn addr_range(&self) -> Option<AddrRange> {
        let (ip_protocol, start_port, end_port, start, end) = match *self {
            Self::Ipv4 {
                ip_protocol,
                start_port,
                end_port,
                start,
                end,
            } => (ip_protocol, start_port, end_port, start.into(), end.into()),
            Self::Ipv6 {
                ip_protocol,
                start_port,
                end_port,
                start,
                end,
            } => (ip_protocol, start_port, end_port, start.into(), end.into()),
            Self::Unknown { .. } => return None,
        };
        Some(AddrRange {
            ip_protocol,
            start_port,
            end_port,
            start,
            end,
        })
    }

    /// The address range selector of `range`'s version; `None` if its two
    /// addresses are of different versions.
    pub fn from_addr_range(range: AddrRange) -> Option<Self> {
        let AddrRange {
            ip_protocol,
            start_port,
            end_port,
            ..
        } = range;
        Some(match (range.start, range.end) {
            (IpAddr::V4(start), IpAddr::V4(end)) => Self::Ipv4 {
                ip_protocol,
                start_port,
                end_port,
                start,
                end,
            },
            (IpAddr::V6(start), IpAddr::V6(end)) => Self::Ipv6 {
                ip_protocol,
                start_port,
                end_port,
                start,
                end,
            },
            _ => return None,
        })
    }

    /// The selector's type.
    pub fn ts_type(&self) -> TsType {
        match self {
            Self::Ipv4 { .. } => TsType::Ipv4AddrRange,
            Self::Ipv6 { .. } => TsType::Ipv6AddrRange,
            Self::Unknown { ts_type, .. } => TsType::from(*ts_type),
        }
    }

    /// Everything of one IP version: all protocols, ports and addresses.
    pub fn any_ipv4() -> Self {
        Self::Ipv4 {
            ip_protocol: 0,
            start_port: 0,
            end_port: u16::MAX,
            start: Ipv4Addr::UNSPECIFIED,
            end: Ipv4Addr::BROADCAST,
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let ts_type = r.u8()?;
        let second = r.u8()?;
        let length = usize::from(r.u16()?);
        let expected = match TsType::from(ts_type) {
            TsType::Ipv4AddrRange => Some(IPV4_LEN),
            TsType::Ipv6AddrRange => Some(IPV6_LEN),
            TsType::Unknown(_) => None,
        };
        if length < 4 || expected.is_some_and(|e| e != length) {
            return Err(Error::InvalidLength {
                what: "traffic selector",
                length,
            });
        }
        let mut body = Reader::new(r.take(length - 4)?, "traffic selector");
        Ok(match TsType::from(ts_type) {
            TsType::Ipv4AddrRange => Self::Ipv4 {
                ip_protocol: second,
                start_port: body.u16()?,
                end_port: body.u16()?,
                start: Ipv4Addr::from(body.array::<4>()?),
                end: Ipv4Addr::from(body.array::<4>()?),
            },
            TsType::Ipv6AddrRange => Self::Ipv6 {
                ip_protocol: second,
                start_port: body.u16()?,
                end_port: body.u16()?,
                start: Ipv6Addr::from(body.array::<16>()?),
                end: Ipv6Addr::from(body.array::<16>()?),
            },
            TsType::Unknown(_) => Self::Unknown {
                ts_type,
                second,
                data: body.rest().to_vec(),
            },
        })
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        if let Some(range) = self.addr_range() {
            let length = match self {
                Self::Ipv4 { .. } => IPV4_LEN,
                _ => IPV6_LEN,
            };
            out.extend_from_slice(&[self.ts_type().value(), range.ip_protocol]);
            out.extend_from_slice(&(length as u16).to_be_bytes());
            out.extend_from_slice(&range.start_port.to_be_bytes());
            out.extend_from_slice(&range.end_port.to_be_bytes());
            for addr in [range.start, range.end] {
                match addr {
                    IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                    IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
                }
            }
            return Ok(());
        }
        match self {
            Self::Unknown {
                ts_type,
                second,
                data,
            } => {
                // An unknown selector must not pose as a known one: it
                // would be decoded with another layout.
                if !matches!(TsType::from(*ts_type), TsType::Unknown(_)) {
                    return Err(Error::Encode {
                        what: "traffic selector of a known type",
                        length: data.len(),
                    });
                }
                out.extend_from_slice(&[*ts_type, *second]);
                let length = len_u16("traffic selector", data.len() + 4)?;
                out.extend_from_slice(&length.to_be_bytes());
                out.extend_from_slice(data);
            }
            Self::Ipv4 { .. } | Self::Ipv6 { .. } => unreachable!("encoded above"),
        }
        Ok(())
    }
}

/// strongSwan's notation, as in its logs and `swanctl --list-sas`: the
/// address range as a prefix when it is one (`192.0.2.1/32`, `0.0.0.0/0`),
/// else `first..last`; then `[proto]` or `[proto/port]` or
/// `[proto/first-last]` unless any protocol and any port. Opaque ports
/// (start 65535, end 0) show as `OPAQUE`; an unknown type as `type N`.
impl fmt::Display for TrafficSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(range) = self.addr_range() else {
            return write!(f, "type {}", self.ts_type().value());
        };
        let (start, end, width) = range.bits();
        match prefix_of(start, end, width) {
            Some(len) => write!(f, "{}/{len}", range.start)?,
            None => write!(f, "{}..{}", range.start, range.end)?,
        }
        let (ip_protocol, start_port, end_port) =
            (range.ip_protocol, range.start_port, range.end_port);
        let proto = match ip_protocol {
            0 => None,
            1 => Some("icmp".to_owned()),
            6 => Some("tcp".to_owned()),
            17 => Some("udp".to_owned()),
            58 => Some("ipv6-icmp".to_owned()),
            p => Some(p.to_string()),
        };
        let any_port = start_port == 0 && end_port == u16::MAX;
        match (proto, any_port) {
            (None, true) => Ok(()),
            (Some(p), true) => write!(f, "[{p}]"),
            (p, false) => {
                write!(f, "[{}/", p.as_deref().unwrap_or("0"))?;
                if start_port == u16::MAX && end_port == 0 {
                    f.write_str("OPAQUE]")
                } else if start_port == end_port {
                    write!(f, "{start_port}]")
                } else {
                    write!(f, "{start_port}-{end_port}]")
                }
            }
        }
    }
}

/// The prefix length of `start..=end` if the range is exactly one prefix
/// of an address `width` bits long.
fn prefix_of(start: u128, end: u128, width: u32) -> Option<u32> {
    let shared = (start ^ end).leading_zeros().saturating_sub(128 - width);
    let host = width - shared;
    let mask = if host == 0 {
        0
    } else {
        u128::MAX >> (128 - host)
    };
    (start & mask == 0 && end & mask == mask).then_some(shared)
}

/// Decodes the body of a TSi or TSr payload.
pub(crate) fn decode(body: &[u8]) -> Result<Vec<TrafficSelector>> {
    let mut r = Reader::new(body, "TS payload");
    let count = r.u8()?;
    let _reserved = r.take(3)?;
    let mut selectors = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        selectors.push(TrafficSelector::decode(&mut r)?);
    }
    r.finish()?;
    Ok(selectors)
}

/// Appends the body of a TSi or TSr payload.
pub(crate) fn encode(selectors: &[TrafficSelector], out: &mut Vec<u8>) -> Result<()> {
    out.push(len_u8("traffic selectors", selectors.len())?);
    out.extend_from_slice(&[0; 3]);
    for ts in selectors {
        ts.encode(out)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test {
    use super::*;
    use proptest::prelude::*;

    /// TSi of strongSwan's IKE_AUTH request (psk-x25519): 192.0.2.1/32, any
    /// protocol and port.
    const TSI: &str = "01000000070000100000ffffc0000201c0000201";

    #[test]
    fn display_is_strongswan_notation() {
        let v4 = |ip_protocol, start_port, end_port, start: &str, end: &str| {
            TrafficSelector::Ipv4 {
                ip_protocol,
                start_port,
                end_port,
                start: start.parse().unwrap(),
                end: end.parse().unwrap(),
            }
            .to_string()
        };
        assert_eq!(
            v4(17, 4789, 4789, "192.0.2.1", "192.0.2.1"),
            "192.0.2.1/32[udp/4789]"
        );
        assert_eq!(
            v4(17, 0, 65535, "192.0.2.1", "192.0.2.1"),
            "192.0.2.1/32[udp]"
        );
        assert_eq!(
            v4(6, 16385, 16390, "10.0.0.0", "10.0.0.255"),
            "10.0.0.0/24[tcp/16385-16390]"
        );
        assert_eq!(TrafficSelector::any_ipv4().to_string(), "0.0.0.0/0");
        assert_eq!(
            v4(0, 0, 65535, "10.0.0.1", "10.0.0.5"),
            "10.0.0.1..10.0.0.5"
        );
        assert_eq!(
            v4(47, 65535, 0, "10.0.0.0", "10.0.0.1"),
            "10.0.0.0/31[47/OPAQUE]"
        );
        assert_eq!(v4(0, 80, 80, "10.0.0.0", "10.0.0.1"), "10.0.0.0/31[0/80]");
        let v6 = TrafficSelector::Ipv6 {
            ip_protocol: 58,
            start_port: 0,
            end_port: 65535,
            start: "2001:db8::".parse().unwrap(),
            end: "2001:db8::ffff:ffff".parse().unwrap(),
        };
        assert_eq!(v6.to_string(), "2001:db8::/96[ipv6-icmp]");
        let unknown = TrafficSelector::Unknown {
            ts_type: 10,
            second: 0,
            data: vec![1, 2],
        };
        assert_eq!(unknown.to_string(), "type 10");
    }

    #[test]
    fn deconstruct_and_construct() {
        let body = hex::decode(TSI).unwrap();
        let selectors = decode(&body).unwrap();
        assert_eq!(
            selectors,
            vec![TrafficSelector::Ipv4 {
                ip_protocol: 0,
                start_port: 0,
                end_port: 65535,
                start: Ipv4Addr::new(192, 0, 2, 1),
                end: Ipv4Addr::new(192, 0, 2, 1),
            }]
        );
        let mut out = Vec::new();
        encode(&selectors, &mut out).unwrap();
        assert_eq!(out, body);
    }

    #[test]
    fn ipv6_udp_port_and_unknown_type() {
        let selectors = vec![
            TrafficSelector::Ipv6 {
                ip_protocol: 17,
                start_port: 4789,
                end_port: 4789,
                start: "2001:db8::1".parse().unwrap(),
                end: "2001:db8::ff".parse().unwrap(),
            },
            TrafficSelector::Unknown {
                ts_type: 10,
                second: 0,
                data: vec![1, 2, 3],
            },
        ];
        let mut out = Vec::new();
        encode(&selectors, &mut out).unwrap();
        let expected = "02000000 08110028 12b512b5 \
                        20010db8000000000000000000000001 \
                        20010db80000000000000000000000ff \
                        0a000007 010203";
        assert_eq!(hex::encode(&out), expected.replace(' ', ""));
        assert_eq!(decode(&out).unwrap(), selectors);
    }

    #[test]
    fn bad_lengths_and_counts() {
        let body = hex::decode(TSI).unwrap();
        let mut wrong_len = body.clone();
        wrong_len[7] = 20;
        assert!(matches!(
            decode(&wrong_len),
            Err(Error::InvalidLength { length: 20, .. })
        ));
        let mut more = body.clone();
        more[0] = 2;
        assert!(matches!(decode(&more), Err(Error::Truncated { .. })));
        let mut fewer = body;
        fewer[0] = 0;
        assert!(matches!(decode(&fewer), Err(Error::TrailingBytes { .. })));
    }

    pub(crate) fn arb_ts() -> impl Strategy<Value = TrafficSelector> {
        // Two addresses of one version: both from u32, or both from u128.
        let addrs = prop_oneof![
            (any::<u32>(), any::<u32>()).prop_map(|(s, e)| (
                IpAddr::from(Ipv4Addr::from(s)),
                IpAddr::from(Ipv4Addr::from(e))
            )),
            (any::<u128>(), any::<u128>()).prop_map(|(s, e)| (
                IpAddr::from(Ipv6Addr::from(s)),
                IpAddr::from(Ipv6Addr::from(e))
            )),
        ];
        prop_oneof![
            (any::<u8>(), any::<u16>(), any::<u16>(), addrs).prop_map(
                |(ip_protocol, start_port, end_port, (start, end))| {
                    let range = AddrRange {
                        ip_protocol,
                        start_port,
                        end_port,
                        start,
                        end,
                    };
                    TrafficSelector::from_addr_range(range).unwrap()
                }
            ),
            (
                any::<u8>().prop_filter("unknown", |t| !(7..=8).contains(t)),
                any::<u8>(),
                proptest::collection::vec(any::<u8>(), 0..16)
            )
                .prop_map(|(ts_type, second, data)| TrafficSelector::Unknown {
                    ts_type,
                    second,
                    data
                }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(selectors in proptest::collection::vec(arb_ts(), 0..5)) {
            let mut out = Vec::new();
            encode(&selectors, &mut out).unwrap();
            prop_assert_eq!(decode(&out).unwrap(), selectors);
        }
    }
}
