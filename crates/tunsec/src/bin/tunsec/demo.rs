//! `tunsec demo`: three hosts on a shared underlay and two virtual
//! networks, all in network namespaces on this machine.
//!
//! ```text
//!            underlay bridge (namespace tsdemo-ul), 192.0.2.0/24
//!        ┌──────────────┬──────────────┬──────────────┐
//!     h1 192.0.2.1   h2 192.0.2.2   h3 192.0.2.3       tunsecd on each
//!     ts-blue ts-red  ts-blue ts-red  ts-blue ts-red    TAP devices
//!     t1b    t1r      t2b    t2r      t3b    t3r        tenants
//! ```
//!
//! Blue tenants are 198.51.100.1-3 and red tenants 198.51.100.11-13: one
//! subnet, so only the networks' separation keeps them apart. Every pair
//! of hosts negotiates its SAs with IKEv2, authenticated by certificates
//! from a CA that the demo makes with `tunsec pki` (CN and dNSName the
//! host's name, each host expecting its peers by name); `--psk`: a fresh
//! random pre-shared key per pair instead; `--manual-keys`: fresh random
//! manual keys instead of IKEv2. The demo
//! pings across hosts in both networks, shows that blue cannot reach red, captures the underlay and
//! counts the packets that are not ESP (0), prints `tunsec status` of h1,
//! and removes everything, also after a failure or Ctrl-C.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

use tunsec::cli::DemoArgs;
use tunsec::control::{self, Request, Response};
use tunsec_lab::Lab;

/// How the demo's hosts get their SAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keying {
    /// IKEv2 with certificates from the demo's own CA.
    Certificates,
    /// IKEv2 with a random pre-shared key per host pair.
    Psk,
    /// Random manual keys.
    Manual,
}

const HOSTS: usize = 3;
const NETWORKS: [(&str, u32, char, u8); 2] = [("blue", 100, 'b', 0), ("red", 200, 'r', 10)];

fn step(title: &str) {
    println!("\n== {title}");
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex::encode(buf))
}

/// Directional SPI for packets from host `from` to host `to` (1-based).
fn spi(from: usize, to: usize) -> u32 {
    0x1000 + (to as u32) * 16 + from as u32
}

pub(crate) fn tunsecd_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("tunsecd");
    if !path.exists() {
        bail!(
            "{} not found next to tunsec: build both (cargo build --release -p tunsec)",
            path.display()
        );
    }
    Ok(path)
}

fn write_config(
    lab: &Lab,
    host: usize,
    suite: &str,
    blue_encap: &str,
    keys: &[[String; HOSTS + 1]],
    keying: Keying,
) -> anyhow::Result<PathBuf> {
    let dir = lab.dir.path();
    let mut c = String::new();
    writeln!(
        c,
        "[node]\nname = \"h{host}\"\nunderlay = \"192.0.2.{host}\"\ncontrol_socket = \"{}\"\n",
        dir.join(format!("h{host}.sock")).display()
    )?;
    for (name, vni, _, _) in NETWORKS {
        let encap = if name == "blue" { blue_encap } else { "geneve" };
        writeln!(
            c,
            "[[network]]\nname = \"{name}\"\nvni = {vni}\nencapsulation = \"{encap}\"\n"
        )?;
        if encap == "gue" {
            writeln!(c, "port = 6080\n")?;
        }
    }
    for (peer, peer_keys) in keys.iter().enumerate().skip(1) {
        if peer == host {
            continue;
        }
        if keying == Keying::Certificates {
            // The demo's CA vouches for every host; each expects its peer
            // by the name in the peer's certificate.
            let pki = dir.join("pki");
            writeln!(
                c,
                "[[peer]]\nname = \"h{peer}\"\nunderlay = \"192.0.2.{peer}\"\nnetworks = [\"blue\", \"red\"]\n\n\
                 [peer.ike]\nauth = \"cert\"\ncert = \"{p}/h{host}.pem\"\nkey = \"{p}/h{host}.key\"\n\
                 ca = [\"{p}/ca/ca.pem\"]\nlocal_id = \"fqdn:h{host}\"\nremote_id = \"fqdn:h{peer}\"\n\
                 esp_proposals = [\"{suite}\"]\n",
                p = pki.display()
            )?;
            continue;
        }
        if keying == Keying::Psk {
            // One pre-shared key per pair of hosts: the lower-numbered
            // host's row holds it.
            let (lo, hi) = (host.min(peer), host.max(peer));
            let psk = dir.join(format!("psk-{lo}-{hi}"));
            tunsec::config::write_secret(&psk, &keys[lo][hi])?;
            writeln!(
                c,
                "[[peer]]\nname = \"h{peer}\"\nunderlay = \"192.0.2.{peer}\"\nnetworks = [\"blue\", \"red\"]\n\n\
                 [peer.ike]\npsk_file = \"{}\"\nesp_proposals = [\"{suite}\"]\n",
                psk.display()
            )?;
            continue;
        }
        let key_in = dir.join(format!("key-{peer}-{host}"));
        let key_out = dir.join(format!("key-{host}-{peer}"));
        tunsec::config::write_secret(&key_in, &peer_keys[host])?;
        tunsec::config::write_secret(&key_out, &keys[host][peer])?;
        writeln!(
            c,
            "[[peer]]\nname = \"h{peer}\"\nunderlay = \"192.0.2.{peer}\"\nnetworks = [\"blue\", \"red\"]\n\n\
             [peer.sa]\nspi_in = {:#x}\nspi_out = {:#x}\nsuite = \"{suite}\"\nkey_in = \"{}\"\nkey_out = \"{}\"\n",
            spi(peer, host),
            spi(host, peer),
            key_in.display(),
            key_out.display()
        )?;
    }
    let path = dir.join(format!("h{host}.toml"));
    std::fs::write(&path, c)?;
    Ok(path)
}

/// Whether every peer of `host` has an established IKE SA and its SAs.
fn ike_established(lab: &Lab, host: usize) -> bool {
    match control::call(
        &lab.dir.path().join(format!("h{host}.sock")),
        &Request::Status,
    ) {
        Ok(Response::Status(s)) => s.peers.iter().all(|p| {
            p.ike.as_ref().is_some_and(|ike| ike.state == "established") && p.sas.len() == 2
        }),
        _ => false,
    }
}

/// The MTU tunsecd chose for a network's TAP device on a host.
fn tap_mtu(lab: &Lab, host: usize, network: &str) -> anyhow::Result<String> {
    match control::call(
        &lab.dir.path().join(format!("h{host}.sock")),
        &Request::Status,
    )? {
        Response::Status(s) => s
            .networks
            .iter()
            .find(|n| n.name == network)
            .map(|n| n.mtu.to_string())
            .with_context(|| format!("no network {network} on h{host}")),
        other => bail!("unexpected answer: {other:?}"),
    }
}

fn check_interrupted(stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

/// Runs the demo.
pub(crate) fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let suite: tunsec_esp::Suite = args
        .suite
        .parse()
        .map_err(|e| anyhow::anyhow!("--suite: {e}"))?;
    if !["vxlan", "geneve", "gue"].contains(&args.encapsulation.as_str()) {
        bail!(
            "--encapsulation: {:?} is not vxlan, geneve or gue",
            args.encapsulation
        );
    }
    let tunsecd = tunsecd_path()?;
    tunsec_lab::run("tshark", &["--version"])
        .context("tshark is needed for the capture: apt-get install tshark")?;
    tunsec_lab::run("ping", &["-V"]).context("ping is needed: apt-get install iputils-ping")?;

    let mut lab = Lab::new("tsdemo")?;
    let result = demo(&mut lab, args, suite, &tunsecd, &stop);
    if let Err(e) = &result {
        println!("\ndemo failed: {e:#}");
        for host in 1..=HOSTS {
            let log = lab.dir.path().join(format!("h{host}.log"));
            if let Ok(text) = std::fs::read_to_string(&log) {
                println!("--- tunsecd h{host} log ---\n{text}");
            }
        }
    }
    if let Some(secs) = std::env::var("TUNSEC_DEMO_PAUSE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        // For debugging the demo itself: look around before teardown.
        println!("\npausing {secs}s before teardown (TUNSEC_DEMO_PAUSE)");
        std::thread::sleep(Duration::from_secs(secs));
    }
    step("Tearing down");
    drop(lab);
    println!("removed every namespace, process and file the demo made");
    result
}

fn demo(
    lab: &mut Lab,
    args: &DemoArgs,
    suite: tunsec_esp::Suite,
    tunsecd: &Path,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    step("Building three hosts on a shared underlay");
    let ul = lab.add_underlay()?;
    let mut hosts = vec![String::new()];
    for i in 1..=HOSTS {
        let h = lab.add_ns(&format!("h{i}"))?;
        lab.veth(&h, "eth0", &ul, &format!("ul-h{i}"))?;
        lab.exec(
            &ul,
            "ip",
            &["link", "set", &format!("ul-h{i}"), "master", "br0"],
        )?;
        lab.exec(
            &h,
            "ip",
            &["addr", "add", &format!("192.0.2.{i}/24"), "dev", "eth0"],
        )?;
        println!("  {h}: underlay 192.0.2.{i}");
        hosts.push(h);
    }
    check_interrupted(stop)?;

    let keying = match (args.manual_keys, args.psk) {
        (true, _) => Keying::Manual,
        (false, true) => Keying::Psk,
        (false, false) => Keying::Certificates,
    };
    if keying == Keying::Certificates {
        step("Making a CA and a certificate per host (tunsec pki)");
        let pki = lab.dir.path().join("pki");
        let (ca, _) = tunsec::pki::init_ca(
            tunsec::pki::KeyAlg::EcdsaP256,
            "tunsec demo CA",
            1,
            &pki.join("ca"),
        )?;
        println!("  CA: {}", ca.display());
        for i in 1..=HOSTS {
            let (cert, _) = tunsec::pki::issue(
                &pki.join("ca"),
                &format!("h{i}"),
                &[format!("192.0.2.{i}")],
                tunsec::pki::KeyAlg::EcdsaP256,
                1,
                &pki,
            )?;
            println!(
                "  h{i}: {} (CN=h{i}, DNS:h{i}, IP:192.0.2.{i})",
                cert.display()
            );
        }
    }
    step(&format!(
        "Starting tunsecd on each host ({suite}, {})",
        match keying {
            Keying::Manual => "fresh random manual keys per host pair",
            Keying::Psk => "IKEv2 with a fresh random pre-shared key per host pair",
            Keying::Certificates => "IKEv2 with CA-signed certificates",
        }
    ));
    // Manual keys are the suite's key material; a PSK is 32 random bytes.
    let keylen = if args.manual_keys {
        suite.encryption_key_len() + suite.integrity_key_len()
    } else {
        32
    };
    let mut keys: Vec<[String; HOSTS + 1]> = vec![Default::default(); HOSTS + 1];
    for (from, row) in keys.iter_mut().enumerate().skip(1) {
        for (to, key) in row.iter_mut().enumerate().skip(1) {
            if from != to {
                *key = random_hex(keylen)?;
            }
        }
    }
    for (i, h) in hosts.iter().enumerate().skip(1) {
        let config = write_config(lab, i, suite.name(), &args.encapsulation, &keys, keying)?;
        let config = config.to_string_lossy().into_owned();
        lab.spawn(&format!("h{i}"), h, tunsecd, &["--config", &config])?;
    }
    for (i, h) in hosts.iter().enumerate().skip(1) {
        let sock = lab.dir.path().join(format!("h{i}.sock"));
        lab.wait_for(&format!("tunsecd on {h}"), Duration::from_secs(10), || {
            sock.exists()
        })?;
        println!("  tunsecd up on {h}");
    }
    if keying != Keying::Manual {
        // Every host pair negotiates its IKE SA and Child SAs.
        lab.wait_for(
            "IKEv2 between every pair of hosts",
            Duration::from_secs(20),
            || (1..=HOSTS).all(|i| ike_established(lab, i)),
        )?;
        println!("  IKEv2: every host pair established its IKE SA and Child SAs");
    }
    check_interrupted(stop)?;

    step("Attaching tenants: blue 198.51.100.1-3, red 198.51.100.11-13 (one subnet)");
    for (i, h) in hosts.iter().enumerate().skip(1) {
        for (net, _, letter, offset) in NETWORKS {
            let t = lab.add_ns(&format!("t{i}{letter}"))?;
            let bridge = format!("br-{net}");
            lab.add_bridge(h, &bridge)?;
            let hv = format!("v{net}");
            lab.veth(h, &hv, &t, "eth0")?;
            // The tenant's MTU is the TAP's (as a VM's would be), so that
            // full-size frames fit after ESP.
            let mtu = tap_mtu(lab, i, net)?;
            lab.exec(h, "ip", &["link", "set", &hv, "mtu", &mtu])?;
            lab.exec(&t, "ip", &["link", "set", "eth0", "mtu", &mtu])?;
            lab.exec(h, "ip", &["link", "set", &hv, "master", &bridge])?;
            let tap = format!("ts-{net}");
            lab.wait_for(&format!("{tap} on {h}"), Duration::from_secs(5), || {
                lab.try_exec(h, "ip", &["link", "show", &tap])
            })?;
            lab.exec(h, "ip", &["link", "set", &tap, "master", &bridge])?;
            let addr = format!("198.51.100.{}", offset as usize + i);
            lab.exec(
                &t,
                "ip",
                &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
            )?;
            println!("  {t}: {net} tenant {addr} behind {h}");
        }
    }
    check_interrupted(stop)?;

    step("Capturing the underlay bridge");
    let pcap = lab.dir.path().join("underlay.pcap");
    let pcap_s = pcap.to_string_lossy().into_owned();
    lab.spawn(
        "capture",
        &ul,
        Path::new("tshark"),
        &["-q", "-i", "br0", "-w", &pcap_s],
    )?;
    lab.wait_for("the capture to start", Duration::from_secs(10), || {
        std::fs::metadata(&pcap).is_ok_and(|m| m.len() > 0)
    })?;

    step("Tenants ping each other across hosts, in both networks");
    let mut failures = 0;
    for (net, _, letter, offset) in NETWORKS {
        for (from, to) in [(1, 2), (1, 3), (2, 3), (3, 1)] {
            check_interrupted(stop)?;
            let t = lab.ns(&format!("t{from}{letter}"));
            let dst = format!("198.51.100.{}", offset as usize + to);
            let ok = lab.try_exec(&t, "ping", &["-c", "3", "-i", "0.2", "-W", "2", &dst]);
            println!(
                "  {net}: t{from}{letter} -> {dst}: {}",
                if ok { "ok" } else { "FAILED" }
            );
            failures += usize::from(!ok);
        }
    }

    step("Blue cannot reach red (same subnet, different network)");
    let leaked = lab.try_exec(
        &lab.ns("t1b"),
        "ping",
        &["-c", "2", "-i", "0.2", "-W", "1", "198.51.100.12"],
    );
    println!(
        "  blue t1b -> red 198.51.100.12: {}",
        if leaked {
            "REACHED (isolation broken)"
        } else {
            "no answer, as it must be"
        }
    );

    step("What crossed the underlay");
    // Let the capture flush, then stop it cleanly.
    std::thread::sleep(Duration::from_millis(500));
    lab.stop("capture");
    let count = |filter: &str| -> anyhow::Result<usize> {
        let out = tunsec_lab::run(
            "tshark",
            &[
                "-r",
                &pcap_s,
                "-Y",
                filter,
                "-T",
                "fields",
                "-e",
                "frame.number",
            ],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().count())
    };
    let total = count("frame")?;
    let esp = count("esp")?;
    let arp = count("arp")?;
    let ike = count("isakmp")?;
    let clear = count("!esp && !arp && !isakmp")?;
    println!(
        "  {total} packets: {esp} ESP, {ike} IKE, {arp} underlay ARP, {clear} other (cleartext)"
    );

    step("tunsec status on h1");
    match control::call(&lab.dir.path().join("h1.sock"), &Request::Status)? {
        Response::Status(s) => print!("{}", s.render()),
        other => bail!("unexpected answer: {other:?}"),
    }

    if failures > 0 || leaked || clear > 0 || esp == 0 {
        if clear > 0 {
            let out = tunsec_lab::run("tshark", &["-r", &pcap_s, "-Y", "!esp && !arp && !isakmp"])?;
            println!(
                "\ncleartext packets:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        for host in 2..=HOSTS {
            if let Ok(Response::Status(s)) = control::call(
                &lab.dir.path().join(format!("h{host}.sock")),
                &Request::Status,
            ) {
                println!("\n-- status of h{host} --\n{}", s.render());
            }
        }
        bail!(
            "{failures} pings failed, isolation {}, {clear} cleartext packets, {esp} ESP packets",
            if leaked { "broken" } else { "held" }
        );
    }
    println!(
        "\nAll checks passed: every tenant ping crossed the underlay as ESP, none in the clear."
    );
    Ok(())
}
