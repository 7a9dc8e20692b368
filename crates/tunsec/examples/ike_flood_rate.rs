//! The highest rate of spoofed IKE_SA_INIT requests at which a real peer
//! still connects within 5 s (issue 20). Two `tunsecd` (overlay mode, PSK)
//! and a flooding host in network namespaces on this machine:
//!
//! ```text
//!  h1 192.0.2.1 (tunsecd, the real peer: `tunsec up`)
//!  h2 192.0.2.2 (tunsecd, the target)          all on bridge br0 in ns ul
//!  f  192.0.2.3 (this program with --flood: a raw IP socket)
//! ```
//!
//! For each offered rate and each kind of flood, `f` sends valid
//! IKE_SA_INIT requests (each its own SPI, nonce and key share, made by
//! tunsec-ike) to h2 at that rate while h1 connects, `ROUNDS` times:
//! `tunsec down`, then `tunsec up` on h1 and the time until both hosts
//! hold the IKE SA and the Child SA pair. The kinds:
//!
//! - `peer`: every request has h1's address as its source, so h2 answers
//!   them with COOKIE notifies (RFC 7296 section 2.6), which go to h1;
//! - `spread`: each request from an address drawn at random from the
//!   16,384 of 100.64.0.0/18 (no peer's), which h2 refuses.
//!
//! It prints one row per rate and kind: the rate `f` reached, what h2
//! did per second (cookies, refusals, Diffie-Hellmans), the datagrams
//! h2's kernel dropped for a full socket buffer (UDP RcvbufErrors), and
//! h1's connect times; then, per kind, the highest rate at which every
//! round connected within 5 s. A benchmark, not a test: it asserts
//! nothing about the figures.
//!
//! ```sh
//! cargo build --release -p tunsec --bins --examples
//! target/release/examples/ike_flood_rate [ROUNDS] [RATE,RATE,...]
//! ```
//!
//! Needs root and iproute2. Everything shares this machine's cores: the
//! flooder, both tunsecd and the status polls (every 5 ms).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use socket2::{Domain, Protocol, Socket, Type};
use tunsec::control::{self, Request, Response};
use tunsec_ike::message::Identity;
use tunsec_ike::sa::{Config, IkeSa, SystemRandom};
use tunsec_lab::Lab;

/// The real peer, the target and the flooder.
const H1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const H2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const F: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
/// The bound a round must meet.
const WITHIN: Duration = Duration::from_secs(5);
/// How long a round may take before it counts as not connected.
const GIVE_UP: Duration = Duration::from_secs(10);
/// Distinct requests the flooder cycles through.
const REQUESTS: usize = 4096;
/// The shortest span a row's counters cover.
const WINDOW: Duration = Duration::from_secs(5);
/// Clock ticks per second of /proc/PID/stat's utime and stime (USER_HZ,
/// 100 on Linux).
const CLK_TCK: f64 = 100.0;
/// IPPROTO_RAW: the sender writes the IP header (IP_HDRINCL is implied;
/// the kernel fills in the checksum and the total length).
const IPPROTO_RAW: i32 = 255;
const DEFAULT_RATES: &str = "1000,10000,30000,100000,300000";

/// A kind of flood: its name and the source of request `i`.
#[derive(Clone, Copy)]
enum Kind {
    Peer,
    Spread,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Spread => "spread",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "peer" => Ok(Self::Peer),
            "spread" => Ok(Self::Spread),
            _ => bail!("kind: {s:?} is not peer or spread"),
        }
    }
}

mod support;
use support::*;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--flood") {
        let [_, _, kind, rate, secs] = &args[..] else {
            bail!("usage: ike_flood_rate --flood KIND RATE SECONDS");
        };
        return flood(Kind::parse(kind)?, rate.parse()?, secs.parse()?);
    }
    let rounds: usize = args
        .get(1)
        .map(|r| r.parse())
        .transpose()
        .context("ROUNDS: a whole number")?
        .unwrap_or(3);
    let rates: Vec<u64> = args
        .get(2)
        .map_or(DEFAULT_RATES, String::as_str)
        .split(',')
        .map(|r| r.parse().with_context(|| format!("RATE: {r:?}")))
        .collect::<anyhow::Result<_>>()?;
    measure(rounds, &rates)
}

/// One round's outcome: the time to connect, or `None` past [`GIVE_UP`].
type Round = Option<Duration>;

/// One row of the report.
struct Row {
    kind: Kind,
    offered: u64,
    reached: f64,
    cookies: f64,
    refused: f64,
    responders: u64,
    /// h2's CPU time (all threads) per 1,000 requests it handled.
    cpu_ms_per_1000: f64,
    kernel_drops: u64,
    rounds: Vec<Round>,
}

fn measure(rounds: usize, rates: &[u64]) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let tunsecd = tunsecd()?;
    let mut lab = Lab::new("tsfloodrate")?;
    let ul = lab.add_underlay()?;
    let mut sockets = Vec::new();
    let mut namespaces = Vec::new();
    for (n, addr) in [(1u8, H1), (2, H2), (3, F)] {
        let name = if n == 3 {
            "f".to_owned()
        } else {
            format!("h{n}")
        };
        let ns = lab.add_ns(&name)?;
        let port = format!("ul-{name}");
        lab.veth(&ns, "eth0", &ul, &port)?;
        lab.exec(&ul, "ip", &["link", "set", &port, "master", "br0"])?;
        lab.exec(
            &ns,
            "ip",
            &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        )?;
        namespaces.push(ns.clone());
        if n < 3 {
            let config = write_pair_config(&lab, n, "a flood rate measurement key")?;
            lab.spawn(
                &name,
                &ns,
                &tunsecd,
                &["--config", &config.to_string_lossy()],
            )?;
            sockets.push(lab.dir.path().join(format!("h{n}.sock")));
        }
    }
    let (h1, h2) = (&sockets[0], &sockets[1]);
    let up = || established(h1, "h2") && established(h2, "h1");
    if let Err(e) = lab.wait_for("the first IKE SA", Duration::from_secs(20), up) {
        for n in 1..=2 {
            let log = lab.dir.path().join(format!("h{n}.log"));
            eprintln!(
                "--- h{n}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        return Err(e);
    }

    let mut rows = Vec::new();
    for &rate in rates {
        for kind in [Kind::Peer, Kind::Spread] {
            call(h1, Request::Down { peer: "h2".into() })?;
            lab.wait_for("the IKE SA to go", GIVE_UP, || {
                !established(h1, "h2") && !established(h2, "h1")
            })?;
            let secs = (rounds as u64) * (GIVE_UP.as_secs() + 2) + 4;
            let (rate_s, secs_s) = (rate.to_string(), secs.to_string());
            lab.spawn(
                "flood",
                &namespaces[2],
                &exe,
                &["--flood", kind.name(), &rate_s, &secs_s],
            )?;
            // Let the flood reach its rate before the first round.
            std::thread::sleep(Duration::from_secs(1));
            let before = endpoint(h2)?;
            let drops_before = rcvbuf_errors(&lab, &namespaces[1])?;
            let cpu_before = cpu_ticks(&lab, "h2")?;
            let t0 = Instant::now();
            let mut times = Vec::new();
            for _ in 0..rounds {
                let t = Instant::now();
                call(h1, Request::Up { peer: "h2".into() })?;
                let mut took = None;
                while t.elapsed() < GIVE_UP {
                    if up() {
                        took = Some(t.elapsed());
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                times.push(took);
                call(h1, Request::Down { peer: "h2".into() })?;
                lab.wait_for("the IKE SA to go", GIVE_UP, || {
                    !established(h1, "h2") && !established(h2, "h1")
                })?;
            }
            // Counters over at least WINDOW: status lags by up to a
            // loop turn of the IKE thread.
            if let Some(rest) = WINDOW.checked_sub(t0.elapsed()) {
                std::thread::sleep(rest);
            }
            let after = endpoint(h2)?;
            let cpu_after = cpu_ticks(&lab, "h2")?;
            let span = t0.elapsed().as_secs_f64();
            let kernel_drops = rcvbuf_errors(&lab, &namespaces[1])? - drops_before;
            lab.stop("flood");
            let sent = std::fs::read_to_string(lab.dir.path().join("flood.log"))
                .ok()
                .and_then(|log| {
                    log.lines()
                        .filter_map(|l| l.strip_prefix("sent per second: "))
                        .next_back()
                        .and_then(|v| v.trim().parse::<f64>().ok())
                });
            let row = Row {
                kind,
                offered: rate,
                reached: sent.unwrap_or(f64::NAN),
                cookies: (after.cookies_sent - before.cookies_sent) as f64 / span,
                refused: (after.refused - before.refused) as f64 / span,
                responders: after.responders - before.responders,
                cpu_ms_per_1000: (cpu_after - cpu_before) as f64 * 1e3
                    / CLK_TCK
                    / ((after.refused - before.refused) as f64 / 1e3),
                kernel_drops,
                rounds: times,
            };
            println!("{}", render(&row));
            rows.push(row);
        }
    }
    call(h1, Request::Up { peer: "h2".into() })?;
    println!();
    for kind in [Kind::Peer, Kind::Spread] {
        let best = rows
            .iter()
            .filter(|r| r.kind.name() == kind.name())
            .filter(|r| r.rounds.iter().all(|t| t.is_some_and(|t| t <= WITHIN)))
            .map(|r| r.reached)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        match best {
            Some(v) => println!(
                "{}: every round connected within {} s up to {v:.0} requests/s reached",
                kind.name(),
                WITHIN.as_secs()
            ),
            None => println!("{}: no rate where every round connected", kind.name()),
        }
    }
    Ok(())
}

fn render(r: &Row) -> String {
    let mut times: Vec<String> = r
        .rounds
        .iter()
        .map(|t| {
            t.map_or("none".to_owned(), |t| {
                format!("{:.0}", t.as_secs_f64() * 1e3)
            })
        })
        .collect();
    let ok = r
        .rounds
        .iter()
        .filter(|t| t.is_some_and(|t| t <= WITHIN))
        .count();
    times.sort();
    format!(
        "{:<6} offered {:>7}/s reached {:>8.0}/s | h2: cookies {:>8.0}/s refused {:>8.0}/s DH {:>3} CPU {:>5.2} ms/1000 kernel drops {:>8} | h1 up in ms [{}], {ok}/{} within {} s",
        r.kind.name(),
        r.offered,
        r.reached,
        r.cookies,
        r.refused,
        r.responders,
        r.cpu_ms_per_1000,
        r.kernel_drops,
        times.join(", "),
        r.rounds.len(),
        WITHIN.as_secs()
    )
}

/// The flooder: `rate` requests a second of `kind` to h2 for `secs`
/// seconds, through a raw IP socket (this host's own address is never
/// the source). Prints the rate reached each second.
fn flood(kind: Kind, rate: u64, secs: u64) -> anyhow::Result<()> {
    let requests = requests()?;
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))?;
    let to = SocketAddr::V4(SocketAddrV4::new(H2, 0)).into();
    let mut seed: u32 = 0x9e37_79b9;
    let mut next_source = || -> Ipv4Addr {
        match kind {
            Kind::Peer => H1,
            Kind::Spread => {
                // xorshift32: 100.64.0.0/18, 16,384 addresses.
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) | (seed & 0x3fff))
            }
        }
    };
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let (mut sent, mut i, mut second, mut in_second) = (0u64, 0usize, start, 0u64);
    let mut packet = Vec::with_capacity(2048);
    while Instant::now() < end {
        if second.elapsed() >= Duration::from_secs(1) {
            println!(
                "sent per second: {:.0}",
                in_second as f64 / second.elapsed().as_secs_f64()
            );
            second = Instant::now();
            in_second = 0;
        }
        // Pace: as many as the elapsed time allows, checked every 64.
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        for _ in 0..(due - sent).min(64) {
            ip_udp(&mut packet, next_source(), &requests[i % requests.len()]);
            i += 1;
            if socket.send_to(&packet, &to).is_ok() {
                in_second += 1;
            }
            sent += 1;
        }
    }
    Ok(())
}

/// An IPv4 header and a UDP header (port 500 to 500, checksum 0, which
/// IPv4 allows) before `payload`, into `out`.
fn ip_udp(out: &mut Vec<u8>, src: Ipv4Addr, payload: &[u8]) {
    let udp_len = 8 + payload.len() as u16;
    let total = 20 + udp_len;
    out.clear();
    out.extend_from_slice(&[0x45, 0]);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&H2.octets());
    out.extend_from_slice(&500u16.to_be_bytes());
    out.extend_from_slice(&500u16.to_be_bytes());
    out.extend_from_slice(&udp_len.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(payload);
}

/// [`REQUESTS`] IKE_SA_INIT requests to h2, each a new IKE SA.
fn requests() -> anyhow::Result<Vec<Vec<u8>>> {
    let to = SocketAddr::from((H2, 500));
    (0..REQUESTS)
        .map(|_| {
            let config = Config::new(
                Identity::Ipv4(H1),
                Some(Identity::Ipv4(H2)),
                tunsec_esp::Key::from_slice(b"not the key"),
            );
            let mut sa = IkeSa::initiate(config, to, Instant::now(), Box::new(SystemRandom))?;
            Ok(sa.poll_transmit().context("no IKE_SA_INIT")?.bytes)
        })
        .collect()
}

/// h2's IKE endpoint counters.
fn endpoint(sock: &Path) -> anyhow::Result<tunsec::status::IkeEndpointStatus> {
    match control::call(sock, &Request::Status)? {
        Response::Status(s) => s.ike_endpoint.context("no IKE endpoint status"),
        other => bail!("status: {other:?}"),
    }
}

/// The CPU time, user and system, of the lab's process `label` (all its
/// threads), in clock ticks.
fn cpu_ticks(lab: &Lab, label: &str) -> anyhow::Result<u64> {
    let pid = lab.pid(label).context("no such process")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').context("no comm")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5): 12 and 13 here.
    Ok(f.get(11).context("no utime")?.parse::<u64>()?
        + f.get(12).context("no stime")?.parse::<u64>()?)
}

/// The UDP RcvbufErrors counter of namespace `ns`.
fn rcvbuf_errors(lab: &Lab, ns: &str) -> anyhow::Result<u64> {
    let out = lab.exec(ns, "cat", &["/proc/net/snmp"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .context("no RcvbufErrors")
}
