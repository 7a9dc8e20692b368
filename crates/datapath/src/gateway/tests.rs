//! Two gateway hosts' tables: a kernel-tunnel packet through `protect` on
//! one and `unprotect` on the other, in both modes and for every suite;
//! and each refusal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tunsec_esp::{Direction, Sa, SaConfig, SaKeys, Suite};
use tunsec_wire::{ipv4, udp};

use super::*;
use crate::esp_rx::{Received, open_inbound};
use crate::fast_map::FastMap;
use crate::packet::{HEADROOM, Via};
use crate::stats::Stats;

const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

fn sa(spi: u32, direction: Direction, suite: Suite) -> SharedSa {
    let n = suite.encryption_key_len() + suite.integrity_key_len();
    let keys = SaKeys::from_keymat(suite, &vec![spi as u8; n]).unwrap();
    Arc::new(Mutex::new(
        Sa::new(SaConfig::new(spi, direction, suite, keys), Instant::now()).unwrap(),
    ))
}

fn vxlan_selector() -> GatewaySelector {
    GatewaySelector {
        protocol: 17,
        ports: 4789..=4789,
    }
}

/// One host's tables: `local` with one peer `remote`, sealing with
/// `spi_out` and opening `spi_in` (no SAs without `suite`).
pub(crate) fn host(
    local: IpAddr,
    remote: IpAddr,
    mode: GatewayMode,
    suite: Option<Suite>,
    spi_in: u32,
    spi_out: u32,
) -> GatewayTables {
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
    let mut tables = GatewayTables::new(local, EspTransport::Udp(4500), mode);
    let mut peer = GatewayPeer::new("peer".into(), remote, vec![vxlan_selector()]);
    peer.outbound = suite
        .map(|s| sa(spi_out, Direction::Outbound, s))
        .into_iter()
        .collect();
    tables.insert_peer(0, peer).unwrap();
    tables.inbound = inbound;
    tables
}

fn pair(
    mode: GatewayMode,
    suite: Option<Suite>,
    a: IpAddr,
    b: IpAddr,
) -> (GatewayTables, GatewayTables) {
    (
        host(a, b, mode, suite, 0x1001, 0x2001),
        host(b, a, mode, suite, 0x2001, 0x1001),
    )
}

/// An IP/UDP packet as a kernel vxlan device would send it.
pub(crate) fn kernel_packet(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    len: usize,
) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
    let udp_len = udp::HEADER_LEN + len;
    let mut pkt = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let repr = ipv4::Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Udp,
                payload_len: udp_len,
                hop_limit: 64,
                dscp_ecn: 0,
                dont_frag: false,
                ident: 0,
            };
            pkt.resize(repr.buffer_len() + udp_len, 0);
            repr.emit(&mut ipv4::Packet::new_unchecked(&mut pkt[..]));
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let repr = ipv6::Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Udp,
                payload_len: udp_len,
                hop_limit: 64,
                traffic_class: 0,
                flow_label: 0,
            };
            pkt.resize(repr.buffer_len() + udp_len, 0);
            repr.emit(&mut ipv6::Packet::new_unchecked(&mut pkt[..]));
        }
        _ => unreachable!(),
    }
    let hlen = pkt.len() - udp_len;
    let mut u = udp::Packet::new_unchecked(&mut pkt[hlen..]);
    udp::Repr {
        src_port: sport,
        dst_port: dport,
        payload_len: len,
    }
    .emit(&mut u);
    u.payload_mut().copy_from_slice(&payload);
    u.fill_checksum(src, dst).unwrap();
    pkt
}

fn in_buffer(pkt: &[u8]) -> (Vec<u8>, usize, usize) {
    let mut buf = vec![0u8; HEADROOM];
    buf.extend_from_slice(pkt);
    let end = buf.len();
    buf.resize(end + 64, 0);
    (buf, HEADROOM, end)
}

/// `tables`' context, as a worker builds it for a batch.
fn ctx<'a>(tables: &'a GatewayTables, stats: &'a Stats, now: Instant) -> GatewayCtx<'a> {
    Ctx {
        tables,
        fdb: &(),
        stats,
        now,
    }
}

/// `from` protects, the datagram crosses, `to` unprotects: the packet the
/// receiver's kernel gets.
fn carry(from: &GatewayTables, to: &GatewayTables, pkt: &[u8]) -> Result<Vec<u8>, PathDrop> {
    let now = Instant::now();
    let stats = Stats::new(0);
    let (mut buf, s, e) = in_buffer(pkt);
    let tx = protect(&ctx(from, &stats, now), &mut buf, s, e)?;
    assert_eq!(tx.dst, SocketAddr::new(to.local, 4500));
    let (mut rx, s, e) = in_buffer(&buf[tx.start..tx.end]);
    let (start, end) = match open_inbound(&ctx(to, &stats, now), from.local, true, &mut rx, s, e)? {
        Received::Payload(Unprotected { start, end, peer }) => {
            assert_eq!(peer, 0);
            (start, end)
        }
        other => panic!("not a packet: {other:?}"),
    };
    Ok(rx[start..end].to_vec())
}

#[test]
fn both_modes_every_suite_both_families() {
    let v6 = (
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
    );
    for (a, b) in [(A, B), v6] {
        for suite in Suite::ALL {
            let (ga, gb) = pair(GatewayMode::Tunnel, Some(suite), a, b);
            for len in [0, 50, 1400] {
                let pkt = kernel_packet(a, b, 40000, 4789, len);
                // Tunnel mode carries the packet exactly.
                assert_eq!(carry(&ga, &gb, &pkt).unwrap(), pkt, "{suite} tunnel");
                // The answer from the service's port matches too.
                let back = kernel_packet(b, a, 4789, 40000, len);
                assert_eq!(carry(&gb, &ga, &back).unwrap(), back);
            }
            let (ga, gb) = pair(GatewayMode::Transport, Some(suite), a, b);
            for len in [0, 50, 1400] {
                let pkt = kernel_packet(a, b, 40000, 4789, len);
                let got = carry(&ga, &gb, &pkt).unwrap();
                // Transport mode rebuilds the header: same addresses,
                // protocol and payload (so the UDP checksum still holds).
                let hlen = if a.is_ipv4() { 20 } else { 40 };
                assert_eq!(got.len(), pkt.len());
                assert_eq!(&got[hlen..], &pkt[hlen..], "{suite} transport payload");
                let flow = FlowKey::from_ip_packet(&got).unwrap();
                assert_eq!((flow.src, flow.dst, flow.protocol), (a, b, 17));
                let u = udp::Packet::new_checked(&got[hlen..]).unwrap();
                assert!(
                    u.verify_checksum(a, b),
                    "{suite}: UDP checksum after rebuild"
                );
                if a.is_ipv4() {
                    assert!(
                        ipv4::Packet::new_checked(&got[..])
                            .unwrap()
                            .verify_checksum()
                    );
                }
            }
        }
    }
}

#[test]
fn refuses_what_it_must_not_carry() {
    let (ga, gb) = pair(GatewayMode::Transport, Some(Suite::AesGcm128), A, B);
    let stats = Stats::new(0);
    let now = Instant::now();
    let try_protect = |pkt: Vec<u8>| {
        let (mut buf, s, e) = in_buffer(&pkt);
        stats.count(protect(&ctx(&ga, &stats, now), &mut buf, s, e).map(|_| ()))
    };
    // Another port than the selectors': the rules should not have sent it
    // here, and it is not sent in the clear either.
    assert_eq!(
        try_protect(kernel_packet(A, B, 40000, 53, 10)),
        Err(PathDrop::Policy)
    );
    // To an address that is no peer.
    let c = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3));
    assert_eq!(
        try_protect(kernel_packet(A, c, 40000, 4789, 10)),
        Err(PathDrop::UnknownPeer)
    );
    // Not from this host.
    assert_eq!(
        try_protect(kernel_packet(c, B, 40000, 4789, 10)),
        Err(PathDrop::Policy)
    );
    assert_eq!(try_protect(vec![0x45, 0, 0]), Err(PathDrop::Malformed));
    assert_eq!(stats.drops(PathDrop::Policy), 2);

    // No SA: dropped, never in the clear.
    let (no_sa, _) = pair(GatewayMode::Transport, None, A, B);
    let (mut buf, s, e) = in_buffer(&kernel_packet(A, B, 40000, 4789, 10));
    assert_eq!(
        protect(&ctx(&no_sa, &stats, now), &mut buf, s, e),
        Err(PathDrop::NoSa)
    );

    // A decrypted packet outside the selectors is refused by the receiver:
    // B allows only port 4789; A (misconfigured) protects port 53 too.
    let mut wide = ga.clone();
    wide.peer_mut(0).unwrap().selectors.push(GatewaySelector {
        protocol: 17,
        ports: 53..=53,
    });
    assert_eq!(
        carry(&wide, &gb, &kernel_packet(A, B, 40000, 53, 10)),
        Err(PathDrop::Policy)
    );
    // From an address that is not the SA's peer.
    let (mut buf, s, e) = in_buffer(&kernel_packet(A, B, 40000, 4789, 10));
    let tx = protect(&ctx(&ga, &stats, now), &mut buf, s, e).unwrap();
    let (mut rx, s2, e2) = in_buffer(&buf[tx.start..tx.end]);
    assert_eq!(
        open_inbound(&ctx(&gb, &stats, now), c, true, &mut rx, s2, e2),
        Err(PathDrop::Policy)
    );
    // A keepalive is nothing.
    let mut ka = [0u8; 130];
    ka[128] = 0xff;
    assert_eq!(
        open_inbound(&ctx(&gb, &stats, now), A, true, &mut ka, 128, 129),
        Ok(Received::Keepalive)
    );
    // IKE behind the non-ESP marker goes to the IKE driver.
    let mut ike = [0u8; 160];
    ike[132..140].copy_from_slice(b"IKEHDR..");
    assert_eq!(
        open_inbound(&ctx(&gb, &stats, now), A, true, &mut ike, 128, 160),
        Ok(Received::Ike {
            start: 132,
            end: 160
        })
    );
}

#[test]
fn fragments_are_refused_in_transport_mode() {
    let (ga, _) = pair(GatewayMode::Transport, Some(Suite::AesGcm128), A, B);
    let stats = Stats::new(0);
    let mut pkt = kernel_packet(A, B, 40000, 4789, 100);
    {
        let mut ip = ipv4::Packet::new_unchecked(&mut pkt[..]);
        ip.set_more_frags(true);
        ip.fill_checksum();
    }
    let (mut buf, s, e) = in_buffer(&pkt);
    assert_eq!(
        protect(&ctx(&ga, &stats, Instant::now()), &mut buf, s, e),
        Err(PathDrop::Malformed)
    );
}

#[test]
fn mtu_from_underlay_and_esp_overhead() {
    // 8 (UDP) + 8 (SPI, sequence) + 16 (IV) + 15 (padding) + 2 + 16 (ICV).
    assert_eq!(
        overhead(false, EspTransport::Udp(4500), GatewayMode::Transport),
        65
    );
    assert_eq!(
        overhead(false, EspTransport::Raw, GatewayMode::Transport),
        57
    );
    assert_eq!(
        overhead(false, EspTransport::Udp(4500), GatewayMode::Tunnel),
        85
    );
    assert_eq!(
        overhead(true, EspTransport::Udp(4500), GatewayMode::Tunnel),
        105
    );
    let tun = tun_mtu(1500, false, EspTransport::Udp(4500), GatewayMode::Transport);
    assert_eq!(tun, 1435);
    // VXLAN over IPv4: 20 + 8 + 8 + 14.
    assert_eq!(kernel_tunnel_mtu(tun, false), 1385);
    assert_eq!(
        tun_mtu(40, false, EspTransport::Udp(4500), GatewayMode::Tunnel),
        0
    );
}

#[test]
fn largest_packet_at_tun_mtu_fits_the_underlay() {
    // A packet of exactly the TUN MTU, sealed with the suite of the
    // largest overhead, is at most the underlay MTU on the wire.
    for mode in [GatewayMode::Transport, GatewayMode::Tunnel] {
        for suite in Suite::ALL {
            let (a, _) = pair(mode, Some(suite), A, B);
            let mtu = tun_mtu(1500, false, a.esp, mode);
            let payload = usize::from(mtu) - 28;
            let packet = kernel_packet(A, B, 40000, 4789, payload);
            let mut buf = vec![0u8; HEADROOM + packet.len() + 128];
            buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(&packet);
            let stats = Stats::new(1);
            let ctx = ctx(&a, &stats, Instant::now());
            let tx = protect(&ctx, &mut buf, HEADROOM, HEADROOM + packet.len()).unwrap();
            // The outer IPv4 header (20) and ESP-in-UDP (in tx) make the wire size.
            let wire = 20 + 8 + (tx.end - tx.start);
            assert!(wire <= 1500, "{mode:?} {suite:?}: {wire} bytes on the wire");
        }
    }
}

mod arbitrary_input {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever the TUN device hands over, `protect` returns (a drop
        /// or a datagram), never panics.
        #[test]
        fn protect_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            tunnel in any::<bool>(),
        ) {
            let mode = if tunnel { GatewayMode::Tunnel } else { GatewayMode::Transport };
            let (ga, _) = pair(mode, Some(Suite::AesGcm128), A, B);
            let (mut buf, s, e) = in_buffer(&bytes);
            let _ = protect(&ctx(&ga, &Stats::new(1), Instant::now()), &mut buf, s, e);
        }

        /// Whatever arrives on the ESP socket, `unprotect` returns, never
        /// panics; with a known SPI in front, the bytes reach the ESP
        /// layer and still only make a drop.
        #[test]
        fn unprotect_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            known_spi in any::<bool>(),
            udp in any::<bool>(),
            tunnel in any::<bool>(),
        ) {
            let mode = if tunnel { GatewayMode::Tunnel } else { GatewayMode::Transport };
            let (_, gb) = pair(mode, Some(Suite::AesGcm128), A, B);
            let mut data = bytes.clone();
            if known_spi && data.len() >= 8 {
                data[..4].copy_from_slice(&0x2001u32.to_be_bytes());
            }
            let (mut buf, s, e) = in_buffer(&data);
            let stats = Stats::new(1);
            let r = open_inbound(&ctx(&gb, &stats, Instant::now()), A, udp, &mut buf, s, e);
            if known_spi && data.len() >= 8 {
                let opened = matches!(r, Ok(Received::Payload(_)));
                prop_assert!(!opened, "random bytes opened as ESP");
            }
        }
    }
}

/// An SA with selectors (ours `local[udp/lp]`, the peer's `remote[udp/rp]`,
/// `None` for any port), as the IKE driver installs a Child SA's.
fn split_sa(
    spi: u32,
    direction: Direction,
    l: (IpAddr, Option<u16>),
    r: (IpAddr, Option<u16>),
) -> SharedSa {
    let suite = Suite::AesGcm128;
    let n = suite.encryption_key_len() + suite.integrity_key_len();
    let keys = SaKeys::from_keymat(suite, &vec![spi as u8; n]).unwrap();
    let mut c = SaConfig::new(spi, direction, suite, keys);
    let ports =
        |p: Option<u16>| p.map_or(tunsec_esp::PortRange::ANY, tunsec_esp::PortRange::single);
    c.selectors = vec![tunsec_esp::Selector {
        local: tunsec_esp::IpPrefix::host(l.0),
        remote: tunsec_esp::IpPrefix::host(r.0),
        protocol: Some(17),
        local_ports: ports(l.1),
        remote_ports: ports(r.1),
    }];
    Arc::new(Mutex::new(Sa::new(c, Instant::now()).unwrap()))
}

/// ovs-monitor-ipsec's two Child SAs (`layout = "split"`) on both hosts:
/// `[udp] === [udp/4789]` (SPI 0x?0 from each) and `[udp/4789] ===
/// [udp]` (0x?1). A vxlan packet from a per-flow source port to 4789 goes
/// with the first, one from 4789 to another port with the second, whatever
/// their order; both are accepted on the other side, where the SA that
/// opens them covers them too (RFC 4301 sections 5.1 and 5.2).
#[test]
fn split_child_sas_carry_each_direction() {
    let mode = GatewayMode::Tunnel;
    let p = Some(4789);
    let build = |local: IpAddr, remote: IpAddr, mine: u32, theirs: u32| {
        let mut t = GatewayTables::new(local, EspTransport::Udp(4500), mode);
        let mut peer = GatewayPeer::new("peer".into(), remote, vec![vxlan_selector()]);
        // The "in" one first: the choice is by the selectors, not order.
        peer.outbound = vec![
            split_sa(mine | 1, Direction::Outbound, (local, p), (remote, None)),
            split_sa(mine, Direction::Outbound, (local, None), (remote, p)),
        ];
        t.insert_peer(0, peer).unwrap();
        for (spi, l, r) in [
            (theirs, (local, p), (remote, None)),
            (theirs | 1, (local, None), (remote, p)),
        ] {
            let sa = split_sa(spi, Direction::Inbound, l, r);
            t.inbound.insert(spi, InboundEntry { peer: 0, sa });
        }
        t
    };
    let a = build(A, B, 0xa0, 0xb0);
    let b = build(B, A, 0xb0, 0xa0);
    let now = Instant::now();
    let stats = Stats::new(0);
    for (from, to, sport, dport, spi) in [
        (&a, &b, 40000, 4789, 0xa0),
        (&a, &b, 4789, 40001, 0xa1),
        (&b, &a, 51234, 4789, 0xb0),
        (&b, &a, 4789, 51235, 0xb1),
    ] {
        let pkt = kernel_packet(from.local, to.local, sport, dport, 100);
        let (mut buf, s, e) = in_buffer(&pkt);
        let tx = protect(&ctx(from, &stats, now), &mut buf, s, e).unwrap();
        let sent = u32::from_be_bytes(buf[tx.start..tx.start + 4].try_into().unwrap());
        assert_eq!(sent, spi, "{sport} -> {dport}");
        let flow = FlowKey::from_ip_packet(&pkt).unwrap();
        let opener = to
            .inbound
            .get(&spi)
            .unwrap()
            .sa
            .lock()
            .unwrap()
            .selectors()
            .to_vec();
        assert!(
            opener.iter().any(|s| s.matches_inbound(&flow)),
            "{sport} -> {dport}"
        );
        assert_eq!(carry(from, to, &pkt).unwrap(), pkt);
    }
}

/// A kernel vxlan packet of `vni` (the I flag set), from A to B.
fn vxlan_packet(vni: u32, len: usize) -> Vec<u8> {
    let mut pkt = kernel_packet(A, B, 40000, 4789, 8 + len);
    let v = vni.to_be_bytes();
    pkt[28..36].copy_from_slice(&[0x08, 0, 0, 0, v[1], v[2], v[3], 0]);
    let (s, d) = (A, B);
    udp::Packet::new_unchecked(&mut pkt[20..])
        .fill_checksum(s, d)
        .unwrap();
    pkt
}

/// Gives both hosts the policy 100 `require` (the default), 200 `clear`,
/// 300-399 `discard` on port 4789.
fn with_vni_policy(t: &mut GatewayTables) {
    let mut p = VniPolicy::new(TunnelKind::Vxlan, 4789..=4789, VniAction::Require);
    p.rules = vec![
        VniRule::new(200..=200, VniAction::Clear),
        VniRule::new(300..=399, VniAction::Discard),
    ];
    t.peer_mut(0).unwrap().vnis = vec![p];
}

/// Encryption chosen per VNI: `require` is sealed, `clear` goes as it is
/// through the raw socket, `discard` nowhere; each counted in its rule.
/// Inbound, an opened `discard` VNI is dropped. A packet on the tunnel
/// port whose header does not parse is never sent in the clear.
#[test]
fn vni_policy_chooses_esp_clear_or_nothing() {
    let (mut ga, mut gb) = pair(GatewayMode::Transport, Some(Suite::AesGcm128), A, B);
    with_vni_policy(&mut ga);
    with_vni_policy(&mut gb);
    let stats = Stats::new(0);
    let now = Instant::now();
    let send = |pkt: &[u8]| {
        let (mut buf, s, e) = in_buffer(pkt);
        protect(&ctx(&ga, &stats, now), &mut buf, s, e)
            .map(|tx| (tx, buf[tx.start..tx.end].to_vec()))
    };
    let (tx, sealed) = send(&vxlan_packet(100, 64)).unwrap();
    assert_eq!(tx.via, Via::Esp);
    assert_ne!(&sealed[..], &vxlan_packet(100, 64)[..]);

    let clear = vxlan_packet(200, 64);
    let (tx, sent) = send(&clear).unwrap();
    assert_eq!(tx.via, Via::Clear);
    assert_eq!(tx.dst, SocketAddr::new(B, 0));
    assert_eq!(sent, clear, "the whole packet, unchanged");

    for vni in [300, 399] {
        assert_eq!(
            send(&vxlan_packet(vni, 64)).err(),
            Some(PathDrop::Discarded)
        );
    }
    // No I flag: the VNI is unknown, so nothing is sent.
    let mut no_i = vxlan_packet(200, 64);
    no_i[28] = 0;
    assert_eq!(send(&no_i).err(), Some(PathDrop::Malformed));

    let policy = &ga.peer(0).unwrap().vnis[0];
    let count = |r: &VniRule| {
        let c = &r.counters;
        [&c.sealed, &c.clear, &c.discarded, &c.opened]
            .map(|a| a.load(std::sync::atomic::Ordering::Relaxed))
    };
    assert_eq!(count(&policy.default), [1, 0, 0, 0]);
    assert_eq!(count(&policy.rules[0]), [0, 1, 0, 0]);
    assert_eq!(count(&policy.rules[1]), [0, 0, 2, 0]);

    // Inbound: `require` opens; a sealed `clear` VNI opens too; a
    // `discard` VNI sealed by a peer without that rule is dropped.
    assert_eq!(
        carry(&ga, &gb, &vxlan_packet(100, 64)).unwrap()[20..],
        vxlan_packet(100, 64)[20..]
    );
    let mut lax = ga.clone();
    lax.peer_mut(0).unwrap().vnis.clear();
    assert!(carry(&lax, &gb, &vxlan_packet(200, 64)).is_ok());
    assert_eq!(
        carry(&lax, &gb, &vxlan_packet(300, 64)),
        Err(PathDrop::Discarded)
    );
    let received = &gb.peer(0).unwrap().vnis[0];
    assert_eq!(count(&received.default)[3], 1);
    assert_eq!(count(&received.rules[0])[3], 1);
    assert_eq!(count(&received.rules[1])[2], 1);
}

/// An SA bound to `binding` (keys per network).
fn bound_sa(spi: u32, direction: Direction, binding: Option<u32>) -> SharedSa {
    let suite = Suite::AesGcm128;
    let n = suite.encryption_key_len() + suite.integrity_key_len();
    let keys = SaKeys::from_keymat(suite, &vec![spi as u8; n]).unwrap();
    let mut config = SaConfig::new(spi, direction, suite, keys);
    config.binding = binding;
    Arc::new(Mutex::new(Sa::new(config, Instant::now()).unwrap()))
}

/// Keys per network in gateway mode: VNIs 100 and 101 `require`, each
/// with an SA pair of its own, beside the shared pair. Each VNI is sealed
/// with its own SA and other traffic with the shared one; a packet of
/// VNI 101 sealed under VNI 100's keys (a peer, or a bug, putting it
/// into the wrong network) opens but is dropped as `network_mismatch`,
/// and so is one of VNI 100 under the shared keys once bound SAs exist.
#[test]
fn keyed_vnis_travel_under_their_own_sas() {
    let with_keys = |t: &mut GatewayTables, local_base: u32, remote_base: u32| {
        let mut p = VniPolicy::new(TunnelKind::Vxlan, 4789..=4789, VniAction::Require);
        let keyed = |vnis| {
            let mut r = VniRule::new(vnis, VniAction::Require);
            r.keyed = true;
            r
        };
        p.rules = vec![keyed(100..=100), keyed(101..=101)];
        t.peer_mut(0).unwrap().vnis = vec![p];
        // Bound pairs, pushed out of order: the tables sort them.
        for vni in [101, 100] {
            let out = bound_sa(remote_base + vni, Direction::Outbound, Some(vni));
            t.peer_mut(0).unwrap().outbound.push(out);
            t.inbound.insert(
                local_base + vni,
                InboundEntry {
                    peer: 0,
                    sa: bound_sa(local_base + vni, Direction::Inbound, Some(vni)),
                },
            );
        }
        t.order_outbound();
    };
    let (mut ga, mut gb) = pair(GatewayMode::Transport, Some(Suite::AesGcm128), A, B);
    with_keys(&mut ga, 0xa000, 0xb000);
    with_keys(&mut gb, 0xb000, 0xa000);
    let stats = Stats::new(0);
    let now = Instant::now();
    let spi_of = |t: &GatewayTables, pkt: &[u8]| {
        let (mut buf, s, e) = in_buffer(pkt);
        let tx = protect(&ctx(t, &stats, now), &mut buf, s, e).unwrap();
        // The datagram's payload starts with the SPI.
        u32::from_be_bytes(buf[tx.start..tx.start + 4].try_into().unwrap())
    };
    assert_eq!(spi_of(&ga, &vxlan_packet(100, 64)), 0xb000 + 100);
    assert_eq!(spi_of(&ga, &vxlan_packet(101, 64)), 0xb000 + 101);
    // An unkeyed VNI and other traffic: the shared SA.
    assert_eq!(spi_of(&ga, &vxlan_packet(7, 64)), 0x2001);
    assert_eq!(spi_of(&ga, &kernel_packet(A, B, 4789, 40000, 0)), 0x2001);
    for vni in [100, 101, 7] {
        let got = carry(&ga, &gb, &vxlan_packet(vni, 64)).unwrap();
        assert_eq!(got[20..], vxlan_packet(vni, 64)[20..]);
    }

    // A sender that puts VNI 101 under VNI 100's keys.
    let mut wrong = ga.clone();
    let p = wrong.peer_mut(0).unwrap();
    p.vnis[0].rules[1].vnis = 100..=101;
    p.vnis[0].rules.remove(0);
    p.vnis[0].rules[0].vnis = 100..=101;
    assert_eq!(
        carry(&wrong, &gb, &vxlan_packet(101, 64)),
        Err(PathDrop::NetworkMismatch)
    );
    // VNI 100 under the shared keys, from a sender that has no keyed rule.
    let mut unkeyed = ga.clone();
    unkeyed.peer_mut(0).unwrap().vnis.clear();
    assert_eq!(
        carry(&unkeyed, &gb, &vxlan_packet(100, 64)),
        Err(PathDrop::NetworkMismatch)
    );
    // Without any bound SA (a peer without keys per network): a keyed
    // rule falls back to the shared SA, both ways.
    let strip = |t: &GatewayTables| {
        let mut t = t.clone();
        t.peer_mut(0).unwrap().outbound.truncate(1);
        t.inbound.retain(|spi, _| *spi < 0xa000);
        t
    };
    let (fa, fb) = (strip(&ga), strip(&gb));
    assert_eq!(spi_of(&fa, &vxlan_packet(100, 64)), 0x2001);
    assert!(carry(&fa, &fb, &vxlan_packet(100, 64)).is_ok());
}
