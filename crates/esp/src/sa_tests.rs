//! Tests of SA processing: round trips over every suite, mode,
//! encapsulation and ESN setting, and a drop for each bad input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use tunsec_wire::ip::IpProtocol;
use tunsec_wire::{ipv4, ipv6, udp};

use super::*;
use crate::lifetime::Limits;
use crate::selector::{IpPrefix, PortRange};

const A4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const HEADROOM: usize = 128;
const TAILROOM: usize = 64;

pub(crate) fn keys(suite: Suite) -> SaKeys {
    let n = suite.encryption_key_len() + suite.integrity_key_len();
    SaKeys::from_keymat(
        suite,
        &(0..n).map(|i| (i * 7 + 3) as u8).collect::<Vec<_>>(),
    )
    .unwrap()
}

/// An outbound and an inbound SA that share keys.
pub(crate) fn pair(suite: Suite, mode: Mode, encapsulation: Encapsulation, esn: bool) -> (Sa, Sa) {
    let now = Instant::now();
    let mut cfg = SaConfig::new(0x1000_0001, Direction::Outbound, suite, keys(suite));
    cfg.mode = mode;
    cfg.encapsulation = encapsulation;
    cfg.esn = esn;
    let out = Sa::new(cfg.clone(), now).unwrap();
    cfg.direction = Direction::Inbound;
    cfg.mode = match mode {
        Mode::Tunnel { local, remote } => Mode::Tunnel {
            local: remote,
            remote: local,
        },
        m => m,
    };
    (out, Sa::new(cfg, now).unwrap())
}

/// A UDP packet (as VXLAN would be) inside an IPv4 or IPv6 header, placed
/// in a buffer with room around it. Returns the buffer and the window.
pub(crate) fn udp_packet(src: IpAddr, dst: IpAddr, payload: &[u8]) -> (Vec<u8>, usize, usize) {
    let udp_len = udp::HEADER_LEN + payload.len();
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
                dont_frag: true,
                ident: 0x1234,
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
    {
        let mut u = udp::Packet::new_unchecked(&mut pkt[hlen..]);
        udp::Repr {
            src_port: 49152,
            dst_port: 4789,
            payload_len: payload.len(),
        }
        .emit(&mut u);
        u.payload_mut().copy_from_slice(payload);
        u.fill_checksum(src, dst).unwrap();
    }
    let mut buf = vec![0u8; HEADROOM];
    buf.extend_from_slice(&pkt);
    let end = buf.len();
    buf.resize(end + TAILROOM, 0);
    (buf, HEADROOM, end)
}

fn modes() -> Vec<(IpAddr, IpAddr, Mode)> {
    vec![
        (A4.into(), B4.into(), Mode::Transport),
        (A6.into(), B6.into(), Mode::Transport),
        (
            A4.into(),
            B4.into(),
            Mode::Tunnel {
                local: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
                remote: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
            },
        ),
        (
            A6.into(),
            B6.into(),
            Mode::Tunnel {
                local: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1)),
                remote: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2)),
            },
        ),
    ]
}

#[test]
fn ip_round_trip_every_combination() {
    let now = Instant::now();
    for suite in Suite::ALL {
        for (src, dst, mode) in modes() {
            for encapsulation in [Encapsulation::Esp, Encapsulation::UDP_4500] {
                for esn in [false, true] {
                    let (mut out, mut inb) = pair(suite, mode, encapsulation, esn);
                    for len in [0usize, 1, 13, 100, 1400] {
                        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                        let (mut bytes, s, e) = udp_packet(src, dst, &payload);
                        let original = bytes[s..e].to_vec();
                        let mut buf = PacketBuf::new(&mut bytes, s, e);
                        out.seal(&mut buf, now).unwrap();
                        let sealed = buf.data().to_vec();
                        if len >= 13 {
                            assert!(
                                sealed.windows(13).all(|w| w != &payload[..13]),
                                "plaintext visible after sealing"
                            );
                        }
                        let mut back = sealed.clone();
                        let mut buf = PacketBuf::whole(&mut back);
                        inb.open(&mut buf, now).unwrap_or_else(|r| {
                            panic!("{suite} {mode:?} {encapsulation:?} esn={esn} len={len}: {r}")
                        });
                        assert_eq!(buf.data(), &original[..]);
                    }
                    assert_eq!(out.counters().packets, 5);
                    assert_eq!(inb.counters().packets, 5);
                    assert_eq!(inb.counters().drops.total(), 0);
                }
            }
        }
    }
}

#[test]
fn sealed_transport_packet_is_well_formed() {
    let now = Instant::now();
    let (mut out, _) = pair(
        Suite::AesGcm128,
        Mode::Transport,
        Encapsulation::UDP_4500,
        false,
    );
    let (mut bytes, s, e) = udp_packet(A4.into(), B4.into(), b"hello vxlan");
    let mut buf = PacketBuf::new(&mut bytes, s, e);
    out.seal(&mut buf, now).unwrap();
    let ip = ipv4::Packet::new_checked(buf.data()).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(ip.next_header(), IpProtocol::Udp);
    assert_eq!(usize::from(ip.total_len()), buf.len());
    let u = udp::Packet::new_checked(&buf.data()[20..]).unwrap();
    assert_eq!((u.src_port(), u.dst_port(), u.checksum()), (4500, 4500, 0));
    let esp = tunsec_wire::esp::Packet::new_checked(&buf.data()[28..]).unwrap();
    assert_eq!((esp.spi(), esp.sequence_number()), (0x1000_0001, 1));
    // IP 20, UDP 8, ESP header 8, IV 8, then the encrypted 8 UDP + 11 data
    // + 3 pad + 2 trailer (24, a multiple of 4), then the 16-byte ICV.
    assert_eq!(buf.len(), 20 + 8 + 8 + 8 + (8 + 11 + 3 + 2) + 16);
}

fn seal_one(out: &mut Sa, now: Instant) -> Vec<u8> {
    let (mut bytes, s, e) = udp_packet(A4.into(), B4.into(), b"payload bytes");
    let mut buf = PacketBuf::new(&mut bytes, s, e);
    out.seal(&mut buf, now).unwrap();
    buf.data().to_vec()
}

fn open_one(inb: &mut Sa, packet: &[u8], now: Instant) -> Result<(), DropReason> {
    let mut copy = packet.to_vec();
    inb.open(&mut PacketBuf::whole(&mut copy), now)
}

/// A packet left of the replay window is counted as `too_old`, apart
/// from a duplicate inside it (`replay`): the first says reordering, the
/// second a replayed packet.
#[test]
fn too_old_is_told_apart_from_a_replay() {
    let now = Instant::now();
    let suite = Suite::AesGcm128;
    let mut cfg = SaConfig::new(0x1000_0001, Direction::Outbound, suite, keys(suite));
    cfg.mode = Mode::Transport;
    cfg.encapsulation = Encapsulation::Esp;
    let mut out = Sa::new(cfg.clone(), now).unwrap();
    cfg.direction = Direction::Inbound;
    cfg.replay_window = 64;
    let mut inb = Sa::new(cfg, now).unwrap();
    let packets: Vec<_> = (0..100).map(|_| seal_one(&mut out, now)).collect();
    open_one(&mut inb, &packets[99], now).unwrap();
    assert_eq!(
        open_one(&mut inb, &packets[10], now),
        Err(DropReason::TooOld)
    );
    assert_eq!(
        open_one(&mut inb, &packets[99], now),
        Err(DropReason::Replay)
    );
    open_one(&mut inb, &packets[50], now).unwrap();
    let drops = &inb.counters().drops;
    assert_eq!(
        (drops.get(DropReason::TooOld), drops.get(DropReason::Replay)),
        (1, 1)
    );
}

#[test]
fn replay_is_dropped_and_counted() {
    let now = Instant::now();
    for esn in [false, true] {
        let (mut out, mut inb) = pair(Suite::AesGcm256, Mode::Transport, Encapsulation::Esp, esn);
        let p1 = seal_one(&mut out, now);
        let p2 = seal_one(&mut out, now);
        open_one(&mut inb, &p2, now).unwrap();
        open_one(&mut inb, &p1, now).unwrap();
        assert_eq!(open_one(&mut inb, &p1, now), Err(DropReason::Replay));
        assert_eq!(open_one(&mut inb, &p2, now), Err(DropReason::Replay));
        assert_eq!(inb.counters().drops.get(DropReason::Replay), 2);
        assert_eq!(inb.counters().packets, 2);
    }
}

#[test]
fn flipped_bit_is_an_icv_failure_and_does_not_move_the_window() {
    let now = Instant::now();
    for suite in Suite::ALL {
        let (mut out, mut inb) = pair(suite, Mode::Transport, Encapsulation::Esp, false);
        let p = seal_one(&mut out, now);
        for i in 20..p.len() {
            let mut bad = p.clone();
            bad[i] ^= 0x04;
            let r = open_one(&mut inb, &bad, now);
            // Bytes 20..24 are the SPI: a flip there names another SA.
            let expected = if i < 24 {
                DropReason::NoSa
            } else {
                DropReason::IcvFailure
            };
            assert_eq!(r, Err(expected), "{suite} byte {i}");
        }
        // The forged packets did not consume the sequence number.
        open_one(&mut inb, &p, now).unwrap();
        assert!(inb.counters().drops.get(DropReason::IcvFailure) > 0);
    }
}

#[test]
fn wrong_key_is_an_icv_failure() {
    let now = Instant::now();
    let (mut out, _) = pair(
        Suite::ChaCha20Poly1305,
        Mode::Transport,
        Encapsulation::Esp,
        false,
    );
    let mut cfg = SaConfig::new(
        0x1000_0001,
        Direction::Inbound,
        Suite::ChaCha20Poly1305,
        SaKeys::from_keymat(Suite::ChaCha20Poly1305, &[9; 36]).unwrap(),
    );
    cfg.encapsulation = Encapsulation::Esp;
    let mut other = Sa::new(cfg, now).unwrap();
    let p = seal_one(&mut out, now);
    assert_eq!(open_one(&mut other, &p, now), Err(DropReason::IcvFailure));
}

#[test]
fn bad_padding_is_dropped_after_the_icv_verifies() {
    let now = Instant::now();
    for suite in Suite::ALL {
        let (out, mut inb) = pair(suite, Mode::Transport, Encapsulation::Esp, false);
        // Build an ESP packet whose padding is 1, 2, 9 instead of 1, 2, 3,
        // sealed with the right key so that only the padding is wrong.
        let align = suite.align();
        let iv = suite.iv_len();
        let data_len = 2 * align - 5;
        let mut esp = vec![0x10, 0, 0, 1, 0, 0, 0, 1];
        esp.extend(std::iter::repeat_n(0, iv));
        esp.extend(std::iter::repeat_n(0xab, data_len));
        esp.extend_from_slice(&[1, 2, 9, 3, 17]);
        esp.extend(std::iter::repeat_n(0, suite.icv_len()));
        out.cipher.seal(&mut esp, 1, false).unwrap();
        let mut buf = esp.clone();
        assert_eq!(
            inb.open_esp(&mut PacketBuf::whole(&mut buf), now),
            Err(DropReason::BadPadding),
            "{suite}"
        );
        // A pad length longer than the payload.
        let mut esp2 = vec![0x10, 0, 0, 1, 0, 0, 0, 2];
        esp2.extend(std::iter::repeat_n(0, iv));
        esp2.extend(std::iter::repeat_n(0, align - 2));
        esp2.extend_from_slice(&[200, 17]);
        esp2.extend(std::iter::repeat_n(0, suite.icv_len()));
        out.cipher.seal(&mut esp2, 2, false).unwrap();
        assert_eq!(
            inb.open_esp(&mut PacketBuf::whole(&mut esp2), now),
            Err(DropReason::BadPadding)
        );
        assert_eq!(inb.counters().drops.get(DropReason::BadPadding), 2);
    }
}

#[test]
fn truncated_and_garbage_packets_are_malformed() {
    let now = Instant::now();
    let (mut out, mut inb) = pair(
        Suite::AesGcm128,
        Mode::Transport,
        Encapsulation::UDP_4500,
        false,
    );
    let p = seal_one(&mut out, now);
    for len in 0..p.len() {
        assert!(open_one(&mut inb, &p[..len], now).is_err(), "len {len}");
    }
    assert_eq!(inb.counters().packets, 0);
    open_one(&mut inb, &p, now).unwrap();
}

#[test]
fn dummy_packets_are_discarded() {
    let now = Instant::now();
    let (mut out, mut inb) = pair(Suite::AesGcm128, Mode::Transport, Encapsulation::Esp, false);
    let mut bytes = vec![0u8; 64];
    let mut buf = PacketBuf::new(&mut bytes, 32, 36);
    out.seal_esp(&mut buf, 59, now).unwrap();
    let mut esp = buf.data().to_vec();
    assert_eq!(
        inb.open_esp(&mut PacketBuf::whole(&mut esp), now),
        Err(DropReason::Dummy)
    );
}

#[test]
fn inbound_selectors_are_enforced() {
    let now = Instant::now();
    let (mut out, _) = pair(Suite::AesGcm128, Mode::Transport, Encapsulation::Esp, false);
    let mut cfg = SaConfig::new(
        0x1000_0001,
        Direction::Inbound,
        Suite::AesGcm128,
        keys(Suite::AesGcm128),
    );
    cfg.encapsulation = Encapsulation::Esp;
    // Only VXLAN from B to A is allowed; the packet is A to B.
    cfg.selectors = vec![Selector {
        local: IpPrefix::host(A4.into()),
        remote: IpPrefix::host(B4.into()),
        protocol: Some(17),
        local_ports: PortRange::single(4789),
        remote_ports: PortRange::ANY,
    }];
    let mut strict = Sa::new(cfg.clone(), now).unwrap();
    let p = seal_one(&mut out, now);
    assert_eq!(open_one(&mut strict, &p, now), Err(DropReason::Policy));
    cfg.selectors[0].local = IpPrefix::host(B4.into());
    cfg.selectors[0].remote = IpPrefix::host(A4.into());
    let mut right = Sa::new(cfg, now).unwrap();
    open_one(&mut right, &p, now).unwrap();
}

#[test]
fn lifetimes_raise_events_and_stop_the_sa() {
    let t0 = Instant::now();
    let mut cfg = SaConfig::new(
        7,
        Direction::Outbound,
        Suite::AesGcm128,
        keys(Suite::AesGcm128),
    );
    cfg.lifetime = Lifetime {
        soft: Limits {
            packets: Some(2),
            time: Some(Duration::from_secs(100)),
            ..Limits::NONE
        },
        hard: Limits {
            packets: Some(4),
            time: Some(Duration::from_secs(200)),
            ..Limits::NONE
        },
    };
    let mut out = Sa::new(cfg.clone(), t0).unwrap();
    seal_one(&mut out, t0);
    assert_eq!(out.poll_event(), None);
    seal_one(&mut out, t0);
    assert_eq!(out.poll_event(), Some(SaEvent::SoftLifetime));
    assert_eq!(out.poll_event(), None);
    seal_one(&mut out, t0);
    seal_one(&mut out, t0);
    assert_eq!(out.poll_event(), Some(SaEvent::HardLifetime));
    assert!(!out.is_usable());
    let (mut bytes, s, e) = udp_packet(A4.into(), B4.into(), b"x");
    assert_eq!(
        out.seal(&mut PacketBuf::new(&mut bytes, s, e), t0),
        Err(DropReason::SaExpired)
    );

    // Time limits, driven by the caller's clock.
    let mut out = Sa::new(cfg, t0).unwrap();
    assert_eq!(out.poll_timeout(), Some(t0 + Duration::from_secs(100)));
    out.handle_timeout(t0 + Duration::from_secs(100));
    assert_eq!(out.poll_event(), Some(SaEvent::SoftLifetime));
    assert_eq!(out.poll_timeout(), Some(t0 + Duration::from_secs(200)));
    let (mut bytes, s, e) = udp_packet(A4.into(), B4.into(), b"x");
    assert_eq!(
        out.seal(
            &mut PacketBuf::new(&mut bytes, s, e),
            t0 + Duration::from_secs(201)
        ),
        Err(DropReason::SaExpired)
    );
    assert_eq!(out.poll_event(), Some(SaEvent::HardLifetime));
}

#[test]
fn sequence_numbers_never_cycle() {
    let now = Instant::now();
    for esn in [false, true] {
        let mut cfg = SaConfig::new(
            7,
            Direction::Outbound,
            Suite::AesGcm128,
            keys(Suite::AesGcm128),
        );
        cfg.esn = esn;
        let mut out = Sa::new(cfg, now).unwrap();
        out.next_seq = if esn { u64::MAX } else { u64::from(u32::MAX) };
        seal_one(&mut out, now);
        let (mut bytes, s, e) = udp_packet(A4.into(), B4.into(), b"x");
        assert_eq!(
            out.seal(&mut PacketBuf::new(&mut bytes, s, e), now),
            Err(DropReason::SeqExhausted)
        );
        assert_eq!(out.poll_event(), Some(SaEvent::HardLifetime));
        assert_eq!(out.counters().drops.get(DropReason::SeqExhausted), 1);
    }
}

#[test]
fn esn_survives_the_32_bit_wrap() {
    let now = Instant::now();
    let (mut out, mut inb) = pair(Suite::AesGcm128, Mode::Transport, Encapsulation::Esp, true);
    out.advance_seq(u64::from(u32::MAX) - 2).unwrap();
    // As if the receiver had seen the packets before these.
    inb.advance_replay_window(u64::from(u32::MAX) - 3).unwrap();
    assert!(
        out.advance_seq(5).is_err(),
        "sequence numbers never go back"
    );
    for _ in 0..6 {
        let p = seal_one(&mut out, now);
        open_one(&mut inb, &p, now).unwrap();
    }
    assert_eq!(inb.last_seq(), u64::from(u32::MAX) + 3);
}

#[test]
fn no_room_is_reported_not_panicked() {
    let now = Instant::now();
    let (mut out, _) = pair(
        Suite::AesCbc256HmacSha256,
        Mode::Transport,
        Encapsulation::UDP_4500,
        false,
    );
    let (bytes, s, e) = udp_packet(A4.into(), B4.into(), b"abc");
    let mut tight = bytes[s..e].to_vec();
    assert_eq!(
        out.seal(&mut PacketBuf::whole(&mut tight), now),
        Err(DropReason::NoRoom)
    );
    assert_eq!(out.counters().drops.get(DropReason::NoRoom), 1);
}

#[test]
fn config_errors_name_the_field() {
    let now = Instant::now();
    let mut cfg = SaConfig::new(
        0,
        Direction::Inbound,
        Suite::AesGcm128,
        keys(Suite::AesGcm128),
    );
    assert_eq!(Sa::new(cfg.clone(), now).unwrap_err(), Error::ZeroSpi);
    cfg.spi = 1;
    cfg.replay_window = 32;
    let err = Sa::new(cfg.clone(), now).unwrap_err();
    assert_eq!(err.to_string(), "replay_window: 32 is outside 64..=65536");
    cfg.replay_window = 4096;
    cfg.suite = Suite::AesGcm256;
    let err = Sa::new(cfg, now).unwrap_err();
    assert_eq!(
        err.to_string(),
        "keys: aes256gcm16 needs 36 bytes of key material, got 20"
    );
}

#[test]
fn debug_output_redacts_keys() {
    let (out, _) = pair(Suite::AesGcm128, Mode::Transport, Encapsulation::Esp, false);
    let shown = format!("{out:?}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

/// `export_keys` hands back exactly the keys the SA was made with (the
/// AEAD salt at the end of the encryption key), and they still never
/// print.
#[test]
fn export_keys_are_the_configured_keys() {
    for suite in Suite::ALL {
        let (out, inbound) = pair(suite, Mode::Transport, Encapsulation::Esp, false);
        for sa in [&out, &inbound] {
            let exported = sa.export_keys();
            assert_eq!(exported, &keys(suite), "{suite}");
            assert_eq!(exported.encryption.len(), suite.encryption_key_len());
            assert_eq!(exported.integrity.len(), suite.integrity_key_len());
            let shown = format!("{exported:?} {sa:?}");
            let raw = format!("{:?}", exported.encryption.expose());
            assert!(!shown.contains(&raw[1..raw.len() - 1]), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }
}

/// One SA shared by several threads, as the data path's workers share
/// it: each thread takes sequence numbers under the lock
/// ([`Sa::reserve_seal`]) and encrypts outside it. No number is used
/// twice under the key (RFC 4303 section 3.3.3) and none is skipped; the
/// receiving SA, shared by threads too, accepts every packet once, in
/// any order within the window, and refuses a copy of each even when the
/// copy is being decrypted at the same time as the original.
#[test]
fn shared_sa_across_threads() {
    use std::sync::{Arc, Mutex};
    const THREADS: usize = 4;
    const PER_THREAD: usize = 2_000;
    let now = Instant::now();
    let suite = Suite::AesGcm128;
    let out = Sa::new(
        SaConfig::new(0x1000_0001, Direction::Outbound, suite, keys(suite)),
        now,
    );
    let mut cfg = SaConfig::new(0x1000_0001, Direction::Inbound, suite, keys(suite));
    // Threads race each other by more than the default window here.
    cfg.replay_window = ReplayWindow::MAX_SIZE;
    let inb = Sa::new(cfg, now).unwrap();
    let out = Arc::new(Mutex::new(out.unwrap()));
    let sealed: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let out = Arc::clone(&out);
                s.spawn(move || {
                    let mut packets = Vec::new();
                    for i in 0..PER_THREAD {
                        let payload = format!("thread {t} packet {i}").into_bytes();
                        let mut storage = vec![0u8; HEADROOM + payload.len() + TAILROOM];
                        storage[HEADROOM..HEADROOM + payload.len()].copy_from_slice(&payload);
                        let mut buf =
                            PacketBuf::new(&mut storage, HEADROOM, HEADROOM + payload.len());
                        let job = out.lock().unwrap().reserve_seal(&buf, now).unwrap();
                        job.seal(&mut buf, 17).unwrap();
                        let (start, end) = (buf.start(), buf.end());
                        packets.push(storage[start..end].to_vec());
                    }
                    packets
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut seqs: Vec<u32> = sealed
        .iter()
        .flatten()
        .map(|p| u32::from_be_bytes(p[4..8].try_into().unwrap()))
        .collect();
    seqs.sort_unstable();
    let all: Vec<u32> = (1..=(THREADS * PER_THREAD) as u32).collect();
    assert_eq!(seqs, all, "a sequence number used twice or skipped");
    assert_eq!(out.lock().unwrap().counters().packets, all.len() as u64);

    // Receipt: each thread gets one sender's packets and a copy of
    // another's, so originals and copies race.
    let inb = Arc::new(Mutex::new(inb));
    let accepted: Vec<usize> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let inb = Arc::clone(&inb);
                let mine = &sealed[t];
                let copies = &sealed[(t + 1) % THREADS];
                s.spawn(move || {
                    let mut ok = 0;
                    for (a, b) in mine.iter().zip(copies) {
                        for packet in [a, b] {
                            let mut storage = packet.clone();
                            let len = storage.len();
                            let mut buf = PacketBuf::new(&mut storage, 0, len);
                            let Ok(job) = inb.lock().unwrap().reserve_open(&buf, now) else {
                                continue;
                            };
                            job.decrypt(&mut buf).unwrap();
                            if inb.lock().unwrap().finish_open(&job, &mut buf, now).is_ok() {
                                ok += 1;
                            }
                        }
                    }
                    ok
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let inb = inb.lock().unwrap();
    assert_eq!(accepted.iter().sum::<usize>(), all.len());
    assert_eq!(inb.counters().packets, all.len() as u64);
    assert_eq!(
        inb.counters().drops.get(DropReason::Replay),
        all.len() as u64
    );
}
