//! The overlay's packet workers: plain threads that own their file
//! descriptors and move batches.
//!
//! tunsecd runs `[node] workers` pairs (one by default). A pair's transmit
//! worker ([`run_tx`]) reads frames from its queue of every TAP device and
//! sends tunnel datagrams; its receive worker ([`run_rx`]) reads datagrams
//! from its ESP and tunnel sockets and writes frames to the TAP devices,
//! to the queue [`steer::queue_of`] picks for the flow. With several
//! pairs, each TAP device has one queue per worker (`IFF_MULTI_QUEUE`) and
//! each UDP port one socket per worker (`SO_REUSEPORT`). Every pair shares
//! one [`Shared`]: the tables, the forwarding database, the counters.
//!
//! SAs are shared too: the per-SA lock is held only to take a sequence
//! number or to check and update the replay window, never while a packet
//! is encrypted or decrypted. Every buffer has headroom and tailroom
//! around the frame, so the tunnel header and ESP are written in place;
//! UDP GSO and GRO batch the sockets, and with a virtio-net header the
//! TAP devices hand over and take back TCP super-frames ([`offload`]).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::early::{EarlyEsp, Retry};
use crate::fdb::Fdb;
use crate::io::socket::{Batch, DatagramSocket, Poller, runs};
use crate::offload;
use crate::overlay::{self, EspReceive, HEADROOM, TAILROOM, Tables, Targets, Transmit, Via};
use crate::stats::{PathDrop, Stats};
use crate::steer;

/// Datagrams per system call.
pub const BATCH: usize = 64;
/// Frames the transmit worker seals before it sends them: several whole
/// TSO super-frames (up to 45 segments each at a 1500-byte MTU), so that
/// each leaves as one UDP GSO message, and one `sendmmsg` carries several.
pub const TX_POOL: usize = 4 * BATCH;
/// The largest frame a buffer holds (jumbo frames included).
pub const MAX_FRAME: usize = 9216;
/// One buffer: headroom, the largest frame, tailroom.
pub const BUFFER_LEN: usize = HEADROOM + MAX_FRAME + TAILROOM;
/// A receive buffer with UDP GRO: a run of datagrams of up to 64 KB.
pub const GRO_BUFFER_LEN: usize = 65_536;
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
/// full. A copy per message is fine here: IKE is control traffic. Each
/// message queued makes an eventfd readable, which the IKE driver polls
/// beside its own socket, so a message waits for no timer.
#[derive(Debug, Default)]
pub struct IkeInbox {
    open: AtomicBool,
    queue: Mutex<VecDeque<(SocketAddr, Vec<u8>)>>,
    wake: OnceLock<EventFd>,
}

impl IkeInbox {
    /// The most messages waiting at once.
    pub const CAPACITY: usize = 256;

    /// Starts accepting messages (an IKE driver is running). Returns the
    /// descriptor that is readable while messages may be waiting: poll
    /// it, and call [`Self::clear_wake`] before popping.
    pub fn open(&self) -> io::Result<BorrowedFd<'_>> {
        let wake = match self.wake.get() {
            Some(w) => w,
            None => {
                let fd = EventFd::from_value_and_flags(
                    0,
                    EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                self.wake.get_or_init(|| fd)
            }
        };
        self.open.store(true, Ordering::Relaxed);
        Ok(wake.as_fd())
    }

    /// Queues a message from `src` and wakes the driver; `false` if the
    /// inbox is closed or full.
    pub fn push(&self, src: SocketAddr, message: &[u8]) -> bool {
        if !self.open.load(Ordering::Relaxed) {
            return false;
        }
        {
            let Ok(mut q) = self.queue.lock() else {
                return false;
            };
            if q.len() >= Self::CAPACITY {
                return false;
            }
            q.push_back((src, message.to_vec()));
        }
        self.wake();
        true
    }

    /// Makes the descriptor readable, so the driver's poll returns: after
    /// a message, or when something else waits for the driver (a
    /// command from the control socket).
    pub fn wake(&self) {
        if let Some(w) = self.wake.get() {
            // EAGAIN only when the counter is about to overflow, when it
            // is readable anyway.
            let _ = w.write(1);
        }
    }

    /// Makes the descriptor unreadable again until the next push.
    pub fn clear_wake(&self) {
        if let Some(w) = self.wake.get() {
            // EAGAIN when it was not readable: nothing to clear.
            let _ = w.read();
        }
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
    /// Reads one frame (behind its virtio-net header, with
    /// [`Self::vnet_hdr`]); `WouldBlock` when none is waiting.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame (a device with [`Self::vnet_hdr`] wants the
    /// header first: use [`Self::send_with_header`]).
    fn send(&self, frame: &[u8]) -> io::Result<usize>;
    /// The descriptor to poll.
    fn fd(&self) -> RawFd;
    /// Frames carry a virtio-net header (`IFF_VNET_HDR`), and reads may be
    /// TCP super-frames.
    fn vnet_hdr(&self) -> bool {
        false
    }
    /// Writes a virtio-net header and a frame in one write.
    fn send_with_header(&self, header: &[u8], frame: &[u8]) -> io::Result<usize> {
        let mut joined = Vec::with_capacity(header.len() + frame.len());
        joined.extend_from_slice(header);
        joined.extend_from_slice(frame);
        self.send(&joined)
    }
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

    fn vnet_hdr(&self) -> bool {
        self.tcp_gso()
    }

    fn send_with_header(&self, header: &[u8], frame: &[u8]) -> io::Result<usize> {
        self.send_vectored(&[io::IoSlice::new(header), io::IoSlice::new(frame)])
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
///
/// A device with a virtio-net header ([`FrameDevice::vnet_hdr`]) may hand
/// over a TCP super-frame of up to 64 KB: it is cut into wire frames
/// ([`offload::Segmenter`]), each then sent like any other frame; a plain
/// frame with a partial checksum gets it completed first.
///
/// With `udp_gso`, the ESP datagrams of a batch leave through UDP
/// generic segmentation offload ([`Batch::send_gso`]): a run of equal
/// datagrams to one peer (what a segmented TCP super-frame becomes) is one
/// message. If the kernel refuses it, GSO is turned off for good.
pub fn run_tx(
    shared: Arc<Shared>,
    devices: Vec<Arc<dyn FrameDevice>>,
    sockets: Arc<Sockets>,
    udp_gso: bool,
) {
    let fds: Vec<RawFd> = devices.iter().map(|d| d.fd()).collect();
    let mut poller = Poller::new(&fds);
    let mut tx = Tx {
        pool: Vec::new(),
        used: 0,
        fanout: 1,
        pending: Vec::with_capacity(TX_POOL + 1),
        pending_buf: Vec::with_capacity(TX_POOL + 1),
        batch: Batch::with_iovecs(BATCH, TX_POOL),
        udp_gso: udp_gso && sockets.esp.kind() == crate::io::socket::SocketKind::Udp,
    };
    // One super-frame read from a device with a virtio-net header.
    let mut big = if devices.iter().any(|d| d.vnet_hdr()) {
        vec![0u8; offload::vnet::HEADER_LEN + offload::gro::MAX_FRAME_LEN]
    } else {
        Vec::new()
    };
    while !shared.stop.load(Ordering::Relaxed) {
        if poller.wait(POLL_MS).is_err() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let tables = shared.tables.load();
        // A flooded frame needs one buffer per peer of its network.
        tx.fanout = tables
            .peers_of_network
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .max(1);
        if tx.pool.len() < TX_POOL + tx.fanout {
            // Only when the configuration grows, never per packet.
            tx.pool
                .resize_with(TX_POOL + tx.fanout, || vec![0u8; BUFFER_LEN]);
        }
        let now = Instant::now();
        tx.used = 0;
        for (net, dev) in devices.iter().enumerate() {
            if !poller.is_ready(net) {
                continue;
            }
            for _ in 0..BATCH {
                tx.make_room(&shared, &sockets);
                if !dev.vnet_hdr() {
                    let b = tx.used;
                    let Ok(len) = dev.recv(&mut tx.pool[b][HEADROOM..HEADROOM + MAX_FRAME]) else {
                        break;
                    };
                    tx.frame(&shared, &tables, net, len, now);
                    continue;
                }
                let Ok(len) = dev.recv(&mut big) else {
                    break;
                };
                let Ok((hdr, frame)) = offload::VnetHeader::split(&big[..len]) else {
                    shared.stats.drop(PathDrop::Malformed);
                    continue;
                };
                if hdr.is_gso() {
                    let Ok(mut segments) = offload::Segmenter::new(&hdr, frame) else {
                        shared.stats.drop(PathDrop::Malformed);
                        continue;
                    };
                    // All the segments in one flush, so that they leave as
                    // one GSO message rather than two halves.
                    tx.make_room_for(segments.segment_count(), &shared, &sockets);
                    let targets = overlay::targets(&tables, &shared.fdb, net, frame, now);
                    loop {
                        tx.make_room(&shared, &sockets);
                        let b = tx.used;
                        match segments.next_into(&mut tx.pool[b][HEADROOM..HEADROOM + MAX_FRAME]) {
                            Ok(Some(len)) => tx.frame_to(&shared, &tables, net, len, &targets, now),
                            Ok(None) => break,
                            Err(_) => {
                                shared.stats.drop(PathDrop::Malformed);
                                break;
                            }
                        }
                    }
                } else {
                    let b = tx.used;
                    let len = frame.len().min(MAX_FRAME);
                    let out = &mut tx.pool[b][HEADROOM..HEADROOM + len];
                    out.copy_from_slice(&frame[..len]);
                    if hdr.needs_csum() && offload::complete_checksum(&hdr, out).is_err() {
                        shared.stats.drop(PathDrop::Malformed);
                        continue;
                    }
                    tx.frame(&shared, &tables, net, len, now);
                }
            }
        }
        tx.flush(&shared, &sockets);
    }
}

/// The transmit worker's buffers and pending datagrams.
struct Tx {
    pool: Vec<Vec<u8>>,
    /// Buffers of `pool` in use by pending datagrams.
    used: usize,
    /// Buffers one frame may need (head-end replication).
    fanout: usize,
    pending: Vec<Transmit>,
    pending_buf: Vec<usize>,
    batch: Batch,
    /// Send ESP with UDP GSO.
    udp_gso: bool,
}

impl Tx {
    /// Sends what is pending if the next frame might not find buffers.
    fn make_room(&mut self, shared: &Shared, sockets: &Sockets) {
        self.make_room_for(1, shared, sockets);
    }

    /// Sends what is pending if the next `frames` frames might not all
    /// find buffers.
    fn make_room_for(&mut self, frames: usize, shared: &Shared, sockets: &Sockets) {
        if self.used + frames * self.fanout > self.pool.len() {
            self.flush(shared, sockets);
        }
    }

    fn flush(&mut self, shared: &Shared, sockets: &Sockets) {
        if self.udp_gso {
            self.flush_gso(shared, sockets);
        } else {
            flush(
                shared,
                sockets,
                &mut self.batch,
                &self.pool,
                &mut self.pending,
                &mut self.pending_buf,
            );
        }
        self.used = 0;
    }

    /// [`flush`] with the ESP (and cleartext tunnel) datagrams through UDP
    /// GSO, up to [`TX_POOL`] datagrams per call to [`Batch::send_gso`].
    fn flush_gso(&mut self, shared: &Shared, sockets: &Sockets) {
        if self.pending.is_empty() {
            return;
        }
        let mut refused = 0;
        let mut gso_failed = None;
        let vias = std::iter::once((Via::Esp, &sockets.esp)).chain(
            sockets
                .tunnels
                .iter()
                .map(|(port, sock)| (Via::Tunnel(*port), sock)),
        );
        for (via, sock) in vias {
            let mut datagrams = self
                .pending
                .iter()
                .zip(&self.pending_buf)
                .filter(|(tx, _)| tx.via == via)
                .map(|(tx, &b)| (&self.pool[b][tx.start..tx.end], tx.dst));
            // The pool holds more buffers than one list (`TX_POOL` plus a
            // flood's fan-out), so a flush may take several calls: every
            // pending datagram is sent or counted as refused, none is
            // left behind.
            let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
            let mut list: [(&[u8], SocketAddr); TX_POOL] = [(&[], unspecified); TX_POOL];
            loop {
                let mut n = 0;
                for (slot, d) in list.iter_mut().zip(datagrams.by_ref()) {
                    *slot = d;
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                let r = self.batch.send_gso(sock, &list[..n]);
                refused += r.refused;
                if r.gso_failed && via == Via::Esp {
                    gso_failed = Some(r.error);
                }
            }
        }
        if let Some(error) = gso_failed {
            tracing::warn!(
                error = ?error.map(io::Error::from_raw_os_error),
                "the kernel refused UDP GSO; sending ESP datagram by datagram from now on"
            );
            self.udp_gso = false;
        }
        for _ in 0..refused {
            shared.stats.drop(PathDrop::Send);
        }
        self.pending.clear();
        self.pending_buf.clear();
    }

    /// Sends the frame at `pool[used][HEADROOM..HEADROOM + len]` of network
    /// `net` to its peers.
    fn frame(&mut self, shared: &Shared, tables: &Tables, net: usize, len: usize, now: Instant) {
        let frame = &self.pool[self.used][HEADROOM..HEADROOM + len];
        let targets = overlay::targets(tables, &shared.fdb, net, frame, now);
        self.frame_to(shared, tables, net, len, &targets, now);
    }

    /// [`Self::frame`] with its peers already known: the segments of one
    /// TSO super-frame share its Ethernet header, so one forwarding lookup
    /// serves them all.
    fn frame_to(
        &mut self,
        shared: &Shared,
        tables: &Tables,
        net: usize,
        len: usize,
        targets: &Targets,
        now: Instant,
    ) {
        let used = self.used;
        let (start, end) = (HEADROOM, HEADROOM + len);
        let peers: &[usize] = match targets {
            Targets::Unicast(p) => std::slice::from_ref(p),
            Targets::Flood => &tables.peers_of_network[net],
            Targets::None => &[],
        };
        // Head-end replication: every peer but the first gets a copy, made
        // before the first is sealed in place.
        {
            let (head, tail) = self.pool.split_at_mut(used + 1);
            for copy in tail.iter_mut().take(peers.len().saturating_sub(1)) {
                copy[start..end].copy_from_slice(&head[used][start..end]);
            }
        }
        let mut sent_any = false;
        for (k, &peer) in peers.iter().enumerate() {
            let b = used + k;
            if let Ok(tx) = overlay::encapsulate(
                tables,
                &shared.stats,
                net,
                peer,
                &mut self.pool[b],
                start,
                end,
                now,
            ) {
                self.pending.push(tx);
                self.pending_buf.push(b);
                sent_any = true;
            }
        }
        self.used += peers.len();
        if sent_any {
            overlay::count_tx(&shared.stats, net, len, matches!(targets, Targets::Flood));
        }
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
        shared.stats.drop(PathDrop::Send);
    }
    pending.clear();
    pending_buf.clear();
}

/// Runs the receive worker until `shared.stop` is set.
///
/// Frames for a device with a virtio-net header get one in front; with
/// `gro`, the TCP frames of one flow within a batch are first coalesced
/// into super-frames ([`offload::Coalescer`]), so the kernel takes one
/// write where it took dozens.
///
/// With `udp_gro`, the UDP sockets hand over runs of equal datagrams of
/// one flow as one buffer (`UDP_GRO`), which the worker cuts back into
/// datagrams: one socket read per run instead of per datagram.
///
/// `queues[i]` are the queues of network `i`'s device, one per worker:
/// each frame is written to the queue [`steer::queue_of`] picks for its
/// flow, so that the kernel sends that flow's frames back to the same
/// queue, whose transmit worker then carries them (one queue: always
/// that one).
pub fn run_rx(
    shared: Arc<Shared>,
    queues: Vec<Vec<Arc<dyn FrameDevice>>>,
    sockets: Arc<Sockets>,
    gro: bool,
    udp_gro: bool,
) {
    let mut coalescers: Vec<Option<offload::Coalescer>> = queues
        .iter()
        .map(|q| {
            (gro && q.first().is_some_and(|d| d.vnet_hdr())).then(|| {
                offload::Coalescer::new(offload::gro::DEFAULT_SLOTS, offload::Checksums::Verify)
            })
        })
        .collect();
    let plain = offload::VnetHeader::default().to_bytes();
    let mut socks: Vec<(Option<u16>, &DatagramSocket)> = vec![(None, &sockets.esp)];
    for (port, s) in &sockets.tunnels {
        socks.push((Some(*port), s));
    }
    let fds: Vec<RawFd> = socks.iter().map(|(_, s)| s.as_raw_fd()).collect();
    let mut poller = Poller::new(&fds);
    // UDP GRO where the kernel allows it (a socket that refuses stays
    // datagram by datagram).
    let gro_socks: Vec<bool> = socks
        .iter()
        .map(|(_, s)| {
            udp_gro && s.kind() == crate::io::socket::SocketKind::Udp && s.set_udp_gro(true).is_ok()
        })
        .collect();
    let buffer_len = if gro_socks.iter().any(|&g| g) {
        GRO_BUFFER_LEN
    } else {
        BUFFER_LEN
    };
    let mut pool: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; buffer_len]).collect();
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut gro_meta = vec![(0usize, unspecified, 0usize); BATCH];
    let mut batch = Batch::new(BATCH);
    let mut early = EarlyEsp::new();
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
                let n = batch
                    .recv_runs(sock, &mut pool, gro_socks[i], &mut gro_meta)
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                let tables = shared.tables.load();
                let now = Instant::now();
                for (j, &(total, src, segment)) in gro_meta[..n].iter().enumerate() {
                    let buf = &mut pool[j];
                    for run in runs(total, segment) {
                        let (off, len) = (run.start, run.end);
                        let delivery = match port {
                            Some(port) => overlay::receive_clear(
                                &tables,
                                &shared.fdb,
                                &shared.stats,
                                src.ip(),
                                *port,
                                buf,
                                off,
                                len,
                                now,
                            ),
                            None => {
                                let start = if sock.has_ip_header() {
                                    ipv4_header_len(&buf[off..len]).map(|h| off + h)
                                } else {
                                    Some(off)
                                };
                                let Some(start) = start else {
                                    shared.stats.drop(PathDrop::Malformed);
                                    continue;
                                };
                                let udp = sock.kind() == crate::io::socket::SocketKind::Udp;
                                match overlay::try_receive_esp(
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
                                            shared
                                                .stats
                                                .ike_received
                                                .fetch_add(1, Ordering::Relaxed);
                                        } else {
                                            shared.stats.drop(PathDrop::Ike);
                                        }
                                        continue;
                                    }
                                    Err(PathDrop::UnknownSpi) => {
                                        // Perhaps an SA that the IKE
                                        // driver is about to install.
                                        let known = tables.peer_by_addr(src.ip()).is_some();
                                        if !(known
                                            && early.hold(src.ip(), udp, &buf[start..len], now))
                                        {
                                            shared.stats.drop(PathDrop::UnknownSpi);
                                        }
                                        continue;
                                    }
                                    Err(e) => Err(e),
                                }
                            }
                        };
                        let Ok(d) = delivery else { continue };
                        deliver(
                            &shared,
                            &queues,
                            &mut coalescers,
                            &plain,
                            d.net,
                            &buf[d.start..d.end],
                        );
                    }
                }
                // A batch's super-frames go out before the next batch.
                flush_coalescers(&shared, &queues, &mut coalescers);
            }
        }
        // Held ESP whose SA may have arrived since (see `early`).
        if !early.is_empty() {
            let tables = shared.tables.load();
            let now = Instant::now();
            let expired = early.retry(now, |src, udp, datagram| {
                let len = datagram.len();
                match overlay::try_receive_esp(
                    &tables,
                    &shared.fdb,
                    &shared.stats,
                    src,
                    udp,
                    datagram,
                    0,
                    len,
                    now,
                ) {
                    Err(PathDrop::UnknownSpi) => Retry::StillUnknown,
                    Ok(EspReceive::Frame(d)) => {
                        deliver(
                            &shared,
                            &queues,
                            &mut coalescers,
                            &plain,
                            d.net,
                            &datagram[d.start..d.end],
                        );
                        Retry::Handled
                    }
                    Ok(_) | Err(_) => Retry::Handled,
                }
            });
            for _ in 0..expired {
                shared.stats.drop(PathDrop::UnknownSpi);
            }
            flush_coalescers(&shared, &queues, &mut coalescers);
        }
    }
}

/// Writes an opened frame of network `net` to that network's TAP queue
/// for its flow, through the network's coalescer when it has one.
fn deliver(
    shared: &Shared,
    queues: &[Vec<Arc<dyn FrameDevice>>],
    coalescers: &mut [Option<offload::Coalescer>],
    plain: &[u8],
    net: usize,
    frame: &[u8],
) {
    let Some(devs) = queues.get(net).filter(|q| !q.is_empty()) else {
        shared.stats.drop(PathDrop::TapWrite);
        return;
    };
    overlay::count_rx(&shared.stats, net, frame.len());
    if let Some(c) = coalescers.get_mut(net).and_then(Option::as_mut) {
        c.push(frame, &mut |t: offload::TapFrame<'_>| {
            let dev = &devs[steer::queue_of(t.frame, devs.len())];
            write_tap(shared, dev.as_ref(), &t.header_bytes(), t.frame);
        });
        return;
    }
    let dev = &devs[steer::queue_of(frame, devs.len())];
    if dev.vnet_hdr() {
        write_tap(shared, dev.as_ref(), plain, frame);
    } else if dev.send(frame).is_err() {
        shared.stats.drop(PathDrop::TapWrite);
    }
}

/// Writes out what every coalescer holds.
fn flush_coalescers(
    shared: &Shared,
    queues: &[Vec<Arc<dyn FrameDevice>>],
    coalescers: &mut [Option<offload::Coalescer>],
) {
    for (net, c) in coalescers.iter_mut().enumerate() {
        if let (Some(c), Some(devs)) = (c.as_mut(), queues.get(net).filter(|q| !q.is_empty())) {
            c.flush(&mut |t: offload::TapFrame<'_>| {
                let dev = &devs[steer::queue_of(t.frame, devs.len())];
                write_tap(shared, dev.as_ref(), &t.header_bytes(), t.frame);
            });
        }
    }
}

/// Writes a virtio-net header and a frame to a TAP device, counting a
/// failure.
fn write_tap(shared: &Shared, dev: &dyn FrameDevice, header: &[u8], frame: &[u8]) {
    if dev.send_with_header(header, frame).is_err() {
        shared.stats.drop(PathDrop::TapWrite);
    }
}

/// The header length of an IPv4 packet as a raw socket delivers it.
fn ipv4_header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    let len = usize::from(first & 0x0f) * 4;
    (first >> 4 == 4 && len >= 20 && len <= packet.len()).then_some(len)
}

#[cfg(test)]
pub(crate) mod test {
    use super::*;
    use crate::fast_map::FastMap;
    use crate::overlay::{
        EspTransport, InboundEntry, NetworkSpec, PeerEntry, PeerSpec, Policy, TunnelEncap,
    };
    use std::net::{IpAddr, Ipv4Addr, UdpSocket};
    use tunsec_esp::{Direction, Sa, SaConfig, SaKeys, Suite};

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A TAP device stand-in that records what the receive worker writes.
    #[derive(Default)]
    pub(crate) struct Recorder(pub(crate) Mutex<Vec<Vec<u8>>>);

    impl FrameDevice for Recorder {
        fn recv(&self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn send(&self, frame: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(frame.to_vec());
            Ok(frame.len())
        }
        fn fd(&self) -> RawFd {
            -1
        }
    }

    fn esp_sa(spi: u32, direction: Direction) -> overlay::SharedSa {
        let suite = Suite::AesGcm128;
        let n = suite.encryption_key_len() + suite.integrity_key_len();
        let keys = SaKeys::from_keymat(suite, &vec![spi as u8; n]).unwrap();
        let sa = Sa::new(SaConfig::new(spi, direction, suite, keys), Instant::now()).unwrap();
        Arc::new(Mutex::new(sa))
    }

    /// Tables for a host on loopback whose one peer is also on loopback,
    /// sending with SPI `out` and receiving with `inbound` (if any).
    fn loopback_tables(out: u32, inbound: Option<u32>) -> Tables {
        let peer = PeerEntry {
            spec: PeerSpec {
                name: "peer".into(),
                underlay: LOOPBACK,
                networks: vec![(0, Policy::Require)],
            },
            outbound: vec![esp_sa(out, Direction::Outbound)],
        };
        let mut map = FastMap::default();
        if let Some(spi) = inbound {
            let sa = esp_sa(spi, Direction::Inbound);
            map.insert(spi, InboundEntry { peer: 0, sa });
        }
        let network = NetworkSpec {
            name: "blue".into(),
            vni: 100,
            encap: TunnelEncap::Vxlan,
            port: 4789,
            max_frame: 1400,
        };
        Tables::new(
            LOOPBACK,
            EspTransport::Udp(4500),
            vec![network],
            vec![peer],
            map,
        )
    }

    /// An ESP-in-UDP datagram (from the SPI on) carrying a 200-byte frame,
    /// sealed with SPI `spi`, and the frame.
    fn sealed(spi: u32) -> (Vec<u8>, Vec<u8>) {
        let tables = loopback_tables(spi, None);
        let stats = Stats::new(1);
        let mut buf = vec![0u8; HEADROOM + 200 + TAILROOM];
        let frame: Vec<u8> = (0..200u8).collect();
        buf[HEADROOM..HEADROOM + 200].copy_from_slice(&frame);
        let tx = overlay::encapsulate(
            &tables,
            &stats,
            0,
            0,
            &mut buf,
            HEADROOM,
            HEADROOM + 200,
            Instant::now(),
        )
        .unwrap();
        (buf[tx.start..tx.end].to_vec(), frame)
    }

    /// A receive worker on loopback without SAs; what it wrote so far.
    struct RxWorker {
        shared: Arc<Shared>,
        tap: Arc<Recorder>,
        port: u16,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl RxWorker {
        fn start() -> Self {
            let shared = Arc::new(Shared::new(
                loopback_tables(1, None),
                Instant::now(),
                Duration::from_secs(300),
            ));
            let esp = DatagramSocket::udp(SocketAddr::from((LOOPBACK, 0))).unwrap();
            let port = esp.local_addr().unwrap().port();
            let sockets = Arc::new(Sockets {
                esp,
                tunnels: Vec::new(),
            });
            let tap = Arc::new(Recorder::default());
            let queues: Vec<Vec<Arc<dyn FrameDevice>>> = vec![vec![tap.clone()]];
            let s = Arc::clone(&shared);
            let thread = Some(std::thread::spawn(move || {
                run_rx(s, queues, sockets, false, false)
            }));
            Self {
                shared,
                tap,
                port,
                thread,
            }
        }

        fn written(&self) -> Vec<Vec<u8>> {
            self.tap.0.lock().unwrap().clone()
        }

        fn wait_written(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
            let deadline = Instant::now() + timeout;
            while self.written().len() < n && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.written()
        }
    }

    impl Drop for RxWorker {
        fn drop(&mut self) {
            self.shared.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    /// ESP that arrives before its inbound SA is installed (a responder
    /// that sends on a new Child SA as soon as it has answered) is held,
    /// and delivered once the SA is there: no `unknown_spi` drop. ESP whose
    /// SA never comes is dropped and counted after `EarlyEsp::HOLD`.
    #[test]
    fn esp_before_its_sa_is_held_then_delivered() {
        let rx = RxWorker::start();
        let sender = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        let (datagram, frame) = sealed(0x5001);
        sender.send_to(&datagram, (LOOPBACK, rx.port)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(rx.written().is_empty());
        assert_eq!(
            rx.shared.stats.drops(PathDrop::UnknownSpi),
            0,
            "held, not dropped"
        );

        rx.shared
            .tables
            .store(Arc::new(loopback_tables(1, Some(0x5001))));
        // The worker looks again at its next wake-up (at most POLL_MS).
        assert_eq!(rx.wait_written(1, Duration::from_secs(2)), [frame]);
        assert_eq!(rx.shared.stats.drops(PathDrop::UnknownSpi), 0);

        // An SPI that never gets an SA: dropped, counted, after the hold.
        let (stray, _) = sealed(0x6001);
        let sent = Instant::now();
        sender.send_to(&stray, (LOOPBACK, rx.port)).unwrap();
        let deadline = sent + Duration::from_secs(2);
        while rx.shared.stats.drops(PathDrop::UnknownSpi) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(rx.shared.stats.drops(PathDrop::UnknownSpi), 1);
        assert!(
            sent.elapsed() >= EarlyEsp::HOLD,
            "dropped before the hold ended"
        );
        assert_eq!(rx.written().len(), 1);
    }

    #[test]
    fn ike_inbox_is_closed_until_opened_and_bounded() {
        let inbox = IkeInbox::default();
        let src = SocketAddr::from(([192, 0, 2, 2], 4500));
        assert!(!inbox.push(src, b"ike"), "closed: no IKE driver");
        assert_eq!(inbox.pop(), None);
        inbox.open().unwrap();
        for i in 0..IkeInbox::CAPACITY {
            assert!(inbox.push(src, &[i as u8]));
        }
        assert!(!inbox.push(src, b"one too many"));
        assert_eq!(inbox.pop(), Some((src, vec![0])));
        assert!(inbox.push(src, b"room again"));
    }

    /// A queued message makes the inbox's descriptor readable, and
    /// `clear_wake` makes it unreadable until the next one.
    #[test]
    fn ike_inbox_wakes_its_poller() {
        let inbox = IkeInbox::default();
        let fd = inbox.open().unwrap().as_raw_fd();
        let mut poller = Poller::new(&[fd]);
        poller.wait(0).unwrap();
        assert!(!poller.is_ready(0), "nothing queued yet");
        let src = SocketAddr::from(([192, 0, 2, 2], 4500));
        let pusher = {
            let inbox = Arc::new(inbox);
            let i = inbox.clone();
            (inbox, std::thread::spawn(move || i.push(src, b"ike")))
        };
        let (inbox, t) = pusher;
        assert!(t.join().unwrap());
        poller.wait(1000).unwrap();
        assert!(poller.is_ready(0), "woken by the push");
        inbox.clear_wake();
        assert_eq!(inbox.pop(), Some((src, b"ike".to_vec())));
        poller.wait(0).unwrap();
        assert!(!poller.is_ready(0), "cleared");
    }
}
