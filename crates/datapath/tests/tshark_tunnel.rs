//! Cross-check of the overlay's tunnel-mode ESP (RFC 4303 section 3.1.2)
//! against an independent dissector: `encapsulate` seals a tenant frame for
//! a peer whose SA is in tunnel mode, the test wraps the ESP packet in the
//! outer Ethernet, IP and UDP 4500 headers the kernel would add, and
//! Debian's tshark, given the SA's keys, decrypts it and must find the
//! inner IP header between the two underlay addresses (UDP, TTL 64, DF,
//! a good checksum for IPv4), next header 4 or 41, a good ICV, and the
//! VXLAN packet and tenant frame behind it.
//!
//! Written against tshark 4.0 (Debian 12), run with an empty configuration
//! directory; it fails, never skips, when tshark is missing.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tunsec_datapath::fdb::{DEFAULT_AGEING, Fdb};
use tunsec_datapath::overlay::{
    NetworkSpec, PeerEntry, PeerSpec, Policy, Tables, TunnelEncap, encapsulate,
};
use tunsec_datapath::packet::{Ctx, EspTransport, HEADROOM, TAILROOM};
use tunsec_datapath::stats::Stats;
use tunsec_esp::{Direction, Mode, Sa, SaConfig, SaKeys, Suite};
use tunsec_wire::ip::IpProtocol;
use tunsec_wire::{ipv4, ipv6, udp};

const SPI: u32 = 0x2001;
const TENANT_A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const TENANT_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const DATA: &[u8] = b"inside the tunnel";

/// The fields tshark prints, `occurrence=a`: outer, inner, tenant values
/// joined by commas.
const FIELDS: &[&str] = &[
    "ip.src",
    "ip.dst",
    "ip.proto",
    "ip.ttl",
    "ip.flags.df",
    "ip.checksum.status",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.nxt",
    "ipv6.hlim",
    "udp.dstport",
    "vxlan.vni",
    "esp.spi",
    "esp.protocol",
    "esp.icv_good",
    "data.data",
];

fn keymat(suite: Suite) -> Vec<u8> {
    let n = suite.encryption_key_len() + suite.integrity_key_len();
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

/// The tenant's Ethernet frame: IPv4 UDP 40001 -> 40002 carrying `DATA`.
fn tenant_frame() -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa, 0x08, 0x00];
    let mut ip = vec![0u8; 20 + 8 + DATA.len()];
    ipv4::Repr {
        src_addr: TENANT_A,
        dst_addr: TENANT_B,
        next_header: IpProtocol::Udp,
        payload_len: 8 + DATA.len(),
        hop_limit: 64,
        dscp_ecn: 0,
        dont_frag: false,
        ident: 0,
    }
    .emit(&mut ipv4::Packet::new_unchecked(&mut ip[..]));
    {
        let mut u = udp::Packet::new_unchecked(&mut ip[20..]);
        udp::Repr {
            src_port: 40001,
            dst_port: 40002,
            payload_len: DATA.len(),
        }
        .emit(&mut u);
        u.payload_mut().copy_from_slice(DATA);
        u.fill_checksum(TENANT_A.into(), TENANT_B.into()).unwrap();
    }
    f.extend_from_slice(&ip);
    f
}

/// `encapsulate` at host `a` for peer `b` (tunnel mode): the ESP packet,
/// from the SPI to the ICV.
fn seal(a: IpAddr, b: IpAddr, suite: Suite) -> Vec<u8> {
    let now = Instant::now();
    let keys = SaKeys::from_keymat(suite, &keymat(suite)).unwrap();
    let mut config = SaConfig::new(SPI, Direction::Outbound, suite, keys);
    config.mode = Mode::Tunnel {
        local: a,
        remote: b,
    };
    let peer = PeerEntry {
        spec: PeerSpec {
            name: "b".into(),
            underlay: b,
            networks: vec![(0, Policy::Require)],
        },
        outbound: vec![Arc::new(Mutex::new(Sa::new(config, now).unwrap()))],
    };
    let network = NetworkSpec {
        name: "blue".into(),
        vni: 100,
        encap: TunnelEncap::Vxlan,
        port: 4789,
        max_frame: 1400,
        layout: tunsec_datapath::overlay::EspLayout::EspInUdp,
    };
    let tables = Tables::new(
        a,
        EspTransport::Udp(4500),
        vec![network],
        vec![peer],
        tunsec_datapath::fast_map::FastMap::default(),
    );
    let frame = tenant_frame();
    let mut buf = vec![0u8; HEADROOM + frame.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(&frame);
    let stats = Stats::new(1);
    let end = HEADROOM + frame.len();
    let ctx = Ctx {
        tables: &tables,
        fdb: &Fdb::new(DEFAULT_AGEING, now),
        stats: &stats,
        now,
    };
    let tx = encapsulate(&ctx, 0, 0, &mut buf, HEADROOM, end).unwrap();
    buf[tx.start..tx.end].to_vec()
}

/// The Ethernet frame the kernel would send: outer IP and UDP 4500 around
/// the ESP packet.
fn on_the_wire(a: IpAddr, b: IpAddr, esp: &[u8]) -> Vec<u8> {
    let mut dgram = vec![0u8; 8 + esp.len()];
    udp::Repr {
        src_port: 4500,
        dst_port: 4500,
        payload_len: esp.len(),
    }
    .emit(&mut udp::Packet::new_unchecked(&mut dgram[..]));
    dgram[8..].copy_from_slice(esp);
    let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    match (a, b) {
        (IpAddr::V4(src_addr), IpAddr::V4(dst_addr)) => {
            frame.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0u8; 20 + dgram.len()];
            ipv4::Repr {
                src_addr,
                dst_addr,
                next_header: IpProtocol::Udp,
                payload_len: dgram.len(),
                hop_limit: 64,
                dscp_ecn: 0,
                dont_frag: false,
                ident: 1,
            }
            .emit(&mut ipv4::Packet::new_unchecked(&mut ip[..]));
            ip[20..].copy_from_slice(&dgram);
            frame.extend_from_slice(&ip);
        }
        (IpAddr::V6(src_addr), IpAddr::V6(dst_addr)) => {
            frame.extend_from_slice(&[0x86, 0xdd]);
            udp::Packet::new_unchecked(&mut dgram[..])
                .fill_checksum(a, b)
                .unwrap();
            let mut ip = vec![0u8; 40 + dgram.len()];
            ipv6::Repr {
                src_addr,
                dst_addr,
                next_header: IpProtocol::Udp,
                payload_len: dgram.len(),
                hop_limit: 64,
                traffic_class: 0,
                flow_label: 0,
            }
            .emit(&mut ipv6::Packet::new_unchecked(&mut ip[..]));
            ip[40..].copy_from_slice(&dgram);
            frame.extend_from_slice(&ip);
        }
        _ => unreachable!("one family"),
    }
    frame
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic
    out.extend_from_slice(&2u16.to_le_bytes()); // version major
    out.extend_from_slice(&4u16.to_le_bytes()); // version minor
    out.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    out.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    out.extend_from_slice(&65535u32.to_le_bytes()); // snaplen
    out.extend_from_slice(&1u32.to_le_bytes()); // Ethernet
    for (i, frame) in frames.iter().enumerate() {
        let len = u32::try_from(frame.len()).unwrap();
        out.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        out.extend_from_slice(&(i as u32).to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(frame);
    }
    std::fs::write(path, out).unwrap();
}

/// The `uat:esp_sa` record (tshark 4.0's algorithm names).
fn tshark_sa(a: IpAddr, b: IpAddr, suite: Suite) -> String {
    let keys = keymat(suite);
    let enc_len = suite.encryption_key_len();
    let (enc, auth) = match suite {
        Suite::AesGcm128 | Suite::AesGcm256 => ("AES-GCM with 16 octet ICV [RFC4106]", "NULL"),
        Suite::AesCbc256HmacSha256 => ("AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]"),
        Suite::ChaCha20Poly1305 => unreachable!("tshark 4.0 cannot decrypt it"),
    };
    let auth_key = if keys.len() > enc_len {
        format!("0x{}", hex::encode(&keys[enc_len..]))
    } else {
        String::new()
    };
    let family = if a.is_ipv4() { "IPv4" } else { "IPv6" };
    format!(
        "\"{family}\",\"{a}\",\"{b}\",\"0x{SPI:08x}\",\"{enc}\",\"0x{}\",\"{auth}\",\"{auth_key}\"",
        hex::encode(&keys[..enc_len]),
    )
}

/// Runs tshark over one frame and returns field -> value.
fn dissect(a: IpAddr, b: IpAddr, suite: Suite) -> HashMap<&'static str, String> {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("tunnel.pcap");
    write_pcap(&pcap, &[on_the_wire(a, b, &seal(a, b, suite))]);
    let config = dir.path().join("wireshark-config");
    std::fs::create_dir_all(&config).unwrap();
    let mut cmd = Command::new("tshark");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .env("WIRESHARK_CONFIG_DIR", &config)
        .env("LC_ALL", "C")
        .arg("-n")
        .arg("-r")
        .arg(&pcap)
        .args(["-T", "fields"])
        .args(["-E", "separator=|", "-E", "occurrence=a"])
        .args(["-E", "aggregator=,", "-E", "quote=n"])
        .args(["-o", "esp.enable_encryption_decode:TRUE"])
        .args(["-o", "esp.enable_authentication_check:TRUE"])
        .args(["-o", "ip.check_checksum:TRUE"])
        .arg("-o")
        .arg(format!("uat:esp_sa:{}", tshark_sa(a, b, suite)));
    for f in FIELDS {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run tshark ({e}): this test needs it (apt-get install tshark)")
    });
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // tshark 4.0 prints this line whenever it runs as root.
    let stderr: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("Running as user \"root\""))
        .collect();
    assert!(
        out.status.success() && stderr.is_empty(),
        "tshark failed ({}): {}\n{stdout}",
        out.status,
        stderr.join("\n")
    );
    let line = stdout.lines().next().expect("tshark printed no frame");
    FIELDS
        .iter()
        .copied()
        .zip(line.split('|').map(str::to_owned))
        .collect()
}

fn check(got: &HashMap<&'static str, String>, expect: &[(&str, String)], case: &str) {
    for (field, want) in expect {
        assert_eq!(
            got.get(field).map(String::as_str),
            Some(want.as_str()),
            "{case}: {field}; all fields: {got:#?}"
        );
    }
}

#[test]
fn tshark_decrypts_tunnel_mode_and_finds_the_inner_header() {
    let (a4, b4) = (
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
    );
    for suite in [Suite::AesGcm128, Suite::AesCbc256HmacSha256] {
        let got = dissect(a4, b4, suite);
        // The outer header, the inner tunnel-mode header, the tenant's.
        check(
            &got,
            &[
                ("esp.spi", format!("{SPI:#010x}")),
                ("esp.protocol", "0x04".into()),
                ("esp.icv_good", "1".into()),
                ("ip.src", format!("{a4},{a4},{TENANT_A}")),
                ("ip.dst", format!("{b4},{b4},{TENANT_B}")),
                ("ip.proto", "17,17,17".into()),
                ("ip.ttl", "64,64,64".into()),
                ("ip.flags.df", "0,1,0".into()),
                ("udp.dstport", "4500,4789,40002".into()),
                ("vxlan.vni", "100".into()),
                ("data.data", hex::encode(DATA)),
            ],
            &format!("IPv4 {suite}"),
        );
        // tshark checked every IPv4 header checksum: 1 is "good" (0 bad,
        // 2 unverified).
        assert_eq!(got["ip.checksum.status"], "1,1,1", "{got:#?}");
    }
    let (a6, b6) = (
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
    );
    let got = dissect(a6, b6, Suite::AesGcm128);
    check(
        &got,
        &[
            ("esp.protocol", "0x29".into()),
            ("esp.icv_good", "1".into()),
            ("ipv6.src", format!("{a6},{a6}")),
            ("ipv6.dst", format!("{b6},{b6}")),
            ("ipv6.nxt", "17,17".into()),
            ("ipv6.hlim", "64,64".into()),
            ("ip.src", TENANT_A.to_string()),
            ("udp.dstport", "4500,4789,40002".into()),
            ("vxlan.vni", "100".into()),
            ("data.data", hex::encode(DATA)),
        ],
        "IPv6",
    );
}
