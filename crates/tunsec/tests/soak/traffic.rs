//! The soak's traffic, one flow per pair of hosts, each from a tenant:
//!
//! - TCP t1 -> t2: fresh random blocks at [`TCP_RATE`] bytes a second for
//!   the whole run; both ends print the bytes and their SHA-256.
//! - UDP t3 -> t1: [`UDP_RATE`] datagrams a second, each with its
//!   sequence number, sent on a fixed schedule from a start time the
//!   sender prints; the receiver prints each sequence number it gets.
//! - ICMP t2 -> t3: `ping -D -O` every 0.2 s, which prints each reply and
//!   each ping that got none, with the time.
//!
//! Losses are attributed by when the lost packet was sent.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, ensure};
use tunsec_lab::Lab;

use crate::common::*;

/// TCP bytes a second.
pub(crate) const TCP_RATE: u64 = 1 << 20;
/// UDP datagrams a second.
pub(crate) const UDP_RATE: u64 = 100;
/// Seconds between pings.
pub(crate) const PING_INTERVAL: f64 = 0.2;
const TCP_PORT: u16 = 5001;
const UDP_PORT: u16 = 5002;

const TCP_SERVER: &str = r#"
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
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

const TCP_CLIENT: &str = r#"
import hashlib, os, socket, sys, time
dst, port, seconds, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
h, n = hashlib.sha256(), 0
c = socket.create_connection((dst, port), timeout=60)
start = time.monotonic()
while time.monotonic() < start + seconds:
    if n > (time.monotonic() - start) * rate:
        time.sleep(0.01)
        continue
    block = os.urandom(1 << 14)
    c.sendall(block)
    h.update(block)
    n += len(block)
c.close()
print(n, h.hexdigest(), flush=True)
"#;

const UDP_SENDER: &str = r#"
import socket, sys, time
dst, port, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.time()
print("start %.3f" % start, flush=True)
i = 0
while i / rate < seconds:
    t = start + i / rate
    now = time.time()
    if t > now:
        time.sleep(t - now)
    try:
        s.sendto(i.to_bytes(8, "big") + b"TSE2E-CLEARTEXT!", (dst, port))
    except OSError:
        pass
    i += 1
print("sent %d" % i, flush=True)
"#;

const UDP_RECEIVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    d, _ = s.recvfrom(2048)
    print(int.from_bytes(d[:8], "big"), flush=True)
"#;

/// The running flows.
pub(crate) struct Traffic {
    tcp_client: Child,
    udp_sender: Child,
    tcp_log: PathBuf,
    udp_log: PathBuf,
    ping_log: PathBuf,
}

/// What the flows did.
#[derive(Debug, Default)]
pub(crate) struct Flows {
    /// TCP: (bytes, SHA-256) sent and received.
    pub(crate) tcp_sent: String,
    pub(crate) tcp_received: String,
    /// UDP: datagrams sent, and the send times (Unix seconds) of those
    /// never received.
    pub(crate) udp_sent: u64,
    pub(crate) udp_lost: Vec<f64>,
    /// Duplicated UDP datagrams (received more than once).
    pub(crate) udp_duplicates: u64,
    /// Pings sent, and the send times of those never answered.
    pub(crate) pings_sent: u64,
    pub(crate) pings_lost: Vec<f64>,
}

impl Traffic {
    /// Starts the three flows for `seconds`.
    pub(crate) fn start(lab: &mut Lab, tenants: [&str; 3], seconds: u64) -> anyhow::Result<Self> {
        let dir = lab.dir.path().to_path_buf();
        let script = |name: &str, text: &str| -> anyhow::Result<String> {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            Ok(path.to_string_lossy().into_owned())
        };
        let (t1, t2, t3) = (tenants[0], tenants[1], tenants[2]);
        let python = Path::new("python3");
        let secs = seconds.to_string();
        let tcp_log = lab.spawn(
            "tcp-server",
            t2,
            python,
            &[
                &script("tcp_server.py", TCP_SERVER)?,
                &tenant_addr(2),
                &TCP_PORT.to_string(),
            ],
        )?;
        let udp_log = lab.spawn(
            "udp-receiver",
            t1,
            python,
            &[
                &script("udp_receiver.py", UDP_RECEIVER)?,
                &tenant_addr(1),
                &UDP_PORT.to_string(),
            ],
        )?;
        let interval = PING_INTERVAL.to_string();
        let ping_log = lab.spawn(
            "ping",
            t2,
            Path::new("ping"),
            &[
                "-D",
                "-O",
                "-i",
                &interval,
                "-W",
                "1",
                "-s",
                "200",
                "-p",
                &marker_hex(),
                &tenant_addr(3),
            ],
        )?;
        std::thread::sleep(std::time::Duration::from_millis(500));
        let tcp_client = background(
            t1,
            &[
                &script("tcp_client.py", TCP_CLIENT)?,
                &tenant_addr(2),
                &TCP_PORT.to_string(),
                &secs,
                &TCP_RATE.to_string(),
            ],
        )?;
        let udp_sender = background(
            t3,
            &[
                &script("udp_sender.py", UDP_SENDER)?,
                &tenant_addr(1),
                &UDP_PORT.to_string(),
                &UDP_RATE.to_string(),
                &secs,
            ],
        )?;
        Ok(Self {
            tcp_client,
            udp_sender,
            tcp_log,
            udp_log,
            ping_log,
        })
    }

    /// Waits for the senders to finish, stops the receivers, and reads
    /// what every flow did.
    pub(crate) fn finish(self, lab: &mut Lab) -> anyhow::Result<Flows> {
        let tcp = self.tcp_client.wait_with_output()?;
        ensure!(
            tcp.status.success(),
            "the TCP sender failed: {}",
            String::from_utf8_lossy(&tcp.stderr)
        );
        let udp = self.udp_sender.wait_with_output()?;
        ensure!(
            udp.status.success(),
            "the UDP sender failed: {}",
            String::from_utf8_lossy(&udp.stderr)
        );
        let mut flows = Flows {
            tcp_sent: String::from_utf8_lossy(&tcp.stdout).trim().to_owned(),
            ..Flows::default()
        };
        lab.wait_for(
            "the TCP receiver's digest",
            std::time::Duration::from_secs(60),
            || std::fs::read_to_string(&self.tcp_log).is_ok_and(|s| !s.trim().is_empty()),
        )?;
        flows.tcp_received = std::fs::read_to_string(&self.tcp_log)?.trim().to_owned();
        // Late datagrams and pings: a second to arrive.
        std::thread::sleep(std::time::Duration::from_secs(1));
        lab.stop("udp-receiver");
        lab.stop("ping");
        lab.stop("tcp-server");

        let udp_out = String::from_utf8_lossy(&udp.stdout).into_owned();
        let start: f64 = udp_out
            .lines()
            .find_map(|l| l.strip_prefix("start "))
            .and_then(|v| v.trim().parse().ok())
            .context("the UDP sender printed no start")?;
        flows.udp_sent = udp_out
            .lines()
            .find_map(|l| l.strip_prefix("sent "))
            .and_then(|v| v.trim().parse().ok())
            .context("the UDP sender printed no count")?;
        let mut seen = vec![0u32; flows.udp_sent as usize];
        for line in std::fs::read_to_string(&self.udp_log)?.lines() {
            if let Some(n) = line
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n < seen.len())
            {
                seen[n] += 1;
            }
        }
        for (i, &n) in seen.iter().enumerate() {
            match n {
                0 => flows.udp_lost.push(start + i as f64 / UDP_RATE as f64),
                1 => {}
                more => flows.udp_duplicates += u64::from(more - 1),
            }
        }
        let (sent, lost) = ping_losses(&std::fs::read_to_string(&self.ping_log)?);
        flows.pings_sent = sent;
        flows.pings_lost = lost;
        Ok(flows)
    }
}

/// `python3 ARGS` in `ns`, its output piped.
fn background(ns: &str, args: &[&str]) -> anyhow::Result<Child> {
    Ok(Command::new("ip")
        .args(["netns", "exec", ns, "python3"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// From `ping -D -O` output: the pings sent (the highest sequence number
/// seen) and the send times of those never answered. A ping that got no
/// answer is reported when the next one goes, [`PING_INTERVAL`] after it.
fn ping_losses(text: &str) -> (u64, Vec<f64>) {
    let mut answered = std::collections::BTreeSet::new();
    let mut missing = std::collections::BTreeMap::new();
    let mut highest = 0;
    for line in text.lines() {
        let Some(ts) = line
            .strip_prefix('[')
            .and_then(|l| l.split_once(']'))
            .and_then(|(t, _)| t.parse::<f64>().ok())
        else {
            continue;
        };
        let Some(seq) = line
            .split("icmp_seq=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        highest = highest.max(seq);
        if line.contains("no answer yet") {
            missing.entry(seq).or_insert(ts - PING_INTERVAL);
        } else {
            answered.insert(seq);
        }
    }
    let lost = missing
        .into_iter()
        .filter(|(seq, _)| !answered.contains(seq))
        .map(|(_, t)| t)
        .collect();
    (highest, lost)
}

#[cfg(test)]
mod tests {
    use super::ping_losses;

    #[test]
    fn ping_losses_are_the_unanswered_ones() {
        let text = "PING 198.51.100.3 (198.51.100.3) 200(228) bytes of data.\n\
            [100.000] 208 bytes from 198.51.100.3: icmp_seq=1 ttl=64 time=0.5 ms\n\
            [100.400] no answer yet for icmp_seq=2\n\
            [100.600] no answer yet for icmp_seq=3\n\
            [100.650] 208 bytes from 198.51.100.3: icmp_seq=3 ttl=64 time=450 ms\n\
            [100.800] 208 bytes from 198.51.100.3: icmp_seq=4 ttl=64 time=0.5 ms\n";
        let (sent, lost) = ping_losses(text);
        assert_eq!(sent, 4);
        assert_eq!(lost.len(), 1);
        assert!((lost[0] - 100.2).abs() < 1e-9);
    }
}
