//! Cross-check against an independent dissector: Debian's tshark (Wireshark)
//! reads a pcap that tunsec writes and prints the field values tunsec
//! encoded.
//!
//! What it proves, frame by frame (see `frames()`):
//! - VXLAN (RFC 7348): tshark finds the VNI that `vxlan::Repr::emit` wrote
//!   and decodes the inner Ethernet/IPv4/UDP frame behind it.
//! - Geneve (RFC 8926): tshark finds the VNI, the C bit, and two options
//!   (class, type, critical bit, length and data) written with
//!   `geneve::emit_options`.
//! - ESP (RFC 4303) sealed by `Sa::seal` in transport mode around a VXLAN
//!   packet, in raw ESP and in ESP-in-UDP on port 4500 (RFC 3948): tshark
//!   shows the SPI and sequence number, and, given the SA in its ESP
//!   decryption table, decrypts the packet, finds the next header, the
//!   padding and a good ICV, and decodes the inner UDP ports and VXLAN VNI.
//!   This holds for every suite this tshark can decrypt: AES-GCM-128 and
//!   AES-GCM-256 with a 16-octet ICV (RFC 4106) and AES-256-CBC with
//!   HMAC-SHA-256-128 (RFC 3602, RFC 4868).
//! - ChaCha20-Poly1305 (RFC 7634): tshark 4.0 has no such algorithm in its
//!   ESP table, so only the SPI and sequence number are checked (and that
//!   nothing inside is decoded).
//! - ESN (RFC 4304): tshark 4.0's ESP SA table has no ESN column and its
//!   ICV check covers the ESP packet only, so it decrypts an ESN packet
//!   (the ciphers do not depend on the sequence number) but reports its
//!   ICV bad. The test pins that, and checks the ICVs itself against the
//!   RFC 4303 section 2.2.1 / RFC 4106 section 5 construction (high 32
//!   bits of the sequence number included).
//!
//! Written against Debian 12's tshark 4.0.17. tshark runs once, on one
//! pcap, with an empty configuration directory (no user profile), and any
//! stderr output fails the test except the "Running as user root" line,
//! which tshark 4.0 prints unconditionally. The test fails, never skips,
//! when tshark is missing.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use aws_lc_rs::{aead, hmac};
use tunsec_esp::{Direction, Encapsulation, PacketBuf, Sa, SaConfig, SaKeys, Suite};
use tunsec_wire::ethernet::{self, EtherType, EthernetAddress};
use tunsec_wire::geneve::{self, GeneveOption};
use tunsec_wire::ip::IpProtocol;
use tunsec_wire::vxlan::{self, Vni};
use tunsec_wire::{ipv4, udp};

const TSHARK: &str = "tshark";

/// Outer addresses of the overlay frames.
const VTEP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const VTEP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// Addresses of the hosts that ESP protects (transport mode).
const HOST_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const HOST_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// Addresses of the tenant frame inside VXLAN / Geneve.
const TENANT_A: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const TENANT_B: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const TENANT_SPORT: u16 = 40001;
const TENANT_DPORT: u16 = 40002;
const TENANT_DATA: &[u8] = b"hi!\n";

/// The fields tshark prints, one column each. A frame's expectation names
/// the fields it checks; every other field must print empty.
const FIELDS: &[&str] = &[
    "ip.src",
    "ip.dst",
    "ip.proto",
    "udp.srcport",
    "udp.dstport",
    "vxlan.flags",
    "vxlan.vni",
    "geneve.version",
    "geneve.flags.critical",
    "geneve.proto_type",
    "geneve.vni",
    "geneve.option.class",
    "geneve.option.type",
    "geneve.option.type.critical",
    "geneve.option.length",
    "geneve.option.unknown.data",
    "esp.spi",
    "esp.sequence",
    "esp.pad_len",
    "esp.protocol",
    "esp.icv_good",
    "esp.icv_bad",
    "data.data",
    "_ws.malformed",
];

/// One pcap record and what tshark must print for it.
struct Frame {
    what: String,
    bytes: Vec<u8>,
    expect: Vec<(&'static str, String)>,
}

// ---------------------------------------------------------------------------
// Packet building, with tunsec-wire's emitters only.

fn ethernet_frame(src: u8, dst: u8, payload: &[u8]) -> Vec<u8> {
    let repr = ethernet::Repr {
        src_addr: EthernetAddress([0x02, 0, 0, 0, 0, src]),
        dst_addr: EthernetAddress([0x02, 0, 0, 0, 0, dst]),
        vlan: None,
        ethertype: EtherType::Ipv4,
    };
    let mut frame = vec![0u8; repr.buffer_len() + payload.len()];
    let mut packet = ethernet::Packet::new_unchecked(&mut frame[..]);
    repr.emit(&mut packet);
    packet.payload_mut().copy_from_slice(payload);
    frame
}

/// An IPv4 packet carrying one UDP datagram, checksums filled.
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = udp::HEADER_LEN + payload.len();
    let ip = ipv4::Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: udp_len,
        hop_limit: 64,
        dscp_ecn: 0,
        dont_frag: true,
        ident: 0x1234,
    };
    let mut pkt = vec![0u8; ip.buffer_len() + udp_len];
    ip.emit(&mut ipv4::Packet::new_unchecked(&mut pkt[..]));
    let mut datagram = udp::Packet::new_unchecked(&mut pkt[ip.buffer_len()..]);
    udp::Repr {
        src_port: sport,
        dst_port: dport,
        payload_len: payload.len(),
    }
    .emit(&mut datagram);
    datagram.payload_mut().copy_from_slice(payload);
    datagram.fill_checksum(src.into(), dst.into()).unwrap();
    pkt
}

/// The tenant's Ethernet frame that the overlays carry, with `data` in UDP.
fn tenant_frame(data: &[u8]) -> Vec<u8> {
    let ip = ipv4_udp(TENANT_A, TENANT_B, TENANT_SPORT, TENANT_DPORT, data);
    ethernet_frame(0x11, 0x12, &ip)
}

fn vxlan_packet(vni: u32, inner: &[u8]) -> Vec<u8> {
    let repr = vxlan::Repr {
        vni: Vni::new(vni).unwrap(),
    };
    let mut pkt = vec![0u8; repr.buffer_len() + inner.len()];
    let mut packet = vxlan::Packet::new_unchecked(&mut pkt[..]);
    repr.emit(&mut packet);
    packet.payload_mut().copy_from_slice(inner);
    pkt
}

fn geneve_packet(vni: u32, options: &[GeneveOption<'_>], inner: &[u8]) -> Vec<u8> {
    let repr = geneve::Repr::with_options(
        Vni::new(vni).unwrap(),
        false,
        geneve::PROTOCOL_ETHERNET,
        options,
    )
    .unwrap();
    let mut pkt = vec![0u8; repr.buffer_len() + inner.len()];
    let mut packet = geneve::Packet::new_unchecked(&mut pkt[..]);
    repr.emit(&mut packet);
    let written = geneve::emit_options(packet.options_bytes_mut(), options).unwrap();
    assert_eq!(written, repr.options_len);
    packet.payload_mut().copy_from_slice(inner);
    pkt
}

// ---------------------------------------------------------------------------
// ESP.

/// One ESP SA under test, and how tshark's ESP SA table names it.
struct EspCase {
    suite: Suite,
    encapsulation: Encapsulation,
    esn: bool,
    spi: u32,
    /// The 64-bit sequence number of the sealed packet.
    seq: u64,
    vni: u32,
    /// The tenant's UDP data; its length sets the ESP padding.
    data: Vec<u8>,
}

fn keymat(suite: Suite, spi: u32) -> Vec<u8> {
    let n = suite.encryption_key_len() + suite.integrity_key_len();
    (0..n).map(|i| (i as u32 * 13 + spi) as u8).collect()
}

/// The `uat:esp_sa` record for tshark, or `None` if this tshark cannot
/// decrypt the suite. The strings are those of tshark 4.0's
/// `esp_encryption_type_vals` / `esp_authentication_type_vals`.
fn tshark_sa(case: &EspCase) -> Option<String> {
    let keys = keymat(case.suite, case.spi);
    let enc_len = case.suite.encryption_key_len();
    let (enc_algo, auth_algo) = match case.suite {
        Suite::AesGcm128 | Suite::AesGcm256 => ("AES-GCM with 16 octet ICV [RFC4106]", "NULL"),
        Suite::AesCbc256HmacSha256 => ("AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]"),
        // tshark 4.0 has no ChaCha20-Poly1305 for ESP: its table rejects
        // "ChaCha20 with Poly1305 [RFC7634]" (the 4.2+ name) as an invalid
        // value.
        Suite::ChaCha20Poly1305 => return None,
    };
    let auth_key = if keys.len() > enc_len {
        format!("0x{}", hex::encode(&keys[enc_len..]))
    } else {
        String::new()
    };
    Some(format!(
        "\"IPv4\",\"{HOST_A}\",\"{HOST_B}\",\"0x{:08x}\",\"{enc_algo}\",\"0x{}\",\"{auth_algo}\",\"{auth_key}\"",
        case.spi,
        hex::encode(&keys[..enc_len]),
    ))
}

/// The ESP padding for the case's payload (RFC 4303 section 2.4): Payload,
/// Padding, Pad Length and Next Header fill whole blocks of the cipher (16
/// bytes for AES-CBC, RFC 3602) or 4-byte words (GCM and ChaCha20-Poly1305).
fn pad_len(case: &EspCase) -> usize {
    // UDP, VXLAN, Ethernet, IPv4, UDP headers, then the tenant data.
    let payload = 8 + 8 + 14 + 20 + 8 + case.data.len();
    let block = match case.suite {
        Suite::AesCbc256HmacSha256 => 16,
        _ => 4,
    };
    (block - (payload + 2) % block) % block
}

/// Seals the VXLAN packet HOST_A -> HOST_B with the case's SA and returns
/// the IP packet that carries it.
fn seal(case: &EspCase, now: Instant) -> Vec<u8> {
    let keys = SaKeys::from_keymat(case.suite, &keymat(case.suite, case.spi)).unwrap();
    let mut cfg = SaConfig::new(case.spi, Direction::Outbound, case.suite, keys);
    cfg.encapsulation = case.encapsulation;
    cfg.esn = case.esn;
    let mut sa = Sa::new(cfg, now).unwrap();
    sa.advance_seq(case.seq).unwrap();

    let vxlan = vxlan_packet(case.vni, &tenant_frame(&case.data));
    let plain = ipv4_udp(HOST_A, HOST_B, 49152, vxlan::PORT, &vxlan);
    let room = sa.overhead();
    let mut buf = vec![0u8; room.head + plain.len() + room.tail];
    buf[room.head..room.head + plain.len()].copy_from_slice(&plain);
    let mut packet = PacketBuf::new(&mut buf, room.head, room.head + plain.len());
    sa.seal(&mut packet, now).unwrap();
    packet.data().to_vec()
}

/// With ESN the ICV covers the high 32 bits of the sequence number, which
/// are not on the wire (RFC 4303 section 2.2.1 for HMAC, RFC 4106 section 5
/// for the GCM AAD). Checks tunsec's ICV against that construction, and
/// that it differs from the ICV without them (what tshark 4.0 computes).
fn check_esn_icv(case: &EspCase, esp: &[u8]) {
    assert!(case.esn);
    let keys = keymat(case.suite, case.spi);
    let seq_hi = ((case.seq >> 32) as u32).to_be_bytes();
    let (body, icv) = esp.split_at(esp.len() - 16);
    match case.suite {
        Suite::AesCbc256HmacSha256 => {
            let key = hmac::Key::new(hmac::HMAC_SHA256, &keys[32..]);
            let mut with_hi = hmac::Context::with_key(&key);
            with_hi.update(body);
            with_hi.update(&seq_hi);
            assert_eq!(&with_hi.sign().as_ref()[..16], icv, "ESN HMAC ICV");
            assert_ne!(&hmac::sign(&key, body).as_ref()[..16], icv);
        }
        Suite::AesGcm128 | Suite::AesGcm256 => {
            let enc_len = case.suite.encryption_key_len();
            let (key, salt) = keys[..enc_len].split_at(enc_len - 4);
            let alg = if key.len() == 16 {
                &aead::AES_128_GCM
            } else {
                &aead::AES_256_GCM
            };
            let key = aead::LessSafeKey::new(aead::UnboundKey::new(alg, key).unwrap());
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(salt);
            nonce[4..].copy_from_slice(&esp[8..16]);
            let open = |aad: &[u8]| {
                let mut ct = esp[16..].to_vec();
                key.open_in_place(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(aad),
                    &mut ct,
                )
                .is_ok()
            };
            // SPI, Sequence Number (high), Sequence Number (low).
            let aad_esn = [&esp[..4], &seq_hi[..], &esp[4..8]].concat();
            assert!(open(&aad_esn), "ESN GCM ICV");
            assert!(!open(&esp[..8]));
        }
        Suite::ChaCha20Poly1305 => unreachable!(),
    }
}

// ---------------------------------------------------------------------------
// The frames.

fn frames(now: Instant) -> (Vec<Frame>, Vec<String>) {
    let mut frames = Vec::new();
    let mut sas = Vec::new();
    let tenant = [
        ("ip.src", format!("{VTEP_A},{TENANT_A}")),
        ("ip.dst", format!("{VTEP_B},{TENANT_B}")),
        ("ip.proto", "17,17".to_owned()),
    ];

    // VXLAN, VNI 0x123456.
    let vxlan = vxlan_packet(0x12_3456, &tenant_frame(TENANT_DATA));
    let outer = ipv4_udp(VTEP_A, VTEP_B, 54321, vxlan::PORT, &vxlan);
    let mut expect = tenant.to_vec();
    expect.extend([
        ("udp.srcport", format!("54321,{TENANT_SPORT}")),
        ("udp.dstport", format!("4789,{TENANT_DPORT}")),
        ("vxlan.flags", "0x0800".to_owned()),
        ("vxlan.vni", "1193046".to_owned()),
        ("data.data", hex::encode(TENANT_DATA)),
    ]);
    frames.push(Frame {
        what: "VXLAN VNI 1193046".to_owned(),
        bytes: ethernet_frame(1, 2, &outer),
        expect,
    });

    // Geneve, VNI 0xabcd, a plain option and a critical one.
    let options = [
        GeneveOption {
            class: 0x0102,
            type_: 0x03,
            data: &[0xde, 0xad, 0xbe, 0xef],
        },
        GeneveOption {
            class: 0xfff0,
            type_: 0x85,
            data: &[0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77],
        },
    ];
    let geneve = geneve_packet(0xabcd, &options, &tenant_frame(TENANT_DATA));
    let outer = ipv4_udp(VTEP_A, VTEP_B, 54322, geneve::PORT, &geneve);
    let mut expect = tenant.to_vec();
    expect.extend([
        ("udp.srcport", format!("54322,{TENANT_SPORT}")),
        ("udp.dstport", format!("6081,{TENANT_DPORT}")),
        ("geneve.version", "0".to_owned()),
        ("geneve.flags.critical", "1".to_owned()),
        ("geneve.proto_type", "0x6558".to_owned()),
        ("geneve.vni", "0x00abcd".to_owned()),
        ("geneve.option.class", "0x0102,0xfff0".to_owned()),
        ("geneve.option.type", "0x03,0x85".to_owned()),
        ("geneve.option.type.critical", "0,1".to_owned()),
        // The base header's Opt Len (5 words, shown in bytes), then each
        // option's length with its 4-byte header.
        ("geneve.option.length", "20,8,12".to_owned()),
        (
            "geneve.option.unknown.data",
            "deadbeef,0011223344556677".to_owned(),
        ),
        ("data.data", hex::encode(TENANT_DATA)),
    ]);
    frames.push(Frame {
        what: "Geneve VNI 0xabcd with two options".to_owned(),
        bytes: ethernet_frame(1, 2, &outer),
        expect,
    });

    // ESP, transport mode, around a VXLAN packet. The tenant data grows by
    // one byte per case, so that the padding varies.
    let mut cases = Vec::new();
    let mut spi = 0x0000_a000;
    let mut case = |suite, encapsulation, esn, seq: fn(u32) -> u64| {
        spi += 1;
        cases.push(EspCase {
            suite,
            encapsulation,
            esn,
            spi,
            seq: seq(spi),
            vni: spi,
            data: (b'a'..).take(spi as usize - 0xa000).collect(),
        });
    };
    case(Suite::AesGcm128, Encapsulation::Esp, false, |_| 1);
    case(Suite::AesGcm128, Encapsulation::UDP_4500, false, |spi| {
        // A sequence number that uses all 32 bits.
        u64::from(spi) * 0x0001_0003
    });
    for suite in [
        Suite::AesGcm256,
        Suite::AesCbc256HmacSha256,
        Suite::ChaCha20Poly1305,
    ] {
        for encapsulation in [Encapsulation::Esp, Encapsulation::UDP_4500] {
            case(suite, encapsulation, false, |spi| {
                u64::from(spi) * 0x0001_0003
            });
        }
    }
    // ESN past 2^32: the wire carries the low half only.
    case(Suite::AesGcm128, Encapsulation::Esp, true, |_| {
        (1 << 32) | 5
    });
    case(Suite::AesCbc256HmacSha256, Encapsulation::Esp, true, |_| {
        (7 << 32) | 0xffff_fff0
    });

    for case in &cases {
        let ip = seal(case, now);
        let sa = tshark_sa(case);
        let udp_encap = case.encapsulation != Encapsulation::Esp;
        let esp = &ip[ipv4::HEADER_LEN + if udp_encap { udp::HEADER_LEN } else { 0 }..];
        if case.esn {
            check_esn_icv(case, esp);
        }
        let what = format!(
            "ESP {} {}{} SPI {:#x} seq {:#x}",
            case.suite,
            if udp_encap { "in UDP 4500" } else { "raw" },
            if case.esn { " ESN" } else { "" },
            case.spi,
            case.seq,
        );
        let outer_udp = if udp_encap { "4500," } else { "" };
        let mut expect = vec![
            ("esp.spi", format!("{:#010x}", case.spi)),
            ("esp.sequence", (case.seq as u32).to_string()),
        ];
        if sa.is_some() {
            // Decrypted: the protected UDP/VXLAN packet and its tenant frame.
            // The outer header, then the tenant's (transport mode adds none).
            let proto = if udp_encap { "17,17" } else { "50,17" };
            expect.extend([
                ("ip.src", format!("{HOST_A},{TENANT_A}")),
                ("ip.dst", format!("{HOST_B},{TENANT_B}")),
                ("ip.proto", proto.to_owned()),
                ("udp.srcport", format!("{outer_udp}49152,{TENANT_SPORT}")),
                ("udp.dstport", format!("{outer_udp}4789,{TENANT_DPORT}")),
                ("vxlan.flags", "0x0800".to_owned()),
                ("vxlan.vni", case.vni.to_string()),
                ("esp.protocol", "0x11".to_owned()),
                ("esp.pad_len", pad_len(case).to_string()),
                ("data.data", hex::encode(&case.data)),
            ]);
            // tshark 4.0 has no ESN: it leaves the high half out of the ICV.
            let (good, bad) = if case.esn { ("0", "1") } else { ("1", "0") };
            expect.push(("esp.icv_good", good.to_owned()));
            expect.push(("esp.icv_bad", bad.to_owned()));
        } else {
            let proto = if udp_encap { "17" } else { "50" };
            expect.extend([
                ("ip.src", HOST_A.to_string()),
                ("ip.dst", HOST_B.to_string()),
                ("ip.proto", proto.to_owned()),
            ]);
            if udp_encap {
                expect.push(("udp.srcport", "4500".to_owned()));
                expect.push(("udp.dstport", "4500".to_owned()));
            }
        }
        sas.extend(sa);
        frames.push(Frame {
            what,
            bytes: ethernet_frame(1, 2, &ip),
            expect,
        });
    }
    (frames, sas)
}

// ---------------------------------------------------------------------------
// pcap and tshark.

/// A classic pcap file (microsecond timestamps, LINKTYPE_ETHERNET).
fn write_pcap(path: &Path, frames: &[Frame]) {
    const LINKTYPE_ETHERNET: u32 = 1;
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic
    out.extend_from_slice(&2u16.to_le_bytes()); // version major
    out.extend_from_slice(&4u16.to_le_bytes()); // version minor
    out.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    out.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    out.extend_from_slice(&65535u32.to_le_bytes()); // snaplen
    out.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    for (i, frame) in frames.iter().enumerate() {
        let len = u32::try_from(frame.bytes.len()).unwrap();
        out.extend_from_slice(&1_700_000_000u32.to_le_bytes()); // ts_sec
        out.extend_from_slice(&(i as u32).to_le_bytes()); // ts_usec
        out.extend_from_slice(&len.to_le_bytes()); // incl_len
        out.extend_from_slice(&len.to_le_bytes()); // orig_len
        out.extend_from_slice(&frame.bytes);
    }
    std::fs::write(path, out).unwrap();
}

/// Runs tshark once over the file; returns one row of fields per frame.
fn tshark_fields(dir: &Path, pcap: &Path, sas: &[String]) -> Vec<Vec<String>> {
    // A fresh, empty configuration: no user profile can change the output.
    let config = dir.join("wireshark-config");
    std::fs::create_dir_all(&config).unwrap();
    let mut cmd = Command::new(TSHARK);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir)
        .env("WIRESHARK_CONFIG_DIR", &config)
        .env("LC_ALL", "C")
        .arg("-n")
        .arg("-r")
        .arg(pcap)
        .args(["-T", "fields"])
        .args(["-E", "separator=|", "-E", "occurrence=a"])
        .args(["-E", "aggregator=,", "-E", "quote=n"])
        .args(["-o", "esp.enable_encryption_decode:TRUE"])
        .args(["-o", "esp.enable_authentication_check:TRUE"]);
    for sa in sas {
        cmd.arg("-o").arg(format!("uat:esp_sa:{sa}"));
    }
    for field in FIELDS {
        cmd.args(["-e", field]);
    }
    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) => panic!(
            "cannot run {TSHARK} ({e}): this test needs Wireshark's tshark; \
             install it with `apt-get install tshark`"
        ),
    };
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // tshark 4.0 prints this line whenever it runs as root, with no option
    // or variable to silence it; anything else on stderr is a failure.
    let stderr: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("Running as user \"root\""))
        .collect();
    assert!(
        output.status.success() && stderr.is_empty(),
        "tshark failed ({}):\n{}\n{stdout}",
        output.status,
        stderr.join("\n"),
    );
    stdout
        .lines()
        .map(|line| line.split('|').map(str::to_owned).collect())
        .collect()
}

#[test]
fn tshark_reads_what_tunsec_writes() {
    let (frames, sas) = frames(Instant::now());
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("tunsec.pcap");
    write_pcap(&pcap, &frames);
    let rows = tshark_fields(dir.path(), &pcap, &sas);
    assert_eq!(rows.len(), frames.len(), "one line per frame: {rows:?}");

    let mut failures = String::new();
    for (n, (frame, row)) in frames.iter().zip(&rows).enumerate() {
        assert_eq!(row.len(), FIELDS.len(), "frame {}: {row:?}", n + 1);
        for (field, got) in FIELDS.iter().zip(row) {
            let want = frame
                .expect
                .iter()
                .find(|(f, _)| f == field)
                .map_or("", |(_, v)| v.as_str());
            // Booleans print as 1/0 in tshark 4.0 and True/False later.
            let got = got.replace("True", "1").replace("False", "0");
            if got != want {
                let _ = writeln!(
                    failures,
                    "frame {} ({}): {field}: tshark printed {got:?}, expected {want:?}",
                    n + 1,
                    frame.what
                );
            }
        }
    }
    assert!(failures.is_empty(), "tshark disagrees:\n{failures}");
}
