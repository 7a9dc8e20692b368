//! Gateway mode's packet workers: plain threads like [`crate::worker`]'s,
//! around a TUN device instead of TAP devices.
//!
//! The transmit worker reads the IP packets that policy routing steered
//! into the TUN device, seals them with [`gateway::protect`] and sends
//! them, a batch per `sendmmsg`, from the ESP socket. The receive worker
//! reads ESP from that socket, opens it with [`gateway::unprotect`] and
//! writes the packet to the TUN device, so the kernel receives it as if
//! it had come off the wire. Outbound SAs are used only by the first and
//! inbound SAs only by the second.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::gateway::GatewayReceive;
use crate::gateway::{self, GatewayTables};
use crate::io::socket::{Batch, Poller, SocketKind};
use crate::overlay::{HEADROOM, TAILROOM, Transmit};
use crate::stats::{Drop, Stats, add};
use crate::worker::{BATCH, FrameDevice, IkeInbox, Sockets};

/// The largest IP packet a buffer holds.
pub const MAX_PACKET: usize = 9216;
/// One buffer: headroom (the ESP-in-UDP and ESP headers, or room to
/// rebuild the IP header), the largest packet, tailroom (ESP trailer and
/// ICV).
pub const BUFFER_LEN: usize = HEADROOM + MAX_PACKET + TAILROOM;
/// How often an idle worker wakes to check for shutdown.
const POLL_MS: i32 = 100;

/// What the gateway workers share with the control plane.
#[derive(Debug)]
pub struct GatewayShared {
    /// The published tables.
    pub tables: ArcSwap<GatewayTables>,
    /// Counters. In gateway mode the per-"network" counters of
    /// [`Stats::network`] are per peer: index `i` counts
    /// `tables.peers[i]`'s packets (tx: sealed and sent, rx: opened and
    /// written to the TUN device).
    pub stats: Stats,
    /// Set to stop the workers.
    pub stop: AtomicBool,
    /// IKE messages that arrived on the ESP-in-UDP port, for the IKE
    /// driver (closed unless one runs).
    pub ike_inbox: IkeInbox,
}

impl GatewayShared {
    /// Shared state around the first tables.
    pub fn new(tables: GatewayTables) -> Self {
        let peers = tables.peers.len();
        Self {
            tables: ArcSwap::from_pointee(tables),
            stats: Stats::new(peers),
            stop: AtomicBool::new(false),
            ike_inbox: IkeInbox::default(),
        }
    }
}

/// Runs the transmit worker until `shared.stop` is set: TUN device to
/// ESP socket.
pub fn run_tx(shared: Arc<GatewayShared>, tun: Arc<dyn FrameDevice>, sockets: Arc<Sockets>) {
    let esp = &sockets.esp;
    let mut poller = Poller::new(&[tun.fd()]);
    let mut pool: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; BUFFER_LEN]).collect();
    let mut pending: Vec<(usize, Transmit)> = Vec::with_capacity(BATCH);
    let mut batch = Batch::new(BATCH);
    while !shared.stop.load(Ordering::Relaxed) {
        if poller.wait(POLL_MS).is_err() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if !poller.is_ready(0) {
            continue;
        }
        // Drain the device a batch at a time.
        loop {
            let tables = shared.tables.load();
            let now = Instant::now();
            let mut read = 0;
            for (b, buf) in pool.iter_mut().enumerate() {
                let Ok(len) = tun.recv(&mut buf[HEADROOM..HEADROOM + MAX_PACKET]) else {
                    break;
                };
                read += 1;
                if let Ok(tx) =
                    gateway::protect(&tables, &shared.stats, buf, HEADROOM, HEADROOM + len, now)
                {
                    if let Some(c) = peer_counters(&tables, &shared.stats, tx.dst) {
                        add(&c.tx_frames, 1);
                        add(&c.tx_bytes, len as u64);
                    }
                    pending.push((b, tx));
                }
            }
            if !pending.is_empty() {
                let datagrams = pending
                    .iter()
                    .map(|(b, tx)| (&pool[*b][tx.start..tx.end], tx.dst));
                let r = batch.send(esp, datagrams);
                for _ in 0..r.refused {
                    shared.stats.drop(Drop::Send);
                }
                pending.clear();
            }
            // Drained, or told to stop while the device keeps filling.
            if read < BATCH || shared.stop.load(Ordering::Relaxed) {
                break;
            }
        }
    }
}

/// Runs the receive worker until `shared.stop` is set: ESP socket to TUN
/// device.
pub fn run_rx(shared: Arc<GatewayShared>, tun: Arc<dyn FrameDevice>, sockets: Arc<Sockets>) {
    let esp = &sockets.esp;
    let mut poller = Poller::new(&[esp.as_raw_fd()]);
    let mut pool: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; BUFFER_LEN]).collect();
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut meta = vec![(0usize, unspecified); BATCH];
    let mut batch = Batch::new(BATCH);
    let udp = esp.kind() == SocketKind::Udp;
    while !shared.stop.load(Ordering::Relaxed) {
        if poller.wait(POLL_MS).is_err() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if !poller.is_ready(0) {
            continue;
        }
        for _ in 0..4 {
            let n = batch.recv(esp, &mut pool, &mut meta).unwrap_or(0);
            if n == 0 {
                break;
            }
            let tables = shared.tables.load();
            let now = Instant::now();
            for (buf, &(len, src)) in pool.iter_mut().zip(&meta[..n]) {
                let start = if esp.has_ip_header() {
                    match ipv4_header_len(&buf[..len]) {
                        Some(h) => h,
                        None => {
                            shared.stats.drop(Drop::Malformed);
                            continue;
                        }
                    }
                } else {
                    0
                };
                // Room in front to rebuild the IP header (transport mode):
                // the datagram moves up by the headroom (a memmove of one
                // packet, cheap next to its decryption).
                let payload = len - start;
                if HEADROOM + payload > buf.len() {
                    shared.stats.drop(Drop::Malformed);
                    continue;
                }
                buf.copy_within(start..len, HEADROOM);
                let (s, e) = match gateway::unprotect(
                    &tables,
                    &shared.stats,
                    src.ip(),
                    udp,
                    buf,
                    HEADROOM,
                    HEADROOM + payload,
                    now,
                ) {
                    Ok(GatewayReceive::Packet { start, end }) => (start, end),
                    Ok(GatewayReceive::Keepalive) => {
                        add(&shared.stats.keepalives, 1);
                        continue;
                    }
                    Ok(GatewayReceive::Ike { start, end }) => {
                        if shared.ike_inbox.push(src, &buf[start..end]) {
                            add(&shared.stats.ike_received, 1);
                        } else {
                            shared.stats.drop(Drop::Ike);
                        }
                        continue;
                    }
                    Err(_) => continue,
                };
                if tun.send(&buf[s..e]).is_err() {
                    shared.stats.drop(Drop::TapWrite);
                    continue;
                }
                if let Some(c) = peer_counters(&tables, &shared.stats, src) {
                    add(&c.rx_frames, 1);
                    add(&c.rx_bytes, (e - s) as u64);
                }
            }
        }
    }
}

fn peer_counters<'a>(
    tables: &GatewayTables,
    stats: &'a Stats,
    addr: SocketAddr,
) -> Option<&'a crate::stats::NetworkCounters> {
    let i = tables.peers.iter().position(|p| p.underlay == addr.ip())?;
    stats.network(i)
}

/// The header length of an IPv4 packet as a raw socket delivers it.
fn ipv4_header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    let len = usize::from(first & 0x0f) * 4;
    (first >> 4 == 4 && len >= 20 && len <= packet.len()).then_some(len)
}
