//! Seal then open: with `arbitrary` parameters (suite, mode,
//! encapsulation, ESN, null or real cipher, starting sequence number,
//! replay window, room around the packet) and payloads, packets sealed by
//! an outbound SA open under the matching inbound SA, in any order, and
//! come back identical. A replayed packet is refused, and with a real
//! cipher so is a packet with one bit flipped.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tunsec_esp::{
    Direction, DropReason, Engine, Inbound, Mode, PacketBuf, ReplayWindow, Sa, Suite,
};
use tunsec_fuzz::{Config, LOCAL4, LOCAL6, Layer, ModeKind, REMOTE4, REMOTE6, RoundTripInput, SPI};
use tunsec_wire::ip::IpProtocol;
use tunsec_wire::{esp, ipv4, ipv6};

/// At most this many packets per input, all inside the replay window.
const MAX_PACKETS: usize = 4;
/// Payloads are cut to this length (well inside an IP packet).
const MAX_PAYLOAD: usize = 2048;

/// The inner IP packet for the `Ip` layer: from the remote host to the
/// local one, of the chosen family.
fn ip_packet(layer: &Layer, payload: &[u8], next_header: IpProtocol) -> Vec<u8> {
    let Layer::Ip {
        v6,
        tos,
        hop_limit,
        ident,
        dont_frag,
        flow_label,
        ..
    } = *layer
    else {
        unreachable!()
    };
    if v6 {
        let repr = ipv6::Repr {
            src_addr: REMOTE6,
            dst_addr: LOCAL6,
            next_header,
            payload_len: payload.len(),
            hop_limit,
            traffic_class: tos,
            flow_label: flow_label & ipv6::MAX_FLOW_LABEL,
        };
        let mut pkt = vec![0u8; repr.buffer_len() + payload.len()];
        let mut p = ipv6::Packet::new_unchecked(&mut pkt[..]);
        repr.emit(&mut p);
        p.payload_mut().copy_from_slice(payload);
        pkt
    } else {
        let repr = ipv4::Repr {
            src_addr: REMOTE4,
            dst_addr: LOCAL4,
            next_header,
            payload_len: payload.len(),
            hop_limit,
            dscp_ecn: tos,
            dont_frag,
            ident,
        };
        let mut pkt = vec![0u8; repr.buffer_len() + payload.len()];
        let mut p = ipv4::Packet::new_unchecked(&mut pkt[..]);
        repr.emit(&mut p);
        p.payload_mut().copy_from_slice(payload);
        pkt
    }
}

/// Where the ESP header starts in a sealed IP packet.
fn esp_offset(sealed: &[u8], udp: bool) -> usize {
    let ip = match tunsec_wire::ip::version(sealed) {
        Ok(4) => ipv4::Packet::new_checked(sealed)
            .expect("sealed IPv4 checks")
            .header_len(),
        Ok(6) => ipv6::HEADER_LEN,
        other => panic!("sealed packet of version {other:?}"),
    };
    ip + if udp { 8 } else { 0 }
}

fuzz_target!(|input: RoundTripInput| {
    let config = Config {
        suite: Suite::ALL[usize::from(input.suite % 4)],
        mode: input.mode,
        udp: input.udp,
        esn: input.esn,
        null_cipher: input.null_cipher,
        near_wrap: false,
    };
    // One to MAX_PACKETS payloads; no payload at all means one empty one.
    let payloads: Vec<&[u8]> = match input.payloads.len() {
        0 => vec![&[]],
        n => input.payloads[..n.min(MAX_PACKETS)]
            .iter()
            .map(|p| &p[..p.len().min(MAX_PAYLOAD)])
            .collect(),
    };
    let count = payloads.len();
    let max_start = if input.esn {
        u64::MAX
    } else {
        u64::from(u32::MAX)
    } - (count as u64 - 1);
    let start = input.start_seq.clamp(1, max_start);
    let window =
        u32::from(input.replay_window).clamp(ReplayWindow::MIN_SIZE, ReplayWindow::MAX_SIZE);
    let now = Instant::now();

    let provider = config.provider();
    let mut out = Sa::with_provider(config.sa_config(Direction::Outbound), now, &provider)
        .expect("outbound SA");
    if start > 1 {
        out.advance_seq(start)
            .expect("fresh outbound SA moves forward");
    }
    let new_inbound = || {
        let mut cfg = config.sa_config(Direction::Inbound);
        cfg.replay_window = window;
        let mut sa = Sa::with_provider(cfg, now, &provider).expect("inbound SA");
        let top = start.saturating_sub(1 + u64::from(input.lag));
        sa.advance_replay_window(top)
            .expect("fresh window moves forward");
        sa
    };
    let mut inb = new_inbound();
    let mut engine = Engine::new();
    let use_engine = matches!(
        input.layer,
        Layer::Ip {
            via_engine: true,
            ..
        }
    );
    if use_engine {
        engine.add_inbound(new_inbound()).expect("one inbound SA");
    }

    // Seal every packet, in order.
    let selectors = config.mode == ModeKind::TransportSelectors;
    // The IP protocol of the inner packet (the selectors admit UDP only).
    let protocol = match input.layer {
        Layer::Ip { .. } if selectors => IpProtocol::Udp,
        Layer::Ip { protocol, .. } => IpProtocol::from(protocol),
        Layer::Esp { next_header } => IpProtocol::from(next_header),
    };
    let mut sealed = Vec::new();
    for (i, &payload) in payloads.iter().enumerate() {
        let original = match input.layer {
            Layer::Esp { .. } => payload.to_vec(),
            Layer::Ip { .. } => ip_packet(&input.layer, payload, protocol),
        };
        let overhead = match input.layer {
            Layer::Esp { .. } => out.esp_overhead(),
            Layer::Ip { .. } => out.overhead(),
        };
        let head = overhead.head + usize::from(input.extra_head);
        let tail = overhead.tail + usize::from(input.extra_tail);
        let mut bytes = vec![0u8; head + original.len() + tail];
        bytes[head..head + original.len()].copy_from_slice(&original);
        let mut buf = PacketBuf::new(&mut bytes, head, head + original.len());
        let result = match input.layer {
            Layer::Esp { next_header } => out.seal_esp(&mut buf, next_header, now),
            Layer::Ip { v6, .. } => {
                let result = out.seal(&mut buf, now);
                if let Mode::Tunnel { local, .. } = out.mode()
                    && local.is_ipv4() == v6
                {
                    // Mixed families are not supported for sealing yet.
                    assert_eq!(result, Err(DropReason::Policy));
                    return;
                }
                if out.mode() == Mode::Transport
                    && v6
                    && matches!(
                        protocol,
                        IpProtocol::HopByHop
                            | IpProtocol::Ipv6Route
                            | IpProtocol::Ipv6Frag
                            | IpProtocol::Ipv6Opts
                    )
                {
                    // Extension headers are refused in transport mode.
                    assert_eq!(result, Err(DropReason::Malformed));
                    return;
                }
                result
            }
        };
        result.expect("sealing with enough room succeeds");
        let seq = start + i as u64;
        assert!(buf.len() <= original.len() + overhead.total());
        let wire = buf.data().to_vec();

        // The ESP header on the wire.
        let at = match input.layer {
            Layer::Esp { .. } => 0,
            Layer::Ip { .. } => esp_offset(&wire, config.udp),
        };
        let header = esp::Packet::new_checked(&wire[at..]).expect("sealed ESP header");
        let repr = esp::Repr::parse(&header).expect("sealed ESP header parses");
        assert_eq!((repr.spi, repr.sequence_number), (SPI, seq as u32));
        let ct = wire.len() - at - esp::HEADER_LEN - config.suite.iv_len() - config.suite.icv_len();
        assert_eq!(ct % config.suite.align(), 0, "ciphertext alignment");
        sealed.push((original, wire));
    }
    assert_eq!(out.last_seq(), start + (count as u64 - 1));

    // Open them, rotated.
    let rotate = usize::from(input.rotate) % sealed.len();
    for k in 0..sealed.len() {
        let (original, wire) = &sealed[(k + rotate) % sealed.len()];
        let mut bytes = wire.clone();
        let mut buf = PacketBuf::whole(&mut bytes);
        match input.layer {
            Layer::Esp { next_header } => {
                let result = inb.open_esp(&mut buf, now);
                if protocol == IpProtocol::NoNextHeader {
                    assert_eq!(result, Err(DropReason::Dummy));
                    continue;
                }
                assert_eq!(result, Ok(next_header));
            }
            Layer::Ip { .. } => {
                // In transport mode the inner protocol is ESP's next header.
                let dummy =
                    config.mode == ModeKind::Transport && protocol == IpProtocol::NoNextHeader;
                let result = if use_engine {
                    engine.inbound(&mut buf, now).map(|r| {
                        assert_eq!(r, Inbound::Decrypted(SPI));
                    })
                } else {
                    inb.open(&mut buf, now)
                };
                if dummy {
                    assert_eq!(result, Err(DropReason::Dummy));
                    continue;
                }
                assert_eq!(result, Ok(()));
            }
        }
        assert_eq!(buf.data(), &original[..], "the payload came back changed");
    }

    // A replay is refused, before decryption.
    let (_, first) = &sealed[0];
    let mut bytes = first.clone();
    let mut buf = PacketBuf::whole(&mut bytes);
    let replayed = match input.layer {
        Layer::Esp { .. } => inb.open_esp(&mut buf, now).map(drop),
        Layer::Ip { .. } if use_engine => engine.inbound(&mut buf, now).map(drop),
        Layer::Ip { .. } => inb.open(&mut buf, now),
    };
    assert_eq!(replayed, Err(DropReason::Replay));

    // One flipped bit anywhere in the ESP packet fails under a real
    // cipher, on a fresh inbound SA.
    if !config.null_cipher {
        let at = match input.layer {
            Layer::Esp { .. } => 0,
            Layer::Ip { .. } => esp_offset(first, config.udp),
        };
        let esp_len = first.len() - at;
        let bit = usize::from(input.flip) % (esp_len * 8);
        let mut bytes = first[at..].to_vec();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let mut fresh = new_inbound();
        let mut buf = PacketBuf::whole(&mut bytes);
        assert!(
            fresh.open_esp(&mut buf, now).is_err(),
            "a flipped bit was accepted"
        );
    }
});
