//! Two hosts' tables, a frame from A's TAP to B's TAP and back, for each
//! tunnel format, policy and suite; and each drop on the way.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tunsec_esp::{Direction, Sa, SaConfig, SaKeys, Suite};

use super::*;
use crate::fdb::DEFAULT_AGEING;

const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

fn sa(spi: u32, direction: Direction, suite: Suite) -> SharedSa {
    let n = suite.encryption_key_len() + suite.integrity_key_len();
    let keys = SaKeys::from_keymat(suite, &vec![spi as u8; n]).unwrap();
    Arc::new(Mutex::new(
        Sa::new(SaConfig::new(spi, direction, suite, keys), Instant::now()).unwrap(),
    ))
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
        outbound: suite.map(|s| sa(spi_out, Direction::Outbound, s)),
    };
    let mut inbound = HashMap::new();
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
fn carry(from: &Host, to: &Host, len: usize) -> Result<Vec<u8>, Drop> {
    let now = Instant::now();
    let (mut buf, s, e) = frame(MAC_B, MAC_A, len);
    let original = buf[s..e].to_vec();
    assert_eq!(
        targets(&from.tables, &from.fdb, 0, &buf[s..e], now),
        Targets::Flood
    );
    let tx = encapsulate(&from.tables, &from.stats, 0, 0, &mut buf, s, e, now)?;
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
            match receive_esp(
                &to.tables, &to.fdb, &to.stats, src, true, &mut rx, 16, end, now,
            )? {
                EspReceive::Frame(d) => d,
                other => panic!("not a frame: {other:?}"),
            }
        }
        Via::Tunnel(port) => {
            assert_eq!(port, to.tables.networks[0].port);
            receive_clear(
                &to.tables, &to.fdb, &to.stats, src, port, &mut rx, 16, end, now,
            )?
        }
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
                    targets(
                        &b.tables,
                        &b.fdb,
                        0,
                        &frame(MAC_A, MAC_B, 60).0[HEADROOM..],
                        now
                    ),
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
    let tx = encapsulate(&a.tables, &a.stats, 0, 0, &mut buf, s, e, now).unwrap();
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
        encapsulate(&a.tables, &a.stats, 0, 0, &mut buf, s, e, now),
        Err(Drop::NoSa)
    );
    assert_eq!(a.stats.drops(Drop::NoSa), 1);
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
    assert_eq!(carry(&a, &b, 60), Err(Drop::ClearRefused));
    assert_eq!(b.stats.drops(Drop::ClearRefused), 1);
}

#[test]
fn too_big_and_unknown_spi_and_wrong_source() {
    let (a, b) = pair(
        TunnelEncap::Vxlan,
        Policy::Require,
        Some(Suite::AesGcm256),
        false,
    );
    assert_eq!(carry(&a, &b, 1401), Err(Drop::TooBig));
    assert_eq!(a.stats.drops(Drop::TooBig), 1);

    let now = Instant::now();
    let (mut buf, s, e) = frame(MAC_B, MAC_A, 60);
    let tx = encapsulate(&a.tables, &a.stats, 0, 0, &mut buf, s, e, now).unwrap();
    // From an address that is not the SA's peer.
    let mut copy = buf.clone();
    let c = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3));
    assert_eq!(
        receive_esp(
            &b.tables, &b.fdb, &b.stats, c, true, &mut copy, tx.start, tx.end, now
        ),
        Err(Drop::Policy)
    );
    // An SPI nobody has.
    let mut copy = buf.clone();
    copy[tx.start] ^= 0x40;
    assert_eq!(
        receive_esp(
            &b.tables, &b.fdb, &b.stats, A, true, &mut copy, tx.start, tx.end, now
        ),
        Err(Drop::UnknownSpi)
    );
    // A tampered packet: the SA counts an ICV failure.
    let mut copy = buf.clone();
    copy[tx.end - 1] ^= 1;
    assert_eq!(
        receive_esp(
            &b.tables, &b.fdb, &b.stats, A, true, &mut copy, tx.start, tx.end, now
        ),
        Err(Drop::Esp)
    );
    let sa = b.tables.inbound[&0x2001].sa.lock().unwrap();
    assert_eq!(
        sa.counters().drops.get(tunsec_esp::DropReason::IcvFailure),
        1
    );
    drop(sa);
    // The genuine packet, twice: the second is a replay.
    let mut copy = buf.clone();
    receive_esp(
        &b.tables, &b.fdb, &b.stats, A, true, &mut copy, tx.start, tx.end, now,
    )
    .unwrap();
    let mut copy = buf.clone();
    assert_eq!(
        receive_esp(
            &b.tables, &b.fdb, &b.stats, A, true, &mut copy, tx.start, tx.end, now
        ),
        Err(Drop::Esp)
    );
    let sa = b.tables.inbound[&0x2001].sa.lock().unwrap();
    assert_eq!(sa.counters().drops.get(tunsec_esp::DropReason::Replay), 1);
    assert_eq!(b.stats.drops(Drop::Esp), 2);
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
        receive_esp(&b.tables, &b.fdb, &b.stats, A, true, &mut ka, 0, 1, now),
        Ok(EspReceive::Keepalive)
    );
    let mut ike = [0u8, 0, 0, 0, 1, 2, 3];
    assert_eq!(
        receive_esp(&b.tables, &b.fdb, &b.stats, A, true, &mut ike, 0, 7, now),
        Ok(EspReceive::Ike { start: 4, end: 7 })
    );
    assert_eq!(b.stats.drops(Drop::Ike), 0);
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
        receive_clear(&b.tables, &b.fdb, &b.stats, A, 6081, &mut pkt, 0, end, now),
        Err(Drop::Unsupported)
    );
    // The same option, not critical, is skipped and the frame delivered.
    pkt[1] = 0x00;
    pkt[10] = 0x00;
    let d = receive_clear(&b.tables, &b.fdb, &b.stats, A, 6081, &mut pkt, 0, end, now).unwrap();
    assert_eq!(d.start, 16);
    // Unknown VNI.
    pkt[6] = 101;
    assert_eq!(
        receive_clear(&b.tables, &b.fdb, &b.stats, A, 6081, &mut pkt, 0, end, now),
        Err(Drop::UnknownVni)
    );
}

#[test]
fn fdb_sends_unicast_to_the_learned_peer_and_ages() {
    let (a, _) = pair(TunnelEncap::Vxlan, Policy::Clear, None, false);
    let now = Instant::now();
    a.fdb.learn(0, EthernetAddress(MAC_B), 0, now);
    let (buf, s, e) = frame(MAC_B, MAC_A, 60);
    assert_eq!(
        targets(&a.tables, &a.fdb, 0, &buf[s..e], now),
        Targets::Unicast(0)
    );
    let later = now + DEFAULT_AGEING + Duration::from_secs(1);
    assert_eq!(
        targets(&a.tables, &a.fdb, 0, &buf[s..e], later),
        Targets::Flood
    );
    // Broadcast always floods.
    let (buf, s, e) = frame([0xff; 6], MAC_A, 60);
    assert_eq!(
        targets(&a.tables, &a.fdb, 0, &buf[s..e], now),
        Targets::Flood
    );
}

#[test]
fn overhead_fits_the_worst_case() {
    // IPv4, ESP in UDP, VXLAN: 20 + 8 + (8 + 16 + 15 + 2 + 16) + 8 + 8.
    assert_eq!(
        frame_overhead(false, EspTransport::Udp(4500), TunnelEncap::Vxlan),
        101
    );
    assert_eq!(
        frame_overhead(true, EspTransport::Raw, TunnelEncap::Gue),
        40 + 57 + 8 + 4
    );
    // A maximal frame under every suite stays within the underlay MTU.
    for suite in Suite::ALL {
        let (a, _) = pair(TunnelEncap::Vxlan, Policy::Require, Some(suite), false);
        let max = 1500 - frame_overhead(false, EspTransport::Udp(4500), TunnelEncap::Vxlan);
        for len in max - 20..=max {
            let (mut buf, s, e) = frame(MAC_B, MAC_A, len);
            let mut tables = a.tables.clone();
            tables.networks[0].max_frame = max;
            let tx = encapsulate(&tables, &a.stats, 0, 0, &mut buf, s, e, Instant::now()).unwrap();
            // The kernel adds IPv4 (20) and UDP (8).
            assert!(tx.end - tx.start + 28 <= 1500, "{suite} {len}");
        }
    }
}
