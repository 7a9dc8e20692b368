//! Measures how long tunsecd takes to configure the tunnels of one OVSDB
//! commit, and its memory per configured peer: a benchmark, not a test
//! (it prints figures and asserts nothing about them).
//!
//! In a network namespace: an ovsdb-server with the vswitch schema, and
//! tunsecd in gateway mode with `[ovsdb]` and no `[[peer]]`. One
//! `ovs-vsctl` transaction adds N vxlan interfaces with a PSK, to
//! addresses in 198.18.0.0/15 that nobody answers (the IKE exchanges are
//! left out). The time runs from just before that commit until tunsecd
//! has every peer configured: each in its status, its two steering rules
//! in place, its guard entries in the nftables table. Memory is tunsecd's
//! resident set before the commit and after, divided by N.
//!
//! ```sh
//! cargo build --release -p tunsec --bins --examples
//! target/release/examples/ovsdb_scale [N ...]     # default: 100 1000
//! ```
//!
//! Needs root, iproute2, nftables and openvswitch-switch. The status is
//! polled every 20 ms, so each figure is late by up to that much.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tunsec::control::{self, Request, Response};
use tunsec::status::Status;
use tunsec_lab::{Lab, run};

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

mod support;

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("N: a whole number"))
        .collect::<anyhow::Result<_>>()?;
    let sizes = if sizes.is_empty() {
        vec![100, 1000]
    } else {
        sizes
    };
    let tunsecd = support::tunsecd()?;
    println!(
        "| tunnels in one commit | configured after | tunsecd RSS before | after | per peer |"
    );
    println!("|---|---|---|---|---|");
    for n in sizes {
        let r = measure(&tunsecd, n)?;
        println!(
            "| {n} | {:.0} ms | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
            r.elapsed.as_secs_f64() * 1e3,
            r.rss_before as f64 / 1024.0,
            r.rss_after as f64 / 1024.0,
            (r.rss_after.saturating_sub(r.rss_before)) as f64 / n as f64
        );
    }
    Ok(())
}

struct Figures {
    elapsed: Duration,
    /// KiB.
    rss_before: u64,
    /// KiB.
    rss_after: u64,
}

fn measure(tunsecd: &Path, n: usize) -> anyhow::Result<Figures> {
    let mut lab = Lab::new("tsovscale")?;
    let h = lab.add_ns("h1")?;
    // The peers' side of the link: a namespace with no address, which
    // answers nothing.
    let void = lab.add_ns("void")?;
    lab.veth(&h, "eth0", &void, "eth0")?;
    lab.exec(&h, "ip", &["addr", "add", "198.18.0.1/15", "dev", "eth0"])?;
    let dir = lab.dir.path().to_path_buf();
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    run("ovsdb-tool", &["create", &p("conf.db"), SCHEMA])?;
    lab.spawn(
        "ovsdb",
        &h,
        Path::new("ovsdb-server"),
        &[
            &p("conf.db"),
            &format!("--remote=punix:{}", p("db.sock")),
            &format!("--unixctl={}", p("ovsdb.ctl")),
        ],
    )?;
    let db_sock = dir.join("db.sock");
    lab.wait_for("ovsdb-server", Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&db_sock).is_ok()
    })?;
    let db = format!("--db=unix:{}", p("db.sock"));
    vsctl(&db, &["init"])?;
    vsctl(&db, &["add-br", "br-int"])?;
    let sock = dir.join("tunsecd.sock");
    let config = dir.join("h1.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"h1\"\nunderlay = \"198.18.0.1\"\ncontrol_socket = \"{}\"\n\
             [gateway]\n[ovsdb]\nremote = \"unix:{}\"\n",
            sock.display(),
            p("db.sock")
        ),
    )?;
    let config_s = config.to_string_lossy().into_owned();
    lab.spawn("tunsecd", &h, tunsecd, &["--config", &config_s])?;
    lab.wait_for("tunsecd", Duration::from_secs(20), || status(&sock).is_ok())?;
    // `ip netns exec` execs tunsecd: find it by its configuration file.
    let found = run("pgrep", &["-f", &format!("tunsecd --config {config_s}")])?;
    let pid: u32 = String::from_utf8_lossy(&found.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .context("tunsecd's pid")?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = rss_kib(pid)?;

    // One transaction with N interfaces.
    let mut args: Vec<String> = vec![db.clone(), "--no-wait".into(), "--timeout=60".into()];
    for i in 0..n {
        let addr = format!("198.18.{}.{}", 1 + i / 250, 1 + i % 250);
        let name = format!("t{i}");
        args.extend(
            [
                "--",
                "add-port",
                "br-int",
                &name,
                "--",
                "set",
                "interface",
                &name,
                "type=vxlan",
            ]
            .map(str::to_owned),
        );
        args.push(format!("options:remote_ip={addr}"));
        args.push(format!("options:psk=benchmark-key-{i}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let out = run("ovs-vsctl", &args)?;
    ensure!(
        out.status.success(),
        "ovs-vsctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut elapsed = None;
    while t0.elapsed() < Duration::from_secs(120) {
        if let Ok(s) = status(&sock) {
            if s.peers.len() == n && rules(&lab, &h)? == 1 + 2 * n && guard_peers(&lab, &h)? == n {
                elapsed = Some(t0.elapsed());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = elapsed.with_context(|| format!("{n} tunnels not configured within 120 s"))?;
    let rss_after = rss_kib(pid)?;
    Ok(Figures {
        elapsed,
        rss_before,
        rss_after,
    })
}

fn vsctl(db: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec![db, "--no-wait"];
    all.extend_from_slice(args);
    let out = run("ovs-vsctl", &all)?;
    ensure!(out.status.success(), "ovs-vsctl {args:?}");
    Ok(())
}

fn status(sock: &Path) -> anyhow::Result<Status> {
    match control::call(sock, &Request::Status)? {
        Response::Status(s) => Ok(*s),
        other => anyhow::bail!("status: {other:?}"),
    }
}

/// tunsecd's steering rules (the bypass rule and two per peer).
fn rules(lab: &Lab, ns: &str) -> anyhow::Result<usize> {
    let out = lab.exec(ns, "ip", &["rule"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("29000:") || l.starts_with("29001:"))
        .count())
}

/// The peers with a counter in the guard.
fn guard_peers(lab: &Lab, ns: &str) -> anyhow::Result<usize> {
    let out = lab.exec(
        ns,
        "nft",
        &["list", "counters", "table", "inet", "tunsec_gw"],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("counter peer"))
        .count())
}

/// A process's resident set, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}
