//! The TAP offloads on untrusted bytes: a virtio-net header and a frame.
//!
//! `Segmenter` and `complete_checksum` return `Ok` or `Err`, never panic,
//! and never write past a segment. Every segment the segmenter writes
//! carries good IPv4 and TCP checksums and the super-frame's payload, in
//! order. Coalescing those segments and segmenting the result again gives
//! the same segments back. The input frame, cut into pieces at 0xFE bytes,
//! also goes through a `Coalescer` as a batch of frames.
//!
//! Input: 10 bytes of virtio-net header, then the frame.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use tunsec_datapath::offload::gro::MAX_FRAME_LEN;
use tunsec_datapath::offload::{
    Checksums, Coalescer, Segmenter, TapFrame, VnetHeader, complete_checksum,
};
use tunsec_wire::ethernet::{self, EtherType};
use tunsec_wire::{ipv4, ipv6, tcp};

/// The TCP segment of a frame the segmenter wrote, with its addresses.
fn tcp_of(frame: &[u8]) -> (IpAddr, IpAddr, &[u8]) {
    let eth = ethernet::Packet::new_checked(frame).expect("segment: Ethernet");
    let l3 = eth.header_len();
    match eth.ethertype() {
        EtherType::Ipv4 => {
            let ip = ipv4::Packet::new_checked(&frame[l3..]).expect("segment: IPv4");
            assert!(ip.verify_checksum(), "segment: IPv4 checksum");
            assert_eq!(l3 + usize::from(ip.total_len()), frame.len());
            let src = ip.src_addr().into();
            let dst = ip.dst_addr().into();
            (src, dst, &frame[l3 + ip.header_len()..])
        }
        EtherType::Ipv6 => {
            let ip = ipv6::Packet::new_checked(&frame[l3..]).expect("segment: IPv6");
            assert_eq!(l3 + 40 + usize::from(ip.payload_len()), frame.len());
            (
                ip.src_addr().into(),
                ip.dst_addr().into(),
                &frame[l3 + 40..],
            )
        }
        other => panic!("segment of EtherType {other:?}"),
    }
}

fn segment(hdr: &VnetHeader, frame: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut seg = Segmenter::new(hdr, frame).ok()?;
    let mut out = vec![0u8; seg.max_segment_len() + 8];
    let mut all = Vec::new();
    while let Some(len) = seg.next_into(&mut out).expect("max_segment_len fits") {
        assert!(len <= seg.max_segment_len());
        all.push(out[..len].to_vec());
    }
    assert_eq!(all.len(), seg.segment_count());
    Some(all)
}

fn coalesce(frames: &[Vec<u8>], checksums: Checksums) -> Vec<(VnetHeader, Vec<u8>)> {
    let mut c = Coalescer::new(2, checksums);
    let mut outs = Vec::new();
    let mut sink = |t: TapFrame<'_>| {
        assert!(t.frame.len() <= MAX_FRAME_LEN);
        outs.push((t.header, t.frame.to_vec()));
    };
    for f in frames {
        c.push(f, &mut sink);
    }
    c.flush(&mut sink);
    assert_eq!(c.pending(), 0);
    outs
}

fuzz_target!(|input: &[u8]| {
    let Ok((hdr, frame)) = VnetHeader::split(input) else {
        return;
    };
    assert_eq!(hdr.to_bytes(), input[..10]);

    let mut copy = frame.to_vec();
    let _ = complete_checksum(&hdr, &mut copy);
    assert_eq!(copy.len(), frame.len());

    if let Some(segs) = segment(&hdr, frame) {
        let mut payload = Vec::new();
        for s in &segs {
            let (src, dst, t) = tcp_of(s);
            let t = tcp::Packet::new_checked(t).expect("segment: TCP");
            assert!(t.verify_checksum(src, dst), "segment: TCP checksum");
            payload.extend_from_slice(t.payload());
        }
        let headers = segs[0].len()
            - tcp::Packet::new_checked(tcp_of(&segs[0]).2)
                .expect("segment: TCP")
                .payload()
                .len();
        assert_eq!(payload, frame[headers..]);

        let mut again = Vec::new();
        for (h, f) in coalesce(&segs, Checksums::Verify) {
            if h.is_gso() {
                again.extend(segment(&h, &f).expect("a coalesced frame segments"));
            } else {
                again.push(f);
            }
        }
        assert_eq!(again, segs, "segment, coalesce, segment");
    }

    let pieces: Vec<Vec<u8>> = frame.split(|&b| b == 0xfe).map(<[u8]>::to_vec).collect();
    coalesce(&pieces, Checksums::Trust);
    coalesce(&pieces, Checksums::Verify);
});
