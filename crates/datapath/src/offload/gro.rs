//! TCP coalescing for the receive direction ("GRO"): decrypted frames of
//! one TCP flow become one super-frame with a virtio-net header, so the
//! worker writes one frame to the TAP device instead of dozens, and the
//! kernel runs its bridge and TCP receive path once for all of them.
//!
//! A [`Coalescer`] has a fixed number of flow slots, each with a buffer of
//! [`MAX_FRAME_LEN`] bytes allocated when it is built. The worker pushes
//! every frame of a batch, then flushes; finished frames go to a callback
//! as a [`TapFrame`]: a virtio-net header and the frame, to be written with
//! one `writev` (or copied behind each other).
//!
//! A frame joins the flow held in a slot when, as for Linux's
//! `tcp_gro_receive` and `inet_gro_receive` / `ipv6_gro_receive`:
//!
//! - the Ethernet header, IP addresses and ports are the same (the flow);
//! - IPv4 without options, not a fragment, the header checksum good, the
//!   same TOS, flags and TTL, the Identification one more than the last
//!   segment's (or the same, with DF); IPv6 without extension headers, the
//!   same traffic class, flow label and hop limit;
//! - TCP: the sequence number follows the last segment's data, the same
//!   acknowledgment number, window, header length and options (byte for
//!   byte, timestamps included), the same flags; ACK set; no SYN, FIN,
//!   RST or URG; CWR only on the first segment; PSH ends the super-frame;
//! - the payload is not empty and at most the first segment's (gso_size);
//!   a shorter one ends the super-frame;
//! - the super-frame stays within 65,535 bytes of IPv4 Total Length or
//!   IPv6 Payload Length;
//! - with [`Checksums::Verify`], its TCP checksum verifies.
//!
//! Any other frame of the same flow first flushes the slot, so a flow's
//! frames stay in order. A frame that cannot start or join a super-frame
//! (not TCP, a pure ACK, SYN, FIN, a bad checksum, an IPv4 fragment, ...)
//! goes out unchanged behind a plain header: all zero, or DATA_VALID when
//! its checksums were verified. When every slot is busy, a new flow takes
//! the slots in turn and flushes what was there.
//!
//! A super-frame of two or more segments goes out as the first frame's
//! headers with the lengths, the IPv4 header checksum and PSH (if the last
//! segment had it) updated, then every segment's payload; the virtio-net
//! header says TCPv4 or TCPv6, gso_size is the first segment's payload
//! length, ECN if the first segment had CWR, and NEEDS_CSUM with the TCP
//! checksum field holding the pseudo-header sum (virtio v1.2 section
//! 5.1.6.2). The kernel takes that as a checksum it need not check, and
//! computes it if it ever sends the frame on. A slot that ends with one
//! segment goes out unchanged, like a frame that passes through.

use tunsec_wire::tcp::flags::{ACK, CWR, FIN, PSH, RST, SYN, URG};
use tunsec_wire::{ethernet, ipv4, ipv6, tcp};

use super::frame::TcpLayout;
use super::vnet::{F_DATA_VALID, F_NEEDS_CSUM, GsoType, VnetHeader};

/// The longest super-frame: an 802.1Q-tagged Ethernet header, the IPv6
/// header, and 65,535 bytes of IPv6 payload (IPv4 super-frames are shorter
/// by 40 bytes).
pub const MAX_FRAME_LEN: usize = ethernet::TAGGED_HEADER_LEN + ipv6::HEADER_LEN + 65_535;

/// The default number of flow slots.
pub const DEFAULT_SLOTS: usize = 8;

/// Whether the coalescer checks the TCP checksum of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checksums {
    /// Verify each frame's TCP checksum (and IPv4 header checksum) before
    /// it joins a super-frame, as Linux's GRO does: a super-frame goes to
    /// the kernel with NEEDS_CSUM, which the kernel trusts, so a corrupt
    /// segment would otherwise be accepted. A frame that fails goes out
    /// on its own, for the kernel to drop.
    #[default]
    Verify,
    /// Do not look at the TCP checksum: the ESP ICV already protected the
    /// frame between the peers, so only a fault on the sending host could
    /// have spoiled it. Saves one pass over every payload.
    Trust,
}

/// A frame to write to the TAP device: the virtio-net header, then the
/// frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapFrame<'a> {
    /// The virtio-net header to write first.
    pub header: VnetHeader,
    /// The Ethernet frame.
    pub frame: &'a [u8],
}

impl TapFrame<'_> {
    /// The header's bytes (see [`VnetHeader::to_bytes`]).
    pub fn header_bytes(&self) -> [u8; super::vnet::HEADER_LEN] {
        self.header.to_bytes()
    }
}

/// One flow being coalesced.
#[derive(Debug)]
struct Slot {
    /// The super-frame so far: the first frame's headers, then payloads.
    buf: Box<[u8]>,
    /// Bytes used in `buf`; 0 for a free slot.
    len: usize,
    /// The first frame's layout (its `end` is not kept up to date).
    layout: TcpLayout,
    /// The first segment's payload length.
    gso_size: usize,
    segments: usize,
    /// The sequence number the next segment must carry.
    next_seq: u32,
    /// The last segment's IPv4 Identification.
    last_ident: u16,
    /// The last segment had PSH.
    psh: bool,
    /// The (single) frame's checksums were verified.
    verified: bool,
}

/// What [`Coalescer::push`] learned about a frame.
struct Seg {
    layout: TcpLayout,
    flags: u8,
    /// The TCP checksum verified (always false with [`Checksums::Trust`]).
    verified: bool,
    /// It may start or join a super-frame.
    eligible: bool,
}

/// Coalesces the TCP frames of a batch into super-frames, flow by flow.
/// See the module documentation for the rules.
#[derive(Debug)]
pub struct Coalescer {
    slots: Box<[Slot]>,
    /// The slot a new flow takes next when all are busy.
    victim: usize,
    checksums: Checksums,
}

impl Coalescer {
    /// A coalescer with `slots` flow slots (at least one), each with a
    /// [`MAX_FRAME_LEN`] buffer allocated now; nothing is allocated later.
    pub fn new(slots: usize, checksums: Checksums) -> Self {
        let slots = (0..slots.max(1))
            .map(|_| Slot {
                buf: vec![0u8; MAX_FRAME_LEN].into_boxed_slice(),
                len: 0,
                layout: TcpLayout {
                    l3: 0,
                    l4: 0,
                    payload: 0,
                    end: 0,
                    v6: false,
                },
                gso_size: 0,
                segments: 0,
                next_seq: 0,
                last_ident: 0,
                psh: false,
                verified: false,
            })
            .collect();
        Self {
            slots,
            victim: 0,
            checksums,
        }
    }

    /// How many slots hold a flow.
    pub fn pending(&self) -> usize {
        self.slots.iter().filter(|s| s.len != 0).count()
    }

    /// Takes one decrypted frame. It is copied into a slot, or, if it
    /// cannot be coalesced, handed to `out` at once (after the slot of its
    /// flow, if any, so that a flow's frames stay in order). Frames that
    /// end a super-frame (PSH, a short segment) flush it to `out` too.
    pub fn push<F: FnMut(TapFrame<'_>)>(&mut self, frame: &[u8], out: &mut F) {
        let Some(seg) = self.inspect(frame) else {
            out(TapFrame {
                header: VnetHeader::default(),
                frame,
            });
            return;
        };
        if let Some(i) = self.find(frame, &seg.layout) {
            if seg.eligible && self.fits(i, frame, &seg) {
                self.append(i, frame, &seg);
                let s = &self.slots[i];
                if s.psh || seg.layout.payload_len() < s.gso_size {
                    self.emit(i, out);
                }
                return;
            }
            self.emit(i, out);
        }
        if seg.eligible && seg.flags & PSH == 0 {
            let i = self.free_slot(out);
            self.start(i, frame, &seg);
            return;
        }
        out(TapFrame {
            header: plain_header(seg.verified),
            frame,
        });
    }

    /// Hands every held super-frame to `out` and frees the slots. Call it
    /// at the end of each batch.
    pub fn flush<F: FnMut(TapFrame<'_>)>(&mut self, out: &mut F) {
        for i in 0..self.slots.len() {
            if self.slots[i].len != 0 {
                self.emit(i, out);
            }
        }
    }

    /// Parses a frame; `None` if it is not TCP over IP at all.
    fn inspect(&self, frame: &[u8]) -> Option<Seg> {
        let layout = TcpLayout::parse(frame).ok()?;
        // The IPv4 header is 20 bytes and verifies, and the IP packet ends
        // at the end of the frame (no link-layer padding).
        let ip_ok = layout.end == frame.len()
            && (layout.v6 || layout.l4 - layout.l3 == ipv4::HEADER_LEN)
            && layout.ipv4_header_ok(frame);
        let flags = frame[layout.l4 + 13];
        let verified = ip_ok && self.checksums == Checksums::Verify && {
            let (src, dst) = layout.addrs(frame);
            tcp::Packet::new_unchecked(&frame[layout.l4..layout.end]).verify_checksum(src, dst)
        };
        let eligible = ip_ok
            && (verified || self.checksums == Checksums::Trust)
            && layout.payload_len() > 0
            && flags & ACK != 0
            && flags & (SYN | FIN | RST | URG) == 0;
        Some(Seg {
            layout,
            flags,
            verified,
            eligible,
        })
    }

    /// The slot that holds the flow of `frame`.
    fn find(&self, frame: &[u8], l: &TcpLayout) -> Option<usize> {
        self.slots.iter().position(|s| {
            let sl = &s.layout;
            s.len != 0
                && sl.l3 == l.l3
                && sl.v6 == l.v6
                && s.buf[..sl.l3] == frame[..l.l3]
                && s.buf[sl.addr_range()] == frame[l.addr_range()]
                && s.buf[sl.l4..sl.l4 + 4] == frame[l.l4..l.l4 + 4]
        })
    }

    /// Whether `frame`, of the flow in slot `i`, can join it.
    fn fits(&self, i: usize, frame: &[u8], seg: &Seg) -> bool {
        let s = &self.slots[i];
        let (sl, l) = (&s.layout, &seg.layout);
        let b = &s.buf;
        let plen = l.payload_len();
        if sl.l4 != l.l4 || sl.payload != l.payload || plen > s.gso_size {
            return false;
        }
        // Total Length or Payload Length of the super-frame after it.
        let ip_len = s.len + plen - if l.v6 { l.l4 } else { l.l3 };
        if ip_len > 65_535 {
            return false;
        }
        let (l3, l4) = (l.l3, l.l4);
        let ip_same = if l.v6 {
            // Version, traffic class, flow label; hop limit.
            b[l3..l3 + 4] == frame[l3..l3 + 4] && b[l3 + 7] == frame[l3 + 7]
        } else {
            let ident = u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]);
            let df = frame[l3 + 6] & 0x40 != 0;
            // Version/IHL, TOS; flags/offset, TTL, protocol.
            b[l3..l3 + 2] == frame[l3..l3 + 2]
                && b[l3 + 6..l3 + 10] == frame[l3 + 6..l3 + 10]
                && (ident == s.last_ident.wrapping_add(1) || (df && ident == s.last_ident))
        };
        let th = tcp::Packet::new_unchecked(&frame[l4..l.end]);
        let first_flags = b[l4 + 13];
        ip_same
            && th.seq_number() == s.next_seq
            && seg.flags & CWR == 0
            && seg.flags & !PSH == first_flags & !CWR
            // Acknowledgment number; Data Offset; Window; options.
            && b[l4 + 8..l4 + 13] == frame[l4 + 8..l4 + 13]
            && b[l4 + 14..l4 + 16] == frame[l4 + 14..l4 + 16]
            && b[l4 + tcp::HEADER_LEN..l.payload] == frame[l4 + tcp::HEADER_LEN..l.payload]
    }

    /// A free slot, or the next one in turn after flushing it.
    fn free_slot<F: FnMut(TapFrame<'_>)>(&mut self, out: &mut F) -> usize {
        if let Some(i) = self.slots.iter().position(|s| s.len == 0) {
            return i;
        }
        let i = self.victim;
        self.victim = (self.victim + 1) % self.slots.len();
        self.emit(i, out);
        i
    }

    /// Puts `frame` into free slot `i` as the first segment of a flow.
    fn start(&mut self, i: usize, frame: &[u8], seg: &Seg) {
        let l = seg.layout;
        let th = tcp::Packet::new_unchecked(&frame[l.l4..l.end]);
        let next_seq = th.seq_number().wrapping_add(l.payload_len() as u32);
        let last_ident = if l.v6 {
            0
        } else {
            ipv4::Packet::new_unchecked(&frame[l.l3..l.l4]).ident()
        };
        let s = &mut self.slots[i];
        s.buf[..frame.len()].copy_from_slice(frame);
        s.len = frame.len();
        s.layout = l;
        s.gso_size = l.payload_len();
        s.segments = 1;
        s.next_seq = next_seq;
        s.last_ident = last_ident;
        s.psh = false;
        s.verified = seg.verified;
    }

    /// Appends the payload of `frame` to slot `i` (it [`Self::fits`]).
    fn append(&mut self, i: usize, frame: &[u8], seg: &Seg) {
        let l = seg.layout;
        let s = &mut self.slots[i];
        let payload = &frame[l.payload..l.end];
        s.buf[s.len..s.len + payload.len()].copy_from_slice(payload);
        s.len += payload.len();
        s.segments += 1;
        s.next_seq = s.next_seq.wrapping_add(payload.len() as u32);
        if !l.v6 {
            s.last_ident = u16::from_be_bytes([frame[l.l3 + 4], frame[l.l3 + 5]]);
        }
        s.psh = seg.flags & PSH != 0;
        s.verified &= seg.verified;
    }

    /// Finishes slot `i`, hands it to `out`, and frees it.
    fn emit<F: FnMut(TapFrame<'_>)>(&mut self, i: usize, out: &mut F) {
        let s = &mut self.slots[i];
        let l = s.layout;
        let len = s.len;
        s.len = 0;
        let frame = &mut s.buf[..len];
        if s.segments == 1 {
            out(TapFrame {
                header: plain_header(s.verified),
                frame,
            });
            return;
        }
        if l.v6 {
            let mut ip = ipv6::Packet::new_unchecked(&mut frame[l.l3..l.l4]);
            ip.set_payload_len((len - l.l4) as u16);
        } else {
            let mut ip = ipv4::Packet::new_unchecked(&mut frame[l.l3..l.l4]);
            ip.set_total_len((len - l.l3) as u16);
            ip.fill_checksum();
        }
        let (src, dst) = l.addrs(frame);
        let mut th = tcp::Packet::new_unchecked(&mut frame[l.l4..]);
        let first_flags = th.flags();
        if s.psh {
            th.set_flags(first_flags | PSH);
        }
        // The addresses come from one IP header, so the sum exists.
        let pseudo = th.pseudo_header_sum(src, dst).unwrap_or(0);
        th.set_checksum(pseudo as u16);
        let header = VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: if l.v6 { GsoType::TcpV6 } else { GsoType::TcpV4 },
            ecn: first_flags & CWR != 0,
            hdr_len: l.payload as u16,
            gso_size: s.gso_size as u16,
            csum_start: l.l4 as u16,
            csum_offset: tcp::CHECKSUM_OFFSET as u16,
        };
        out(TapFrame { header, frame });
    }
}

impl Default for Coalescer {
    /// [`DEFAULT_SLOTS`] slots, [`Checksums::Verify`].
    fn default() -> Self {
        Self::new(DEFAULT_SLOTS, Checksums::Verify)
    }
}

/// The header of a frame that goes out as it came.
fn plain_header(verified: bool) -> VnetHeader {
    VnetHeader {
        flags: if verified { F_DATA_VALID } else { 0 },
        ..VnetHeader::default()
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::offload::testutil::*;
    use crate::offload::{Segmenter, complete_checksum};
    use proptest::prelude::*;

    /// An owned [`TapFrame`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Out {
        header: VnetHeader,
        frame: Vec<u8>,
    }

    fn run(c: &mut Coalescer, frames: &[Vec<u8>]) -> Vec<Out> {
        let mut outs = Vec::new();
        let mut sink = |t: TapFrame<'_>| {
            outs.push(Out {
                header: t.header,
                frame: t.frame.to_vec(),
            })
        };
        for f in frames {
            c.push(f, &mut sink);
        }
        c.flush(&mut sink);
        assert_eq!(c.pending(), 0);
        outs
    }

    fn segments(spec: &Spec, mss: u16) -> Vec<Vec<u8>> {
        let (hdr, frame) = gso_frame(spec, mss);
        let mut seg = Segmenter::new(&hdr, &frame).unwrap();
        let mut buf = vec![0u8; seg.max_segment_len()];
        let mut all = Vec::new();
        while let Some(len) = seg.next_into(&mut buf).unwrap() {
            all.push(buf[..len].to_vec());
        }
        all
    }

    /// Checks that `out` is the super-frame of `spec` (after completing its
    /// checksum), with the right virtio-net header.
    fn assert_super_frame(out: &Out, spec: &Spec, mss: u16) {
        let (l3, l4) = offsets(spec);
        assert_eq!(
            out.header,
            VnetHeader {
                flags: F_NEEDS_CSUM,
                gso_type: if spec.v6 {
                    GsoType::TcpV6
                } else {
                    GsoType::TcpV4
                },
                ecn: spec.flags & CWR != 0,
                hdr_len: (l4 + 20 + spec.options.len()) as u16,
                gso_size: mss,
                csum_start: l4 as u16,
                csum_offset: 16,
            }
        );
        // The field holds the pseudo-header sum, as NEEDS_CSUM wants.
        let tcp_len = out.frame.len() - l4;
        let partial = ref_sum(&[&pseudo(spec.v6, &out.frame, l3, tcp_len)]);
        assert_eq!(out.frame[l4 + 16..l4 + 18], partial.to_be_bytes());
        let mut frame = out.frame.clone();
        complete_checksum(&out.header, &mut frame).unwrap();
        assert!(ref_tcp_ok(&frame, spec.v6, l3, l4));
        if !spec.v6 {
            assert!(ref_ipv4_ok(&frame, l3, l4));
        }
        assert_eq!(frame, build(spec));
    }

    #[test]
    fn round_trip_ipv4_and_ipv6() {
        for v6 in [false, true] {
            // 64,000 bytes at 1448 with timestamps: 45 segments, the last
            // one short and with PSH.
            let spec = Spec {
                v6,
                flags: ACK | PSH,
                ..Spec::v4(64_000)
            };
            let segs = segments(&spec, 1448);
            assert_eq!(segs.len(), 45);
            let outs = run(&mut Coalescer::default(), &segs);
            assert_eq!(outs.len(), 1);
            assert_super_frame(&outs[0], &spec, 1448);
        }
    }

    #[test]
    fn round_trip_without_psh_and_with_cwr() {
        // No PSH: the short last segment ends it. CWR on the first: ECN.
        let spec = Spec {
            flags: ACK | CWR,
            options: Vec::new(),
            vlan: true,
            ..Spec::v6(10_001)
        };
        let outs = run(&mut Coalescer::default(), &segments(&spec, 1000));
        assert_eq!(outs.len(), 1);
        assert_super_frame(&outs[0], &spec, 1000);
        // Exact multiple, no PSH: held until the flush.
        let spec = Spec::v4(8000);
        let mut c = Coalescer::default();
        let mut n = 0;
        for s in segments(&spec, 1000) {
            c.push(&s, &mut |_| n += 1);
        }
        assert_eq!((n, c.pending()), (0, 1));
        let outs = run(&mut c, &[]);
        assert_super_frame(&outs[0], &spec, 1000);
    }

    #[test]
    fn fin_passes_through_after_the_data() {
        let spec = Spec {
            flags: ACK | PSH | FIN,
            ..Spec::v4(5000)
        };
        let segs = segments(&spec, 1448);
        let outs = run(&mut Coalescer::default(), &segs);
        assert_eq!(outs.len(), 2);
        assert_super_frame(
            &outs[0],
            &Spec {
                flags: ACK,
                ..Spec::v4(3 * 1448)
            },
            1448,
        );
        assert_eq!(outs[1].frame, segs[3]);
        assert_eq!(outs[1].header.flags, F_DATA_VALID);
        assert!(!outs[1].header.is_gso());
    }

    #[test]
    fn single_segment_goes_out_unchanged() {
        let f = build(&Spec::v4(100));
        let outs = run(&mut Coalescer::default(), std::slice::from_ref(&f));
        assert_eq!(
            outs,
            [Out {
                header: VnetHeader {
                    flags: F_DATA_VALID,
                    ..VnetHeader::default()
                },
                frame: f.clone()
            }]
        );
        let outs = run(
            &mut Coalescer::new(1, Checksums::Trust),
            std::slice::from_ref(&f),
        );
        assert_eq!(outs[0].header, VnetHeader::default());
        assert_eq!(outs[0].frame, f);
    }

    #[test]
    fn what_passes_through() {
        let syn = build(&Spec {
            flags: SYN,
            ..Spec::v4(0)
        });
        let pure_ack = build(&Spec::v4(0));
        let mut arp = vec![0xffu8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let mut udp = build(&Spec::v4(50));
        udp[23] = 17;
        let mut padded = build(&Spec::v4(2));
        padded.extend_from_slice(&[0; 4]);
        let outs = run(
            &mut Coalescer::default(),
            &[
                syn.clone(),
                pure_ack.clone(),
                arp.clone(),
                udp.clone(),
                padded.clone(),
            ],
        );
        let frames: Vec<_> = outs.iter().map(|o| o.frame.clone()).collect();
        assert_eq!(frames, [syn, pure_ack, arp, udp, padded]);
        let flags: Vec<_> = outs.iter().map(|o| o.header.flags).collect();
        assert_eq!(flags, [F_DATA_VALID, F_DATA_VALID, 0, 0, 0]);
        assert!(outs.iter().all(|o| !o.header.is_gso()));
    }

    #[test]
    fn bad_checksum_flushes_and_passes_through() {
        let spec = Spec::v4(4000);
        let mut segs = segments(&spec, 1000);
        let n = segs[2].len();
        segs[2][n - 1] ^= 0x55;
        let outs = run(&mut Coalescer::default(), &segs);
        // [0, 1] coalesced, [2] alone and unverified, [3] alone (it does
        // not follow anything held).
        assert_eq!(outs.len(), 3);
        assert_eq!(outs[0].header.gso_type, GsoType::TcpV4);
        assert_eq!(outs[1].frame, segs[2]);
        assert_eq!(outs[1].header, VnetHeader::default());
        assert_eq!(outs[2].frame, segs[3]);
        // Trusted, the same frames make one super-frame.
        let outs = run(&mut Coalescer::new(2, Checksums::Trust), &segs);
        assert_eq!(outs.len(), 1);
        assert_eq!(outs[0].frame.len(), 66 + 4000);
    }

    #[test]
    fn out_of_order_and_changed_fields_flush() {
        let spec = Spec::v4(5000);
        let segs = segments(&spec, 1000);
        // 0 1 3 2 4: [0 1] [3] [2] [4] (3 and 2 and 4 do not follow).
        let order = [0, 1, 3, 2, 4];
        let frames: Vec<_> = order.iter().map(|&i| segs[i].clone()).collect();
        let outs = run(&mut Coalescer::default(), &frames);
        assert_eq!(outs.len(), 4);
        assert_eq!(outs[0].header.gso_type, GsoType::TcpV4);
        assert_eq!(outs[1].frame, segs[3]);
        assert_eq!(outs[2].frame, segs[2]);
        assert_eq!(outs[3].frame, segs[4]);

        // A new ACK number, window or timestamp starts a new super-frame.
        for (offset, name) in [(34 + 11, "ack"), (34 + 15, "window"), (34 + 27, "tsval")] {
            let mut segs = segments(&spec, 1000);
            for s in &mut segs[2..] {
                s[offset] ^= 1;
                refill_tcp(s, false, 14, 34);
            }
            let outs = run(&mut Coalescer::default(), &segs);
            assert_eq!(outs.len(), 2, "{name}");
            assert_eq!(outs[0].frame.len(), 66 + 2000, "{name}");
            assert_eq!(outs[1].frame.len(), 66 + 3000, "{name}");
        }

        // CWR on a later segment: it starts a new super-frame.
        let mut segs = segments(&spec, 1000);
        segs[3][34 + 13] |= CWR;
        refill_tcp(&mut segs[3], false, 14, 34);
        let outs = run(&mut Coalescer::default(), &segs);
        assert_eq!(outs.len(), 2);
        assert!(outs[1].header.ecn);
    }

    #[test]
    fn interleaved_flows_and_eviction() {
        let a = Spec::v4(4000);
        let b = Spec {
            sport: 40001,
            seed: 7,
            ..Spec::v4(4000)
        };
        let c = Spec::v6(4000);
        let (sa, sb, sc) = (segments(&a, 1000), segments(&b, 1000), segments(&c, 1000));
        let mut frames = Vec::new();
        for i in 0..4 {
            frames.extend([sa[i].clone(), sb[i].clone(), sc[i].clone()]);
        }
        let outs = run(&mut Coalescer::new(3, Checksums::Verify), &frames);
        assert_eq!(outs.len(), 3);
        for (o, spec) in outs.iter().zip([&a, &b, &c]) {
            assert_super_frame(o, spec, 1000);
        }
        // Two slots for three flows: each new flow evicts one in turn.
        let outs = run(&mut Coalescer::new(2, Checksums::Verify), &frames);
        let total: usize = outs.iter().map(|o| o.frame.len()).sum();
        assert!(outs.len() > 3);
        let payload: usize = outs
            .iter()
            .map(|o| o.frame.len() - if o.frame[12] == 0x86 { 86 } else { 66 })
            .sum();
        assert_eq!(payload, 12_000, "{total}");
    }

    #[test]
    fn size_limit_starts_a_new_super_frame() {
        // Over IPv4 with timestamps a super-frame holds 65,535 - 20 - 32 =
        // 65,483 payload bytes at most: 45 segments of 1448 (65,160). The
        // 46th starts the next super-frame.
        let first = Spec {
            flags: ACK,
            ..Spec::v4(1448 * 45)
        };
        let second = Spec {
            seq: first.seq.wrapping_add(1448 * 45),
            ident: first.ident.wrapping_add(45),
            flags: ACK | PSH,
            ..Spec::v4(1448 * 10 + 17)
        };
        let mut segs = segments(&first, 1448);
        segs.extend(segments(&second, 1448));
        let outs = run(&mut Coalescer::default(), &segs);
        assert_eq!(outs.len(), 2);
        assert_super_frame(&outs[0], &first, 1448);
        assert_super_frame(&outs[1], &second, 1448);
        assert!(outs[0].frame.len() <= MAX_FRAME_LEN);
    }

    proptest! {
        #[test]
        fn never_panics(frames in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..200), 0..20)) {
            let mut c = Coalescer::new(2, Checksums::Trust);
            run(&mut c, &frames);
        }

        #[test]
        fn never_panics_near_valid(
            v6: bool, plen in 0usize..6000, mss in 1u16..1500, trust: bool,
            flips in proptest::collection::vec((0usize..8, 0usize..120, any::<u8>()), 0..6),
        ) {
            let spec = Spec { v6, ..Spec::v4(plen) };
            let mut segs = segments(&spec, mss);
            for (k, i, b) in flips {
                if let Some(s) = segs.get_mut(k) {
                    if let Some(x) = s.get_mut(i) { *x ^= b; }
                }
            }
            let checks = if trust { Checksums::Trust } else { Checksums::Verify };
            for o in run(&mut Coalescer::new(2, checks), &segs) {
                prop_assert!(o.frame.len() <= MAX_FRAME_LEN);
            }
        }

        /// Segmenting, coalescing and segmenting again gives the same
        /// frames, whatever the flags.
        #[test]
        fn segment_coalesce_segment(
            v6: bool, plen in 0usize..70_000, mss in 500u16..9000, flags: u8, opts in 0usize..4,
        ) {
            let spec = Spec {
                v6,
                flags,
                options: TIMESTAMPS[..opts * 4].to_vec(),
                ..Spec::v4(plen.min(65_000))
            };
            let segs = segments(&spec, mss);
            let mut again = Vec::new();
            for o in run(&mut Coalescer::default(), &segs) {
                if o.header.is_gso() {
                    let mut s = Segmenter::new(&o.header, &o.frame).unwrap();
                    let mut buf = vec![0u8; s.max_segment_len()];
                    while let Some(len) = s.next_into(&mut buf).unwrap() {
                        again.push(buf[..len].to_vec());
                    }
                } else {
                    again.push(o.frame);
                }
            }
            prop_assert_eq!(again, segs);
        }
    }
}
