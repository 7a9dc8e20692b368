//! Benchmarks of the TAP offload primitives (`tunsec_datapath::offload`).
//!
//! - `segment/v4`, `segment/v6`: [`Segmenter`] cutting one TSO super-frame
//!   (Ethernet, IP, TCP with timestamps, 45 x 1448 = 65,160 payload bytes,
//!   what Linux hands over for a 64 KB GSO segment at MSS 1448) into its 45
//!   wire frames, each written to the same output buffer: header copy,
//!   payload copy, IP fields, full TCP checksum.
//! - `coalesce/verify`, `coalesce/trust`: [`Coalescer`] taking those 45
//!   frames back and handing out the one super-frame, with and without
//!   verifying every segment's TCP checksum.
//! - `complete_checksum`: checksum completion for one 1514-byte frame.
//!
//! Every benchmark counts segments (`ItemsCount`), so divan's throughput
//! column is segments per second; the time per segment is the median time
//! divided by 45. Nothing is allocated in a timed closure.
//!
//! Run with `cargo bench -p tunsec-datapath --bench offload`; see
//! `docs/performance.md`, "Offload primitives".

use std::net::IpAddr;

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use tunsec_datapath::offload::vnet::F_NEEDS_CSUM;
use tunsec_datapath::offload::{
    Checksums, Coalescer, GsoType, Segmenter, TapFrame, VnetHeader, complete_checksum,
};
use tunsec_wire::ip::IpProtocol;
use tunsec_wire::tcp::flags::{ACK, PSH};
use tunsec_wire::{checksum, ipv4, ipv6, tcp};

fn main() {
    divan::main();
}

/// The MSS of a 1500-byte Ethernet path with TCP timestamps.
const MSS: usize = 1448;
/// Segments per super-frame.
const SEGMENTS: usize = 45;
/// TCP options: NOP, NOP, timestamps.
const OPTIONS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];

/// A TSO super-frame as the kernel hands it over (partial checksum), and
/// its virtio-net header.
fn tso_frame(v6: bool) -> (VnetHeader, Vec<u8>) {
    let l3 = 14;
    let l4 = l3
        + if v6 {
            ipv6::HEADER_LEN
        } else {
            ipv4::HEADER_LEN
        };
    let payload = l4 + tcp::HEADER_LEN + OPTIONS.len();
    let mut f = vec![0u8; payload + SEGMENTS * MSS];
    f[0..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&(if v6 { 0x86ddu16 } else { 0x0800 }).to_be_bytes());
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        )
    } else {
        (
            "198.51.100.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        )
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4::Repr {
            src_addr: s,
            dst_addr: d,
            next_header: IpProtocol::Tcp,
            payload_len: f.len() - l4,
            hop_limit: 64,
            dscp_ecn: 0,
            dont_frag: true,
            ident: 1,
        }
        .emit(&mut ipv4::Packet::new_unchecked(&mut f[l3..l4])),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6::Repr {
            src_addr: s,
            dst_addr: d,
            next_header: IpProtocol::Tcp,
            payload_len: f.len() - l4,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0x12345,
        }
        .emit(&mut ipv6::Packet::new_unchecked(&mut f[l3..l4])),
        _ => unreachable!(),
    }
    for (i, b) in f[payload..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut th = tcp::Packet::new_unchecked(&mut f[l4..]);
    th.set_src_port(40000);
    th.set_dst_port(5201);
    th.set_seq_number(1);
    th.set_ack_number(1);
    th.set_header_len(tcp::HEADER_LEN + OPTIONS.len());
    th.set_flags(ACK | PSH);
    th.set_window(501);
    th.options_mut().copy_from_slice(&OPTIONS);
    let partial = th.pseudo_header_sum(src, dst).unwrap();
    th.set_checksum(checksum::fold(partial));
    let hdr = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: if v6 { GsoType::TcpV6 } else { GsoType::TcpV4 },
        ecn: false,
        hdr_len: payload as u16,
        gso_size: MSS as u16,
        csum_start: l4 as u16,
        csum_offset: tcp::CHECKSUM_OFFSET as u16,
    };
    (hdr, f)
}

/// The 45 wire frames of [`tso_frame`].
fn segments(v6: bool) -> Vec<Vec<u8>> {
    let (hdr, frame) = tso_frame(v6);
    let mut seg = Segmenter::new(&hdr, &frame).unwrap();
    let mut out = vec![0u8; seg.max_segment_len()];
    let mut all = Vec::new();
    while let Some(len) = seg.next_into(&mut out).unwrap() {
        all.push(out[..len].to_vec());
    }
    assert_eq!(all.len(), SEGMENTS);
    all
}

#[divan::bench_group]
mod segment {
    use super::*;

    fn run(bencher: Bencher<'_, '_>, v6: bool) {
        let (hdr, frame) = tso_frame(v6);
        let mut out = vec![0u8; 2048];
        bencher.counter(ItemsCount::new(SEGMENTS)).bench_local(|| {
            let mut seg = Segmenter::new(black_box(&hdr), black_box(&frame)).unwrap();
            let mut total = 0;
            while let Some(len) = seg.next_into(&mut out).unwrap() {
                total += len;
            }
            black_box(total)
        });
    }

    /// 64 KB over IPv4 into 45 frames.
    #[divan::bench]
    fn v4(bencher: Bencher<'_, '_>) {
        run(bencher, false);
    }

    /// 64 KB over IPv6 into 45 frames.
    #[divan::bench]
    fn v6(bencher: Bencher<'_, '_>) {
        run(bencher, true);
    }
}

#[divan::bench_group]
mod coalesce {
    use super::*;

    fn run(bencher: Bencher<'_, '_>, checksums: Checksums) {
        let segs = segments(false);
        let mut c = Coalescer::new(8, checksums);
        bencher.counter(ItemsCount::new(SEGMENTS)).bench_local(|| {
            let mut out = 0usize;
            let mut sink = |t: TapFrame<'_>| out += t.frame.len();
            for s in &segs {
                c.push(black_box(s), &mut sink);
            }
            c.flush(&mut sink);
            assert_eq!(out, 66 + SEGMENTS * MSS);
            black_box(out)
        });
    }

    /// 45 IPv4 frames into one super-frame, every TCP checksum verified.
    #[divan::bench]
    fn verify(bencher: Bencher<'_, '_>) {
        run(bencher, Checksums::Verify);
    }

    /// The same without verifying checksums.
    #[divan::bench]
    fn trust(bencher: Bencher<'_, '_>) {
        run(bencher, Checksums::Trust);
    }
}

/// Checksum completion of one 1514-byte IPv4 frame.
#[divan::bench]
fn complete_checksum_1514(bencher: Bencher<'_, '_>) {
    let (mut hdr, frame) = tso_frame(false);
    hdr.gso_type = GsoType::None;
    let mut frame = frame[..1514].to_vec();
    let partial = [frame[50], frame[51]];
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        frame[50..52].copy_from_slice(&partial);
        complete_checksum(black_box(&hdr), black_box(&mut frame)).unwrap();
    });
}
