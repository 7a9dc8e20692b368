//! TAP and TUN offloads without I/O: the virtio-net header, TCP
//! segmentation ("GSO in user space"), checksum completion, TCP
//! coalescing (GRO), and UDP batching for a TUN device ([`uso`]).
//!
//! With `IFF_VNET_HDR` and `TUNSETOFFLOAD`, every frame read from or
//! written to a TAP device is preceded by a [`VnetHeader`]. The kernel then
//! hands over TCP super-frames of up to 64 KB with a partial checksum, and
//! takes such super-frames back. This module is the per-frame logic for
//! both directions; opening the device with those flags, and UDP GSO/GRO on
//! the sockets, is the workers' job.
//!
//! Transmit (TAP to tunnel), per frame read:
//!
//! ```text
//! let (hdr, frame) = VnetHeader::split(buf)?;            // 10 bytes + frame
//! if hdr.is_gso() {
//!     let mut seg = Segmenter::new(&hdr, frame)?;
//!     while let Some(len) = seg.next_into(&mut out[HEADROOM..])? {
//!         // out[HEADROOM..HEADROOM + len]: one wire frame, checksums done
//!     }
//! } else {
//!     complete_checksum(&hdr, frame_mut)?;                // in place
//! }
//! ```
//!
//! Receive (tunnel to TAP), per batch of opened frames:
//!
//! ```text
//! for frame in batch { coalescer.push(frame, &mut write); }
//! coalescer.flush(&mut write);
//! // write: FnMut(TapFrame<'_>), one TAP write per call: writev of
//! // (t.header_bytes(), t.frame), or t.write_into(buf) and write(buf)
//! ```
//!
//! Nothing here allocates per packet: [`Segmenter`] writes into the
//! caller's buffer, [`Coalescer`] owns one 64 KB buffer per flow slot,
//! allocated when it is built. Ethernet frames may carry one 802.1Q tag;
//! IPv4 options are accepted when segmenting, IPv6 extension headers are
//! not (the frame is refused with [`Error::Unsupported`]).
//!
//! The reference for the header is the virtio specification (v1.2),
//! section 5.1.6 "Device Operation"; for what Linux does with it,
//! `include/linux/virtio_net.h` (`virtio_net_hdr_to_skb`,
//! `virtio_net_hdr_from_skb`), `tcp_gso_segment` and `tcp_gro_receive`.

mod frame;
pub mod gro;
pub mod tso;
pub mod uso;
pub mod vnet;

pub use gro::{Checksums, Coalescer, TapFrame};
pub use tso::{Segmenter, complete_checksum};
pub use uso::{TunPacket, UdpBatcher};
pub use vnet::{GsoType, VnetHeader};

/// Why a frame (and its virtio-net header) cannot be segmented or have its
/// checksum completed. Each is a drop (`malformed` or `unsupported`) for
/// the worker, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Fewer bytes than a virtio-net header.
    #[error("virtio-net header truncated: {0} bytes, 10 needed")]
    HeaderTruncated(usize),
    /// A GSO type other than TCPv4 and TCPv6 (UDP fragmentation offload,
    /// type 3, and UDP segmentation, type 5, are refused).
    #[error("gso_type {0:#04x} is not supported (only TCPv4 and TCPv6)")]
    UnsupportedGso(u8),
    /// The header asks for no segmentation ([`Segmenter::new`] only takes
    /// GSO frames).
    #[error("gso_type is NONE: nothing to segment")]
    NotGso,
    /// gso_size is 0.
    #[error("gso_size is 0")]
    ZeroGsoSize,
    /// hdr_len points past the end of the frame.
    #[error("hdr_len {hdr_len} is beyond the frame ({frame_len} bytes)")]
    HdrLen {
        /// The hdr_len field.
        hdr_len: u16,
        /// The frame's length.
        frame_len: usize,
    },
    /// csum_start and csum_offset do not point inside the frame, or, for a
    /// GSO frame, not at the TCP checksum.
    #[error("csum_start {start} and csum_offset {offset} do not fit a {frame_len}-byte frame")]
    CsumOffsets {
        /// The csum_start field.
        start: u16,
        /// The csum_offset field.
        offset: u16,
        /// The frame's length.
        frame_len: usize,
    },
    /// The Ethernet, IP or TCP headers do not parse, or lie beyond the
    /// buffer.
    #[error("malformed frame: {0}")]
    Frame(tunsec_wire::Error),
    /// The GSO type's family differs from the frame's EtherType.
    #[error("gso_type does not match the frame's IP version")]
    Family,
    /// Something valid that this module does not handle: not IP, not TCP,
    /// IPv6 extension headers, an IPv4 fragment, an IPv6 jumbogram.
    #[error("unsupported frame: {0}")]
    Unsupported(&'static str),
    /// The caller's output buffer is too small for the next segment.
    #[error("output buffer too small: {needed} bytes needed, {have} available")]
    BufferTooSmall {
        /// The length of the next segment.
        needed: usize,
        /// The buffer's length.
        have: usize,
    },
}

impl From<tunsec_wire::Error> for Error {
    fn from(e: tunsec_wire::Error) -> Self {
        Self::Frame(e)
    }
}

/// The result of an offload operation.
pub type Result<T> = core::result::Result<T, Error>;

#[cfg(test)]
mod testutil;
