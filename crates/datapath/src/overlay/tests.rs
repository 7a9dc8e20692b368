//! Two hosts' tables, a frame from A's TAP to B's TAP and back, for each
//! tunnel format, policy, suite and ESP mode; and each drop on the way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tunsec_esp::{Direction, PortRange, Sa, SaConfig, SaKeys, Suite};

use super::*;
use crate::esp_rx::{Received, open_inbound};
use crate::fast_map::FastMap;
use crate::fdb::DEFAULT_AGEING;
use crate::packet::{HEADROOM, TAILROOM};
use crate::shared_sa::SharedSa;

const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

fn sa(spi: u32, direction: Direction, suite: Suite) -> SharedSa {
    Arc::new(Mutex::new(raw_sa(spi, direction, suite, Mode::Transport)))
}

/// An SA whose keys follow from its SPI, so that a test can build a twin of
/// any SA in the tables.
fn raw_sa(spi: u32, direction: Direction, suite: Suite, mode: Mode) -> Sa {
    let n = suite.encryption_key_len() + suite.integrity_key_len();
    let keys = SaKeys::from_keymat(suite, &vec![spi as u8; n]).unwrap();
    let mut config = SaConfig::new(spi, direction, suite, keys);
    config.mode = mode;
    Sa::new(config, Instant::now()).unwrap()
}

fn network(encap: TunnelEncap) -> NetworkSpec {
    NetworkSpec {
        name: "blue".into(),
        vni: 100,
        encap,
        port: match encap {
            TunnelEncap::Vxlan => 4789,
            TunnelEncap::Geneve => 6081,
            TunnelEncap::Gue => 6080,
        },
        max_frame: 1400,
        layout: EspLayout::EspInUdp,
    }
}

/// Host `local`'s tables, with `remote` as its one peer.
fn host(
    local: IpAddr,
    remote: IpAddr,
    encap: TunnelEncap,
    policy: Policy,
    spi_in: u32,
    spi_out: u32,
    suite: Option<Suite>,
) -> Tables {
    let peer = PeerEntry {
        spec: PeerSpec {
            name: "peer".into(),
            underlay: remote,
            networks: vec![(0, policy)],
        },
        outbound: suite
            .map(|s| sa(spi_out, Direction::Outbound, s))
            .into_iter()
            .collect(),
    };
    let mut inbound = FastMap::default();
    if let Some(s) = suite {
        inbound.insert(
            spi_in,
            InboundEntry {
                peer: 0,
                sa: sa(spi_in, Direction::Inbound, s),
            },
        );
    }
    Tables::new(
        local,
        EspTransport::Udp(4500),
        vec![network(encap)],
        vec![peer],
        inbound,
    )
}

fn frame(dst: [u8; 6], src: [u8; 6], len: usize) -> (Vec<u8>, usize, usize) {
    let mut buf = vec![0u8; HEADROOM + len + TAILROOM];
    let f = &mut buf[HEADROOM..HEADROOM + len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    for (i, b) in f[14..].iter_mut().enumerate() {
        *b = i as u8;
    }
    (buf, HEADROOM, HEADROOM + len)
}

struct Host {
    tables: Tables,
    fdb: Fdb,
    stats: Stats,
}

/// The functions the workers call, with `self`'s tables, and each drop
/// counted as the workers count it.
impl Host {
    fn ctx(&self, now: Instant) -> OverlayCtx<'_> {
        Ctx {
            tables: &self.tables,
            fdb: &self.fdb,
            stats: &self.stats,
            now,
        }
    }

    fn targets(&self, net: usize, frame: &[u8], now: Instant) -> Targets {
        targets(&self.ctx(now), net, frame)
    }

    fn encapsulate(
        &self,
        net: usize,
        peer: usize,
        buf: &mut [u8],
        start: usize,
        end: usize,
        now: Instant,
    ) -> Result<Transmit, PathDrop> {
        self.stats
            .count(encapsulate(&self.ctx(now), net, peer, buf, start, end))
    }

    fn receive_esp(
        &self,
        src: IpAddr,
        udp: bool,
        buf: &mut [u8],
        start: usize,
        end: usize,
        now: Instant,
    ) -> Result<Received<Delivery>, PathDrop> {
        self.stats
            .count(open_inbound(&self.ctx(now), src, udp, buf, start, end))
    }

    fn receive_clear(
        &self,
        src: IpAddr,
        port: u16,
        buf: &mut [u8],
        start: usize,
        end: usize,
        now: Instant,
    ) -> Result<Delivery, PathDrop> {
        self.stats
            .count(receive_clear(&self.ctx(now), src, port, buf, start, end))
    }
}

fn pair(encap: TunnelEncap, policy: Policy, suite: Option<Suite>, v6: bool) -> (Host, Host) {
    let (a, b) = if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
        )
    } else {
        (A, B)
    };
    let now = Instant::now();
    let mk = |tables| Host {
        tables,
        fdb: Fdb::new(DEFAULT_AGEING, now),
        stats: Stats::new(1),
    };
    (
        mk(host(a, b, encap, policy, 0x1001, 0x2001, suite)),
        mk(host(b, a, encap, policy, 0x2001, 0x1001, suite)),
    )
}

/// Sends a frame from `from` to `to` through the functions the workers
/// call; returns what `to` delivers.
fn carry(from: &Host, to: &Host, len: usize) -> Result<Vec<u8>, PathDrop> {
    let now = Instant::now();
    let (mut buf, s, e) = frame(MAC_B, MAC_A, len);
    let original = buf[s..e].to_vec();
    assert_eq!(from.targets(0, &buf[s..e], now), Targets::Flood);
    let tx = from.encapsulate(0, 0, &mut buf, s, e, now)?;
    let wire = buf[tx.start..tx.end].to_vec();
    let src = from.tables.local;
    // What arrives is the datagram's payload, in a fresh buffer.
    let mut rx = vec![0u8; 16];
    rx.extend_from_slice(&wire);
    let end = rx.len();
    let delivery = match tx.via {
        Via::Esp => {
            if original.len() >= 34 {
                assert!(
                    wire.windows(20).all(|w| w != &original[14..34]),
                    "tenant bytes visible on the wire"
                );
            }
            match to.receive_esp(src, true, &mut rx, 16, end, now)? {
                Received::Payload(d) => d,
                other => panic!("not a frame: {other:?}"),
            }
        }
        Via::Tunnel(port) => {
            assert_eq!(port, to.tables.networks[0].port);
            to.receive_clear(src, port, &mut rx, 16, end, now)?
        }
        Via::Clear => panic!("overlay mode has no raw cleartext path"),
    };
    assert_eq!(delivery.net, 0);
    let got = rx[delivery.start..delivery.end].to_vec();
    assert_eq!(got, original);
    Ok(got)
}

#[test]
fn esp_round_trip_every_encap_and_suite() {
    for encap in [TunnelEncap::Vxlan, TunnelEncap::Geneve, TunnelEncap::Gue] {
        for suite in Suite::ALL {
            for v6 in [false, true] {
                let (a, b) = pair(encap, Policy::Require, Some(suite), v6);
                for len in [14, 60, 1400] {
                    carry(&a, &b, len).unwrap();
                    carry(&b, &a, len).unwrap();
                }
                // B learned A's MAC behind its one peer.
                let now = Instant::now();
                assert_eq!(b.fdb.lookup(0, EthernetAddress(MAC_A), now), Some(0));
                assert_eq!(
                    b.targets(0, &frame(MAC_A, MAC_B, 60).0[HEADROOM..], now),
                    Targets::Unicast(0)
                );
            }
        }
    }
}

#[test]
fn clear_policy_is_plain_vxlan() {
    let (a, b) = pair(
        TunnelEncap::Vxlan,
        Policy::Clear,
        Some(Suite::AesGcm128),
        false,
    );
    let now = Instant::now();
    let (mut buf, s, e) = frame(MAC_B, MAC_A, 60);
    let tx = a.encapsulate(0, 0, &mut buf, s, e, now).unwrap();
    assert_eq!(tx.via, Via::Tunnel(4789));
    assert_eq!(tx.dst, SocketAddr::new(B, 4789));
    // VXLAN header: I flag, VNI 100, then the frame.
    assert_eq!(&buf[tx.start..tx.start + 8], &[0x08, 0, 0, 0, 0, 0, 100, 0]);
    assert_eq!(tx.end - tx.start, 8 + 60);
    carry(&a, &b, 60).unwrap();
}

#[test]
fn require_without_sa_sends_nothing() {
    let (a, _) = pair(TunnelEncap::Vxlan, Policy::Require, None, false);
    let now = Instant::now();
    let (mut buf, s, e) = frame(MAC_B, MAC_A, 60);
    assert_eq!(
        a.encapsulate(0, 0, &mut buf, s, e, now),
        Err(PathDrop::NoSa)
    );
    assert_eq!(a.stats.drops(PathDrop::NoSa), 1);
}

#[test]
fn prefer_falls_back_to_clear_without_sa() {
    let (a, b) = pair(TunnelEncap::Geneve, Policy::Prefer, None, false);
    carry(&a, &b, 100).unwrap();
}

#[test]
fn require_refuses_cleartext() {
    let (a, _) = pair(TunnelEncap::Vxlan, Policy::Clear, None, false);
    let (_, b) = pair(
        TunnelEncap::Vxlan,
        Policy::Require,
        Some(Suite::AesGcm128),
        false,
    );
    assert_eq!(carry(&a, &b, 60), Err(PathDrop::ClearRefused));
    assert_eq!(b.stats.drops(PathDrop::ClearRefused), 1);
}

#[test]
fn too_big_and_unknown_spi_and_wrong_source() {
    let (a, b) = pair(
        TunnelEncap::Vxlan,
        Policy::Require,
        Some(Suite::AesGcm256),
        false,
    );
    assert_eq!(carry(&a, &b, 1401), Err(PathDrop::TooBig));
    assert_eq!(a.stats.drops(PathDrop::TooBig), 1);

    let now = Instant::now();
    let (mut buf, s, e) = frame(MAC_B, MAC_A, 60);
    let tx = a.encapsulate(0, 0, &mut buf, s, e, now).unwrap();
    // From an address that is not the SA's peer.
    let mut copy = buf.clone();
    let c = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3));
    assert_eq!(
        b.receive_esp(c, true, &mut copy, tx.start, tx.end, now),
        Err(PathDrop::Policy)
    );
    // An SPI nobody has.
    let mut copy = buf.clone();
    copy[tx.start] ^= 0x40;
    assert_eq!(
        b.receive_esp(A, true, &mut copy, tx.start, tx.end, now),
        Err(PathDrop::UnknownSpi)
    );
    // A tampered packet: the SA counts an ICV failure.
    let mut copy = buf.clone();
    copy[tx.end - 1] ^= 1;
    assert_eq!(
        b.receive_esp(A, true, &mut copy, tx.start, tx.end, now),
        Err(PathDrop::Esp)
    );
    let sa = b.tables.inbound[&0x2001].sa.lock().unwrap();
    assert_eq!(
        sa.counters().drops.get(tunsec_esp::DropReason::IcvFailure),
        1
    );
    drop(sa);
    // The genuine packet, twice: the second is a replay.
    let mut copy = buf.clone();
    b.receive_esp(A, true, &mut copy, tx.start, tx.end, now)
        .unwrap();
    let mut copy = buf.clone();
    assert_eq!(
        b.receive_esp(A, true, &mut copy, tx.start, tx.end, now),
        Err(PathDrop::Esp)
    );
    let sa = b.tables.inbound[&0x2001].sa.lock().unwrap();
    assert_eq!(sa.counters().drops.get(tunsec_esp::DropReason::Replay), 1);
    assert_eq!(b.stats.drops(PathDrop::Esp), 2);
}

#[test]
fn keepalives_and_ike_on_the_esp_port() {
    let (_, b) = pair(
        TunnelEncap::Vxlan,
        Policy::Require,
        Some(Suite::AesGcm128),
        false,
    );
    let now = Instant::now();
    let mut ka = [0xffu8];
    assert_eq!(
        b.receive_esp(A, true, &mut ka, 0, 1, now),
        Ok(Received::Keepalive)
    );
    let mut ike = [0u8, 0, 0, 0, 1, 2, 3];
    assert_eq!(
        b.receive_esp(A, true, &mut ike, 0, 7, now),
        Ok(Received::Ike { start: 4, end: 7 })
    );
    assert_eq!(b.stats.drops(PathDrop::Ike), 0);
}

#[test]
fn critical_geneve_options_are_dropped() {
    let (_, b) = pair(TunnelEncap::Geneve, Policy::Clear, None, false);
    let now = Instant::now();
    // Geneve with the C bit and one critical option (type 0x80), 4 bytes
    // of data.
    let mut pkt = vec![
        0x02, 0x40, 0x65, 0x58, 0, 0, 100, 0, 0x01, 0x02, 0x80, 0x01, 1, 2, 3, 4,
    ];
    pkt.extend_from_slice(&frame(MAC_B, MAC_A, 60).0[HEADROOM..HEADROOM + 60]);
    let end = pkt.len();
    assert_eq!(
        b.receive_clear(A, 6081, &mut pkt, 0, end, now),
        Err(PathDrop::Unsupported)
    );
    // The same option, not critical, is skipped and the frame delivered.
    pkt[1] = 0x00;
    pkt[10] = 0x00;
    let d = b.receive_clear(A, 6081, &mut pkt, 0, end, now).unwrap();
    assert_eq!(d.start, 16);
    // Unknown VNI.
    pkt[6] = 101;
    assert_eq!(
        b.receive_clear(A, 6081, &mut pkt, 0, end, now),
        Err(PathDrop::UnknownVni)
    );
}

#[test]
fn fdb_sends_unicast_to_the_learned_peer_and_ages() {
    let (a, _) = pair(TunnelEncap::Vxlan, Policy::Clear, None, false);
    let now = Instant::now();
    a.fdb.learn(0, EthernetAddress(MAC_B), 0, now);
    let (buf, s, e) = frame(MAC_B, MAC_A, 60);
    assert_eq!(a.targets(0, &buf[s..e], now), Targets::Unicast(0));
    let later = now + DEFAULT_AGEING + Duration::from_secs(1);
    assert_eq!(a.targets(0, &buf[s..e], later), Targets::Flood);
    // Broadcast always floods.
    let (buf, s, e) = frame([0xff; 6], MAC_A, 60);
    assert_eq!(a.targets(0, &buf[s..e], now), Targets::Flood);
}

#[test]
fn overhead_fits_the_worst_case() {
    // IPv4, ESP in UDP, VXLAN: 20 + 8 + (8 + 16 + 15 + 2 + 16) + 8 + 8.
    assert_eq!(
        frame_overhead(false, EspTransport::Udp(4500), TunnelEncap::Vxlan, false),
        101
    );
    assert_eq!(
        frame_overhead(true, EspTransport::Raw, TunnelEncap::Gue, false),
        40 + 57 + 8 + 4
    );
    // Tunnel mode adds the inner IP header.
    assert_eq!(
        frame_overhead(false, EspTransport::Udp(4500), TunnelEncap::Vxlan, true),
        121
    );
    assert_eq!(
        frame_overhead(true, EspTransport::Raw, TunnelEncap::Gue, true),
        40 + 57 + 40 + 8 + 4
    );
    // A maximal frame under every suite and both modes stays within the
    // underlay MTU.
    for tunnel_mode in [false, true] {
        for suite in Suite::ALL {
            let (a, _) = if tunnel_mode {
                tunnel_pair(TunnelEncap::Vxlan, suite, false)
            } else {
                pair(TunnelEncap::Vxlan, Policy::Require, Some(suite), false)
            };
            let max = 1500
                - frame_overhead(
                    false,
                    EspTransport::Udp(4500),
                    TunnelEncap::Vxlan,
                    tunnel_mode,
                );
            for len in max - 20..=max {
                let (mut buf, s, e) = frame(MAC_B, MAC_A, len);
                let mut tables = a.tables.clone();
                tables.networks[0].max_frame = max;
                let ctx = Ctx {
                    tables: &tables,
                    ..a.ctx(Instant::now())
                };
                let tx = encapsulate(&ctx, 0, 0, &mut buf, s, e).unwrap();
                // The kernel adds IPv4 (20) and UDP (8).
                assert!(tx.end - tx.start + 28 <= 1500, "{suite} {len}");
            }
        }
    }
}

/// Two hosts whose SAs are in tunnel mode between their underlay
/// addresses, under a `require` policy.
fn tunnel_pair(encap: TunnelEncap, suite: Suite, v6: bool) -> (Host, Host) {
    let (mut a, mut b) = pair(encap, Policy::Require, Some(suite), v6);
    for (h, spi_in, spi_out) in [(&mut a, 0x1001, 0x2001), (&mut b, 0x2001, 0x1001)] {
        let mode = Mode::Tunnel {
            local: h.tables.local,
            remote: h.tables.peers[0].spec.underlay,
        };
        h.tables.peers[0].outbound = vec![Arc::new(Mutex::new(raw_sa(
            spi_out,
            Direction::Outbound,
            suite,
            mode,
        )))];
        h.tables.inbound.insert(
            spi_in,
            InboundEntry {
                peer: 0,
                sa: Arc::new(Mutex::new(raw_sa(spi_in, Direction::Inbound, suite, mode))),
            },
        );
    }
    (a, b)
}

/// Encapsulates a 60-byte frame at `from` and opens the ESP with a twin of
/// the receiver's inbound SA: the plaintext ESP payload and its next
/// header.
fn tunnel_plaintext(from: &Host, suite: Suite) -> (Vec<u8>, u8) {
    let now = Instant::now();
    let (mut buf, s, e) = frame(MAC_B, MAC_A, 60);
    let tx = from.encapsulate(0, 0, &mut buf, s, e, now).unwrap();
    let spi = u32::from_be_bytes(buf[tx.start..tx.start + 4].try_into().unwrap());
    let mut twin = raw_sa(spi, Direction::Inbound, suite, Mode::Transport);
    let mut pb = PacketBuf::new(&mut buf, tx.start, tx.end);
    let next_header = twin.open_esp(&mut pb, now).unwrap();
    (pb.data().to_vec(), next_header)
}

/// Seals `payload` with next header `next_header` as A would to B (SPI
/// 0x2001) and hands it to B's `receive_esp`.
fn deliver_sealed(
    sealer: &mut Sa,
    b: &Host,
    src: IpAddr,
    payload: &[u8],
    next_header: u8,
) -> Result<Received<Delivery>, PathDrop> {
    let now = Instant::now();
    let mut buf = vec![0u8; HEADROOM + payload.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
    let mut pb = PacketBuf::new(&mut buf, HEADROOM, HEADROOM + payload.len());
    sealer.seal_esp(&mut pb, next_header, now).unwrap();
    let (start, end) = (pb.start(), pb.end());
    b.receive_esp(src, true, &mut buf, start, end, now)
}

#[test]
fn tunnel_mode_round_trip_every_encap_and_suite() {
    for encap in [TunnelEncap::Vxlan, TunnelEncap::Geneve, TunnelEncap::Gue] {
        for suite in Suite::ALL {
            for v6 in [false, true] {
                let (a, b) = tunnel_pair(encap, suite, v6);
                for len in [14, 60, 1400] {
                    carry(&a, &b, len).unwrap();
                    carry(&b, &a, len).unwrap();
                }
                assert_eq!(
                    b.fdb.lookup(0, EthernetAddress(MAC_A), Instant::now()),
                    Some(0)
                );
                assert_eq!(a.stats.drops(PathDrop::InnerHeader), 0);
                assert_eq!(b.stats.drops(PathDrop::InnerHeader), 0);
            }
        }
    }
}

#[test]
fn tunnel_mode_inner_header_fields() {
    // IPv4: 20-byte header, DF, TTL 64, UDP, a valid checksum, A to B; the
    // VXLAN datagram behind it with a zero UDP checksum (RFC 7348 section 5).
    let (a, _) = tunnel_pair(TunnelEncap::Vxlan, Suite::AesGcm128, false);
    let (inner, next_header) = tunnel_plaintext(&a, Suite::AesGcm128);
    assert_eq!(next_header, 4);
    let ip = ipv4::Packet::new_checked(&inner[..]).unwrap();
    let repr = ipv4::Repr::parse(&ip).unwrap();
    assert_eq!(ip.header_len(), 20);
    assert_eq!(usize::from(ip.total_len()), inner.len());
    assert_eq!(inner.len(), 20 + 8 + 8 + 60);
    assert!(ip.verify_checksum());
    assert!(repr.dont_frag && !ip.is_fragment());
    assert_eq!(repr.hop_limit, 64);
    assert_eq!(repr.next_header, IpProtocol::Udp);
    assert_eq!(
        (IpAddr::V4(repr.src_addr), IpAddr::V4(repr.dst_addr)),
        (A, B)
    );
    let u = udp::Packet::new_checked(ip.payload()).unwrap();
    assert_eq!(u.dst_port(), 4789);
    assert!(u.src_port() >= 49152);
    assert_eq!(usize::from(u.len()), 8 + 8 + 60);
    assert_eq!(u.checksum(), 0);
    assert_eq!(check_inner_header(&inner, 4, B, A), Ok(20));

    // IPv6: 40-byte header, hop limit 64, UDP with a valid checksum.
    let (a, _) = tunnel_pair(TunnelEncap::Geneve, Suite::ChaCha20Poly1305, true);
    let (inner, next_header) = tunnel_plaintext(&a, Suite::ChaCha20Poly1305);
    assert_eq!(next_header, 41);
    let ip = ipv6::Packet::new_checked(&inner[..]).unwrap();
    let repr = ipv6::Repr::parse(&ip).unwrap();
    let (a6, b6) = (a.tables.local, a.tables.peers[0].spec.underlay);
    assert_eq!(repr.payload_len + 40, inner.len());
    assert_eq!(repr.hop_limit, 64);
    assert_eq!(repr.next_header, IpProtocol::Udp);
    assert_eq!(
        (IpAddr::V6(repr.src_addr), IpAddr::V6(repr.dst_addr)),
        (a6, b6)
    );
    let u = udp::Packet::new_checked(ip.payload()).unwrap();
    assert_eq!(u.dst_port(), 6081);
    assert!(u.verify_checksum(a6, b6));
    assert_eq!(check_inner_header(&inner, 41, b6, a6), Ok(40));
}

/// Rewrites an IPv4 header field and fixes the checksum.
fn mutate_v4(inner: &[u8], f: impl FnOnce(&mut ipv4::Packet<&mut [u8]>)) -> Vec<u8> {
    let mut out = inner.to_vec();
    let mut ip = ipv4::Packet::new_unchecked(&mut out[..]);
    f(&mut ip);
    ip.fill_checksum();
    out
}

#[test]
fn tunnel_mode_bad_inner_headers_are_dropped_and_counted() {
    let suite = Suite::AesGcm256;
    let (a, b) = tunnel_pair(TunnelEncap::Vxlan, suite, false);
    let (inner, _) = tunnel_plaintext(&a, suite);
    // A twin of A's outbound SA; its sequence numbers run ahead of A's.
    let mut sealer = raw_sa(0x2001, Direction::Outbound, suite, Mode::Transport);
    sealer.advance_seq(1000).unwrap();
    // The genuine payload, resealed, is delivered.
    assert!(matches!(
        deliver_sealed(&mut sealer, &b, A, &inner, 4),
        Ok(Received::Payload(_))
    ));
    // So is what a kernel vxlan device sends: a random source port and a
    // zero UDP checksum over IPv4.
    let mut kernel = inner.clone();
    kernel[20..22].copy_from_slice(&1234u16.to_be_bytes());
    kernel[26..28].copy_from_slice(&[0, 0]);
    assert!(matches!(
        deliver_sealed(&mut sealer, &b, A, &kernel, 4),
        Ok(Received::Payload(_))
    ));

    let c = Ipv4Addr::new(192, 0, 2, 3);
    let mut bad_checksum = inner.clone();
    bad_checksum[10] ^= 0xff;
    let mut ihl4 = inner.clone();
    ihl4[0] = 0x44;
    let mut with_option = inner[..20].to_vec();
    with_option.extend_from_slice(&[1, 1, 1, 1]);
    with_option.extend_from_slice(&inner[20..]);
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        ("next header 41 for IPv4", inner.clone(), 41),
        ("next header 17 in tunnel mode", inner[20..].to_vec(), 17),
        ("empty", Vec::new(), 4),
        ("truncated header", inner[..10].to_vec(), 4),
        ("version 6", mutate_v4(&inner, |ip| ip.set_version(6)), 4),
        ("IHL 4", ihl4, 4),
        ("bad checksum", bad_checksum, 4),
        (
            "total length too long",
            mutate_v4(&inner, |ip| ip.set_total_len(inner.len() as u16 + 1)),
            4,
        ),
        (
            "total length too short",
            mutate_v4(&inner, |ip| ip.set_total_len(inner.len() as u16 - 1)),
            4,
        ),
        (
            "total length below the header",
            mutate_v4(&inner, |ip| ip.set_total_len(19)),
            4,
        ),
        (
            "options counted in IHL but not in total length",
            mutate_v4(&with_option, |ip| ip.set_header_len(24)),
            4,
        ),
        (
            "another source",
            mutate_v4(&inner, |ip| ip.set_src_addr(c)),
            4,
        ),
        (
            "another destination",
            mutate_v4(&inner, |ip| ip.set_dst_addr(c)),
            4,
        ),
        (
            "swapped addresses",
            mutate_v4(&inner, |ip| {
                ip.set_src_addr(Ipv4Addr::new(192, 0, 2, 2));
                ip.set_dst_addr(Ipv4Addr::new(192, 0, 2, 1));
            }),
            4,
        ),
        (
            "TCP",
            mutate_v4(&inner, |ip| ip.set_next_header(IpProtocol::Tcp)),
            4,
        ),
        (
            "more fragments",
            mutate_v4(&inner, |ip| ip.set_more_frags(true)),
            4,
        ),
        (
            "fragment offset",
            mutate_v4(&inner, |ip| ip.set_frag_offset(8)),
            4,
        ),
    ];
    for (n, (what, payload, next_header)) in cases.iter().enumerate() {
        assert_eq!(
            deliver_sealed(&mut sealer, &b, A, payload, *next_header),
            Err(PathDrop::InnerHeader),
            "{what}"
        );
        assert_eq!(b.stats.drops(PathDrop::InnerHeader), n as u64 + 1, "{what}");
    }
    // The ESP layer accepted every one of them (the ICV held).
    let sa = b.tables.inbound[&0x2001].sa.lock().unwrap();
    assert_eq!(sa.counters().packets, 2 + cases.len() as u64);
    drop(sa);
    // An inner IPv4 header with options but correct lengths is accepted.
    let with_option = mutate_v4(&with_option, |ip| {
        ip.set_header_len(24);
        ip.set_total_len(inner.len() as u16 + 4);
    });
    assert_eq!(check_inner_header(&with_option, 4, B, A), Ok(24));
}

#[test]
fn tunnel_mode_bad_inner_ipv6_headers_are_dropped_and_counted() {
    let suite = Suite::AesGcm128;
    let (a, b) = tunnel_pair(TunnelEncap::Vxlan, suite, true);
    let (inner, _) = tunnel_plaintext(&a, suite);
    let mut sealer = raw_sa(0x2001, Direction::Outbound, suite, Mode::Transport);
    sealer.advance_seq(1000).unwrap();
    let src = a.tables.local;
    assert!(matches!(
        deliver_sealed(&mut sealer, &b, src, &inner, 41),
        Ok(Received::Payload(_))
    ));
    let set = |f: &dyn Fn(&mut ipv6::Packet<&mut [u8]>)| {
        let mut out = inner.clone();
        f(&mut ipv6::Packet::new_unchecked(&mut out[..]));
        out
    };
    let other = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3);
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        ("next header 4 for IPv6", inner.clone(), 4),
        ("truncated header", inner[..39].to_vec(), 41),
        ("version 4", set(&|ip| ip.set_version(4)), 41),
        (
            "payload length too long",
            set(&|ip| ip.set_payload_len(inner.len() as u16 - 39)),
            41,
        ),
        (
            "payload length too short",
            set(&|ip| ip.set_payload_len(inner.len() as u16 - 41)),
            41,
        ),
        ("another source", set(&|ip| ip.set_src_addr(other)), 41),
        ("another destination", set(&|ip| ip.set_dst_addr(other)), 41),
        (
            "a fragment header",
            set(&|ip| ip.set_next_header(IpProtocol::Unknown(44))),
            41,
        ),
        (
            "hop-by-hop options",
            set(&|ip| ip.set_next_header(IpProtocol::Unknown(0))),
            41,
        ),
    ];
    for (n, (what, payload, next_header)) in cases.iter().enumerate() {
        assert_eq!(
            deliver_sealed(&mut sealer, &b, src, payload, *next_header),
            Err(PathDrop::InnerHeader),
            "{what}"
        );
        assert_eq!(b.stats.drops(PathDrop::InnerHeader), n as u64 + 1, "{what}");
    }
}

#[test]
fn modes_must_match() {
    // A in tunnel mode, B in transport mode: B refuses next header 4 under
    // its transport SA's implicit selectors, and A refuses B's next header
    // 17 under its tunnel SA.
    let (a, _) = tunnel_pair(TunnelEncap::Vxlan, Suite::AesGcm128, false);
    let (_, b) = pair(
        TunnelEncap::Vxlan,
        Policy::Require,
        Some(Suite::AesGcm128),
        false,
    );
    assert_eq!(carry(&a, &b, 60), Err(PathDrop::Policy));
    assert_eq!(b.stats.drops(PathDrop::Policy), 1);
    assert_eq!(carry(&b, &a, 60), Err(PathDrop::InnerHeader));
    assert_eq!(a.stats.drops(PathDrop::InnerHeader), 1);
}

/// The selectors IKE negotiates, seen from `local`, as
/// `tunsec_ike::sa::ts::to_esp_selectors` builds them: with `ports`, the
/// cross product of `local[udp/P]` and `remote[udp/Q]` over them
/// (`[peer.ike] selectors = "ports"`); without, host to host, UDP, any
/// port.
fn ike_selectors(local: IpAddr, remote: IpAddr, ports: &[u16]) -> Vec<Selector> {
    let one = |l: PortRange, r: PortRange| Selector {
        local: tunsec_esp::IpPrefix::host(local),
        remote: tunsec_esp::IpPrefix::host(remote),
        protocol: Some(17),
        local_ports: l,
        remote_ports: r,
    };
    if ports.is_empty() {
        return vec![one(PortRange::ANY, PortRange::ANY)];
    }
    let mut out = Vec::new();
    for &l in ports {
        for &r in ports {
            out.push(one(PortRange::single(l), PortRange::single(r)));
        }
    }
    out
}

/// Replaces a host's SAs (inbound `spi_in`, outbound `spi_out`) with ones
/// in `mode` that carry `selectors`.
fn set_selectors(
    h: &mut Host,
    spi_in: u32,
    spi_out: u32,
    suite: Suite,
    tunnel: bool,
    ports: &[u16],
) {
    let (local, remote) = (h.tables.local, h.tables.peers[0].spec.underlay);
    let mode = if tunnel {
        Mode::Tunnel { local, remote }
    } else {
        Mode::Transport
    };
    let mk = |spi, direction| {
        let n = suite.encryption_key_len() + suite.integrity_key_len();
        let keys = SaKeys::from_keymat(suite, &vec![spi as u8; n]).unwrap();
        let mut config = SaConfig::new(spi, direction, suite, keys);
        config.mode = mode;
        config.selectors = ike_selectors(local, remote, ports);
        Arc::new(Mutex::new(Sa::new(config, Instant::now()).unwrap()))
    };
    h.tables.peers[0].outbound = vec![mk(spi_out, Direction::Outbound)];
    h.tables.inbound.insert(
        spi_in,
        InboundEntry {
            peer: 0,
            sa: mk(spi_in, Direction::Inbound),
        },
    );
}

/// Two hosts whose SAs carry IKE's selectors: narrowed to `ports`, or
/// host to host without.
fn selector_pair(
    encap: TunnelEncap,
    suite: Suite,
    v6: bool,
    tunnel: bool,
    ports: &[u16],
) -> (Host, Host) {
    let (mut a, mut b) = pair(encap, Policy::Require, Some(suite), v6);
    set_selectors(&mut a, 0x1001, 0x2001, suite, tunnel, ports);
    set_selectors(&mut b, 0x2001, 0x1001, suite, tunnel, ports);
    (a, b)
}

/// The UDP ports of the tunnel datagram `from` seals for a 60-byte frame
/// (opened with a twin of the receiver's SA, without selectors).
fn sealed_ports(from: &Host, suite: Suite) -> (u16, u16) {
    let (plain, next_header) = tunnel_plaintext(from, suite);
    let udp_at = match next_header {
        4 => 20,
        41 => 40,
        _ => 0,
    };
    let u = udp::Packet::new_checked(&plain[udp_at..]).unwrap();
    (u.src_port(), u.dst_port())
}

/// Narrowed to the tunnel port, every format, mode, family and a few
/// suites round-trip, and the datagrams leave from the tunnel port; host
/// to host (any port) and manual SAs (no selectors) keep the entropy
/// port.
#[test]
fn port_selectors_round_trip_from_the_tunnel_port() {
    for encap in [TunnelEncap::Vxlan, TunnelEncap::Geneve, TunnelEncap::Gue] {
        let port = network(encap).port;
        for suite in [Suite::AesGcm128, Suite::AesCbc256HmacSha256] {
            for v6 in [false, true] {
                for tunnel in [false, true] {
                    let (a, b) = selector_pair(encap, suite, v6, tunnel, &[port]);
                    for len in [14, 60, 1400] {
                        carry(&a, &b, len).unwrap();
                        carry(&b, &a, len).unwrap();
                    }
                    assert_eq!(sealed_ports(&a, suite), (port, port));
                    assert_eq!(sealed_ports(&b, suite), (port, port));
                    for h in [&a, &b] {
                        assert_eq!(h.stats.drops(PathDrop::Selector), 0);
                    }

                    let (a, b) = selector_pair(encap, suite, v6, tunnel, &[]);
                    carry(&a, &b, 60).unwrap();
                    carry(&b, &a, 60).unwrap();
                    let (src, dst) = sealed_ports(&a, suite);
                    assert!(src >= 49152 && dst == port, "{src} {dst}");
                }
            }
        }
    }
    let (a, b) = pair(
        TunnelEncap::Vxlan,
        Policy::Require,
        Some(Suite::AesGcm128),
        false,
    );
    carry(&a, &b, 60).unwrap();
    let (src, _) = sealed_ports(&a, Suite::AesGcm128);
    assert!(src >= 49152, "{src}");
}

/// The VXLAN datagram A would send to B, source port `src`, destination
/// port `dst`, for a 60-byte frame, as a transport-mode ESP payload.
fn vxlan_datagram(src: u16, dst: u16) -> Vec<u8> {
    let suite = Suite::AesGcm128;
    let (a, _) = pair(TunnelEncap::Vxlan, Policy::Require, Some(suite), false);
    let (mut d, next_header) = tunnel_plaintext(&a, suite);
    assert_eq!(next_header, 17);
    let mut u = udp::Packet::new_unchecked(&mut d[..]);
    u.set_src_port(src);
    u.set_dst_port(dst);
    d
}

/// RFC 4301 section 5.2: under port-narrowed selectors, a decrypted
/// datagram whose ports are outside them is dropped and counted (by the
/// data path as `selector`, by the SA as `policy`); inside them it is
/// delivered. Host-to-host selectors take any source port.
#[test]
fn datagrams_outside_the_selectors_are_dropped_and_counted() {
    let suite = Suite::AesGcm128;
    let (_, b) = selector_pair(TunnelEncap::Vxlan, suite, false, false, &[4789]);
    let mut sealer = raw_sa(0x2001, Direction::Outbound, suite, Mode::Transport);
    let ok = |r: Result<Received<Delivery>, PathDrop>| matches!(r, Ok(Received::Payload(_)));
    assert!(ok(deliver_sealed(
        &mut sealer,
        &b,
        A,
        &vxlan_datagram(4789, 4789),
        17
    )));
    let cases = [(50000, 4789), (4790, 4789), (4789, 4790), (4789, 6081)];
    for (n, (src, dst)) in cases.into_iter().enumerate() {
        assert_eq!(
            deliver_sealed(&mut sealer, &b, A, &vxlan_datagram(src, dst), 17),
            Err(PathDrop::Selector),
            "{src} -> {dst}"
        );
        assert_eq!(b.stats.drops(PathDrop::Selector), n as u64 + 1);
    }
    let sa = b.tables.inbound[&0x2001].sa.lock().unwrap();
    assert_eq!(
        sa.counters().drops.get(tunsec_esp::DropReason::Policy),
        cases.len() as u64
    );
    drop(sa);
    assert_eq!(b.stats.drops(PathDrop::Policy), 0);

    // The same datagrams under host-to-host selectors: all delivered (the
    // last two reach no network on their port: the implicit check).
    let (_, b) = selector_pair(TunnelEncap::Vxlan, suite, false, false, &[]);
    for (src, dst) in [(50000, 4789), (4790, 4789), (4789, 4789)] {
        assert!(ok(deliver_sealed(
            &mut sealer,
            &b,
            A,
            &vxlan_datagram(src, dst),
            17
        )));
    }
    assert_eq!(
        deliver_sealed(&mut sealer, &b, A, &vxlan_datagram(4789, 4790), 17),
        Err(PathDrop::Policy)
    );
    assert_eq!(b.stats.drops(PathDrop::Selector), 0);
}

/// A port-narrowed peer (B) receiving from a host-to-host sender (A,
/// entropy source ports) drops everything as `selector`: the reason each
/// side must send from the tunnel port once its SA is narrowed.
#[test]
fn entropy_ports_fail_narrowed_selectors() {
    let suite = Suite::AesGcm128;
    let (a, _) = selector_pair(TunnelEncap::Vxlan, suite, false, false, &[]);
    let (_, b) = selector_pair(TunnelEncap::Vxlan, suite, false, false, &[4789]);
    assert_eq!(carry(&a, &b, 60), Err(PathDrop::Selector));
    assert_eq!(b.stats.drops(PathDrop::Selector), 1);
}

/// With several tunnel ports the selectors are their cross product (RFC
/// 7296 section 2.9: any TSi entry with any TSr entry), so a datagram
/// from one tunnel port to another is inside them; a port outside the
/// set is not. Outbound, an SA that does not cover the network's port at
/// all drops the frame (`selector`) rather than send it.
#[test]
fn several_ports_and_uncovered_networks() {
    let suite = Suite::AesGcm128;
    let (_, b) = selector_pair(TunnelEncap::Vxlan, suite, false, false, &[4789, 6081]);
    let mut sealer = raw_sa(0x2001, Direction::Outbound, suite, Mode::Transport);
    for src in [4789, 6081] {
        assert!(matches!(
            deliver_sealed(&mut sealer, &b, A, &vxlan_datagram(src, 4789), 17),
            Ok(Received::Payload(_))
        ));
    }
    assert_eq!(
        deliver_sealed(&mut sealer, &b, A, &vxlan_datagram(6080, 4789), 17),
        Err(PathDrop::Selector)
    );

    // A's SA covers only Geneve's port; its network is VXLAN.
    let (a, _) = selector_pair(TunnelEncap::Vxlan, suite, false, false, &[6081]);
    let (mut buf, s, e) = frame(MAC_B, MAC_A, 60);
    assert_eq!(
        a.encapsulate(0, 0, &mut buf, s, e, Instant::now()),
        Err(PathDrop::Selector)
    );
    assert_eq!(a.stats.drops(PathDrop::Selector), 1);
    // `source_port` itself: entropy when allowed, else the tunnel port.
    let any = ike_selectors(A, B, &[]);
    let narrow = ike_selectors(A, B, &[4789]);
    assert_eq!(source_port(&[], A, B, 50000, 4789), Some(50000));
    assert_eq!(source_port(&any, A, B, 50000, 4789), Some(50000));
    assert_eq!(source_port(&narrow, A, B, 50000, 4789), Some(4789));
    assert_eq!(source_port(&narrow, A, B, 50000, 6081), None);
    assert_eq!(source_port(&narrow, B, A, 50000, 4789), None);
}

/// One Child SA per tunnel port (`selectors = "ports"` with several
/// networks): a peer holds several outbound SAs and each frame goes out
/// with the first whose selectors cover its network's port, whatever the
/// order; none covering it drops the frame as `selector`.
#[test]
fn one_outbound_sa_per_tunnel_port() {
    let suite = Suite::AesGcm128;
    let (mut a, b) = selector_pair(TunnelEncap::Vxlan, suite, false, false, &[4789]);
    // A Geneve-port SA (0x3001) before and after the VXLAN one (0x2001).
    let (local, remote) = (a.tables.local, a.tables.peers[0].spec.underlay);
    let geneve = {
        let mut other = pair(TunnelEncap::Geneve, Policy::Require, Some(suite), false).0;
        set_selectors(&mut other, 0x3002, 0x3001, suite, false, &[6081]);
        assert_eq!(
            (other.tables.local, other.tables.peers[0].spec.underlay),
            (local, remote)
        );
        other.tables.peers[0].outbound[0].clone()
    };
    let vxlan = a.tables.peers[0].outbound[0].clone();
    let sealed_spi = |h: &Host| {
        let (mut buf, s, e) = frame(MAC_B, MAC_A, 60);
        let tx = h.encapsulate(0, 0, &mut buf, s, e, Instant::now()).unwrap();
        u32::from_be_bytes(buf[tx.start..tx.start + 4].try_into().unwrap())
    };
    for order in [
        vec![geneve.clone(), vxlan.clone()],
        vec![vxlan, geneve.clone()],
    ] {
        a.tables.peers[0].outbound = order;
        assert_eq!(sealed_spi(&a), 0x2001);
        carry(&a, &b, 60).unwrap();
    }
    a.tables.peers[0].outbound = vec![geneve];
    let (mut buf, s, e) = frame(MAC_B, MAC_A, 60);
    assert_eq!(
        a.encapsulate(0, 0, &mut buf, s, e, Instant::now()),
        Err(PathDrop::Selector)
    );
    assert_eq!(a.stats.drops(PathDrop::Selector), 1);
}

/// An Ethernet frame carrying IPv4 (`v6 == false`) or IPv6 and TCP from
/// port `sport`, with the per-packet fields (IP ID, length, TCP sequence
/// number) taken from `n`.
fn tcp_frame(v6: bool, sport: u16, n: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    if v6 {
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(20 + n).to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8].repeat(8));
    } else {
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        f.extend_from_slice(&(40 + n).to_be_bytes());
        f.extend_from_slice(&n.to_be_bytes()); // IP ID
        f.extend_from_slice(&[0x40, 0, 64, 6]);
        f.extend_from_slice(&n.to_be_bytes()); // "checksum"
        f.extend_from_slice(&[198, 51, 100, 1, 198, 51, 100, 2]);
    }
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&5201u16.to_be_bytes());
    f.extend_from_slice(&u32::from(n).wrapping_mul(1448).to_be_bytes());
    f.extend_from_slice(&[0; 12]);
    f.extend(std::iter::repeat_n(n as u8, usize::from(n % 64)));
    f
}

/// RFC 7348 section 5: the tunnel source port is a hash of the inner
/// flow. Every segment of a TCP flow (they differ in IP ID, length,
/// checksum and sequence number) gets the same port, in the dynamic range;
/// another flow gets another.
#[test]
fn entropy_port_is_per_flow() {
    for v6 in [false, true] {
        let port = entropy_port(&tcp_frame(v6, 40000, 1));
        assert!(port >= 49152, "{port}");
        for n in 2..50 {
            assert_eq!(
                entropy_port(&tcp_frame(v6, 40000, n)),
                port,
                "v6 {v6}, segment {n}"
            );
        }
        assert_ne!(entropy_port(&tcp_frame(v6, 40001, 1)), port, "v6 {v6}");
    }
    // Anything else hashes what it has, without a panic.
    for len in 0..60 {
        let f = tcp_frame(false, 1, 1);
        assert!(entropy_port(&f[..len.min(f.len())]) >= 49152);
    }
}

/// A peer removed at run time leaves a vacant slot: no address, network
/// or SA leads to it; the next peer takes the slot, and one at an address
/// that another slot holds is refused.
#[test]
fn peers_come_and_go_by_slot() {
    let (a, b, c) = (
        "192.0.2.1".parse().unwrap(),
        "192.0.2.2".parse().unwrap(),
        "192.0.2.3".parse::<IpAddr>().unwrap(),
    );
    let mut t = host(
        a,
        b,
        TunnelEncap::Vxlan,
        Policy::Require,
        0x10,
        0x20,
        Some(Suite::AesGcm128),
    );
    assert!(t.is_occupied(0));
    assert_eq!(t.peers_of_network[0], [0]);
    t.remove_peer(0);
    assert!(!t.is_occupied(0));
    assert_eq!(t.peer_by_addr(b), None);
    assert!(t.peers_of_network[0].is_empty());
    assert!(t.inbound.is_empty());
    assert_eq!(t.policy(0, 0), None);
    let entry = |addr| PeerEntry {
        spec: PeerSpec {
            name: "new".into(),
            underlay: addr,
            networks: vec![(0, Policy::Require)],
        },
        outbound: Vec::new(),
    };
    t.insert_peer(2, entry(c)).unwrap();
    assert_eq!(t.peer_by_addr(c), Some(2));
    assert_eq!(t.peers_of_network[0], [2]);
    assert!(!t.is_occupied(1), "the gap is vacant");
    assert_eq!(t.insert_peer(0, entry(c)), Err(2));
    t.insert_peer(0, entry(b)).unwrap();
    assert_eq!(t.peers_of_network[0], [2, 0]);
}

// ---- keys per network: SAs bound to one network each ----

/// An SA as [`raw_sa`] makes it, bound to network `net` (or to none).
fn bound_sa(spi: u32, direction: Direction, net: Option<u32>) -> SharedSa {
    let suite = Suite::AesGcm128;
    let n = suite.encryption_key_len() + suite.integrity_key_len();
    let keys = SaKeys::from_keymat(suite, &vec![spi as u8; n]).unwrap();
    let mut config = SaConfig::new(spi, direction, suite, keys);
    config.binding = net;
    Arc::new(Mutex::new(Sa::new(config, Instant::now()).unwrap()))
}

/// Host `local` with two VXLAN networks (VNI 100 and 200, both carried
/// to `remote` under `policy`) and the SAs `out` and `inb` as (SPI,
/// network bound to).
fn two_networks(
    local: IpAddr,
    remote: IpAddr,
    policy: Policy,
    out: &[(u32, Option<u32>)],
    inb: &[(u32, Option<u32>)],
) -> Host {
    let nets = [100, 200].map(|vni| NetworkSpec {
        name: format!("net{vni}"),
        vni,
        ..network(TunnelEncap::Vxlan)
    });
    let peer = PeerEntry {
        spec: PeerSpec {
            name: "peer".into(),
            underlay: remote,
            networks: vec![(0, policy), (1, policy)],
        },
        outbound: out
            .iter()
            .map(|&(spi, net)| bound_sa(spi, Direction::Outbound, net))
            .collect(),
    };
    let mut inbound = FastMap::default();
    for &(spi, net) in inb {
        inbound.insert(
            spi,
            InboundEntry {
                peer: 0,
                sa: bound_sa(spi, Direction::Inbound, net),
            },
        );
    }
    let now = Instant::now();
    Host {
        tables: Tables::new(
            local,
            EspTransport::Udp(4500),
            nets.to_vec(),
            vec![peer],
            inbound,
        ),
        fdb: Fdb::new(DEFAULT_AGEING, now),
        stats: Stats::new(2),
    }
}

/// Seals a frame on network `net` at `from`; returns the SPI it went
/// with and what `to` made of it.
fn carry_on(from: &Host, to: &Host, net: usize) -> (u32, Result<usize, PathDrop>) {
    let now = Instant::now();
    let (mut buf, s, e) = frame(MAC_B, MAC_A, 60);
    let tx = from.encapsulate(net, 0, &mut buf, s, e, now).unwrap();
    assert_eq!(tx.via, Via::Esp);
    let mut rx = vec![0u8; 16];
    rx.extend_from_slice(&buf[tx.start..tx.end]);
    let spi = u32::from_be_bytes(rx[16..20].try_into().unwrap());
    let end = rx.len();
    let got = to
        .receive_esp(from.tables.local, true, &mut rx, 16, end, now)
        .map(|r| match r {
            Received::Payload(d) => d.net,
            other => panic!("not a frame: {other:?}"),
        });
    (spi, got)
}

/// Each network's frames go with its own SA and arrive in it.
#[test]
fn each_network_has_its_own_sa() {
    let a = two_networks(
        A,
        B,
        Policy::Require,
        &[(0x2100, Some(0)), (0x2200, Some(1))],
        &[],
    );
    let b = two_networks(
        B,
        A,
        Policy::Require,
        &[],
        &[(0x2100, Some(0)), (0x2200, Some(1))],
    );
    assert_eq!(carry_on(&a, &b, 0), (0x2100, Ok(0)));
    assert_eq!(carry_on(&a, &b, 1), (0x2200, Ok(1)));
    assert_eq!(b.stats.drops(PathDrop::NetworkMismatch), 0);
}

/// A frame of network 200 sealed with the SA of network 100 (a peer that
/// takes part only in 100, or a demultiplexing bug) is dropped and
/// counted as `network_mismatch`, though it opens.
#[test]
fn a_frame_under_another_networks_sa_is_dropped() {
    // A's one SA is unbound, so A seals network 200's frame with it; B
    // has it bound to network 100.
    let a = two_networks(A, B, Policy::Require, &[(0x2100, None)], &[]);
    let b = two_networks(B, A, Policy::Require, &[], &[(0x2100, Some(0))]);
    assert_eq!(carry_on(&a, &b, 0), (0x2100, Ok(0)));
    assert_eq!(
        carry_on(&a, &b, 1),
        (0x2100, Err(PathDrop::NetworkMismatch))
    );
    assert_eq!(b.stats.drops(PathDrop::NetworkMismatch), 1);
    // Counted for the network the header named.
    let per_net = |n| {
        b.stats.network(n).map(|c| {
            c.network_mismatch
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    };
    assert_eq!((per_net(0), per_net(1)), (Some(0), Some(1)));
}

/// With keys per network and none yet for a network, `require` drops its
/// frames (no SA) and `prefer` sends them in the clear; another
/// network's SA is never used.
#[test]
fn no_sa_for_a_network_is_never_another_networks() {
    let now = Instant::now();
    for (policy, want) in [
        (Policy::Require, Err(PathDrop::NoSa)),
        (Policy::Prefer, Ok(Via::Tunnel(4789))),
    ] {
        let a = two_networks(A, B, policy, &[(0x2100, Some(0))], &[]);
        let (mut buf, s, e) = frame(MAC_B, MAC_A, 60);
        let got = a.encapsulate(1, 0, &mut buf, s, e, now).map(|t| t.via);
        assert_eq!(got, want, "{policy:?}");
    }
}

/// With a thousand networks, each with its SA (installed in any order),
/// each network's frames go with its own: the SAs are kept ordered by
/// network and found by binary search.
#[test]
fn a_thousand_networks_each_find_their_sa() {
    const N: u32 = 1000;
    let nets: Vec<NetworkSpec> = (0..N)
        .map(|i| NetworkSpec {
            name: format!("n{i}"),
            vni: 1000 + i,
            ..network(TunnelEncap::Vxlan)
        })
        .collect();
    // Installed in a scrambled order, an unbound one among them.
    let mut out: Vec<SharedSa> = (0..N)
        .map(|i| {
            bound_sa(
                0x10_0000 + (i * 7919) % N,
                Direction::Outbound,
                Some((i * 7919) % N),
            )
        })
        .collect();
    out.insert(N as usize / 2, bound_sa(0x9999, Direction::Outbound, None));
    let peer = PeerEntry {
        spec: PeerSpec {
            name: "peer".into(),
            underlay: B,
            networks: (0..N as usize).map(|n| (n, Policy::Require)).collect(),
        },
        outbound: out,
    };
    let now = Instant::now();
    let host = Host {
        tables: Tables::new(
            A,
            EspTransport::Udp(4500),
            nets,
            vec![peer],
            FastMap::default(),
        ),
        fdb: Fdb::new(DEFAULT_AGEING, now),
        stats: Stats::new(N as usize),
    };
    for net in [0, 1, 499, 500, 998, 999] {
        let (mut buf, s, e) = frame(MAC_B, MAC_A, 60);
        let tx = host.encapsulate(net, 0, &mut buf, s, e, now).unwrap();
        let spi = u32::from_be_bytes(buf[tx.start..tx.start + 4].try_into().unwrap());
        assert_eq!(spi, 0x10_0000 + net as u32, "network {net}");
    }
}

// ---- the Encrypted VXLAN layout ----

/// [`two_networks`] with both networks in the Encrypted VXLAN layout.
fn encrypted(host: &mut Host) {
    for n in &mut host.tables.networks {
        n.layout = EspLayout::EncryptedVxlan;
    }
}

/// A frame of network `net` sealed by `from` in the Encrypted VXLAN
/// layout: the datagram for the tunnel port, with the VXLAN header in the
/// clear, then ESP.
fn sealed_in_vxlan(from: &Host, net: usize) -> Vec<u8> {
    let (mut buf, s, e) = frame(MAC_B, MAC_A, 60);
    let tx = from
        .encapsulate(net, 0, &mut buf, s, e, Instant::now())
        .unwrap();
    assert_eq!(tx.via, Via::Tunnel(4789));
    assert_eq!(tx.dst, SocketAddr::new(B, 4789));
    buf[tx.start..tx.end].to_vec()
}

/// The layout on the wire: VXLAN with the network's VNI in the clear,
/// then ESP of the network's SA, whose payload is the frame (next header
/// 143); it opens into its network. The frame is not visible.
#[test]
fn encrypted_vxlan_keeps_the_vni_in_the_clear_and_seals_the_frame() {
    let mut a = two_networks(
        A,
        B,
        Policy::Require,
        &[(0x2100, Some(0)), (0x2200, Some(1))],
        &[],
    );
    let mut b = two_networks(
        B,
        A,
        Policy::Require,
        &[],
        &[(0x2100, Some(0)), (0x2200, Some(1))],
    );
    encrypted(&mut a);
    encrypted(&mut b);
    for (net, vni, spi) in [(0, 100u32, 0x2100u32), (1, 200, 0x2200)] {
        let wire = sealed_in_vxlan(&a, net);
        let v = vxlan::Packet::new_checked(&wire[..]).unwrap();
        assert_eq!(vxlan::Repr::parse(&v).unwrap().vni.get(), vni);
        assert_eq!(u32::from_be_bytes(wire[8..12].try_into().unwrap()), spi);
        let (plain, _, _) = frame(MAC_B, MAC_A, 60);
        assert!(
            !wire
                .windows(12)
                .any(|w| w == &plain[HEADROOM..HEADROOM + 12])
        );
        let mut rx = vec![0u8; 16];
        rx.extend_from_slice(&wire);
        let end = rx.len();
        let d = b
            .receive_clear(A, 4789, &mut rx, 16, end, Instant::now())
            .unwrap();
        assert_eq!(d.net, net);
        assert_eq!(&rx[d.start..d.end], &plain[HEADROOM..HEADROOM + 60]);
    }
}

/// The VNI is authenticated by the SA's binding: a packet of network 100
/// whose VNI is rewritten to 200 opens, but under 100's SA, and is
/// dropped as `network_mismatch`; a frame can not go under a shared
/// (unbound) SA in this layout; and a cleartext VXLAN frame on such a
/// network is never delivered.
#[test]
fn encrypted_vxlan_binds_the_vni_to_the_sa() {
    let mut a = two_networks(A, B, Policy::Require, &[(0x2100, Some(0))], &[]);
    let mut b = two_networks(B, A, Policy::Require, &[], &[(0x2100, Some(0))]);
    encrypted(&mut a);
    encrypted(&mut b);
    let now = Instant::now();
    let mut wire = sealed_in_vxlan(&a, 0);
    wire[4..7].copy_from_slice(&[0, 0, 200]);
    let mut rx = vec![0u8; 16];
    rx.extend_from_slice(&wire);
    let end = rx.len();
    assert_eq!(
        b.receive_clear(A, 4789, &mut rx, 16, end, now),
        Err(PathDrop::NetworkMismatch)
    );
    // No SA of network 200's own: nothing goes, not even under another.
    let (mut buf, s, e) = frame(MAC_B, MAC_A, 60);
    assert_eq!(
        a.encapsulate(1, 0, &mut buf, s, e, now).map(|t| t.via),
        Err(PathDrop::NoSa)
    );
    let mut shared = two_networks(A, B, Policy::Require, &[(0x2100, None)], &[]);
    encrypted(&mut shared);
    let (mut buf, s, e) = frame(MAC_B, MAC_A, 60);
    assert_eq!(
        shared.encapsulate(0, 0, &mut buf, s, e, now).map(|t| t.via),
        Err(PathDrop::NoSa)
    );
    // Plain VXLAN of that network: what follows the header is read as ESP.
    let (mut buf, s, e) = frame(MAC_B, MAC_A, 60);
    let mut plain = two_networks(A, B, Policy::Clear, &[], &[]);
    plain.tables.networks[0].layout = EspLayout::EspInUdp;
    let tx = plain.encapsulate(0, 0, &mut buf, s, e, now).unwrap();
    let mut rx = vec![0u8; 16];
    rx.extend_from_slice(&buf[tx.start..tx.end]);
    let end = rx.len();
    assert!(b.receive_clear(A, 4789, &mut rx, 16, end, now).is_err());
}
