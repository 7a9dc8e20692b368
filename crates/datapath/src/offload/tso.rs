//! TCP segmentation in user space ("GSO"): a TSO super-frame read from the
//! TAP device becomes frames of at most `gso_size` payload bytes, each
//! with its own headers and checksums, as Linux's `tcp_gso_segment` and
//! `inet_gso_segment` / `ipv6_gso_segment` would cut it. And checksum
//! completion for a single frame that carries a partial checksum.
//!
//! Each segment is a copy of the headers (Ethernet, IP, TCP with its
//! options) followed by the next slice of the payload, with:
//!
//! - IPv4: Total Length; Identification plus the segment's index (Linux
//!   increments it per segment unless the frame is `SKB_GSO_TCP_FIXEDID`,
//!   which the virtio-net header cannot say); the header checksum.
//! - IPv6: Payload Length.
//! - TCP: the sequence number advanced by the payload sent before; FIN and
//!   PSH only on the last segment, CWR only on the first (`tcp_gso_segment`
//!   clears `th->fin`, `th->psh` on all but the last and `th->cwr` on all
//!   but the first); the checksum computed in full over the pseudo-header
//!   and the segment, whatever the super-frame's checksum field held.

use tunsec_wire::{checksum, ipv4, ipv6, tcp};

use super::frame::TcpLayout;
use super::vnet::{GsoType, VnetHeader};
use super::{Error, Result};

/// Cuts one TSO super-frame into wire frames, one per call to
/// [`Segmenter::next_into`].
///
/// ```text
/// let mut seg = Segmenter::new(&hdr, frame)?;
/// while let Some(len) = seg.next_into(&mut out)? { send(&out[..len]); }
/// ```
#[derive(Debug, Clone)]
pub struct Segmenter<'a> {
    frame: &'a [u8],
    layout: TcpLayout,
    gso_size: usize,
    /// Offset in `frame` of the next segment's payload.
    offset: usize,
    /// Index of the next segment.
    index: usize,
    count: usize,
    seq: u32,
    ident: u16,
    flags: u8,
}

impl<'a> Segmenter<'a> {
    /// Checks the virtio-net header against the frame and finds its
    /// headers.
    ///
    /// Refuses: a gso_type other than TCPv4/TCPv6 ([`Error::NotGso`] for
    /// NONE, [`Error::UnsupportedGso`] for UDP and the rest); a zero
    /// gso_size; a hdr_len beyond the frame; with NEEDS_CSUM, a
    /// csum_start/csum_offset that is not the TCP checksum; a frame whose
    /// IP version differs from the gso_type ([`Error::Family`]); headers
    /// that do not parse or run past the frame; bytes after the IP packet.
    ///
    /// A hdr_len shorter than the parsed headers is accepted: Linux sends
    /// the length of the skb's linear part there, a hint (see
    /// [`VnetHeader::hdr_len`]), and the headers are parsed here anyway.
    pub fn new(hdr: &VnetHeader, frame: &'a [u8]) -> Result<Self> {
        let want_v6 = match hdr.gso_type {
            GsoType::TcpV4 => false,
            GsoType::TcpV6 => true,
            GsoType::None => return Err(Error::NotGso),
            other => return Err(Error::UnsupportedGso(other.into())),
        };
        if hdr.gso_size == 0 {
            return Err(Error::ZeroGsoSize);
        }
        if usize::from(hdr.hdr_len) > frame.len() {
            return Err(Error::HdrLen {
                hdr_len: hdr.hdr_len,
                frame_len: frame.len(),
            });
        }
        let layout = TcpLayout::parse(frame)?;
        if layout.v6 != want_v6 {
            return Err(Error::Family);
        }
        if hdr.needs_csum()
            && (usize::from(hdr.csum_start) != layout.l4
                || usize::from(hdr.csum_offset) != tcp::CHECKSUM_OFFSET)
        {
            return Err(Error::CsumOffsets {
                start: hdr.csum_start,
                offset: hdr.csum_offset,
                frame_len: frame.len(),
            });
        }
        if layout.end != frame.len() {
            return Err(Error::Frame(tunsec_wire::Error::TrailingBytes));
        }
        let gso_size = usize::from(hdr.gso_size);
        let count = layout.payload_len().div_ceil(gso_size).max(1);
        let th = tcp::Packet::new_unchecked(&frame[layout.l4..layout.payload]);
        let ident = if layout.v6 {
            0
        } else {
            ipv4::Packet::new_unchecked(&frame[layout.l3..layout.l4]).ident()
        };
        Ok(Self {
            frame,
            layout,
            gso_size,
            offset: layout.payload,
            index: 0,
            count,
            seq: th.seq_number(),
            ident,
            flags: th.flags(),
        })
    }

    /// How many segments the frame makes (at least one: a frame with no
    /// payload makes one segment of headers only).
    pub fn segment_count(&self) -> usize {
        self.count
    }

    /// How many segments are left.
    pub fn remaining(&self) -> usize {
        self.count - self.index
    }

    /// The length of the headers each segment repeats (Ethernet, IP, TCP
    /// with options).
    pub fn header_len(&self) -> usize {
        self.layout.payload
    }

    /// The length of the longest segment: headers and gso_size payload
    /// bytes (or less, if the frame carries less). An output buffer this
    /// long always fits.
    pub fn max_segment_len(&self) -> usize {
        self.layout.payload + self.gso_size.min(self.layout.payload_len())
    }

    /// Writes the next segment to the start of `out` and returns its
    /// length, or `None` once every segment has been written.
    ///
    /// Returns [`Error::BufferTooSmall`], and writes nothing, if `out` is
    /// shorter than the segment; the call can be repeated with a larger
    /// buffer.
    pub fn next_into(&mut self, out: &mut [u8]) -> Result<Option<usize>> {
        if self.index == self.count {
            return Ok(None);
        }
        let l = self.layout;
        let chunk = self.gso_size.min(l.end - self.offset);
        let len = l.payload + chunk;
        if out.len() < len {
            return Err(Error::BufferTooSmall {
                needed: len,
                have: out.len(),
            });
        }
        let first = self.index == 0;
        let last = self.index + 1 == self.count;
        let out = &mut out[..len];
        out[..l.payload].copy_from_slice(&self.frame[..l.payload]);
        out[l.payload..].copy_from_slice(&self.frame[self.offset..self.offset + chunk]);

        let ip_len = len - l.l3;
        if l.v6 {
            let mut ip = ipv6::Packet::new_unchecked(&mut out[l.l3..l.l4]);
            ip.set_payload_len((ip_len - ipv6::HEADER_LEN) as u16);
        } else {
            let mut ip = ipv4::Packet::new_unchecked(&mut out[l.l3..l.l4]);
            ip.set_total_len(ip_len as u16);
            ip.set_ident(self.ident.wrapping_add(self.index as u16));
            ip.fill_checksum();
        }

        let mut flags = self.flags;
        if !last {
            flags &= !(tcp::flags::FIN | tcp::flags::PSH);
        }
        if !first {
            flags &= !tcp::flags::CWR;
        }
        let (src, dst) = l.addrs(out);
        let mut th = tcp::Packet::new_unchecked(&mut out[l.l4..]);
        th.set_seq_number(self.seq.wrapping_add((self.offset - l.payload) as u32));
        th.set_flags(flags);
        // The addresses come from one IP header: never of two families.
        th.fill_checksum(src, dst)?;

        self.offset += chunk;
        self.index += 1;
        Ok(Some(len))
    }
}

/// Completes the checksum of a single (non-GSO) frame whose virtio-net
/// header has NEEDS_CSUM: the 16-bit ones' complement checksum of
/// `frame[csum_start..]`, seeded with what the field at `csum_start +
/// csum_offset` holds (the kernel leaves the pseudo-header sum there), is
/// written to that field. A frame without NEEDS_CSUM is left alone.
///
/// A result of 0 is written as `0xffff`, as Linux's `skb_checksum_help`
/// does (`CSUM_MANGLED_0`): the same value in ones' complement, and the
/// one a UDP receiver does not take for "no checksum".
///
/// Returns [`Error::CsumOffsets`] if the field does not lie inside the
/// frame.
pub fn complete_checksum(hdr: &VnetHeader, frame: &mut [u8]) -> Result<()> {
    if !hdr.needs_csum() {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > frame.len() {
        return Err(Error::CsumOffsets {
            start: hdr.csum_start,
            offset: hdr.csum_offset,
            frame_len: frame.len(),
        });
    }
    let value = checksum::finish(checksum::sum(&frame[start..]));
    let value = if value == 0 { 0xffff } else { value };
    frame[field..field + 2].copy_from_slice(&value.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::offload::testutil::*;
    use crate::offload::vnet::F_NEEDS_CSUM;
    use proptest::prelude::*;
    use tunsec_wire::tcp::flags::{ACK, CWR, ECE, FIN, PSH};

    /// Segments `frame` into a vector of frames.
    fn segment_all(hdr: &VnetHeader, frame: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut seg = Segmenter::new(hdr, frame)?;
        let mut out = vec![0u8; 70_000];
        let mut all = Vec::new();
        while let Some(len) = seg.next_into(&mut out)? {
            all.push(out[..len].to_vec());
        }
        assert_eq!(all.len(), seg.segment_count());
        assert_eq!(seg.remaining(), 0);
        Ok(all)
    }

    /// Checks every segment of `spec` cut at `mss` against the expected
    /// headers, by hand and with the reference checksum.
    fn check(spec: &Spec, mss: u16) -> Vec<Vec<u8>> {
        let (hdr, frame) = gso_frame(spec, mss);
        let segs = segment_all(&hdr, &frame).unwrap();
        let (l3, l4) = offsets(spec);
        let hl = l4 + 20 + spec.options.len();
        let mss = usize::from(mss);
        assert_eq!(segs.len(), spec.payload_len.div_ceil(mss).max(1));
        let mut stream = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let first = i == 0;
            let last = i + 1 == segs.len();
            let plen = s.len() - hl;
            if !last {
                assert_eq!(plen, mss, "segment {i}");
            } else {
                assert_eq!(plen, spec.payload_len - mss * i);
            }
            // Everything before the IP length, and the addresses, options
            // and ports, as in the super-frame.
            assert_eq!(s[..l3 + 2], frame[..l3 + 2]);
            assert_eq!(s[l4..l4 + 4], frame[l4..l4 + 4]);
            assert_eq!(s[l4 + 20..hl], spec.options[..]);
            if spec.v6 {
                assert_eq!(
                    u16::from_be_bytes([s[l3 + 4], s[l3 + 5]]) as usize,
                    s.len() - l4
                );
                assert_eq!(s[l3 + 6..l4], frame[l3 + 6..l4]);
            } else {
                assert_eq!(
                    u16::from_be_bytes([s[l3 + 2], s[l3 + 3]]) as usize,
                    s.len() - l3
                );
                let id = u16::from_be_bytes([s[l3 + 4], s[l3 + 5]]);
                assert_eq!(id, spec.ident.wrapping_add(i as u16));
                assert!(ref_ipv4_ok(s, l3, l4), "IPv4 checksum of segment {i}");
            }
            let seq = u32::from_be_bytes(s[l4 + 4..l4 + 8].try_into().unwrap());
            assert_eq!(seq, spec.seq.wrapping_add((i * mss) as u32));
            let flags = s[l4 + 13];
            assert_eq!(
                flags & (FIN | PSH),
                if last { spec.flags & (FIN | PSH) } else { 0 }
            );
            assert_eq!(flags & CWR, if first { spec.flags & CWR } else { 0 });
            assert_eq!(flags & !(FIN | PSH | CWR), spec.flags & !(FIN | PSH | CWR));
            assert!(
                ref_tcp_ok(s, spec.v6, l3, l4),
                "TCP checksum of segment {i}"
            );
            stream.extend_from_slice(&s[hl..]);
        }
        assert_eq!(stream, frame[hl..]);
        segs
    }

    #[test]
    fn ipv4_timestamps_short_last() {
        // 64,000 bytes at 1448: 44 full segments and a short one of 288.
        let spec = Spec {
            flags: ACK | PSH,
            ..Spec::v4(64_000)
        };
        let segs = check(&spec, 1448);
        assert_eq!(segs.len(), 45);
        assert_eq!(segs[44].len(), 66 + 288);
        // The identification wraps from 0xfffe.
        assert_eq!(segs[2][18..20], [0, 0]);
    }

    #[test]
    fn ipv6_fin_psh_cwr() {
        let spec = Spec {
            flags: ACK | PSH | FIN | CWR | ECE,
            ..Spec::v6(10_000)
        };
        let segs = check(&spec, 1428);
        assert_eq!(segs.len(), 8);
        // The sequence number wraps from 0xfffe0000 at some point? No, but
        // it advances by 1428 per segment.
        assert_eq!(segs[7][54 + 13], ACK | PSH | FIN | ECE);
        assert_eq!(segs[0][54 + 13], ACK | CWR | ECE);
        assert_eq!(segs[3][54 + 13], ACK | ECE);
    }

    #[test]
    fn sequence_wraps() {
        let spec = Spec {
            seq: u32::MAX - 100,
            ..Spec::v4(3000)
        };
        let segs = check(&spec, 1000);
        assert_eq!(segs[1][34 + 4..34 + 8], 899u32.to_be_bytes());
    }

    #[test]
    fn no_options_vlan_exact_multiple_odd_sizes() {
        let base = Spec {
            options: Vec::new(),
            vlan: true,
            ..Spec::v4(4000)
        };
        check(&base, 1000);
        check(
            &Spec {
                v6: true,
                ..base.clone()
            },
            1000,
        );
        // Odd gso_size and odd payload: checksums over odd lengths.
        check(&Spec::v4(4001), 999);
        check(&Spec::v6(1), 1);
        // One segment only, and none with payload at all.
        check(&Spec::v4(500), 1448);
        check(&Spec::v4(0), 1448);
    }

    #[test]
    fn ipv4_options_are_copied() {
        // IHL 6 with NOP NOP NOP EOL.
        let spec = Spec::v4(3000);
        let (mut hdr, frame) = gso_frame(&spec, 1448);
        let mut f = frame[..34].to_vec();
        f.extend_from_slice(&[1, 1, 1, 0]);
        f.extend_from_slice(&frame[34..]);
        f[14] = 0x46;
        let total = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        hdr.csum_start += 4;
        hdr.hdr_len += 4;
        let segs = segment_all(&hdr, &f).unwrap();
        assert_eq!(segs.len(), 3);
        for s in &segs {
            assert_eq!(s[34..38], [1, 1, 1, 0]);
            assert!(ref_ipv4_ok(s, 14, 38));
            assert!(ref_tcp_ok(s, false, 14, 38));
        }
    }

    #[test]
    fn refusals() {
        let spec = Spec::v4(3000);
        let (hdr, frame) = gso_frame(&spec, 1448);
        let with = |h: VnetHeader| Segmenter::new(&h, &frame).map(|_| ());
        assert_eq!(
            with(VnetHeader { gso_size: 0, ..hdr }),
            Err(Error::ZeroGsoSize)
        );
        assert_eq!(
            with(VnetHeader {
                gso_type: GsoType::Udp,
                ..hdr
            }),
            Err(Error::UnsupportedGso(3))
        );
        assert_eq!(
            with(VnetHeader {
                gso_type: GsoType::UdpL4,
                ..hdr
            }),
            Err(Error::UnsupportedGso(5))
        );
        assert_eq!(
            with(VnetHeader {
                gso_type: GsoType::None,
                ..hdr
            }),
            Err(Error::NotGso)
        );
        assert_eq!(
            with(VnetHeader {
                gso_type: GsoType::TcpV6,
                ..hdr
            }),
            Err(Error::Family)
        );
        assert_eq!(
            with(VnetHeader {
                hdr_len: 4000,
                ..hdr
            }),
            Err(Error::HdrLen {
                hdr_len: 4000,
                frame_len: frame.len()
            })
        );
        assert!(matches!(
            with(VnetHeader {
                csum_start: 14,
                ..hdr
            }),
            Err(Error::CsumOffsets { .. })
        ));
        assert!(matches!(
            with(VnetHeader {
                csum_offset: 6,
                ..hdr
            }),
            Err(Error::CsumOffsets { .. })
        ));
        // Without NEEDS_CSUM the offsets are not looked at; a hdr_len
        // shorter than the headers (Linux's "hint") is accepted.
        assert!(
            with(VnetHeader {
                flags: 0,
                csum_start: 0,
                hdr_len: 0,
                ..hdr
            })
            .is_ok()
        );
        // Headers beyond the buffer, trailing bytes.
        assert!(matches!(
            Segmenter::new(&VnetHeader { hdr_len: 0, ..hdr }, &frame[..60]),
            Err(Error::Frame(_))
        ));
        let mut longer = frame.clone();
        longer.push(0);
        assert_eq!(
            Segmenter::new(&hdr, &longer).map(|_| ()),
            Err(Error::Frame(tunsec_wire::Error::TrailingBytes))
        );
    }

    #[test]
    fn buffer_too_small_then_retry() {
        let (hdr, frame) = gso_frame(&Spec::v4(3000), 1448);
        let mut seg = Segmenter::new(&hdr, &frame).unwrap();
        assert_eq!(seg.max_segment_len(), 66 + 1448);
        let mut small = [0u8; 100];
        assert_eq!(
            seg.next_into(&mut small),
            Err(Error::BufferTooSmall {
                needed: 1514,
                have: 100
            })
        );
        let mut out = vec![0u8; seg.max_segment_len()];
        let mut n = 0;
        while let Some(len) = seg.next_into(&mut out).unwrap() {
            assert!(ref_tcp_ok(&out[..len], false, 14, 34));
            n += 1;
        }
        assert_eq!(n, 3);
        assert_eq!(seg.next_into(&mut out), Ok(None));
    }

    #[test]
    fn complete_checksum_tcp_and_udp() {
        // A single TCP frame with a partial checksum, as the kernel hands
        // it over with gso_type NONE.
        for spec in [Spec::v4(1000), Spec::v6(999)] {
            let (mut hdr, mut frame) = gso_frame(&spec, 1448);
            hdr.gso_type = GsoType::None;
            let want = build(&spec);
            complete_checksum(&hdr, &mut frame).unwrap();
            assert_eq!(frame, want);
        }
        // UDP over IPv4, a computed 0 goes out as ffff: data chosen so the
        // sum is 0xffff. Pseudo-header 0a00 0001 0a00 0002 0011 000a,
        // header 0001 0002 000a <partial>, data dd..
        let mut f = vec![0u8; 14 + 20 + 10];
        let pseudo = [0x0a, 0, 0, 1, 0x0a, 0, 0, 2, 0, 17, 0, 10];
        let partial = ref_sum(&[&pseudo]);
        f[34..40].copy_from_slice(&[0, 1, 0, 2, 0, 10]);
        f[40..42].copy_from_slice(&partial.to_be_bytes());
        let so_far = ref_sum(&[&f[34..42]]);
        f[42..44].copy_from_slice(&(0xffff - so_far).to_be_bytes());
        let hdr = VnetHeader {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHeader::default()
        };
        complete_checksum(&hdr, &mut f).unwrap();
        assert_eq!(f[40..42], [0xff, 0xff]);
        // Out of range; and no flag, no change.
        let bad = VnetHeader {
            csum_offset: 9,
            ..hdr
        };
        assert!(matches!(
            complete_checksum(&bad, &mut f),
            Err(Error::CsumOffsets { .. })
        ));
        let before = f.clone();
        complete_checksum(&VnetHeader::default(), &mut f).unwrap();
        assert_eq!(f, before);
    }

    proptest! {
        #[test]
        fn never_panics(hdr: [u8; 10], mut bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let hdr = VnetHeader::parse(&hdr).unwrap();
            if let Ok(mut seg) = Segmenter::new(&hdr, &bytes) {
                let mut out = [0u8; 512];
                let mut n = 0;
                while let Ok(Some(_)) = seg.next_into(&mut out) {
                    n += 1;
                }
                prop_assert!(n <= seg.segment_count());
            }
            let _ = complete_checksum(&hdr, &mut bytes);
        }

        #[test]
        fn never_panics_near_valid(
            v6: bool, plen in 0usize..3000, mss in 0u16..2000,
            flip in proptest::collection::vec((0usize..200, any::<u8>()), 0..4),
            cut in 0usize..100, hflip: (u8, u8),
        ) {
            // Random bytes rarely parse: start from a good frame and spoil it.
            let spec = Spec { v6, ..Spec::v4(plen) };
            let (mut hdr, mut frame) = gso_frame(&spec, mss);
            for (i, b) in flip {
                if let Some(x) = frame.get_mut(i) { *x ^= b; }
            }
            frame.truncate(frame.len().saturating_sub(cut));
            let mut raw = hdr.to_bytes();
            raw[usize::from(hflip.0 % 10)] ^= hflip.1;
            hdr = VnetHeader::parse(&raw).unwrap();
            if let Ok(mut seg) = Segmenter::new(&hdr, &frame) {
                let mut out = vec![0u8; seg.max_segment_len()];
                while let Some(len) = seg.next_into(&mut out).unwrap() {
                    prop_assert!(len <= out.len());
                }
            }
            let _ = complete_checksum(&hdr, &mut frame);
        }

        #[test]
        fn segments_verify(v6: bool, plen in 0usize..5000, mss in 1u16..1600, flags: u8) {
            let spec = Spec { v6, flags, ..Spec::v4(plen) };
            check(&spec, mss);
        }
    }
}
