//! A helper for `scripts/offload_tap_check.py`, which checks the offload
//! primitives against a real Linux TAP device with `IFF_VNET_HDR`.
//!
//! - `offload_frames segment < buf`: `buf` is what one `read()` from the
//!   TAP returned (virtio-net header, then the frame). A GSO frame is cut
//!   with the segmenter: prints `segments N payload B` once every
//!   segment's IPv4 and TCP checksums verify, or the error. Any other
//!   frame gets `complete_checksum`: prints `single payload B` once its
//!   checksums verify.
//! - `offload_frames coalesce LEN MSS < template`: `template` is an
//!   Ethernet + IP + TCP frame without payload (the next segment the
//!   script would send). Builds a super-frame with `LEN` payload bytes
//!   (byte `i` is `i % 251`), cuts it at `MSS` with the segmenter,
//!   coalesces the pieces, and writes every resulting frame to stdout as a
//!   4-byte big-endian length, then the virtio-net header and the frame.

use std::io::{Read, Write};
use std::net::IpAddr;

use tunsec_datapath::offload::vnet::F_NEEDS_CSUM;
use tunsec_datapath::offload::{
    Coalescer, GsoType, Segmenter, TapFrame, VnetHeader, complete_checksum,
};
use tunsec_wire::ethernet::{self, EtherType};
use tunsec_wire::{ipv4, ipv6, tcp};

/// Where the IP and TCP headers start, the family, and the addresses.
fn locate(frame: &[u8]) -> (usize, usize, bool, IpAddr, IpAddr) {
    let eth = ethernet::Packet::new_checked(frame).expect("Ethernet");
    let l3 = eth.header_len();
    match eth.ethertype() {
        EtherType::Ipv4 => {
            let ip = ipv4::Packet::new_checked(&frame[l3..]).expect("IPv4");
            assert!(ip.verify_checksum(), "IPv4 header checksum");
            let l4 = l3 + ip.header_len();
            (l3, l4, false, ip.src_addr().into(), ip.dst_addr().into())
        }
        EtherType::Ipv6 => {
            let ip = ipv6::Packet::new_checked(&frame[l3..]).expect("IPv6");
            let l4 = l3 + ipv6::HEADER_LEN;
            (l3, l4, true, ip.src_addr().into(), ip.dst_addr().into())
        }
        other => panic!("EtherType {other:?}"),
    }
}

fn segment(input: &[u8]) {
    let (hdr, frame) = VnetHeader::split(input).expect("virtio-net header");
    if !hdr.is_gso() {
        let mut frame = frame.to_vec();
        complete_checksum(&hdr, &mut frame).expect("complete_checksum");
        let (_, l4, _, src, dst) = locate(&frame);
        let t = tcp::Packet::new_checked(&frame[l4..]).expect("TCP");
        assert!(t.verify_checksum(src, dst), "TCP checksum after completion");
        println!("single payload {} ({hdr:?})", t.payload().len());
        return;
    }
    let mut seg = match Segmenter::new(&hdr, frame) {
        Ok(seg) => seg,
        Err(e) => {
            println!("error {e} ({hdr:?})");
            return;
        }
    };
    let mut out = vec![0u8; seg.max_segment_len()];
    let (mut n, mut bytes) = (0, 0);
    while let Some(len) = seg.next_into(&mut out).expect("segment") {
        let s = &out[..len];
        let (_, l4, _, src, dst) = locate(s);
        let t = tcp::Packet::new_checked(&s[l4..]).expect("TCP");
        assert!(t.verify_checksum(src, dst), "TCP checksum of segment {n}");
        n += 1;
        bytes += t.payload().len();
    }
    println!("segments {n} payload {bytes} ({hdr:?})");
}

fn coalesce(template: &[u8], len: usize, mss: u16) {
    let (l3, l4, v6, src, dst) = locate(template);
    let mut frame = template.to_vec();
    frame.extend((0..len).map(|i| (i % 251) as u8));
    let ip_len = frame.len() - l3;
    if v6 {
        ipv6::Packet::new_unchecked(&mut frame[l3..l4])
            .set_payload_len((ip_len - ipv6::HEADER_LEN) as u16);
    } else {
        let mut ip = ipv4::Packet::new_unchecked(&mut frame[l3..l4]);
        ip.set_total_len(ip_len as u16);
        ip.fill_checksum();
    }
    let mut t = tcp::Packet::new_unchecked(&mut frame[l4..]);
    let payload = l4 + t.header_len();
    let sum = t.pseudo_header_sum(src, dst).expect("one family");
    t.set_checksum(sum as u16);
    let hdr = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: if v6 { GsoType::TcpV6 } else { GsoType::TcpV4 },
        ecn: false,
        hdr_len: payload as u16,
        gso_size: mss,
        csum_start: l4 as u16,
        csum_offset: tcp::CHECKSUM_OFFSET as u16,
    };
    let mut seg = Segmenter::new(&hdr, &frame).expect("segmenter");
    let mut buf = vec![0u8; seg.max_segment_len()];
    let mut coalescer = Coalescer::default();
    let mut stdout = std::io::stdout().lock();
    let mut write = |t: TapFrame<'_>| {
        let n = (t.frame.len() + 10) as u32;
        stdout.write_all(&n.to_be_bytes()).expect("stdout");
        stdout.write_all(&t.header_bytes()).expect("stdout");
        stdout.write_all(t.frame).expect("stdout");
    };
    while let Some(n) = seg.next_into(&mut buf).expect("segment") {
        coalescer.push(&buf[..n], &mut write);
    }
    coalescer.flush(&mut write);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).expect("stdin");
    match args.get(1).map(String::as_str) {
        Some("segment") => segment(&input),
        Some("coalesce") => {
            let len = args[2].parse().expect("LEN");
            let mss = args[3].parse().expect("MSS");
            coalesce(&input, len, mss);
        }
        _ => eprintln!("usage: offload_frames segment | coalesce LEN MSS"),
    }
}
