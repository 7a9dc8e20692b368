//! The virtio-net header that a TAP device with `IFF_VNET_HDR` puts in
//! front of every frame (virtio v1.2, section 5.1.6 "Device Operation").
//!
//! ```text
//! struct virtio_net_hdr {          // 10 bytes, fields little-endian
//!     u8   flags;                  // NEEDS_CSUM = 1, DATA_VALID = 2
//!     u8   gso_type;               // NONE 0, TCPV4 1, UDP 3, TCPV6 4, UDP_L4 5; | ECN 0x80
//!     le16 hdr_len;                // Ethernet + IP + TCP header length (a hint, see below)
//!     le16 gso_size;               // payload bytes per segment
//!     le16 csum_start;             // where the checksummed range starts
//!     le16 csum_offset;            // where the checksum goes, from csum_start
//! }
//! ```
//!
//! Little-endian is what Linux uses on little-endian hosts, and always with
//! `TUNSETVNETLE`; a big-endian host needs `TUNSETVNETLE` (or the fields
//! byte-swapped). The 12-byte variant with `num_buffers` (set with
//! `TUNSETVNETHDRSZ`) is not used.

use super::{Error, Result};

/// Length of the header.
pub const HEADER_LEN: usize = 10;

/// The checksum is partial: complete it over `[csum_start..]` and store it
/// at `csum_start + csum_offset`.
///
/// Virtio v1.2 section 5.1.6.2 "Packet Transmission": the checksum field
/// then holds the sum of the pseudo-header only, the rest is left to the
/// other side (for TCP: csum_start at the TCP header, csum_offset 16).
pub const F_NEEDS_CSUM: u8 = 1;
/// The checksums of the frame have been verified.
///
/// Virtio v1.2 section 5.1.6.4 "Processing of Incoming Packets": set by the
/// device for a packet whose checksum it validated. Linux's TAP write path
/// (`virtio_net_hdr_to_skb`) only looks at [`F_NEEDS_CSUM`], so this is a
/// hint that costs nothing.
pub const F_DATA_VALID: u8 = 2;
/// The ECN bit of gso_type: the first segment carries CWR, later ones must
/// not (Linux `SKB_GSO_TCP_ECN`).
pub const GSO_ECN: u8 = 0x80;

/// The gso_type field without its ECN bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GsoType {
    /// 0: not a GSO frame.
    #[default]
    None,
    /// 1: TCP over IPv4 (TSO).
    TcpV4,
    /// 3: UDP fragmentation offload (UFO), long deprecated.
    Udp,
    /// 4: TCP over IPv6.
    TcpV6,
    /// 5: UDP segmentation (USO).
    UdpL4,
    /// Any other value.
    Unknown(u8),
}

impl From<u8> for GsoType {
    fn from(value: u8) -> Self {
        match value {
            0 => Self::None,
            1 => Self::TcpV4,
            3 => Self::Udp,
            4 => Self::TcpV6,
            5 => Self::UdpL4,
            other => Self::Unknown(other),
        }
    }
}

impl From<GsoType> for u8 {
    fn from(value: GsoType) -> Self {
        match value {
            GsoType::None => 0,
            GsoType::TcpV4 => 1,
            GsoType::Udp => 3,
            GsoType::TcpV6 => 4,
            GsoType::UdpL4 => 5,
            GsoType::Unknown(other) => other,
        }
    }
}

/// The fields of a virtio-net header.
///
/// [`VnetHeader::default`] (all zero) is the header for a plain frame: no
/// GSO, no checksum work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VnetHeader {
    /// [`F_NEEDS_CSUM`], [`F_DATA_VALID`].
    pub flags: u8,
    /// The GSO type, without the ECN bit.
    pub gso_type: GsoType,
    /// The ECN bit of gso_type ([`GSO_ECN`]).
    pub ecn: bool,
    /// The length of the headers. Linux fills in the length of the linear
    /// part of the skb ("This is a hint as to how much should be linear",
    /// `virtio_net_hdr_from_skb`), which may be more than the headers; the
    /// spec only says a driver SHOULD make it "not less than the length of
    /// the headers". [`super::Segmenter`] parses the headers itself.
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS).
    pub gso_size: u16,
    /// Where the checksummed range starts, from the start of the frame.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHeader {
    /// Reads the first [`HEADER_LEN`] bytes of `buf`. Any values are
    /// accepted here; what uses them checks them.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        let Some(b) = buf.get(..HEADER_LEN) else {
            return Err(Error::HeaderTruncated(buf.len()));
        };
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(Self {
            flags: b[0],
            gso_type: GsoType::from(b[1] & !GSO_ECN),
            ecn: b[1] & GSO_ECN != 0,
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// Splits a buffer read from the TAP device into the header and the
    /// frame after it.
    pub fn split(buf: &[u8]) -> Result<(Self, &[u8])> {
        let header = Self::parse(buf)?;
        Ok((header, &buf[HEADER_LEN..]))
    }

    /// The header as the bytes to write in front of a frame.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.flags;
        b[1] = u8::from(self.gso_type) | if self.ecn { GSO_ECN } else { 0 };
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`.
    /// Returns [`Error::HeaderTruncated`] if `buf` is shorter.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        let out = buf
            .get_mut(..HEADER_LEN)
            .ok_or(Error::HeaderTruncated(len))?;
        out.copy_from_slice(&self.to_bytes());
        Ok(())
    }

    /// Whether the frame is a GSO super-frame (gso_type is not NONE).
    pub fn is_gso(&self) -> bool {
        self.gso_type != GsoType::None
    }

    /// Whether [`F_NEEDS_CSUM`] is set.
    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    /// Whether [`F_DATA_VALID`] is set.
    pub fn data_valid(&self) -> bool {
        self.flags & F_DATA_VALID != 0
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_and_emit() {
        // What Linux hands over for a 64 KB TSO frame over IPv4 with
        // timestamps: NEEDS_CSUM, TCPV4, hdr_len 66, gso_size 1448,
        // csum_start 34, csum_offset 16.
        let bytes = [0x01, 0x01, 66, 0, 0xa8, 0x05, 34, 0, 16, 0, 0xee];
        let (hdr, frame) = VnetHeader::split(&bytes).unwrap();
        assert_eq!(frame, &[0xee]);
        assert_eq!(
            hdr,
            VnetHeader {
                flags: F_NEEDS_CSUM,
                gso_type: GsoType::TcpV4,
                ecn: false,
                hdr_len: 66,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
            }
        );
        assert!(hdr.is_gso() && hdr.needs_csum() && !hdr.data_valid());
        assert_eq!(hdr.to_bytes(), bytes[..10]);
        let mut out = [0u8; 12];
        hdr.emit(&mut out).unwrap();
        assert_eq!(out[..10], bytes[..10]);
        assert_eq!(hdr.emit(&mut out[..9]), Err(Error::HeaderTruncated(9)));
    }

    #[test]
    fn ecn_bit_and_types() {
        let hdr = VnetHeader::parse(&[2, 0x84, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(hdr.gso_type, GsoType::TcpV6);
        assert!(hdr.ecn && hdr.data_valid() && !hdr.needs_csum());
        assert_eq!(VnetHeader::parse(&[0; 9]), Err(Error::HeaderTruncated(9)));
        assert_eq!(VnetHeader::default().to_bytes(), [0; 10]);
        assert!(!VnetHeader::default().is_gso());
        for t in 0..=0x7f {
            assert_eq!(u8::from(GsoType::from(t)), t);
        }
    }

    proptest! {
        #[test]
        fn round_trip(bytes: [u8; 10]) {
            let hdr = VnetHeader::parse(&bytes).unwrap();
            prop_assert_eq!(hdr.to_bytes(), bytes);
        }
    }
}
