//! The packet workers: plain threads that own their file descriptors and
//! move batches.
//!
//! Today there are two: the transmit worker reads frames from every TAP
//! device and sends tunnel datagrams; the receive worker reads datagrams
//! from the ESP and tunnel sockets and writes frames to the TAP devices.
//! Outbound SAs are used only by the first and inbound SAs only by the
//! second, so the per-SA lock is never contended. Multi-queue TAP devices,
//! SO_REUSEPORT sockets and one worker pair per core come with the
//! performance issue; the buffer layout (headroom and tailroom around every
//! packet) is already what GSO/GRO and virtio-net headers need.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::fdb::Fdb;
use crate::io::socket::{Batch, DatagramSocket, Poller};
use crate::overlay::{self, EspReceive, HEADROOM, TAILROOM, Tables, Targets, Transmit, Via};
use crate::stats::{Drop, Stats};

/// Datagrams per system call.
pub const BATCH: usize = 64;
/// The largest frame a buffer holds (jumbo frames included).
pub const MAX_FRAME: usize = 9216;
/// One buffer: headroom, the largest frame, tailroom.
pub const BUFFER_LEN: usize = HEADROOM + MAX_FRAME + TAILROOM;
/// How often an idle worker wakes to check for shutdown.
const POLL_MS: i32 = 100;

/// What the workers share with the control plane.
#[derive(Debug)]
pub struct Shared {
    /// The published tables.
    pub tables: ArcSwap<Tables>,
    /// The forwarding database.
    pub fdb: Fdb,
    /// Counters.
    pub stats: Stats,
    /// Set to stop the workers.
    pub stop: AtomicBool,
    /// IKE messages that arrived on the ESP-in-UDP port.
    pub ike_inbox: IkeInbox,
}

/// IKE messages that arrived on the ESP-in-UDP port behind the non-ESP
/// marker (RFC 3948 section 2.2), queued by the receive worker for the
/// control plane. Closed (every message dropped and counted as `ike`)
/// until the control plane opens it; bounded, and counted as `ike` when
/// full. A copy per message is fine here: IKE is control traffic.
#[derive(Debug, Default)]
pub struct IkeInbox {
    open: AtomicBool,
    queue: Mutex<VecDeque<(SocketAddr, Vec<u8>)>>,
}

impl IkeInbox {
    /// The most messages waiting at once.
    pub const CAPACITY: usize = 256;

    /// Starts accepting messages (an IKE driver is running).
    pub fn open(&self) {
        self.open.store(true, Ordering::Relaxed);
    }

    /// Queues a message from `src`; `false` if the inbox is closed or full.
    pub fn push(&self, src: SocketAddr, message: &[u8]) -> bool {
        if !self.open.load(Ordering::Relaxed) {
            return false;
        }
        let Ok(mut q) = self.queue.lock() else {
            return false;
        };
        if q.len() >= Self::CAPACITY {
            return false;
        }
        q.push_back((src, message.to_vec()));
        true
    }

    /// The oldest waiting message and where it came from.
    pub fn pop(&self) -> Option<(SocketAddr, Vec<u8>)> {
        self.queue.lock().ok()?.pop_front()
    }
}

impl Shared {
    /// Shared state around the first tables.
    pub fn new(tables: Tables, now: Instant, ageing: Duration) -> Self {
        let networks = tables.networks.len();
        Self {
            tables: ArcSwap::from_pointee(tables),
            fdb: Fdb::new(ageing, now),
            stats: Stats::new(networks),
            stop: AtomicBool::new(false),
            ike_inbox: IkeInbox::default(),
        }
    }
}

/// A frame device of one network (a TAP device, in overlay mode).
pub trait FrameDevice: Send + Sync {
    /// Reads one frame; `WouldBlock` when none is waiting.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame.
    fn send(&self, frame: &[u8]) -> io::Result<usize>;
    /// The descriptor to poll.
    fn fd(&self) -> RawFd;
}

impl FrameDevice for tun_rs::SyncDevice {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        Self::recv(self, buf)
    }

    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        Self::send(self, frame)
    }

    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

/// The sockets of the data path.
#[derive(Debug)]
pub struct Sockets {
    /// ESP: UDP on the ESP-in-UDP port, or raw ESP.
    pub esp: DatagramSocket,
    /// Cleartext tunnel sockets, one per tunnel port.
    pub tunnels: Vec<(u16, DatagramSocket)>,
}

/// Runs the transmit worker until `shared.stop` is set. `devices[i]` is
/// the device of network `i`.
pub fn run_tx(shared: Arc<Shared>, devices: Vec<Arc<dyn FrameDevice>>, sockets: Arc<Sockets>) {
    let fds: Vec<RawFd> = devices.iter().map(|d| d.fd()).collect();
    let mut poller = Poller::new(&fds);
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut pending: Vec<Transmit> = Vec::with_capacity(BATCH);
    let mut pending_buf: Vec<usize> = Vec::with_capacity(BATCH);
    let mut batch = Batch::new(BATCH);
    while !shared.stop.load(Ordering::Relaxed) {
        if poller.wait(POLL_MS).is_err() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let tables = shared.tables.load();
        // A flooded frame needs one buffer per peer of its network.
        let fanout = tables
            .peers_of_network
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .max(1);
        if pool.len() < BATCH + fanout {
            // Only when the configuration grows, never per packet.
            pool.resize_with(BATCH + fanout, || vec![0u8; BUFFER_LEN]);
        }
        let now = Instant::now();
        let mut used = 0;
        for (net, dev) in devices.iter().enumerate() {
            if !poller.is_ready(net) {
                continue;
            }
            for _ in 0..BATCH {
                if used + fanout > pool.len() {
                    flush(
                        &shared,
                        &sockets,
                        &mut batch,
                        &pool,
                        &mut pending,
                        &mut pending_buf,
                    );
                    used = 0;
                }
                let Ok(len) = dev.recv(&mut pool[used][HEADROOM..HEADROOM + MAX_FRAME]) else {
                    break;
                };
                let (start, end) = (HEADROOM, HEADROOM + len);
                let targets =
                    overlay::targets(&tables, &shared.fdb, net, &pool[used][start..end], now);
                let peers: &[usize] = match &targets {
                    Targets::Unicast(p) => std::slice::from_ref(p),
                    Targets::Flood => &tables.peers_of_network[net],
                    Targets::None => &[],
                };
                // Head-end replication: every peer but the first gets a
                // copy, made before the first is sealed in place.
                {
                    let (head, tail) = pool.split_at_mut(used + 1);
                    for copy in tail.iter_mut().take(peers.len().saturating_sub(1)) {
                        copy[start..end].copy_from_slice(&head[used][start..end]);
                    }
                }
                let mut sent_any = false;
                for (k, &peer) in peers.iter().enumerate() {
                    let b = used + k;
                    if let Ok(tx) = overlay::encapsulate(
                        &tables,
                        &shared.stats,
                        net,
                        peer,
                        &mut pool[b],
                        start,
                        end,
                        now,
                    ) {
                        pending.push(tx);
                        pending_buf.push(b);
                        sent_any = true;
                    }
                }
                used += peers.len();
                if sent_any {
                    overlay::count_tx(&shared.stats, net, len, matches!(targets, Targets::Flood));
                }
            }
        }
        flush(
            &shared,
            &sockets,
            &mut batch,
            &pool,
            &mut pending,
            &mut pending_buf,
        );
    }
}

fn flush(
    shared: &Shared,
    sockets: &Sockets,
    batch: &mut Batch,
    pool: &[Vec<u8>],
    pending: &mut Vec<Transmit>,
    pending_buf: &mut Vec<usize>,
) {
    if pending.is_empty() {
        return;
    }
    let datagrams = |via: Via| {
        pending
            .iter()
            .zip(pending_buf.iter())
            .filter(move |(tx, _)| tx.via == via)
            .map(|(tx, &b)| (&pool[b][tx.start..tx.end], tx.dst))
    };
    let mut refused = batch.send(&sockets.esp, datagrams(Via::Esp)).refused;
    for (port, sock) in &sockets.tunnels {
        refused += batch.send(sock, datagrams(Via::Tunnel(*port))).refused;
    }
    for _ in 0..refused {
        shared.stats.drop(Drop::Send);
    }
    pending.clear();
    pending_buf.clear();
}

/// Runs the receive worker until `shared.stop` is set.
pub fn run_rx(shared: Arc<Shared>, devices: Vec<Arc<dyn FrameDevice>>, sockets: Arc<Sockets>) {
    let mut socks: Vec<(Option<u16>, &DatagramSocket)> = vec![(None, &sockets.esp)];
    for (port, s) in &sockets.tunnels {
        socks.push((Some(*port), s));
    }
    let fds: Vec<RawFd> = socks.iter().map(|(_, s)| s.as_raw_fd()).collect();
    let mut poller = Poller::new(&fds);
    let mut pool: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; BUFFER_LEN]).collect();
    let mut meta = vec![(0usize, SocketAddr::from(([0, 0, 0, 0], 0))); BATCH];
    let mut batch = Batch::new(BATCH);
    while !shared.stop.load(Ordering::Relaxed) {
        if poller.wait(POLL_MS).is_err() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        for (i, (port, sock)) in socks.iter().enumerate() {
            if !poller.is_ready(i) {
                continue;
            }
            // Drain the socket a batch at a time, then look at the others.
            for _ in 0..4 {
                let n = batch.recv(sock, &mut pool, &mut meta).unwrap_or(0);
                if n == 0 {
                    break;
                }
                let tables = shared.tables.load();
                let now = Instant::now();
                for (j, &(len, src)) in meta[..n].iter().enumerate() {
                    let buf = &mut pool[j];
                    let delivery = match port {
                        Some(port) => overlay::receive_clear(
                            &tables,
                            &shared.fdb,
                            &shared.stats,
                            src.ip(),
                            *port,
                            buf,
                            0,
                            len,
                            now,
                        ),
                        None => {
                            let start = if sock.has_ip_header() {
                                ipv4_header_len(&buf[..len])
                            } else {
                                Some(0)
                            };
                            let Some(start) = start else {
                                shared.stats.drop(Drop::Malformed);
                                continue;
                            };
                            let udp = sock.kind() == crate::io::socket::SocketKind::Udp;
                            match overlay::receive_esp(
                                &tables,
                                &shared.fdb,
                                &shared.stats,
                                src.ip(),
                                udp,
                                buf,
                                start,
                                len,
                                now,
                            ) {
                                Ok(EspReceive::Frame(d)) => Ok(d),
                                Ok(EspReceive::Keepalive) => continue,
                                Ok(EspReceive::Ike { start, end }) => {
                                    if shared.ike_inbox.push(src, &buf[start..end]) {
                                        shared.stats.ike_received.fetch_add(1, Ordering::Relaxed);
                                    } else {
                                        shared.stats.drop(Drop::Ike);
                                    }
                                    continue;
                                }
                                Err(e) => Err(e),
                            }
                        }
                    };
                    let Ok(d) = delivery else { continue };
                    match devices.get(d.net).map(|dev| dev.send(&buf[d.start..d.end])) {
                        Some(Ok(_)) => overlay::count_rx(&shared.stats, d.net, d.end - d.start),
                        _ => shared.stats.drop(Drop::TapWrite),
                    }
                }
            }
        }
    }
}

/// The header length of an IPv4 packet as a raw socket delivers it.
fn ipv4_header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    let len = usize::from(first & 0x0f) * 4;
    (first >> 4 == 4 && len >= 20 && len <= packet.len()).then_some(len)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn ike_inbox_is_closed_until_opened_and_bounded() {
        let inbox = IkeInbox::default();
        let src = SocketAddr::from(([192, 0, 2, 2], 4500));
        assert!(!inbox.push(src, b"ike"), "closed: no IKE driver");
        assert_eq!(inbox.pop(), None);
        inbox.open();
        for i in 0..IkeInbox::CAPACITY {
            assert!(inbox.push(src, &[i as u8]));
        }
        assert!(!inbox.push(src, b"one too many"));
        assert_eq!(inbox.pop(), Some((src, vec![0])));
        assert!(inbox.push(src, b"room again"));
    }
}
