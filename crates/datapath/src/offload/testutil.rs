//! Hand-built frames for the offload tests, with a textbook checksum
//! written independently of `tunsec_wire::checksum`.

use super::vnet::{F_NEEDS_CSUM, GsoType, VnetHeader};

/// What to build: Ethernet (optionally 802.1Q) + IPv4/IPv6 + TCP with
/// options + payload.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) v6: bool,
    pub(crate) vlan: bool,
    pub(crate) payload_len: usize,
    /// TCP options, a multiple of 4 bytes.
    pub(crate) options: Vec<u8>,
    pub(crate) flags: u8,
    pub(crate) seq: u32,
    pub(crate) ack: u32,
    pub(crate) ident: u16,
    pub(crate) window: u16,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    /// The first payload byte; byte i is `seed + i` (mod 256, then mixed).
    pub(crate) seed: u8,
}

/// NOP, NOP, timestamps TSval 0x01020304, TSecr 0x05060708.
pub(crate) const TIMESTAMPS: [u8; 12] = [1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8];

impl Spec {
    pub(crate) fn v4(payload_len: usize) -> Self {
        Self {
            v6: false,
            vlan: false,
            payload_len,
            options: TIMESTAMPS.to_vec(),
            flags: 0x10,
            seq: 0xfffe_0000,
            ack: 0x1234_5678,
            ident: 0xfffe,
            window: 501,
            sport: 40000,
            dport: 5201,
            seed: 0,
        }
    }

    pub(crate) fn v6(payload_len: usize) -> Self {
        Self {
            v6: true,
            ..Self::v4(payload_len)
        }
    }
}

pub(crate) const SRC4: [u8; 4] = [198, 51, 100, 1];
pub(crate) const DST4: [u8; 4] = [198, 51, 100, 2];
pub(crate) const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub(crate) const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// The payload byte at absolute stream position `i`.
pub(crate) fn payload_byte(seed: u8, i: usize) -> u8 {
    (i as u8).wrapping_add(seed) ^ ((i >> 8) as u8).wrapping_mul(31)
}

/// The textbook Internet checksum sum: 16-bit big-endian words, an odd
/// byte padded with zero, carries folded at the end.
pub(crate) fn ref_sum(chunks: &[&[u8]]) -> u16 {
    let mut acc: u64 = 0;
    for data in chunks {
        for pair in data.chunks(2) {
            let w = (u64::from(pair[0]) << 8) | pair.get(1).map_or(0, |&b| u64::from(b));
            acc += w;
        }
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header bytes of a TCP segment of `tcp_len` bytes.
pub(crate) fn pseudo(v6: bool, frame: &[u8], l3: usize, tcp_len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    if v6 {
        p.extend_from_slice(&frame[l3 + 8..l3 + 40]);
        p.extend_from_slice(&(tcp_len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 6]);
    } else {
        p.extend_from_slice(&frame[l3 + 12..l3 + 20]);
        p.extend_from_slice(&[0, 6]);
        p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    }
    p
}

/// Offsets: (l3, l4) of a frame built from `spec`.
pub(crate) fn offsets(spec: &Spec) -> (usize, usize) {
    let l3 = if spec.vlan { 18 } else { 14 };
    (l3, l3 + if spec.v6 { 40 } else { 20 })
}

/// Builds the frame, with a correct IPv4 header checksum and TCP checksum.
pub(crate) fn build(spec: &Spec) -> Vec<u8> {
    let (l3, l4) = offsets(spec);
    let tcp_len = 20 + spec.options.len() + spec.payload_len;
    let mut f = vec![0u8; l4 + tcp_len];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    let ethertype: u16 = if spec.v6 { 0x86dd } else { 0x0800 };
    if spec.vlan {
        f[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        f[14..16].copy_from_slice(&0x0064u16.to_be_bytes());
        f[16..18].copy_from_slice(&ethertype.to_be_bytes());
    } else {
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    }
    if spec.v6 {
        f[l3] = 0x60;
        f[l3 + 1] = 0x01; // flow label 0x12345
        f[l3 + 2] = 0x23;
        f[l3 + 3] = 0x45;
        f[l3 + 4..l3 + 6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        f[l3 + 6] = 6;
        f[l3 + 7] = 64;
        f[l3 + 8..l3 + 24].copy_from_slice(&SRC6);
        f[l3 + 24..l3 + 40].copy_from_slice(&DST6);
    } else {
        f[l3] = 0x45;
        f[l3 + 2..l3 + 4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        f[l3 + 4..l3 + 6].copy_from_slice(&spec.ident.to_be_bytes());
        f[l3 + 6] = 0x40; // DF
        f[l3 + 8] = 64;
        f[l3 + 9] = 6;
        f[l3 + 12..l3 + 16].copy_from_slice(&SRC4);
        f[l3 + 16..l3 + 20].copy_from_slice(&DST4);
        let c = !ref_sum(&[&f[l3..l4]]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    let t = &mut f[l4..];
    t[0..2].copy_from_slice(&spec.sport.to_be_bytes());
    t[2..4].copy_from_slice(&spec.dport.to_be_bytes());
    t[4..8].copy_from_slice(&spec.seq.to_be_bytes());
    t[8..12].copy_from_slice(&spec.ack.to_be_bytes());
    t[12] = (((20 + spec.options.len()) / 4) as u8) << 4;
    t[13] = spec.flags;
    t[14..16].copy_from_slice(&spec.window.to_be_bytes());
    t[20..20 + spec.options.len()].copy_from_slice(&spec.options);
    let p = 20 + spec.options.len();
    for (i, b) in t[p..].iter_mut().enumerate() {
        *b = payload_byte(spec.seed, i);
    }
    let c = !ref_sum(&[&pseudo(spec.v6, &f, l3, tcp_len), &f[l4..]]);
    f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    f
}

/// The super-frame the kernel would hand over for `spec`: the TCP checksum
/// field holds the folded pseudo-header sum, and the header asks for TSO.
pub(crate) fn gso_frame(spec: &Spec, gso_size: u16) -> (VnetHeader, Vec<u8>) {
    let mut f = build(spec);
    let (l3, l4) = offsets(spec);
    let tcp_len = f.len() - l4;
    let partial = ref_sum(&[&pseudo(spec.v6, &f, l3, tcp_len)]);
    f[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    let hdr = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: if spec.v6 {
            GsoType::TcpV6
        } else {
            GsoType::TcpV4
        },
        ecn: false,
        hdr_len: (l4 + 20 + spec.options.len()) as u16,
        gso_size,
        csum_start: l4 as u16,
        csum_offset: 16,
    };
    (hdr, f)
}

/// Whether the TCP checksum of a frame built like [`build`] verifies, by
/// the reference sum.
pub(crate) fn ref_tcp_ok(frame: &[u8], v6: bool, l3: usize, l4: usize) -> bool {
    let tcp_len = frame.len() - l4;
    ref_sum(&[&pseudo(v6, frame, l3, tcp_len), &frame[l4..]]) == 0xffff
}

/// Whether the IPv4 header checksum verifies, by the reference sum.
pub(crate) fn ref_ipv4_ok(frame: &[u8], l3: usize, l4: usize) -> bool {
    ref_sum(&[&frame[l3..l4]]) == 0xffff
}

/// Recomputes the TCP checksum of a frame after a test changed it.
pub(crate) fn refill_tcp(frame: &mut [u8], v6: bool, l3: usize, l4: usize) {
    frame[l4 + 16..l4 + 18].fill(0);
    let c = !ref_sum(&[&pseudo(v6, frame, l3, frame.len() - l4), &frame[l4..]]);
    frame[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
}
