//! UDP batching for a TUN device: runs of received UDP datagrams of one
//! flow, written as one UDP segmentation offload (USO) packet.
//!
//! In gateway mode the receive worker opens ESP and writes IP packets to
//! the TUN device: mostly the kernel vxlan device's UDP datagrams, all of
//! one size while a tenant's TCP stream is under way. Written one per
//! `write`, each is a system call and a lone trip through the kernel's IP
//! and UDP input, and the vxlan device's GRO never sees two of them
//! together. [`UdpBatcher`] joins consecutive datagrams of one flow into
//! one packet with a virtio-net header of type `GSO_UDP_L4`: the kernel
//! splits it again into the original datagrams (`__udp_gso_segment`, with
//! the IP and UDP headers of the first, lengths and IPv4 IDs per segment),
//! all in one `write`, and vxlan's GRO cells can then merge their inner
//! TCP segments.
//!
//! A datagram joins the run when:
//! - it is IPv4 without options or fragmentation, or IPv6 without
//!   extension headers, carrying UDP, and its lengths agree;
//! - its addresses, ports, IPv4 TOS, TTL and DF (IPv6 traffic class, flow
//!   label and hop limit) equal the run's;
//! - its payload is no longer than the run's first, and no shorter one
//!   came before it (only the last segment may be short, as in UDP GSO);
//! - the run stays within [`MAX_SEGMENTS`] and 64 KB.
//!
//! Anything else ends the run and goes out on its own, unchanged, behind a
//! plain header. A run of one is written unchanged too.
//!
//! The joined packet is marked `NEEDS_CSUM` with the UDP pseudo-header sum
//! in the checksum field, so each segment leaves segmentation with a
//! partial checksum that the kernel treats as verified on local delivery.
//! The datagrams were authenticated by ESP on their way here, which is why
//! their own UDP checksums (often zero for VXLAN over IPv4) need no check,
//! as the kernel's WireGuard marks what it decrypts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tunsec_wire::checksum;

use super::vnet::{F_NEEDS_CSUM, GsoType, VnetHeader};

/// Datagrams per run at most (the kernel takes up to 128 segments per
/// UDP GSO packet, `UDP_MAX_SEGMENTS`).
pub const MAX_SEGMENTS: usize = 64;
/// The largest joined packet: the IPv4 total length, and the IPv6 payload
/// length plus its header, are 16-bit fields.
const MAX_LEN: usize = 65_535;
const UDP_HEADER_LEN: usize = 8;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const UDP: u8 = 17;

/// A packet to write to the TUN device: the virtio-net header, then the
/// IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunPacket<'a> {
    /// The virtio-net header.
    pub header: VnetHeader,
    /// The IP packet.
    pub packet: &'a [u8],
}

/// What [`classify`] found in a datagram that may join a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UdpInfo {
    /// The IP header's length (20 or 40).
    ip_len: usize,
    /// The UDP payload's length.
    payload_len: usize,
}

/// An eligible IP/UDP datagram's layout, or `None`.
fn classify(packet: &[u8]) -> Option<UdpInfo> {
    let version = packet.first()? >> 4;
    let (ip_len, ip_total, protocol) = match version {
        4 => {
            let h = packet.get(..IPV4_HEADER_LEN)?;
            // IHL 5 (no options); neither MF nor a fragment offset.
            let fragment = u16::from_be_bytes([h[6], h[7]]) & 0x3fff;
            if h[0] & 0x0f != 5 || fragment != 0 {
                return None;
            }
            (
                IPV4_HEADER_LEN,
                usize::from(u16::from_be_bytes([h[2], h[3]])),
                h[9],
            )
        }
        6 => {
            let h = packet.get(..IPV6_HEADER_LEN)?;
            let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
            (IPV6_HEADER_LEN, IPV6_HEADER_LEN + payload, h[6])
        }
        _ => return None,
    };
    if protocol != UDP || ip_total != packet.len() {
        return None;
    }
    let udp = packet.get(ip_len..ip_len + UDP_HEADER_LEN)?;
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len != packet.len() - ip_len || udp_len == UDP_HEADER_LEN {
        return None;
    }
    Some(UdpInfo {
        ip_len,
        payload_len: udp_len - UDP_HEADER_LEN,
    })
}

/// Whether two datagrams' IP and UDP headers belong to one run: equal but
/// for the lengths, the IPv4 ID and the checksums.
fn same_flow(a: &[u8], b: &[u8], ip_len: usize) -> bool {
    let ports = ip_len..ip_len + 4;
    let ip_same = if ip_len == IPV4_HEADER_LEN {
        // Version/IHL and TOS; flags (DF); TTL and protocol; addresses.
        a[..2] == b[..2] && a[6] == b[6] && a[8..10] == b[8..10] && a[12..20] == b[12..20]
    } else {
        // Version, traffic class, flow label; next header, hop limit;
        // addresses.
        a[..4] == b[..4] && a[6..40] == b[6..40]
    };
    ip_same && a[ports.clone()] == b[ports]
}

fn ipv4_addr(b: &[u8]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

fn ipv6_addr(b: &[u8]) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    IpAddr::V6(Ipv6Addr::from(a))
}

/// Joins runs of UDP datagrams into USO packets; see the module
/// documentation. Its buffer (64 KB) is allocated once.
#[derive(Debug)]
pub struct UdpBatcher {
    buf: Box<[u8]>,
    /// Bytes of `buf` in use: the first datagram's headers, then every
    /// payload of the run.
    len: usize,
    /// The run's IP header length.
    ip_len: usize,
    /// Datagrams in the run.
    segments: usize,
    /// The first datagram's payload length (the segment size).
    size: usize,
    /// A short datagram ended the run: nothing more joins.
    closed: bool,
}

impl Default for UdpBatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl UdpBatcher {
    /// An empty batcher.
    pub fn new() -> Self {
        Self {
            buf: vec![0u8; MAX_LEN].into_boxed_slice(),
            len: 0,
            ip_len: 0,
            segments: 0,
            size: 0,
            closed: false,
        }
    }

    /// Datagrams waiting in the current run.
    pub fn pending(&self) -> usize {
        self.segments
    }

    /// Takes one IP packet: it joins the current run, or the run goes out
    /// through `out` and the packet starts the next one (or goes out
    /// too, when it cannot be batched).
    pub fn push(&mut self, packet: &[u8], out: &mut impl FnMut(TunPacket<'_>)) {
        let Some(info) = classify(packet) else {
            self.flush(out);
            out(TunPacket {
                header: VnetHeader::default(),
                packet,
            });
            return;
        };
        let joins = self.segments > 0
            && !self.closed
            && info.ip_len == self.ip_len
            && info.payload_len <= self.size
            && self.segments < MAX_SEGMENTS
            && self.len + info.payload_len <= MAX_LEN
            && same_flow(&self.buf[..self.len], packet, info.ip_len);
        if joins {
            let payload = &packet[info.ip_len + UDP_HEADER_LEN..];
            self.buf[self.len..self.len + payload.len()].copy_from_slice(payload);
            self.len += payload.len();
            self.segments += 1;
            self.closed = info.payload_len < self.size;
            return;
        }
        self.flush(out);
        self.buf[..packet.len()].copy_from_slice(packet);
        self.len = packet.len();
        self.ip_len = info.ip_len;
        self.segments = 1;
        self.size = info.payload_len;
        self.closed = false;
    }

    /// Writes out the current run, if any: a run of one as it came, a
    /// longer one as a USO packet.
    pub fn flush(&mut self, out: &mut impl FnMut(TunPacket<'_>)) {
        let segments = std::mem::take(&mut self.segments);
        if segments == 0 {
            return;
        }
        let len = std::mem::take(&mut self.len);
        if segments == 1 {
            out(TunPacket {
                header: VnetHeader::default(),
                packet: &self.buf[..len],
            });
            return;
        }
        let ip_len = self.ip_len;
        let udp_len = len - ip_len;
        let packet = &mut self.buf[..len];
        let (src, dst) = if ip_len == IPV4_HEADER_LEN {
            packet[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            packet[10..12].fill(0);
            let sum = checksum::checksum(&packet[..IPV4_HEADER_LEN]);
            packet[10..12].copy_from_slice(&sum.to_be_bytes());
            (ipv4_addr(&packet[12..16]), ipv4_addr(&packet[16..20]))
        } else {
            packet[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
            (ipv6_addr(&packet[8..24]), ipv6_addr(&packet[24..40]))
        };
        let udp = &mut packet[ip_len..ip_len + UDP_HEADER_LEN];
        udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        // The pseudo-header sum, not complemented: what the kernel puts in
        // a UDP GSO packet with a partial checksum (`udp4_hwcsum`), and
        // what segmentation adjusts per segment.
        let pseudo = checksum::pseudo_header(src, dst, UDP, udp_len as u32).unwrap_or(0);
        udp[6..8].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
        let header = VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GsoType::UdpL4,
            ecn: false,
            hdr_len: (ip_len + UDP_HEADER_LEN) as u16,
            gso_size: self.size as u16,
            csum_start: ip_len as u16,
            csum_offset: 6,
        };
        out(TunPacket {
            header,
            packet: &self.buf[..len],
        });
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::gateway::tests::kernel_packet;
    use proptest::prelude::*;

    const A4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const B4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
    const A6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    const B6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));

    /// Pushes every packet, flushes, and returns what came out.
    fn run(packets: &[Vec<u8>]) -> Vec<(VnetHeader, Vec<u8>)> {
        let mut b = UdpBatcher::new();
        let mut out = Vec::new();
        let mut sink = |p: TunPacket<'_>| out.push((p.header, p.packet.to_vec()));
        for p in packets {
            b.push(p, &mut sink);
        }
        b.flush(&mut sink);
        assert_eq!(b.pending(), 0);
        out
    }

    /// What the kernel makes of a written packet: the IP packets after UDP
    /// segmentation, each reduced to (its IP/UDP flow fields, its
    /// payload), as `flow_and_payload` reduces an input packet.
    fn resegment(header: &VnetHeader, packet: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        if !header.is_gso() {
            return vec![flow_and_payload(packet)];
        }
        let hdr_len = usize::from(header.hdr_len);
        let size = usize::from(header.gso_size);
        packet[hdr_len..]
            .chunks(size)
            .map(|payload| (flow(packet, hdr_len - UDP_HEADER_LEN), payload.to_vec()))
            .collect()
    }

    /// The fields a run keeps equal (see `same_flow`), as bytes.
    fn flow(packet: &[u8], ip_len: usize) -> Vec<u8> {
        let mut f = Vec::new();
        if ip_len == IPV4_HEADER_LEN {
            f.extend_from_slice(&packet[..2]);
            f.push(packet[6]);
            f.extend_from_slice(&packet[8..10]);
            f.extend_from_slice(&packet[12..20]);
        } else {
            f.extend_from_slice(&packet[..4]);
            f.extend_from_slice(&packet[6..40]);
        }
        f.extend_from_slice(&packet[ip_len..ip_len + 4]);
        f
    }

    fn flow_and_payload(packet: &[u8]) -> (Vec<u8>, Vec<u8>) {
        match classify(packet) {
            Some(i) => (
                flow(packet, i.ip_len),
                packet[i.ip_len + UDP_HEADER_LEN..].to_vec(),
            ),
            None => (Vec::new(), packet.to_vec()),
        }
    }

    fn datagrams(src: IpAddr, dst: IpAddr, sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes
            .iter()
            .map(|&n| kernel_packet(src, dst, 40000, 4789, n))
            .collect()
    }

    /// A run of equal datagrams and a short last one: one USO packet
    /// whose headers the kernel accepts (lengths, IPv4 header checksum,
    /// pseudo-header sum), which segments back into the same datagrams;
    /// for IPv4 and IPv6.
    #[test]
    fn run_of_datagrams_becomes_one_uso_packet() {
        for (src, dst, ip_len) in [(A4, B4, IPV4_HEADER_LEN), (A6, B6, IPV6_HEADER_LEN)] {
            let input = datagrams(src, dst, &[1000, 1000, 1000, 1000, 300]);
            let out = run(&input);
            assert_eq!(out.len(), 1);
            let (h, p) = &out[0];
            assert_eq!(
                *h,
                VnetHeader {
                    flags: F_NEEDS_CSUM,
                    gso_type: GsoType::UdpL4,
                    ecn: false,
                    hdr_len: (ip_len + 8) as u16,
                    gso_size: 1000,
                    csum_start: ip_len as u16,
                    csum_offset: 6,
                }
            );
            assert_eq!(p.len(), ip_len + 8 + 4300);
            let udp_len = 8 + 4300u16;
            if ip_len == IPV4_HEADER_LEN {
                assert_eq!(p[2..4], (20 + udp_len).to_be_bytes());
                assert_eq!(checksum::fold(checksum::sum(&p[..20])), 0xffff);
            } else {
                assert_eq!(p[4..6], udp_len.to_be_bytes());
            }
            assert_eq!(p[ip_len + 4..ip_len + 6], udp_len.to_be_bytes());
            let pseudo = checksum::pseudo_header(src, dst, UDP, u32::from(udp_len)).unwrap();
            assert_eq!(
                p[ip_len + 6..ip_len + 8],
                checksum::fold(pseudo).to_be_bytes()
            );
            let want: Vec<_> = input.iter().map(|p| flow_and_payload(p)).collect();
            assert_eq!(resegment(h, p), want);
        }
    }

    /// One datagram alone goes out as it came, behind a plain header.
    #[test]
    fn a_single_datagram_is_unchanged() {
        let input = datagrams(A4, B4, &[500]);
        assert_eq!(run(&input), [(VnetHeader::default(), input[0].clone())]);
    }

    /// A longer datagram, one after a short one, another port, another
    /// TTL, TCP, IPv4 options and fragments each end the run; the order
    /// of everything is kept.
    #[test]
    fn what_ends_a_run() {
        let mut input = datagrams(A4, B4, &[800, 800, 900, 900, 400, 900]);
        let mut other_port = kernel_packet(A4, B4, 40001, 4789, 900);
        input.push(other_port.clone());
        other_port[8] = 3; // TTL
        input.push(other_port);
        let mut tcp = kernel_packet(A4, B4, 40000, 4789, 900);
        tcp[9] = 6;
        input.push(tcp);
        let mut fragment = kernel_packet(A4, B4, 40000, 4789, 900);
        fragment[6] = 0x20; // MF
        input.push(fragment);
        input.extend(datagrams(A4, B4, &[900, 900]));
        let out = run(&input);
        let shape: Vec<(GsoType, usize)> = out
            .iter()
            .map(|(h, p)| (h.gso_type, p.len() - 28))
            .collect();
        assert_eq!(
            shape,
            [
                (GsoType::UdpL4, 1600),
                (GsoType::UdpL4, 2200),
                (GsoType::None, 900),
                (GsoType::None, 900),
                (GsoType::None, 900),
                (GsoType::None, 900),
                (GsoType::None, 900),
                (GsoType::UdpL4, 1800),
            ]
        );
        let got: Vec<_> = out.iter().flat_map(|(h, p)| resegment(h, p)).collect();
        let want: Vec<_> = input.iter().map(|p| flow_and_payload(p)).collect();
        assert_eq!(got, want);
    }

    /// At most `MAX_SEGMENTS` datagrams and 64 KB per packet.
    #[test]
    fn runs_are_bounded() {
        let out = run(&datagrams(A4, B4, &[100; 70]));
        let counts: Vec<usize> = out.iter().map(|(_, p)| (p.len() - 28) / 100).collect();
        assert_eq!(counts, [MAX_SEGMENTS, 70 - MAX_SEGMENTS]);
        let out = run(&datagrams(A6, B6, &[1400; 64]));
        let per_packet = (MAX_LEN - 48) / 1400;
        assert_eq!((out[0].1.len() - 48) / 1400, per_packet);
        assert!(out.iter().all(|(_, p)| p.len() <= MAX_LEN));
        assert_eq!(out.len(), 64usize.div_ceil(per_packet));
    }

    proptest! {
        /// Whatever arrives, from several flows and of any sizes, the
        /// kernel's segmentation of what is written gives back the same
        /// datagrams in the same order.
        #[test]
        fn segments_back_into_the_input(
            picks in proptest::collection::vec((0usize..3, 1usize..1500), 0..150),
        ) {
            let ends = [(A4, B4), (B4, A4), (A6, B6)];
            let input: Vec<Vec<u8>> = picks
                .iter()
                .map(|&(f, n)| kernel_packet(ends[f].0, ends[f].1, 40000, 4789, n))
                .collect();
            let out = run(&input);
            for (h, p) in &out {
                prop_assert!(p.len() <= MAX_LEN);
                if h.is_gso() {
                    prop_assert!(p.len() - usize::from(h.hdr_len) > usize::from(h.gso_size));
                }
            }
            let got: Vec<_> = out.iter().flat_map(|(h, p)| resegment(h, p)).collect();
            let want: Vec<_> = input.iter().map(|p| flow_and_payload(p)).collect();
            prop_assert_eq!(got, want);
        }

        /// Arbitrary bytes never panic, and come out as they went in.
        #[test]
        fn arbitrary_bytes_pass_through(
            packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..20),
        ) {
            let out = run(&packets);
            let total: usize = out.iter().map(|(_, p)| p.len()).sum();
            prop_assert!(total <= packets.iter().map(Vec::len).sum::<usize>());
        }
    }
}
