//! A packet reorderer for the end-to-end tests, in place of `tc qdisc
//! netem reorder`: this kernel has no `sch_netem` (nor `nft queue`), but it
//! has the iptables `NFQUEUE` target (through `nft_compat`) and
//! `nfnetlink_queue`.
//!
//! [`Reorderer::start`] binds an NFQUEUE in a host's namespace (a thread
//! that enters it with `setns`), then adds an `iptables-nft` rule to that
//! namespace's OUTPUT chain that queues the host's UDP datagrams to the
//! peer's ESP-in-UDP port. The thread accepts ESP datagrams at once, except
//! one in every [`EVERY`], which it holds until 3 to 20 later ESP datagrams
//! have been accepted (or [`HOLD_MAX`] has passed), then accepts: every
//! datagram reaches the wire, some out of order, as with netem's
//! `reorder`. Other datagrams on that port (IKE behind the non-ESP marker,
//! NAT keepalives) pass at once, in order.
//!
//! The rule has no `--queue-bypass` and the queue does not fail open: if
//! the reorderer is gone or falls behind, datagrams are dropped, never
//! silently sent in order, and the test's transfer fails. The rule lives
//! only in the lab's namespace and goes with it; the thread stops when the
//! [`Reorderer`] is finished or dropped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nfq::{Queue, Verdict};
use tunsec_lab::Lab;

/// One ESP datagram in this many is held back.
pub(crate) const EVERY: u64 = 100;
/// A held datagram goes out at the latest after this long, also when no
/// later datagram comes to overtake it.
pub(crate) const HOLD_MAX: Duration = Duration::from_millis(2);
/// The NFQUEUE number (queue numbers are per namespace).
const QUEUE: u16 = 0;
/// errno 2: what the kernel answers a verdict for an unknown packet id.
const ENOENT: i32 = 2;
/// How much of each packet the thread reads: the IPv4 and UDP headers and
/// the ESP SPI.
const COPY: u16 = 64;

/// What a reorderer did.
#[derive(Debug, Default)]
pub(crate) struct ReorderStats {
    /// ESP datagrams queued to it.
    pub(crate) esp: u64,
    /// Of those, held back and overtaken.
    pub(crate) held: u64,
    /// Other datagrams (IKE, keepalives), passed in order.
    pub(crate) other: u64,
    /// The SPI and sequence number of each datagram held back.
    pub(crate) held_packets: Vec<(u32, u32)>,
    /// Verdicts the kernel answered with ENOENT: the datagram was no
    /// longer queued (the kernel drops queued packets when a netfilter
    /// hook of the namespace goes, as when an nftables table is deleted).
    pub(crate) vanished: u64,
}

/// A running reorderer in one namespace; see the module documentation.
pub(crate) struct Reorderer {
    ns: String,
    /// The rule's match: the peer's address and port.
    peer: String,
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<ReorderStats>>>,
}

impl Reorderer {
    /// Starts reordering the UDP datagrams that namespace `ns` sends to
    /// `peer` port `port`: binds the queue, then adds the rule.
    pub(crate) fn start(lab: &Lab, ns: &str, peer: &str, port: u16) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (ns, stop) = (ns.to_owned(), Arc::clone(&stop));
            std::thread::Builder::new()
                .name(format!("reorder-{ns}"))
                .spawn(move || {
                    let queue = match open_queue(&ns) {
                        Ok(queue) => queue,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("{e:#}")));
                            return Ok(ReorderStats::default());
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    run(queue, &stop)
                })?
        };
        let mut me = Self {
            ns: ns.to_owned(),
            peer: peer.to_owned(),
            port,
            stop,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("reorderer in {ns}: {e}"),
            Err(_) => bail!("reorderer in {ns}: the queue thread did not start"),
        }
        let rule = me.rule("-A");
        let args: Vec<&str> = rule.iter().map(String::as_str).collect();
        lab.exec(ns, "iptables-nft", &args)
            .with_context(|| format!("reorderer in {ns}: the NFQUEUE rule"))?;
        // Fail early if the thread died meanwhile.
        if me.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            me.finish()?;
            bail!("reorderer in {ns}: the queue thread stopped");
        }
        Ok(me)
    }

    /// The `iptables-nft` arguments that add (`-A`) or delete (`-D`) the
    /// rule.
    fn rule(&self, op: &'static str) -> Vec<String> {
        ["-w", op, "OUTPUT", "-p", "udp", "-d", &self.peer, "--dport"]
            .into_iter()
            .map(str::to_owned)
            .chain([
                self.port.to_string(),
                "-j".to_owned(),
                "NFQUEUE".to_owned(),
                "--queue-num".to_owned(),
                QUEUE.to_string(),
            ])
            .collect()
    }

    /// Deletes the rule, so that the namespace's datagrams go out in
    /// order again, then [`finish`](Self::finish)es.
    pub(crate) fn remove(&mut self, lab: &Lab) -> anyhow::Result<ReorderStats> {
        let rule = self.rule("-D");
        let args: Vec<&str> = rule.iter().map(String::as_str).collect();
        lab.exec(&self.ns, "iptables-nft", &args)
            .with_context(|| format!("reorderer in {}: deleting the NFQUEUE rule", self.ns))?;
        self.finish()
    }

    /// Stops the thread (held datagrams are sent first) and returns what
    /// it did, or its error. Datagrams that the rule queues afterwards are
    /// dropped. Once only: later calls fail.
    pub(crate) fn finish(&mut self) -> anyhow::Result<ReorderStats> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self
            .thread
            .take()
            .with_context(|| format!("reorderer in {}: finished before", self.ns))?;
        match thread.join() {
            Ok(result) => result.with_context(|| format!("reorderer in {}", self.ns)),
            Err(_) => bail!("reorderer in {}: the queue thread panicked", self.ns),
        }
    }
}

impl Drop for Reorderer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.finish();
        }
    }
}

/// Enters namespace `ns` (this thread only) and binds the queue there.
fn open_queue(ns: &str) -> anyhow::Result<Queue> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("namespace {ns}"))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns into {ns}"))?;
    let mut queue = Queue::open().context("the nfnetlink queue socket")?;
    queue.bind(QUEUE).context("binding the NFQUEUE")?;
    queue.set_copy_range(QUEUE, COPY)?;
    queue.set_queue_max_len(QUEUE, 8192)?;
    queue.set_fail_open(QUEUE, false)?;
    // Without blocking, so that the thread sees `stop` and the hold
    // deadlines (the crate offers no poll on its socket).
    queue.set_nonblocking(true);
    Ok(queue)
}

/// The SPI and sequence number of an IPv4 packet that is a UDP datagram
/// carrying ESP: its payload starts with a nonzero SPI (zero is the non-ESP
/// marker of IKE, RFC 3948 section 2.2; a keepalive is one byte).
fn esp_id(packet: &[u8]) -> Option<(u32, u32)> {
    let vihl = *packet.first()?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || packet.get(9) != Some(&17) {
        return None;
    }
    let word = |at: usize| {
        packet
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let spi = word(ihl + 8).filter(|&spi| spi != 0)?;
    Some((spi, word(ihl + 12)?))
}

/// A datagram held back: sent once `accepted` reaches `after`, or at
/// `deadline`.
struct Held {
    msg: nfq::Message,
    after: u64,
    deadline: Instant,
}

fn run(mut queue: Queue, stop: &AtomicBool) -> anyhow::Result<ReorderStats> {
    let mut stats = ReorderStats::default();
    let mut held: VecDeque<Held> = VecDeque::new();
    let mut accepted = 0u64;
    let accept = |queue: &mut Queue, mut msg: nfq::Message| {
        msg.set_verdict(Verdict::Accept);
        queue.verdict(msg).context("verdict")
    };
    while !stop.load(Ordering::Relaxed) {
        match queue.recv() {
            Ok(msg) => {
                let Some(id) = esp_id(msg.get_payload()) else {
                    stats.other += 1;
                    accept(&mut queue, msg)?;
                    continue;
                };
                stats.esp += 1;
                if stats.esp % EVERY == 0 {
                    // 3 to 20 later datagrams overtake it.
                    let k = 3 + (stats.held * 7) % 18;
                    stats.held += 1;
                    stats.held_packets.push(id);
                    held.push_back(Held {
                        msg,
                        after: accepted + k,
                        deadline: Instant::now() + HOLD_MAX,
                    });
                    continue;
                }
                accept(&mut queue, msg)?;
                accepted += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(if held.is_empty() {
                    200
                } else {
                    50
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // The answer to a verdict for a datagram the kernel no longer
            // holds (see `ReorderStats::vanished`).
            Err(e) if e.raw_os_error() == Some(ENOENT) => stats.vanished += 1,
            Err(e) => return Err(e).context("receiving from the NFQUEUE"),
        }
        // Release in order of holding whatever is due.
        let now = Instant::now();
        while let Some(h) = held.front() {
            if h.after > accepted && h.deadline > now {
                break;
            }
            let h = held.pop_front().expect("front");
            accept(&mut queue, h.msg)?;
            accepted += 1;
        }
    }
    for h in held {
        accept(&mut queue, h.msg)?;
    }
    Ok(stats)
}
