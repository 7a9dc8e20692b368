//! End-to-end tests of `tunsecd` with IKEv2 (pre-shared keys), in network
//! namespaces: what the daemons log and export. Two hosts on an underlay
//! bridge run the real `tunsecd` with `[peer.ike]` and no manual keys
//! (helpers in `ike/`).
//!
//! - `ike_debug_log` and `ike_debug_log_json`: both daemons at debug level
//!   (`--log-level debug`; `[node] log_level = "debug"` with
//!   `--log-format json`), stderr to a file: the log holds IKE_SA_INIT
//!   and IKE_AUTH sent and received with message IDs and payload lists,
//!   the proposals chosen, the traffic selectors, the Child SA installed
//!   with the SPIs that status shows; no colour codes, no PSK, no key;
//!   in JSON, every line is one object.
//! - `ike_keys_export_for_wireshark`: `tunsec keys export --wireshark`
//!   on both hosts; tshark, given either host's tables, decrypts the
//!   capture's IKE_AUTH down to the FQDN identities and its ESP down to
//!   VXLAN VNI 100 and the tenants' ICMP echoes (good ICVs), and without
//!   them shows none of it; files mode 0600, a warning on stderr and in
//!   each log, no key in a log.
//!
//! They need root, iproute2, ping, tshark (dumpcap) and nftables; they
//! fail, never skip, when something is missing.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tunsec::status::Status;
use tunsec_lab::Lab;

mod common;
mod ike;
use ike::*;

/// The PSK of the debug-log tests: it must never reach a log.
const LOG_PSK: &str = "log-psk-Zq8vW2xR7tY4";

/// Starts h1 and h2 with IKE (PSK) at debug level, each config changed by
/// `config` and each daemon started with `args`; waits until both have a
/// Child SA pair, stops both (the log is complete), and returns the two
/// logs and each host's inbound and outbound SPI, as status showed them.
fn debug_log_pair(
    lab: &mut Lab,
    config: impl Fn(String) -> String,
    args: &[&str],
) -> anyhow::Result<[(String, String, String); 2]> {
    let pair = two_hosts(lab)?;
    for (n, peer, ns) in [(1, 2, &pair.h1), (2, 1, &pair.h2)] {
        let path = write_config(lab, n, peer, LOG_PSK)?;
        std::fs::write(&path, config(std::fs::read_to_string(&path)?))?;
        start_tunsecd_with(lab, ns, n, &path, args)?;
    }
    let spi = |s: &Status, dir: &str| {
        s.peers
            .iter()
            .flat_map(|p| &p.sas)
            .find(|sa| sa.direction == dir)
            .map(|sa| sa.spi.clone())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let spis = loop {
        let (s1, s2) = (status(lab, 1)?, status(lab, 2)?);
        let got = [&s1, &s2].map(|s| spi(s, "in").zip(spi(s, "out")));
        if let [Some(a), Some(b)] = got {
            break [a, b];
        }
        if Instant::now() > deadline {
            bail!("no Child SA within 10 s:\n{}\n{}", s1.render(), s2.render());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(lab.stop("h1"), "tunsecd h1 did not exit cleanly");
    ensure!(lab.stop("h2"), "tunsecd h2 did not exit cleanly");
    let log = |n: u8| std::fs::read_to_string(lab.dir.path().join(format!("h{n}.log")));
    let [(in1, out1), (in2, out2)] = spis;
    Ok([(log(1)?, in1, out1), (log(2)?, in2, out2)])
}

/// What neither log format may hold: colour codes, the PSK, keys.
fn assert_clean(host: &str, log: &str) -> anyhow::Result<()> {
    ensure!(
        !log.contains("\x1b["),
        "{host}: the log holds ANSI escape codes"
    );
    ensure!(!log.contains(LOG_PSK), "{host}: the PSK is in the log");
    ensure!(
        !log.lines()
            .any(|l| l.contains("SK_") || l.to_lowercase().contains("keymat")),
        "{host}: a line names key material:\n{log}"
    );
    Ok(())
}

/// The first line of `log` that holds every one of `parts`.
fn log_line<'a>(host: &str, log: &'a str, parts: &[&str]) -> anyhow::Result<&'a str> {
    log.lines()
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .with_context(|| format!("{host}: no log line with {parts:?}:\n{log}"))
}

#[test]
fn ike_debug_log() {
    with_lab("log1", |lab| {
        let t0 = Instant::now();
        let [(h1, in1, out1), (h2, in2, out2)] =
            debug_log_pair(lab, |c| c, &["--log-level", "debug"])?;
        phase(lab, "IKE up, daemons stopped", t0);
        ensure!(in1 == out2 && in2 == out1, "the SPIs do not cross");
        for (host, log) in [("h1", &h1), ("h2", &h2)] {
            assert_clean(host, log)?;
        }
        // h1 initiates (the lower address): each exchange both ways, with
        // its message ID, flags and payloads.
        let init = log_line(
            "h1",
            &h1,
            &[
                "DEBUG",
                "IKE sent IKE_SA_INIT request 0",
                "peer=192.0.2.2:500",
                "message_id=0",
                "response=false",
                "initiator=true",
                "payloads=SA,KE,No,",
            ],
        )?;
        eprintln!("  h1: {init}");
        log_line(
            "h2",
            &h2,
            &[
                "IKE received IKE_SA_INIT request 0",
                "peer=192.0.2.1:500",
                "payloads=SA,KE,No,",
            ],
        )?;
        log_line(
            "h2",
            &h2,
            &[
                "IKE sent IKE_SA_INIT response 0",
                "response=true",
                "initiator=false",
                "payloads=SA,KE,No,",
            ],
        )?;
        log_line(
            "h1",
            &h1,
            &["IKE received IKE_SA_INIT response 0", "payloads=SA,KE,No,"],
        )?;
        // IKE moves to the ESP-in-UDP port after IKE_SA_INIT (NAT-T forced).
        let auth = log_line(
            "h1",
            &h1,
            &[
                "IKE sent IKE_AUTH request 1",
                "peer=192.0.2.2:4500",
                "message_id=1",
                "payloads=IDi,",
                "N(INITIAL_CONTACT),AUTH,N(USE_TRANSPORT_MODE),SA,TSi,TSr",
            ],
        )?;
        eprintln!("  h1: {auth}");
        log_line(
            "h2",
            &h2,
            &["IKE received IKE_AUTH request 1", "payloads=IDi,"],
        )?;
        log_line(
            "h2",
            &h2,
            &[
                "IKE sent IKE_AUTH response 1",
                "payloads=IDr,AUTH,N(USE_TRANSPORT_MODE),SA,TSi,TSr",
            ],
        )?;
        log_line(
            "h1",
            &h1,
            &["IKE received IKE_AUTH response 1", "payloads=IDr,AUTH"],
        )?;
        // Proposals and selectors.
        log_line(
            "h1",
            &h1,
            &[
                "IKE proposals offered",
                "proposals=aes128gcm16-prfsha256-x25519",
            ],
        )?;
        log_line(
            "h2",
            &h2,
            &["IKE proposal chosen", "chosen=aes128gcm16-prfsha256-x25519"],
        )?;
        log_line(
            "h1",
            &h1,
            &[
                "IKE proposal chosen by the peer",
                "chosen=aes128gcm16-prfsha256-x25519",
            ],
        )?;
        log_line("h2", &h2, &["ESP proposal chosen", "chosen=aes128gcm16"])?;
        log_line(
            "h1",
            &h1,
            &[
                "traffic selectors offered (IKE_AUTH)",
                "tsi=192.0.2.1/32[udp]",
                "tsr=192.0.2.2/32[udp]",
            ],
        )?;
        log_line(
            "h2",
            &h2,
            &[
                "traffic selectors narrowed",
                "tsi=192.0.2.1/32[udp]",
                "tsr=192.0.2.2/32[udp]",
            ],
        )?;
        log_line("h1", &h1, &["traffic selectors narrowed by the peer"])?;
        // The Child SA, installed with the SPIs status shows.
        for (host, log, spi_in, spi_out, local, remote) in [
            ("h1", &h1, &in1, &out1, "192.0.2.1", "192.0.2.2"),
            ("h2", &h2, &in2, &out2, "192.0.2.2", "192.0.2.1"),
        ] {
            let line = log_line(
                host,
                log,
                &[
                    "Child SA installed",
                    &format!("spi_in={spi_in}"),
                    &format!("spi_out={spi_out}"),
                    "mode=transport",
                    "suite=aes128gcm16",
                    &format!("local_ts={local}/32[udp]"),
                    &format!("remote_ts={remote}/32[udp]"),
                ],
            )?;
            eprintln!("  {host}: {line}");
            // The ESP SPI is in the IKE_AUTH proposals too.
            log_line(host, log, &["ESP proposal", &format!("spi_out={spi_out}")])?;
        }
        Ok(())
    });
}

#[test]
fn ike_debug_log_json() {
    with_lab("log2", |lab| {
        let t0 = Instant::now();
        // The level from the configuration this time.
        let debug = |c: String| c.replacen("[node]\n", "[node]\nlog_level = \"debug\"\n", 1);
        let [(h1, in1, _), (h2, ..)] = debug_log_pair(lab, debug, &["--log-format", "json"])?;
        phase(lab, "IKE up, daemons stopped", t0);
        for (host, log) in [("h1", &h1), ("h2", &h2)] {
            assert_clean(host, log)?;
            ensure!(
                log.lines().count() > 10,
                "{host}: only {} lines",
                log.lines().count()
            );
            for line in log.lines() {
                let v: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("{host}: not JSON: {line}"))?;
                ensure!(
                    v.is_object() && v["level"].is_string() && v["message"].is_string(),
                    "{host}: not a log object: {line}"
                );
            }
        }
        let events = |log: &str| -> Vec<serde_json::Value> {
            log.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        };
        let (e1, e2) = (events(&h1), events(&h2));
        let sent = e1
            .iter()
            .find(|e| e["message"] == "IKE sent IKE_AUTH request 1")
            .context("h1: no IKE_AUTH request sent")?;
        ensure!(
            sent["exchange"] == "IKE_AUTH"
                && sent["message_id"] == 1
                && sent["response"] == false
                && sent["level"] == "DEBUG"
                && sent["payloads"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("SA,TSi,TSr")),
            "h1: {sent}"
        );
        ensure!(
            e2.iter()
                .any(|e| e["message"] == "IKE received IKE_SA_INIT request 0"
                    && e["peer"] == "192.0.2.1:500"),
            "h2: no IKE_SA_INIT request received"
        );
        let child = e1
            .iter()
            .find(|e| e["message"] == "Child SA installed")
            .context("h1: no Child SA installed")?;
        ensure!(child["spi_in"] == in1.as_str(), "h1: {child}");
        ensure!(
            e1.iter().any(|e| e["source"] == "node.log_level"),
            "h1 does not say the level came from the config"
        );
        Ok(())
    });
}

/// What tshark found in a capture.
#[derive(Debug, PartialEq, Eq)]
struct Decrypted {
    /// IKE_AUTH frames, and the identities decoded in them.
    ike_auth: usize,
    ids: Vec<String>,
    /// ESP frames, those with a good ICV, and those decoded to VXLAN VNI
    /// 100.
    esp: usize,
    icv_good: usize,
    vni_100: usize,
    /// Tenant echo requests and replies, by (inner source, inner
    /// destination).
    echo: Vec<(String, u8, String)>,
}

fn decrypted(rows: &[Dissected]) -> Decrypted {
    let mut d = Decrypted {
        ike_auth: 0,
        ids: Vec::new(),
        esp: 0,
        icv_good: 0,
        vni_100: 0,
        echo: Vec::new(),
    };
    for r in rows {
        if r.has("isakmp.exchangetype", "35") {
            d.ike_auth += 1;
            d.ids.extend(
                r.get("isakmp.id.data.fqdn")
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
        if !r.get("esp.spi").is_empty() {
            d.esp += 1;
            d.icv_good += usize::from(r.has("esp.icv_good", "1") || r.has("esp.icv_good", "True"));
            d.vni_100 += usize::from(r.has("vxlan.vni", "100"));
            // The outer header first, then the tenant's.
            let (src, dst) = (r.get("ip.src"), r.get("ip.dst"));
            if let (Some(src), Some(dst), Ok(t)) = (
                src.split(',').nth(1),
                dst.split(',').nth(1),
                r.get("icmp.type").parse::<u8>(),
            ) {
                d.echo.push((src.to_owned(), t, dst.to_owned()));
            }
        }
    }
    d.ids.sort();
    d.ids.dedup();
    d
}

/// Every run of at least 32 hex digits in `text` (keys; SPIs are
/// shorter, and a "0x" prefix splits off), lowercase.
fn hex_runs(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() >= 32)
        .map(str::to_lowercase)
        .collect()
}

/// `tunsec keys export --wireshark DIR` (issue 15): a capture runs from
/// before the daemons start; the tunnel comes up with FQDN identities,
/// the tenants ping, and both hosts export their keys. tshark, given
/// either host's exported tables as its configuration, decrypts the
/// IKE_AUTH exchange down to both identities and the ESP traffic down to
/// the VXLAN VNI and the tenants' ICMP echoes with good ICVs; without
/// them, the same capture shows none of it. The files are mode 0600, the
/// CLI warns on stderr, each daemon logs a warning naming the export, and
/// no log holds a key.
#[test]
fn ike_keys_export_for_wireshark() {
    with_lab("key1", |lab| {
        let t0 = Instant::now();
        let pair = two_hosts(lab)?;
        let pcap = start_capture(lab, &pair.ul, "capture")?;
        let ids = |me: u8, peer: u8| {
            format!("local_id = \"fqdn:h{me}.keys.test\"\nremote_id = \"fqdn:h{peer}.keys.test\"\n")
        };
        start_pair(
            lab,
            &pair,
            ("wireshark-psk", &ids(1, 2)),
            ("wireshark-psk", &ids(2, 1)),
        )?;
        wait_status(lab, "Child SAs up", |s1, s2| {
            Ok(sa_count(s1, "h2") >= 2 && sa_count(s2, "h1") >= 2)
        })?;
        let t1 = add_tenant(lab, &pair.h1, 1, TAP)?;
        let t2 = add_tenant(lab, &pair.h2, 2, TAP)?;
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&t2, &tenant_addr(1))?;
        phase(lab, "IKE up, pings", t0);

        let mut exported = Vec::new();
        for (n, ns) in [(1u8, &pair.h1), (2, &pair.h2)] {
            let dir = lab.dir.path().join(format!("keys-h{n}"));
            let (dir_s, sock) = (
                dir.to_string_lossy().into_owned(),
                socket_path(lab, n).to_string_lossy().into_owned(),
            );
            let out = exec_output(
                ns,
                env!("CARGO_BIN_EXE_tunsec"),
                &["keys", "export", "--wireshark", &dir_s, "--socket", &sock],
            )?;
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            eprintln!("  h{n}: tunsec keys export:\n{stdout}{stderr}");
            ensure!(out.status.success(), "h{n}: tunsec keys export failed");
            ensure!(
                stderr.contains("WARNING: SECRET KEYS WRITTEN"),
                "h{n}: no warning on stderr: {stderr}"
            );
            // One IKE SA, and the Child SA pair, each direction.
            ensure!(
                stdout.contains("esp_sa (2 SAs)")
                    && stdout.contains("ikev2_decryption_table (1 SAs)"),
                "h{n}: {stdout}"
            );
            for file in [tunsec::keys::ESP_SA_FILE, tunsec::keys::IKEV2_FILE] {
                let mode = std::os::unix::fs::PermissionsExt::mode(
                    &std::fs::metadata(dir.join(file))?.permissions(),
                ) & 0o777;
                ensure!(mode == 0o600, "h{n}: {file} is mode {mode:o}");
            }
            exported.push(dir);
        }
        stop_capture(lab, "capture");
        phase(lab, "keys exported, capture stopped", t0);

        // Without the tables: the exchanges and the ESP are there, and
        // nothing inside them is readable.
        let empty = lab.dir.path().join("no-keys");
        std::fs::create_dir_all(&empty)?;
        let plain = decrypted(&tshark_decrypt(lab, &pcap, &empty)?);
        eprintln!("  without the keys: {plain:?}");
        ensure!(
            plain.ike_auth >= 2 && plain.esp >= 12,
            "the capture lacks IKE_AUTH or ESP: {plain:?}"
        );
        ensure!(
            plain.ids.is_empty()
                && plain.vni_100 == 0
                && plain.echo.is_empty()
                && plain.icv_good == 0,
            "tshark read the traffic without the keys: {plain:?}"
        );

        // With either host's tables: everything.
        let (a, b) = (tenant_addr(1), tenant_addr(2));
        for (n, dir) in exported.iter().enumerate() {
            let d = decrypted(&tshark_decrypt(lab, &pcap, dir)?);
            eprintln!("  with h{}'s keys: {d:?}", n + 1);
            ensure!(
                d.ike_auth == plain.ike_auth && d.esp == plain.esp,
                "h{}: a different dissection: {d:?}",
                n + 1
            );
            ensure!(
                d.ids == ["h1.keys.test", "h2.keys.test"],
                "h{}: the IKE_AUTH identities: {:?}",
                n + 1,
                d.ids
            );
            ensure!(
                d.vni_100 == d.esp && d.icv_good == d.esp,
                "h{}: of {} ESP frames {} decode to VNI 100, {} with a good ICV",
                n + 1,
                d.esp,
                d.vni_100,
                d.icv_good
            );
            for (src, t, dst) in [(&a, 8, &b), (&b, 0, &a), (&b, 8, &a), (&a, 0, &b)] {
                let count = d
                    .echo
                    .iter()
                    .filter(|e| (&e.0, e.1, &e.2) == (src, t, dst))
                    .count();
                ensure!(
                    count >= 3,
                    "h{}: {count} ICMP type {t} from {src} to {dst}: {:?}",
                    n + 1,
                    d.echo
                );
            }
        }

        // The daemons logged the export, and no key.
        for n in [1u8, 2] {
            let log = std::fs::read_to_string(lab.dir.path().join(format!("h{n}.log")))?;
            let warning = log
                .lines()
                .find(|l| l.contains("WARN") && l.contains("KEYS EXPORTED"))
                .with_context(|| format!("h{n}: no warning of the export in the log"))?;
            eprintln!("  h{n}: {}", strip_ansi(warning));
            let log = log.to_lowercase();
            for dir in &exported {
                let mut keys = Vec::new();
                for file in [tunsec::keys::ESP_SA_FILE, tunsec::keys::IKEV2_FILE] {
                    keys.extend(hex_runs(&std::fs::read_to_string(dir.join(file))?));
                }
                ensure!(
                    keys.len() >= 4,
                    "too few keys in {}: {keys:?}",
                    dir.display()
                );
                for key in keys {
                    ensure!(!log.contains(&key), "h{n}: a key is in the log");
                }
            }
        }
        Ok(())
    });
}
