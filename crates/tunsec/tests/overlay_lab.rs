//! End-to-end tests of overlay mode, as root, in network namespaces.
//!
//! Two hosts on an underlay bridge run `tunsecd`; a tenant namespace hangs
//! off each host's TAP device through a bridge. The tests show, for VXLAN,
//! Geneve and GUE, tenant pings and a 50 MB TCP transfer whose SHA-256
//! matches, with a capture of the underlay in which no packet carries
//! tenant bytes; that a `require` policy without an SA (never configured,
//! or deleted at run time) lets nothing out; and that a bad config is
//! refused with the field named and nothing created.
//!
//! Every address exists only inside the namespaces, which `Lab` removes on
//! drop, also when a test fails.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tunsec::control::{self, Request, Response};
use tunsec::netns::Lab;
use tunsec::status::Status;

const TUNSECD: &str = env!("CARGO_BIN_EXE_tunsecd");
/// A 32-byte marker repeated through the transferred data: if any
/// captured packet carried tenant bytes in the clear, it would contain it.
const MARKER: &[u8; 32] = b"TUNSEC-CLEARTEXT-MARKER-7f3a9c1e";

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a host is set up.
#[derive(Clone, Copy)]
struct HostSpec {
    encap: &'static str,
    policy: &'static str,
    with_sa: bool,
    /// No tunsecd: a Linux vxlan device (VNI 100, port 4789) to the other
    /// host instead.
    kernel_vxlan: bool,
}

impl HostSpec {
    const fn tunsec(encap: &'static str, policy: &'static str, with_sa: bool) -> Self {
        Self {
            encap,
            policy,
            with_sa,
            kernel_vxlan: false,
        }
    }
}

/// Two hosts, one network, one tenant behind each.
struct Overlay {
    lab: Lab,
    specs: [HostSpec; 2],
}

impl Overlay {
    fn new(prefix: &str, a: HostSpec, b: HostSpec) -> Self {
        let mut lab = Lab::new(prefix).expect("lab (run the tests as root)");
        let ul = lab.add_ns("ul").unwrap();
        lab.exec(
            &ul,
            "ip",
            &[
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )
        .unwrap();
        lab.exec(&ul, "ip", &["link", "set", "br0", "up"]).unwrap();
        let key_ab = random_hex(20);
        let key_ba = random_hex(20);
        for (i, spec) in [(1usize, a), (2, b)] {
            let h = lab.add_ns(&format!("h{i}")).unwrap();
            lab.veth(&h, "eth0", &ul, &format!("ul-h{i}")).unwrap();
            lab.exec(
                &ul,
                "ip",
                &["link", "set", &format!("ul-h{i}"), "master", "br0"],
            )
            .unwrap();
            lab.exec(
                &h,
                "ip",
                &["addr", "add", &format!("192.0.2.{i}/24"), "dev", "eth0"],
            )
            .unwrap();
            let peer = 3 - i;
            let dir = lab.dir.path().to_path_buf();
            let (key_in, key_out) = if i == 1 {
                (&key_ba, &key_ab)
            } else {
                (&key_ab, &key_ba)
            };
            std::fs::write(dir.join(format!("h{i}.in")), key_in).unwrap();
            std::fs::write(dir.join(format!("h{i}.out")), key_out).unwrap();
            let port = if spec.encap == "gue" {
                "port = 6080\n"
            } else {
                ""
            };
            let mut config = format!(
                "[node]\nname = \"h{i}\"\nunderlay = \"192.0.2.{i}\"\ncontrol_socket = \"{}\"\n\n\
                 [[network]]\nname = \"blue\"\nvni = 100\nencapsulation = \"{}\"\n{port}\n\
                 [[peer]]\nname = \"h{peer}\"\nunderlay = \"192.0.2.{peer}\"\nnetworks = [\"blue\"]\npolicy = \"{}\"\n",
                dir.join(format!("h{i}.sock")).display(),
                spec.encap,
                spec.policy
            );
            if spec.with_sa {
                config.push_str(&format!(
                    "\n[peer.sa]\nspi_in = {:#x}\nspi_out = {:#x}\nsuite = \"aes128gcm16\"\nkey_in = \"h{i}.in\"\nkey_out = \"h{i}.out\"\n",
                    0x1000 + i,
                    0x1000 + peer
                ));
            }
            let path = dir.join(format!("h{i}.toml"));
            std::fs::write(&path, config).unwrap();
            let path = path.to_string_lossy().into_owned();
            if spec.kernel_vxlan {
                lab.exec(
                    &h,
                    "ip",
                    &[
                        "link",
                        "add",
                        "vx0",
                        "type",
                        "vxlan",
                        "id",
                        "100",
                        "local",
                        &format!("192.0.2.{i}"),
                        "remote",
                        &format!("192.0.2.{peer}"),
                        "dstport",
                        "4789",
                    ],
                )
                .unwrap();
                lab.exec(&h, "ip", &["link", "set", "vx0", "up"]).unwrap();
            } else {
                lab.spawn(
                    &format!("h{i}"),
                    &h,
                    Path::new(TUNSECD),
                    &["--config", &path],
                )
                .unwrap();
            }
        }
        let mut overlay = Self { lab, specs: [a, b] };
        for i in (1..=2).filter(|&i| !overlay.specs[i - 1].kernel_vxlan) {
            let sock = overlay.sock(i);
            overlay
                .lab
                .wait_for("tunsecd", Duration::from_secs(10), || sock.exists())
                .unwrap_or_else(|e| overlay.fail(&format!("{e}")));
        }
        let mtu = overlay.status(1).networks[0].mtu.to_string();
        for i in 1..=2 {
            overlay.add_tenant(i, &mtu);
        }
        overlay
    }

    fn add_tenant(&mut self, i: usize, mtu: &str) {
        let h = &self.lab.ns(&format!("h{i}"));
        let t = &self.lab.add_ns(&format!("t{i}")).unwrap();
        let lab = &self.lab;
        lab.exec(
            h,
            "ip",
            &[
                "link",
                "add",
                "br-blue",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )
        .unwrap();
        lab.exec(h, "ip", &["link", "set", "br-blue", "up"])
            .unwrap();
        lab.veth(h, "vblue", t, "eth0").unwrap();
        // The tenant's MTU is the TAP's, as a VM's would be.
        lab.exec(h, "ip", &["link", "set", "vblue", "mtu", mtu])
            .unwrap();
        lab.exec(t, "ip", &["link", "set", "eth0", "mtu", mtu])
            .unwrap();
        lab.exec(h, "ip", &["link", "set", "vblue", "master", "br-blue"])
            .unwrap();
        let dev = if self.specs[i - 1].kernel_vxlan {
            "vx0"
        } else {
            "ts-blue"
        };
        lab.wait_for("the TAP device", Duration::from_secs(5), || {
            lab.try_exec(h, "ip", &["link", "show", dev])
        })
        .unwrap();
        lab.exec(h, "ip", &["link", "set", dev, "master", "br-blue"])
            .unwrap();
        lab.exec(
            t,
            "ip",
            &["addr", "add", &format!("198.51.100.{i}/24"), "dev", "eth0"],
        )
        .unwrap();
    }

    fn sock(&self, host: usize) -> PathBuf {
        self.lab.dir.path().join(format!("h{host}.sock"))
    }

    fn status(&self, host: usize) -> Status {
        match control::call(&self.sock(host), &Request::Status) {
            Ok(Response::Status(s)) => *s,
            other => self.fail(&format!("status of h{host}: {other:?}")),
        }
    }

    /// Panics with the daemons' logs, so CI output explains the failure.
    fn fail(&self, why: &str) -> ! {
        for i in 1..=2 {
            let log = self.lab.dir.path().join(format!("h{i}.log"));
            eprintln!(
                "--- tunsecd h{i} ---\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        panic!("{why}");
    }

    fn ping(&self, from: usize, to: usize, count: u32) -> bool {
        self.lab.try_exec(
            &self.lab.ns(&format!("t{from}")),
            "ping",
            &[
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "2",
                &format!("198.51.100.{to}"),
            ],
        )
    }

    fn start_capture(&mut self, label: &str) -> PathBuf {
        let pcap = self.lab.dir.path().join(format!("{label}.pcap"));
        let pcap_s = pcap.to_string_lossy().into_owned();
        let ul = self.lab.ns("ul");
        self.lab
            .spawn(
                label,
                &ul,
                Path::new("tshark"),
                &["-q", "-i", "br0", "-w", &pcap_s],
            )
            .unwrap();
        self.lab
            .wait_for("the capture", Duration::from_secs(10), || {
                std::fs::metadata(&pcap).is_ok_and(|m| m.len() > 0)
            })
            .unwrap();
        pcap
    }

    fn stop_capture(&mut self, label: &str) {
        std::thread::sleep(Duration::from_millis(300));
        self.lab.stop(label);
    }
}

/// Packets in a capture that match a display filter.
fn count(pcap: &Path, filter: &str) -> usize {
    let out = tunsec::netns::run(
        "tshark",
        &[
            "-r",
            &pcap.to_string_lossy(),
            "-Y",
            filter,
            "-T",
            "fields",
            "-e",
            "frame.number",
        ],
    )
    .expect("tshark");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

const SERVER: &str = r#"
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.51.100.2", 5001))
s.listen(1)
c, _ = s.accept()
h = hashlib.sha256()
n = 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    h.update(d)
    n += len(d)
print(n, h.hexdigest(), flush=True)
"#;

const CLIENT: &str = r#"
import hashlib, os, socket, sys
marker = sys.argv[1].encode()
total = int(sys.argv[2])
block = (marker + os.urandom(992)) * 64
h = hashlib.sha256()
c = socket.create_connection(("198.51.100.2", 5001), timeout=60)
sent = 0
while sent < total:
    chunk = block[: total - sent]
    c.sendall(chunk)
    h.update(chunk)
    sent += len(chunk)
c.close()
print(sent, h.hexdigest(), flush=True)
"#;

/// Pings, then 50 MB over TCP, with the underlay captured throughout.
fn transfer_is_encrypted(prefix: &str, encap: &'static str) {
    let spec = HostSpec::tunsec(encap, "require", true);
    let mut o = Overlay::new(prefix, spec, spec);
    let pcap = o.start_capture("capture");
    if !o.ping(1, 2, 3) || !o.ping(2, 1, 3) {
        o.fail(&format!("{encap}: tenant ping failed"));
    }
    let server = o.lab.dir.path().join("server.py");
    let client = o.lab.dir.path().join("client.py");
    std::fs::write(&server, SERVER).unwrap();
    std::fs::write(&client, CLIENT).unwrap();
    let t2 = o.lab.ns("t2");
    let server_log = o
        .lab
        .spawn(
            "server",
            &t2,
            Path::new("python3"),
            &[&server.to_string_lossy()],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let total = (50 << 20).to_string();
    let marker = std::str::from_utf8(MARKER).unwrap();
    let out = o
        .lab
        .exec(
            &o.lab.ns("t1"),
            "python3",
            &[&client.to_string_lossy(), marker, &total],
        )
        .unwrap_or_else(|e| o.fail(&format!("{encap}: transfer failed: {e:#}")));
    let sent = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    o.lab
        .wait_for("the server's digest", Duration::from_secs(30), || {
            std::fs::read_to_string(&server_log).is_ok_and(|s| !s.trim().is_empty())
        })
        .unwrap_or_else(|e| o.fail(&format!("{e}")));
    let received = std::fs::read_to_string(&server_log)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(
        received, sent,
        "{encap}: bytes and SHA-256 sent vs received"
    );
    assert!(sent.starts_with(&total), "{sent}");
    o.stop_capture("capture");

    let bytes = std::fs::read(&pcap).unwrap();
    assert!(
        !bytes.windows(MARKER.len()).any(|w| w == MARKER),
        "{encap}: tenant bytes in the clear on the underlay"
    );
    let esp = count(&pcap, "esp");
    let other = count(&pcap, "!esp && !arp");
    assert!(esp > 30_000, "{encap}: only {esp} ESP packets for 50 MB");
    assert_eq!(
        other, 0,
        "{encap}: {other} packets on the underlay were not ESP or ARP"
    );
    let s = o.status(2);
    let sa_in = s.peers[0]
        .sas
        .iter()
        .find(|sa| sa.direction == "in")
        .unwrap();
    assert!(
        sa_in.bytes > 50 << 20,
        "{encap}: SA counted {} bytes",
        sa_in.bytes
    );
    assert_eq!(
        sa_in.drops.values().sum::<u64>(),
        0,
        "{encap}: ESP drops {:?}",
        sa_in.drops
    );
}

#[test]
fn vxlan_transfer_is_encrypted() {
    transfer_is_encrypted("tsl-vx", "vxlan");
}

#[test]
fn geneve_transfer_is_encrypted() {
    transfer_is_encrypted("tsl-gn", "geneve");
}

#[test]
fn gue_transfer_is_encrypted() {
    transfer_is_encrypted("tsl-gu", "gue");
}

/// Tenant traffic from h1 with a `require` policy: what leaves h1.
fn nothing_leaves(o: &mut Overlay, label: &str) {
    let pcap = o.start_capture(label);
    let before = o.status(1).drops["no_sa"];
    assert!(!o.ping(1, 2, 5), "{label}: ping got through without an SA");
    o.stop_capture(label);
    let from_h1 = count(&pcap, "ip.src == 192.0.2.1");
    assert_eq!(from_h1, 0, "{label}: {from_h1} IP packets left h1");
    let after = o.status(1).drops["no_sa"];
    assert!(
        after > before,
        "{label}: no_sa went from {before} to {after}"
    );
}

#[test]
fn require_without_sa_sends_nothing() {
    let spec = HostSpec::tunsec("vxlan", "require", false);
    let mut o = Overlay::new("tsl-nosa", spec, spec);
    nothing_leaves(&mut o, "never-configured");
}

#[test]
fn deleting_the_sa_stops_the_traffic() {
    let spec = HostSpec::tunsec("vxlan", "require", true);
    let mut o = Overlay::new("tsl-del", spec, spec);
    assert!(o.ping(1, 2, 2), "ping before the delete");
    // Only root may talk to the daemon.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(o.sock(1)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode {mode:o}");
    match control::call(&o.sock(1), &Request::DeleteSa { peer: "h2".into() }) {
        Ok(Response::Done { .. }) => {}
        other => o.fail(&format!("delete_sa: {other:?}")),
    }
    assert!(o.status(1).peers[0].sas.is_empty());
    nothing_leaves(&mut o, "deleted");
    // An unknown peer is refused by name.
    match control::call(&o.sock(1), &Request::DeleteSa { peer: "h9".into() }) {
        Ok(Response::Error { message }) => assert!(message.contains("\"h9\""), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_config_is_refused_and_creates_nothing() {
    let mut lab = Lab::new("tsl-bad").expect("lab (run the tests as root)");
    let h = lab.add_ns("h1").unwrap();
    let path = lab.dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[node]\nname = \"h1\"\nunderlay = \"192.0.2.1\"\n\n\
         [[network]]\nname = \"blue\"\nvni = 16777216\nencapsulation = \"vxlan\"\n",
    )
    .unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &h, TUNSECD, "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("network[0].vni") && stderr.contains("16777216"),
        "{stderr}"
    );
    let links = lab.exec(&h, "ip", &["-o", "link"]).unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("ts-"));
}

/// Our VXLAN is the kernel's VXLAN: with policy `clear`, tunsec and a
/// Linux vxlan device exchange frames both ways.
#[test]
fn clear_policy_interoperates_with_the_linux_vxlan_device() {
    let kernel = HostSpec {
        kernel_vxlan: true,
        ..HostSpec::tunsec("vxlan", "clear", false)
    };
    let mut o = Overlay::new("tsl-kvx", HostSpec::tunsec("vxlan", "clear", false), kernel);
    let pcap = o.start_capture("capture");
    if !o.ping(1, 2, 3) || !o.ping(2, 1, 3) {
        o.fail("ping between tunsec and the kernel vxlan device failed");
    }
    o.stop_capture("capture");
    let from_tunsec = count(
        &pcap,
        "ip.src == 192.0.2.1 && vxlan.vni == 100 && udp.dstport == 4789",
    );
    let from_kernel = count(
        &pcap,
        "ip.src == 192.0.2.2 && vxlan.vni == 100 && udp.dstport == 4789",
    );
    assert!(from_tunsec >= 6, "{from_tunsec} VXLAN packets from tunsec");
    assert!(
        from_kernel >= 6,
        "{from_kernel} VXLAN packets from the kernel"
    );
    assert_eq!(count(&pcap, "esp"), 0);
    let net = &o.status(1).networks[0];
    assert!(net.rx_frames >= 6 && net.tx_frames >= 6, "{net:?}");
}

const INJECT: &str = r#"
import os, sys
from scapy.all import rdpcap, send, IP, UDP, Raw
from scapy.layers.ipsec import ESP, SecurityAssociation
pcap, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
# A genuine ESP-in-UDP packet from src to dst, already received by dst.
esp = None
for p in rdpcap(pcap):
    if IP in p and UDP in p and p[IP].src == src and p[IP].dst == dst and p[UDP].dport == 4500:
        esp = bytes(p[UDP].payload)
        break
assert esp is not None and len(esp) > 40, "no ESP packet captured"
spi = esp[:4]
def out(payload):
    send(IP(src=src, dst=dst) / UDP(sport=4500, dport=4500) / Raw(payload), verbose=False)
# (a) replayed: the same bytes again.
out(esp)
# (b) tampered: a fresh sequence number, so it passes the replay check, and
#     the ICV no longer matches (the sequence number is authenticated).
out(spi + (50000).to_bytes(4, "big") + esp[8:])
# (c) the right SPI, sealed with another key.
sa = SecurityAssociation(ESP, spi=int.from_bytes(spi, "big"), crypt_algo="AES-GCM",
                         crypt_key=os.urandom(20), seq_num=60000)
sealed = sa.encrypt(IP(src=src, dst=dst) / UDP(sport=49152, dport=4789) / Raw(b"x" * 64))
out(bytes(sealed[ESP]))
# (d) an SPI nobody has.
out(b"\xde\xad\x00\x01" + esp[4:])
print("sent 4")
"#;

/// Replayed, tampered, wrong-key and unknown-SPI ESP, forged from a third
/// namespace with Scapy: each dropped and counted under its own reason.
#[test]
fn bad_esp_is_dropped_and_counted_by_reason() {
    let spec = HostSpec::tunsec("vxlan", "require", true);
    let mut o = Overlay::new("tsl-bad-esp", spec, spec);
    let pcap = o.start_capture("capture");
    if !o.ping(2, 1, 3) {
        o.fail("ping failed");
    }
    o.stop_capture("capture");

    // The attacker: a namespace on the underlay that spoofs h2's address.
    let inj = o.lab.add_ns("inj").unwrap();
    let ul = o.lab.ns("ul");
    o.lab.veth(&inj, "eth0", &ul, "ul-inj").unwrap();
    o.lab
        .exec(&ul, "ip", &["link", "set", "ul-inj", "master", "br0"])
        .unwrap();
    o.lab
        .exec(&inj, "ip", &["addr", "add", "192.0.2.9/24", "dev", "eth0"])
        .unwrap();
    let script = o.lab.dir.path().join("inject.py");
    std::fs::write(&script, INJECT).unwrap();
    let before = o.status(1);
    let out = o
        .lab
        .exec(
            &inj,
            "/usr/bin/python3",
            &[
                &script.to_string_lossy(),
                &pcap.to_string_lossy(),
                "192.0.2.2",
                "192.0.2.1",
            ],
        )
        .unwrap_or_else(|e| {
            o.fail(&format!(
                "Scapy injection failed (apt-get install python3-scapy): {e:#}"
            ))
        });
    assert!(String::from_utf8_lossy(&out.stdout).contains("sent 4"));
    std::thread::sleep(Duration::from_millis(500));

    let after = o.status(1);
    let sa_drops = |s: &Status, reason: &str| {
        s.peers[0]
            .sas
            .iter()
            .find(|sa| sa.direction == "in")
            .unwrap()
            .drops[reason]
    };
    assert_eq!(
        sa_drops(&after, "replay") - sa_drops(&before, "replay"),
        1,
        "replay"
    );
    assert_eq!(
        sa_drops(&after, "icv_failure") - sa_drops(&before, "icv_failure"),
        2,
        "tampered and wrong key"
    );
    assert_eq!(
        after.drops["unknown_spi"] - before.drops["unknown_spi"],
        1,
        "unknown SPI"
    );
    // The tunnel still works.
    assert!(o.ping(2, 1, 2), "ping after the attack");
}
