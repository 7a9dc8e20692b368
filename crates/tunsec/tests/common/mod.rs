//! Lab helpers shared by the end-to-end tests: an underlay bridge, hosts
//! on it, and tenants behind a host's TAP device with the TAP's MTU. All
//! addresses live only inside the lab's namespaces.

// Each test crate compiles this module; not every crate uses every helper.
#![allow(dead_code)]

pub(crate) mod flood;
pub(crate) mod reorder;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tunsec::control::{self, Request, Response};
use tunsec::status::Status;
use tunsec_lab::Lab;

/// Host `n`'s underlay address.
pub(crate) fn host_addr(n: u8) -> String {
    format!("192.0.2.{n}")
}

/// The address of the tenant behind host `n`.
pub(crate) fn tenant_addr(n: u8) -> String {
    format!("198.51.100.{n}")
}

/// The underlay: namespace `ul` with bridge `br0` (no multicast snooping:
/// its IGMP queries would be noise in the captures).
pub(crate) fn add_underlay(lab: &mut Lab) -> anyhow::Result<String> {
    lab.add_underlay()
}

/// Host namespace `short` on the underlay with `eth0` at 192.0.2.`n`.
pub(crate) fn add_host(lab: &mut Lab, ul: &str, short: &str, n: u8) -> anyhow::Result<String> {
    let h = lab.add_ns(short)?;
    let port = format!("ul-{short}");
    lab.veth(&h, "eth0", ul, &port)?;
    lab.exec(ul, "ip", &["link", "set", &port, "master", "br0"])?;
    lab.exec(
        &h,
        "ip",
        &[
            "addr",
            "add",
            &format!("{}/24", host_addr(n)),
            "dev",
            "eth0",
        ],
    )?;
    Ok(h)
}

/// Tenant namespace `t<n>` (198.51.100.`n`) behind bridge `br-t` of
/// `host`, which also holds the TAP device `tap`. The tenant's MTU is the
/// TAP's, as a cloud would tell its VMs, so that full-size frames fit.
pub(crate) fn add_tenant(lab: &mut Lab, host: &str, n: u8, tap: &str) -> anyhow::Result<String> {
    add_tenant_on(lab, host, &format!("t{n}"), "t", tap, &tenant_addr(n))
}

/// Tenant namespace `name` behind `tap` of `host`, through bridge
/// `br-{id}` and veth `v{id}`, with address `addr`/24. The test enslaves
/// the TAP device to the bridge itself.
pub(crate) fn add_tenant_on(
    lab: &mut Lab,
    host: &str,
    name: &str,
    id: &str,
    tap: &str,
    addr: &str,
) -> anyhow::Result<String> {
    let (t, bridge) = add_tenant_behind_bridge(lab, host, name, id, addr)?;
    lab.wait_for(&format!("{tap} in {host}"), Duration::from_secs(5), || {
        lab.try_exec(host, "ip", &["link", "show", tap])
    })?;
    lab.exec(host, "ip", &["link", "set", tap, "master", &bridge])?;
    set_tenant_mtu(lab, host, &t, tap)?;
    Ok(t)
}

/// Tenant namespace `name` with address `addr`/24 behind a new bridge
/// `br-{id}` of `host` (through veth `v{id}`), without a TAP device on
/// it: for `[[network]] bridge = "br-{id}"`, where tunsecd enslaves its
/// TAP device itself. Returns the tenant's namespace and the bridge.
pub(crate) fn add_tenant_behind_bridge(
    lab: &mut Lab,
    host: &str,
    name: &str,
    id: &str,
    addr: &str,
) -> anyhow::Result<(String, String)> {
    let t = lab.add_ns(name)?;
    let bridge = format!("br-{id}");
    let veth = format!("v{id}");
    lab.add_bridge(host, &bridge)?;
    lab.veth(host, &veth, &t, "eth0")?;
    lab.exec(host, "ip", &["link", "set", &veth, "master", &bridge])?;
    lab.exec(
        &t,
        "ip",
        &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
    )?;
    Ok((t, bridge))
}

/// Gives tenant `t` the MTU of `tap` of `host`, as a cloud would tell its
/// VMs, so that full-size frames fit.
pub(crate) fn set_tenant_mtu(lab: &Lab, host: &str, t: &str, tap: &str) -> anyhow::Result<()> {
    let mtu = link_mtu(lab, host, tap)?;
    lab.exec(t, "ip", &["link", "set", "eth0", "mtu", &mtu.to_string()])?;
    Ok(())
}

pub(crate) fn link_mtu(lab: &Lab, ns: &str, dev: &str) -> anyhow::Result<u16> {
    let out = lab.exec(ns, "ip", &["-o", "link", "show", dev])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words
        .find(|w| *w == "mtu")
        .and_then(|_| words.next())
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no MTU for {dev} in {ns}: {text}"))
}

pub(crate) const TUNSECD: &str = env!("CARGO_BIN_EXE_tunsecd");

/// Tenant bytes that must never show on the underlay in the clear (the
/// pings carry it, `ping -p`).
pub(crate) const MARKER: &[u8; 16] = b"TSE2E-CLEARTEXT!";

pub(crate) const TAP: &str = "ts-blue";

pub(crate) fn dump_logs(lab: &Lab) {
    for log in lab.logs() {
        let text = strip_ansi(&std::fs::read_to_string(&log).unwrap_or_default());
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(200)..];
        eprintln!(
            "--- {} ({} lines, last {} shown) ---\n{}",
            log.display(),
            lines.len(),
            tail.len(),
            tail.join("\n")
        );
    }
}

/// Runs `body` in a fresh lab named `prefix`, after the suite's
/// `preflight` (its root and tool checks, [`require`]). On an error or a
/// panic (or always, with `TUNSEC_E2E_LOGS` set) it prints every log in
/// the lab's directory, then fails the test; the lab is torn down either
/// way.
pub(crate) fn with_lab(
    prefix: &str,
    preflight: fn(),
    body: impl FnOnce(&mut Lab) -> anyhow::Result<()>,
) {
    with_lab_teardown(prefix, preflight, |_| {}, body);
}

/// [`with_lab`], with `teardown` run on the lab after the logs are printed
/// and before the lab is torn down (for processes the lab does not own).
pub(crate) fn with_lab_teardown(
    prefix: &str,
    preflight: fn(),
    teardown: fn(&Lab),
    body: impl FnOnce(&mut Lab) -> anyhow::Result<()>,
) {
    preflight();
    let started = Instant::now();
    let mut lab =
        Lab::new(prefix).unwrap_or_else(|e| panic!("{prefix}: cannot build the lab: {e:#}"));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mut lab)));
    let failed = !matches!(result, Ok(Ok(())));
    if failed || std::env::var_os("TUNSEC_E2E_LOGS").is_some() {
        dump_logs(&lab);
    }
    teardown(&lab);
    drop(lab);
    eprintln!("{prefix}: {:.1} s", started.elapsed().as_secs_f64());
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{prefix}: {e:#}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// [`assert_no_drops`] with this checks every reason the status lists.
pub(crate) const EVERY_REASON: &[&str] = &[];

/// Fails, naming the node and the reasons, unless the data path of `s`
/// counted no drop for any of `reasons` ([`EVERY_REASON`]: for any reason
/// at all). A reason the status does not list is an error too.
pub(crate) fn assert_no_drops(s: &Status, reasons: &[&str]) -> anyhow::Result<()> {
    let mut dropped = Vec::new();
    if reasons.is_empty() {
        dropped.extend(s.drops.iter().filter(|(_, n)| **n > 0));
    }
    for &reason in reasons {
        let (name, n) = s
            .drops
            .get_key_value(reason)
            .with_context(|| format!("{}: no drop reason {reason:?}", s.node.name))?;
        if *n > 0 {
            dropped.push((name, n));
        }
    }
    ensure!(
        dropped.is_empty(),
        "{}: data-path drops {dropped:?}:\n{}",
        s.node.name,
        s.render()
    );
    Ok(())
}

/// Fails unless every SA of `peer` in `s` counted no drop for any of
/// `reasons` (ESP drops, counted per SA).
pub(crate) fn assert_no_sa_drops(s: &Status, peer: &str, reasons: &[&str]) -> anyhow::Result<()> {
    let p = s
        .peers
        .iter()
        .find(|p| p.name == peer)
        .with_context(|| format!("{}: no peer {peer}", s.node.name))?;
    for sa in &p.sas {
        for &reason in reasons {
            let n = sa
                .drops
                .get(reason)
                .with_context(|| format!("{}: no SA drop reason {reason:?}", s.node.name))?;
            ensure!(*n == 0, "{}: {reason} drops on {sa:?}", s.node.name);
        }
    }
    Ok(())
}

/// Removes the colour codes that tracing writes.
pub(crate) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn phase(lab: &Lab, what: &str, since: Instant) {
    eprintln!(
        "  [{}] {what}: {:.1} s",
        lab.ns(""),
        since.elapsed().as_secs_f64()
    );
}

/// Runs `ip netns exec NS CMD ARGS` and returns its output, whatever its
/// exit status.
pub(crate) fn exec_output(ns: &str, cmd: &str, args: &[&str]) -> anyhow::Result<Output> {
    Command::new("ip")
        .args(["netns", "exec", ns, cmd])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd} in {ns}"))
}

/// Starts `tunsecd` (log `h<n>.log`) in `ns` and waits until its control
/// socket answers.
pub(crate) fn start_tunsecd(lab: &mut Lab, ns: &str, n: u8, config: &Path) -> anyhow::Result<()> {
    let config = config.to_string_lossy().into_owned();
    lab.spawn(
        &format!("h{n}"),
        ns,
        Path::new(TUNSECD),
        &["--config", &config],
    )?;
    wait_for_tunsecd(lab, n)
}

/// As [`start_tunsecd`], with more arguments (`--log-level debug`), and
/// without the test's own `RUST_LOG`, so that the log level is the one
/// the arguments or the config give (`env -u RUST_LOG` execs tunsecd: its
/// pid stays the lab's).
pub(crate) fn start_tunsecd_with(
    lab: &mut Lab,
    ns: &str,
    n: u8,
    config: &Path,
    extra: &[&str],
) -> anyhow::Result<()> {
    let config = config.to_string_lossy().into_owned();
    let mut args = vec!["-u", "RUST_LOG", TUNSECD, "--config", config.as_str()];
    args.extend_from_slice(extra);
    lab.spawn(&format!("h{n}"), ns, Path::new("env"), &args)?;
    wait_for_tunsecd(lab, n)
}

/// Waits until tunsecd `h<n>` answers on its control socket.
fn wait_for_tunsecd(lab: &Lab, n: u8) -> anyhow::Result<()> {
    let sock = socket_path(lab, n);
    lab.wait_for(
        &format!("tunsecd h{n} to answer on {}", sock.display()),
        Duration::from_secs(20),
        || {
            matches!(
                control::call(&sock, &Request::Status),
                Ok(Response::Status(_))
            )
        },
    )
}

pub(crate) fn status(lab: &Lab, n: u8) -> anyhow::Result<Status> {
    match control::call(&socket_path(lab, n), &Request::Status)? {
        Response::Status(s) => Ok(*s),
        other => bail!("h{n}: unexpected answer to status: {other:?}"),
    }
}

pub(crate) fn marker_hex() -> String {
    hex::encode(MARKER)
}

/// Pings `dst` from `ns` `count` times (payload: the marker); returns how
/// many replies came back.
pub(crate) fn ping(ns: &str, dst: &str, count: u32) -> anyhow::Result<u32> {
    let count = count.to_string();
    let out = exec_output(
        ns,
        "ping",
        &[
            "-c",
            &count,
            "-i",
            "0.2",
            "-W",
            "2",
            "-s",
            "200",
            "-p",
            &marker_hex(),
            dst,
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(',')
        .find_map(|part| part.trim().strip_suffix(" received"))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("ping {dst} from {ns}: unexpected output: {text}"))
}

/// Starts `count` pings at 0.1 s from `ns` to `dst` in the background,
/// to count with [`pings_received`] (pings across a reload, a rekey, a
/// re-authentication).
pub(crate) fn pings(ns: &str, dst: &str, count: u32) -> anyhow::Result<std::process::Child> {
    Ok(Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", &count.to_string()])
        .args(["-i", "0.1", "-W", "2", dst])
        .stdout(Stdio::piped())
        .spawn()?)
}

/// How many replies a [`pings`] run got, once it has ended.
pub(crate) fn pings_received(child: std::process::Child) -> anyhow::Result<u32> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(',')
        .find_map(|part| part.trim().strip_suffix(" received"))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("ping output: {text}"))
}

pub(crate) fn ping_ok(ns: &str, dst: &str) -> anyhow::Result<()> {
    let got = ping(ns, dst, 3)?;
    ensure!(got == 3, "ping {dst} from {ns}: {got} of 3 replies");
    Ok(())
}

/// Counts the marker in `data`.
pub(crate) fn count_marker(data: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while let Some(pos) = data[i..].iter().position(|&b| b == MARKER[0]) {
        let at = i + pos;
        if data[at..].starts_with(MARKER) {
            n += 1;
        }
        i = at + 1;
    }
    n
}

/// Starts capturing `br0` of the underlay namespace into `<label>.pcap`.
pub(crate) fn start_capture(lab: &mut Lab, ul: &str, label: &str) -> anyhow::Result<PathBuf> {
    capture(lab, ul, label, &[])
}

/// [`start_capture`], keeping only the first `snaplen` bytes of each
/// frame (the headers).
pub(crate) fn start_capture_headers(
    lab: &mut Lab,
    ul: &str,
    label: &str,
    snaplen: u32,
) -> anyhow::Result<PathBuf> {
    capture(lab, ul, label, &["-s", &snaplen.to_string()])
}

fn capture(lab: &mut Lab, ul: &str, label: &str, extra: &[&str]) -> anyhow::Result<PathBuf> {
    let pcap = lab.dir.path().join(format!("{label}.pcap"));
    let pcap_s = pcap.to_string_lossy().into_owned();
    let mut args = vec!["-q", "-i", "br0"];
    args.extend(extra);
    args.extend(["-B", "64", "-P", "-w", &pcap_s]);
    lab.spawn(label, ul, Path::new("dumpcap"), &args)?;
    lab.wait_for(
        &format!("capture {label} to start"),
        Duration::from_secs(10),
        || std::fs::metadata(&pcap).is_ok_and(|m| m.len() > 0),
    )?;
    Ok(pcap)
}

/// Lets the capture flush, then stops it.
pub(crate) fn stop_capture(lab: &mut Lab, label: &str) {
    std::thread::sleep(Duration::from_millis(500));
    lab.stop(label);
}

pub(crate) fn socket_path(lab: &Lab, n: u8) -> PathBuf {
    lab.dir.path().join(format!("h{n}.sock"))
}

/// One captured frame, as tshark dissects it (outermost values; the
/// first occurrence of each field).
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) number: u64,
    /// Seconds since the epoch.
    pub(crate) time: f64,
    /// `frame.protocols`, e.g. `eth:ethertype:ip:udp:udpencap:esp`.
    pub(crate) protocols: String,
    pub(crate) src: String,
    pub(crate) dst: String,
    pub(crate) sport: Option<u16>,
    pub(crate) dport: Option<u16>,
    /// The VXLAN VNI, for cleartext VXLAN.
    pub(crate) vni: Option<u32>,
}

/// `tshark -r PCAP [-Y FILTER] -T fields` for `fields`: its output, a
/// line a frame, the first occurrence of each field, separated by tabs.
pub(crate) fn tshark_fields(
    pcap: &Path,
    filter: Option<&str>,
    fields: &[&str],
) -> anyhow::Result<String> {
    let pcap = pcap.to_string_lossy();
    let mut args = vec!["-r", &pcap];
    if let Some(filter) = filter {
        args.extend(["-Y", filter]);
    }
    args.extend(["-T", "fields", "-E", "occurrence=f", "-E", "separator=/t"]);
    for f in fields {
        args.extend(["-e", f]);
    }
    let out = tunsec_lab::run("tshark", &args)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every frame of a capture file, dissected by tshark.
pub(crate) fn frames(pcap: &Path) -> anyhow::Result<Vec<Frame>> {
    let text = tshark_fields(
        pcap,
        None,
        &[
            "frame.number",
            "frame.time_epoch",
            "frame.protocols",
            "ip.src",
            "ip.dst",
            "udp.srcport",
            "udp.dstport",
            "vxlan.vni",
        ],
    )?;
    let mut frames = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        ensure!(f.len() == 8, "tshark printed {line:?}");
        frames.push(Frame {
            number: f[0].parse()?,
            time: f[1].parse()?,
            protocols: f[2].to_owned(),
            src: f[3].to_owned(),
            dst: f[4].to_owned(),
            sport: f[5].parse().ok(),
            dport: f[6].parse().ok(),
            vni: f[7].parse().ok(),
        });
    }
    Ok(frames)
}

/// The first ten frames, one per line, for an error message.
pub(crate) fn describe(frames: &[&Frame]) -> String {
    frames
        .iter()
        .take(10)
        .map(|f| {
            format!(
                "\n  #{} {} {} -> {} ports {:?} -> {:?}",
                f.number, f.protocols, f.src, f.dst, f.sport, f.dport
            )
        })
        .collect()
}

pub(crate) use tunsec_lab::is_root;

/// A tool a test suite needs: the command, arguments that make it succeed
/// quickly, and the Debian package that has it.
pub(crate) type Tool<'a> = (&'a str, &'a [&'a str], &'a str);

/// Fails (never skips) unless this runs as root and every tool works;
/// `suite` names the tests in the message.
pub(crate) fn require(suite: &str, tools: &[Tool<'_>]) {
    assert!(
        is_root(),
        "the {suite} build network namespaces: run them as root"
    );
    for &(tool, args, package) in tools {
        let ok = Command::new(tool)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "{tool} is missing or broken: the {suite} need it \
             (apt-get install {package}, or run scripts/deps.sh)"
        );
    }
}

/// Random bytes, but the second fill (the nonce, after the IKE SPI, in
/// `IkeSa::initiate`) is all `.0`: a test initiator whose nonce is the
/// lowest (0x00) or highest (0xff) there is, so that it loses or wins
/// against a crossing attempt of tunsecd's for sure.
pub(crate) struct NonceOf(pub(crate) u8, pub(crate) u32);

impl tunsec_ike::sa::Random for NonceOf {
    fn fill(&mut self, dest: &mut [u8]) -> tunsec_ike::Result<()> {
        self.1 += 1;
        if self.1 == 2 {
            dest.fill(self.0);
            return Ok(());
        }
        tunsec_ike::sa::SystemRandom.fill(dest)
    }
}

/// The fields [`tshark_decrypt`] reads, every occurrence of each.
pub(crate) const KEY_FIELDS: &[&str] = &[
    "frame.number",
    "isakmp.exchangetype",
    "isakmp.id.data.fqdn",
    "esp.spi",
    "esp.icv_good",
    "vxlan.vni",
    "icmp.type",
    "ip.src",
    "ip.dst",
];

/// One captured frame as tshark dissected it: each of [`KEY_FIELDS`]
/// with its occurrences joined by commas ("" when absent).
pub(crate) struct Dissected(pub(crate) Vec<String>);

impl Dissected {
    pub(crate) fn get(&self, field: &str) -> &str {
        let i = KEY_FIELDS.iter().position(|f| *f == field).unwrap();
        &self.0[i]
    }

    pub(crate) fn has(&self, field: &str, value: &str) -> bool {
        self.get(field).split(',').any(|v| v == value)
    }
}

/// Runs tshark over `pcap` (a capture of `tunsec keys export`'s tests)
/// with `config` as its whole configuration
/// directory (Wireshark's personal preferences: the exported tables, or
/// nothing), ESP decryption and ICV checks on. Fails on anything on
/// stderr but tshark's "Running as user root" line, so a table that does
/// not load fails the test.
pub(crate) fn tshark_decrypt(
    lab: &Lab,
    pcap: &Path,
    config: &Path,
) -> anyhow::Result<Vec<Dissected>> {
    let mut cmd = Command::new("tshark");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", lab.dir.path())
        .env("XDG_CONFIG_HOME", lab.dir.path())
        .env("WIRESHARK_CONFIG_DIR", config)
        .env("LC_ALL", "C")
        .arg("-n")
        .arg("-r")
        .arg(pcap)
        .args(["-o", "esp.enable_encryption_decode:TRUE"])
        .args(["-o", "esp.enable_authentication_check:TRUE"])
        .args(["-T", "fields", "-E", "separator=|"])
        .args(["-E", "occurrence=a", "-E", "aggregator=,", "-E", "quote=n"]);
    for field in KEY_FIELDS {
        cmd.args(["-e", field]);
    }
    let out = cmd.output().context("cannot run tshark")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("Running as user \"root\""))
        .collect();
    ensure!(
        out.status.success() && errors.is_empty(),
        "tshark with {}: {}\n{}",
        config.display(),
        out.status,
        errors.join("\n")
    );
    let text = String::from_utf8(out.stdout)?;
    let rows: Vec<Dissected> = text
        .lines()
        .map(|l| Dissected(l.split('|').map(str::to_owned).collect()))
        .collect();
    ensure!(
        rows.iter().all(|r| r.0.len() == KEY_FIELDS.len()),
        "tshark printed:\n{text}"
    );
    Ok(rows)
}

/// Cuts IKE on its way out of each of `hosts` (an nftables table of the
/// host's own): UDP port 500, and port 4500 behind the non-ESP marker
/// (the first four bytes of the UDP payload are zero). ESP still passes,
/// so the SAs carry traffic but no exchange can rekey them.
pub(crate) fn cut_ike(lab: &Lab, hosts: &[&str]) -> anyhow::Result<()> {
    let file = lab.dir.path().join("cut-ike.nft");
    std::fs::write(
        &file,
        "table inet cut {\n chain out {\n  type filter hook output priority 0;\n  \
         udp dport 500 drop\n  udp dport 4500 @th,64,32 0 drop\n }\n}\n",
    )?;
    for h in hosts {
        lab.exec(h, "nft", &["-f", &file.to_string_lossy()])?;
    }
    Ok(())
}

/// Creates an OVSDB database `dir/conf.db` with `schema` (ovsdb-tool);
/// an error says why it could not.
pub(crate) fn create_ovsdb(dir: &Path, schema: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let db = dir.join("conf.db");
    let out = tunsec_lab::run("ovsdb-tool", &["create", &db.to_string_lossy(), schema])?;
    ensure!(
        out.status.success(),
        "ovsdb-tool create {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Starts ovsdb-server on `dir/conf.db` under `label` in namespace `ns`,
/// listening on `dir/db.sock` (log `dir/ovsdb-server.log`), and waits
/// until it answers.
pub(crate) fn start_ovsdb(lab: &mut Lab, label: &str, ns: &str, dir: &Path) -> anyhow::Result<()> {
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    lab.spawn(
        label,
        ns,
        Path::new("ovsdb-server"),
        &[
            &p("conf.db"),
            &format!("--remote=punix:{}", p("db.sock")),
            &format!("--unixctl={}", p("ovsdb.ctl")),
            &format!("--log-file={}", p("ovsdb-server.log")),
        ],
    )?;
    let sock = dir.join("db.sock");
    lab.wait_for(
        &format!("{label} to listen"),
        Duration::from_secs(10),
        || std::os::unix::net::UnixStream::connect(&sock).is_ok(),
    )
}

/// A TCP receiver for a tenant (argv[1], default 198.51.100.2, port 5001):
/// prints the bytes and SHA-256 it received.
pub(crate) const TCP_SERVER: &str = r#"
import hashlib, socket, sys
addr = sys.argv[1] if len(sys.argv) > 1 else "198.51.100.2"
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, 5001))
s.listen(1)
c, _ = s.accept()
h, n = hashlib.sha256(), 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    h.update(d)
    n += len(d)
print(n, h.hexdigest(), flush=True)
"#;

/// A TCP sender from a tenant to argv[2] (default 198.51.100.2, port
/// 5001): random blocks for argv[1] seconds; prints the bytes and SHA-256
/// it sent.
pub(crate) const TCP_CLIENT: &str = r#"
import hashlib, os, socket, sys, time
seconds = float(sys.argv[1])
addr = sys.argv[2] if len(sys.argv) > 2 else "198.51.100.2"
block = os.urandom(1 << 16)
h, n = hashlib.sha256(), 0
c = socket.create_connection((addr, 5001), timeout=30)
end = time.monotonic() + seconds
while time.monotonic() < end:
    c.sendall(block)
    h.update(block)
    n += len(block)
c.close()
print(n, h.hexdigest(), flush=True)
"#;
