//! Gateway mode's packet workers: plain threads like [`crate::worker`]'s,
//! around a TUN device instead of TAP devices.
//!
//! The transmit worker reads the IP packets that policy routing steered
//! into the TUN device, seals them with [`gateway::protect`] and sends
//! them, a batch per `sendmmsg`, from the ESP socket. The receive worker
//! reads ESP from that socket, opens it with [`gateway::unprotect`] and
//! writes the packet to the TUN device, so the kernel receives it as if
//! it had come off the wire; ESP that arrives just before its SA is held
//! briefly ([`crate::early`]). Outbound SAs are used only by the first and
//! inbound SAs only by the second.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::early::{EarlyEsp, Retry};
use crate::gateway::GatewayReceive;
use crate::gateway::{self, GatewayTables};
use crate::io::socket::{Batch, Poller, SocketKind, runs};
use crate::offload::{self, TunPacket, UdpBatcher, VnetHeader, vnet};
use crate::overlay::{HEADROOM, TAILROOM, Transmit};
use crate::stats::{NetworkCounters, PathDrop, Stats, add};
use crate::worker::{BATCH, FrameDevice, GRO_BUFFER_LEN, IkeInbox, Sockets};

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
    /// Drop and keepalive counters; each peer's packets are counted in
    /// its own [`GatewayPeer::counters`](crate::gateway::GatewayPeer)
    /// (tx: sealed and sent, rx: opened and written to the TUN device).
    pub stats: Stats,
    /// Set to stop the workers.
    pub stop: AtomicBool,
    /// IKE messages that arrived on the ESP-in-UDP port, for the IKE
    /// driver (closed unless one runs).
    pub ike_inbox: IkeInbox,
    /// Held by every change of the tables: the IKE driver's SAs and the
    /// control plane's peers are changed from two threads, and a copy
    /// taken before another thread's store would undo that change.
    edits: Mutex<()>,
}

impl GatewayShared {
    /// Copies the current tables, lets `f` change them, and publishes the
    /// copy (read-copy-update); one change at a time. The workers pick it
    /// up with their next batch.
    pub fn edit(&self, f: &mut dyn FnMut(&mut GatewayTables)) {
        let _one_at_a_time = self.edits.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = (**self.tables.load()).clone();
        f(&mut next);
        self.tables.store(Arc::new(next));
    }

    /// Shared state around the first tables.
    pub fn new(tables: GatewayTables) -> Self {
        Self {
            tables: ArcSwap::from_pointee(tables),
            stats: Stats::new(0),
            stop: AtomicBool::new(false),
            ike_inbox: IkeInbox::default(),
            edits: Mutex::new(()),
        }
    }
}

/// Runs the transmit worker until `shared.stop` is set: TUN device to
/// ESP socket.
///
/// With `udp_gso` (and ESP in UDP), the ESP datagrams of a batch leave
/// through UDP generic segmentation offload ([`Batch::send_gso`]): the
/// datagrams of one run of equal packets (what the kernel's vxlan device
/// makes of a TCP super-frame) are one message. If the kernel refuses it,
/// GSO is turned off for good.
pub fn run_tx(
    shared: Arc<GatewayShared>,
    tun: Arc<dyn FrameDevice>,
    sockets: Arc<Sockets>,
    udp_gso: bool,
) {
    let esp = &sockets.esp;
    let mut udp_gso = udp_gso && esp.kind() == SocketKind::Udp;
    let mut poller = Poller::new(&[tun.fd()]);
    let mut pool: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; BUFFER_LEN]).collect();
    let mut pending: Vec<(usize, Transmit)> = Vec::with_capacity(BATCH);
    let mut batch = Batch::new(BATCH);
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    // Reads start with a virtio-net header, in front of the packet.
    let front = if tun.vnet_hdr() { vnet::HEADER_LEN } else { 0 };
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
                let Ok(len) = tun.recv(&mut buf[HEADROOM - front..HEADROOM + MAX_PACKET]) else {
                    break;
                };
                read += 1;
                let Some(len) = strip_vnet_header(&shared.stats, buf, front, len) else {
                    continue;
                };
                if let Ok(tx) =
                    gateway::protect(&tables, &shared.stats, buf, HEADROOM, HEADROOM + len, now)
                {
                    if let Some(c) = peer_counters(&tables, tx.dst.ip()) {
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
                let r = if udp_gso {
                    // `pending` holds at most BATCH datagrams (one per
                    // pool buffer).
                    let mut list: [(&[u8], SocketAddr); BATCH] = [(&[], unspecified); BATCH];
                    let mut n = 0;
                    for (slot, d) in list.iter_mut().zip(datagrams) {
                        *slot = d;
                        n += 1;
                    }
                    let r = batch.send_gso(esp, &list[..n]);
                    if r.gso_failed {
                        tracing::warn!(
                            error = ?r.error.map(std::io::Error::from_raw_os_error),
                            "the kernel refused UDP GSO; sending ESP datagram by datagram from now on"
                        );
                        udp_gso = false;
                    }
                    r
                } else {
                    batch.send(esp, datagrams)
                };
                for _ in 0..r.refused {
                    shared.stats.drop(PathDrop::Send);
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

/// A receive buffer: datagrams land [`HEADROOM`] bytes in, so that
/// transport mode can rebuild the IP header in front of the first one.
struct RxBuf(Vec<u8>);

impl AsMut<[u8]> for RxBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0[HEADROOM..]
    }
}

/// Runs the receive worker until `shared.stop` is set: ESP socket to TUN
/// device. With `uso` and a device with a virtio-net header, the packets
/// opened from one batch of datagrams go through a [`UdpBatcher`]: runs of
/// UDP datagrams of one flow are written as one packet. With `udp_gro`
/// (and ESP in UDP), a run of datagrams from one peer arrives as one
/// buffer (`UDP_GRO`), opened datagram by datagram in place.
pub fn run_rx(
    shared: Arc<GatewayShared>,
    tun: Arc<dyn FrameDevice>,
    sockets: Arc<Sockets>,
    uso: bool,
    udp_gro: bool,
) {
    let esp = &sockets.esp;
    let mut poller = Poller::new(&[esp.as_raw_fd()]);
    let udp = esp.kind() == SocketKind::Udp;
    // A socket that refuses UDP GRO stays datagram by datagram.
    let udp_gro = udp_gro && udp && esp.set_udp_gro(true).is_ok();
    let room = if udp_gro {
        GRO_BUFFER_LEN
    } else {
        MAX_PACKET + TAILROOM
    };
    let mut pool: Vec<RxBuf> = (0..BATCH)
        .map(|_| RxBuf(vec![0u8; HEADROOM + room]))
        .collect();
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut gro_meta = vec![(0usize, unspecified, 0usize); BATCH];
    let mut batch = Batch::new(BATCH);
    let mut early = EarlyEsp::new();
    let mut scratch = vec![0u8; BUFFER_LEN];
    let mut out = Out {
        batcher: (tun.vnet_hdr() && uso).then(UdpBatcher::new),
        plain: tun.vnet_hdr().then(|| VnetHeader::default().to_bytes()),
    };
    while !shared.stop.load(Ordering::Relaxed) {
        if poller.wait(POLL_MS).is_err() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        // Drain the socket a batch at a time (after a timeout, the held
        // datagrams below are still tried).
        let batches = if poller.is_ready(0) { 4 } else { 0 };
        for _ in 0..batches {
            let n = batch
                .recv_runs(esp, &mut pool, udp_gro, &mut gro_meta)
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            let tables = shared.tables.load();
            let now = Instant::now();
            for (RxBuf(buf), &(total, src, segment)) in pool.iter_mut().zip(&gro_meta[..n]) {
                for run in runs(total, segment) {
                    // One datagram at buf[s..e]. Rebuilding its IP header may
                    // overwrite the tail of the one before, which was opened
                    // and written out (or copied) already.
                    let (s, e) = (HEADROOM + run.start, HEADROOM + run.end);
                    let start = if esp.has_ip_header() {
                        match ipv4_header_len(&buf[s..e]) {
                            Some(h) => s + h,
                            None => {
                                shared.stats.drop(PathDrop::Malformed);
                                continue;
                            }
                        }
                    } else {
                        s
                    };
                    match gateway::try_unprotect(
                        &tables,
                        &shared.stats,
                        src.ip(),
                        udp,
                        buf,
                        start,
                        e,
                        now,
                    ) {
                        Ok(GatewayReceive::Packet { start, end }) => {
                            out.deliver(&shared, &tables, tun.as_ref(), src.ip(), &buf[start..end]);
                        }
                        Ok(GatewayReceive::Keepalive) => add(&shared.stats.keepalives, 1),
                        Ok(GatewayReceive::Ike { start, end }) => {
                            if shared.ike_inbox.push(src, &buf[start..end]) {
                                add(&shared.stats.ike_received, 1);
                            } else {
                                shared.stats.drop(PathDrop::Ike);
                            }
                        }
                        Err(PathDrop::UnknownSpi) => {
                            // Perhaps an SA that the IKE driver is about to
                            // install (see `early`).
                            let known = tables.peer_by_addr(src.ip()).is_some();
                            if !(known && early.hold(src.ip(), udp, &buf[start..e], now)) {
                                shared.stats.drop(PathDrop::UnknownSpi);
                            }
                        }
                        Err(_) => {}
                    }
                }
            }
            // A batch's runs go out before the next batch.
            out.flush(&shared, tun.as_ref());
        }
        // Held ESP whose SA may have arrived since.
        if !early.is_empty() {
            let tables = shared.tables.load();
            let now = Instant::now();
            let expired = early.retry(now, |src, udp, datagram| {
                // Opening rebuilds the IP header in front of the payload:
                // it needs the headroom that the hold does not keep.
                let end = HEADROOM + datagram.len();
                scratch[HEADROOM..end].copy_from_slice(datagram);
                match gateway::try_unprotect(
                    &tables,
                    &shared.stats,
                    src,
                    udp,
                    &mut scratch,
                    HEADROOM,
                    end,
                    now,
                ) {
                    Err(PathDrop::UnknownSpi) => Retry::StillUnknown,
                    Ok(GatewayReceive::Packet { start, end }) => {
                        out.deliver(&shared, &tables, tun.as_ref(), src, &scratch[start..end]);
                        Retry::Handled
                    }
                    Ok(_) | Err(_) => Retry::Handled,
                }
            });
            for _ in 0..expired {
                shared.stats.drop(PathDrop::UnknownSpi);
            }
            out.flush(&shared, tun.as_ref());
        }
    }
}

/// How the receive worker writes to the TUN device.
struct Out {
    /// Joins runs of UDP datagrams (needs the virtio-net header).
    batcher: Option<UdpBatcher>,
    /// The header of a packet written on its own, when the device has
    /// one.
    plain: Option<[u8; vnet::HEADER_LEN]>,
}

impl Out {
    /// Counts an opened packet from peer `src` for that peer, and writes
    /// it to the TUN device, or hands it to the batcher.
    fn deliver(
        &mut self,
        shared: &GatewayShared,
        tables: &GatewayTables,
        tun: &dyn FrameDevice,
        src: IpAddr,
        packet: &[u8],
    ) {
        if let Some(c) = peer_counters(tables, src) {
            add(&c.rx_frames, 1);
            add(&c.rx_bytes, packet.len() as u64);
        }
        let written = match (&mut self.batcher, &self.plain) {
            (Some(b), _) => {
                b.push(packet, &mut |p: TunPacket<'_>| write(shared, tun, p));
                return;
            }
            (None, Some(plain)) => tun.send_with_header(plain, packet),
            (None, None) => tun.send(packet),
        };
        if written.is_err() {
            shared.stats.drop(PathDrop::TapWrite);
        }
    }

    /// Writes out the batcher's run.
    fn flush(&mut self, shared: &GatewayShared, tun: &dyn FrameDevice) {
        if let Some(b) = &mut self.batcher {
            b.flush(&mut |p: TunPacket<'_>| write(shared, tun, p));
        }
    }
}

/// Writes a packet behind its virtio-net header, counting a failure (once
/// per datagram it carries).
fn write(shared: &GatewayShared, tun: &dyn FrameDevice, p: TunPacket<'_>) {
    if tun
        .send_with_header(&p.header.to_bytes(), p.packet)
        .is_err()
    {
        shared.stats.drop(PathDrop::TapWrite);
    }
}

/// The packet read into `buf` behind `front` bytes of virtio-net header
/// (`len` in all): checks the header (the device has no offloads, so
/// there should be nothing to do) and returns the packet's length, which
/// starts at [`HEADROOM`]; `None` when it must be dropped (counted).
fn strip_vnet_header(stats: &Stats, buf: &mut [u8], front: usize, len: usize) -> Option<usize> {
    if front == 0 {
        return Some(len);
    }
    let Some(packet_len) = len.checked_sub(front) else {
        stats.drop(PathDrop::Malformed);
        return None;
    };
    let Ok(header) = VnetHeader::parse(&buf[HEADROOM - front..HEADROOM]) else {
        stats.drop(PathDrop::Malformed);
        return None;
    };
    if header.is_gso() {
        stats.drop(PathDrop::Unsupported);
        return None;
    }
    if offload::complete_checksum(&header, &mut buf[HEADROOM..HEADROOM + packet_len]).is_err() {
        stats.drop(PathDrop::Malformed);
        return None;
    }
    Some(packet_len)
}

fn peer_counters(tables: &GatewayTables, addr: IpAddr) -> Option<&NetworkCounters> {
    let i = tables.peer_by_addr(addr)?;
    tables.peer(i).map(|p| &*p.counters)
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
    use crate::gateway::GatewayMode;
    use crate::gateway::tests::{host, kernel_packet};
    use crate::io::socket::DatagramSocket;
    use crate::worker::test::Recorder;
    use std::net::{Ipv4Addr, UdpSocket};
    use tunsec_esp::Suite;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// Loopback tables for the receiving host: with the inbound SA `spi`
    /// once it is "installed", without any SA before.
    fn receiver(spi: Option<u32>) -> GatewayTables {
        let suite = spi.map(|_| Suite::AesGcm128);
        host(
            LOOPBACK,
            LOOPBACK,
            GatewayMode::Transport,
            suite,
            spi.unwrap_or(0),
            1,
        )
    }

    /// A VXLAN-port packet sealed with SPI `spi` (ESP-in-UDP, from the SPI
    /// on), and the packet.
    fn sealed(spi: u32) -> (Vec<u8>, Vec<u8>) {
        sealed_run(spi, 1).remove(0)
    }

    /// `n` packets of one length (from source ports 40000 on), sealed in
    /// turn with one SA of SPI `spi`, each with its ESP datagram.
    fn sealed_run(spi: u32, n: u16) -> Vec<(Vec<u8>, Vec<u8>)> {
        let from = host(
            LOOPBACK,
            LOOPBACK,
            GatewayMode::Transport,
            Some(Suite::AesGcm128),
            1,
            spi,
        );
        (0..n)
            .map(|i| {
                let pkt = kernel_packet(LOOPBACK, LOOPBACK, 40000 + i, 4789, 200);
                let mut buf = vec![0u8; BUFFER_LEN];
                buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
                let tx = gateway::protect(
                    &from,
                    &Stats::new(1),
                    &mut buf,
                    HEADROOM,
                    HEADROOM + pkt.len(),
                    Instant::now(),
                )
                .unwrap();
                (buf[tx.start..tx.end].to_vec(), pkt)
            })
            .collect()
    }

    /// A receive worker on loopback with `tables`, writing to a recording
    /// TUN device; stopped when dropped.
    struct RxWorker {
        shared: Arc<GatewayShared>,
        tun: Arc<Recorder>,
        port: u16,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl RxWorker {
        fn start(tables: GatewayTables, udp_gro: bool) -> Self {
            let shared = Arc::new(GatewayShared::new(tables));
            let esp = DatagramSocket::udp(SocketAddr::from((LOOPBACK, 0))).unwrap();
            if udp_gro {
                // As the worker does when it starts; here before anything
                // is sent.
                esp.set_udp_gro(true).unwrap();
            }
            let port = esp.local_addr().unwrap().port();
            let sockets = Arc::new(Sockets {
                esp,
                tunnels: Vec::new(),
            });
            let tun = Arc::new(Recorder::default());
            let thread = {
                let (shared, tun) = (Arc::clone(&shared), tun.clone());
                Some(std::thread::spawn(move || {
                    run_rx(shared, tun, sockets, false, udp_gro)
                }))
            };
            Self {
                shared,
                tun,
                port,
                thread,
            }
        }

        fn written(&self) -> Vec<Vec<u8>> {
            self.tun.0.lock().unwrap().clone()
        }
    }

    impl Drop for RxWorker {
        fn drop(&mut self) {
            self.shared.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// As in overlay mode (`worker::test`): ESP that arrives before its
    /// inbound SA is installed is held and written to the TUN device once
    /// the SA is there; ESP whose SA never comes is counted as
    /// `unknown_spi` after `EarlyEsp::HOLD`, and ESP from an address that
    /// is no peer at once.
    #[test]
    fn esp_before_its_sa_is_held_then_delivered() {
        let rx = RxWorker::start(receiver(None), false);
        let (shared, port) = (&rx.shared, rx.port);
        let written = || rx.written();
        let unknown = || shared.stats.drops(PathDrop::UnknownSpi);

        let sender = UdpSocket::bind((LOOPBACK, 0)).unwrap();
        let (datagram, pkt) = sealed(0x5001);
        sender.send_to(&datagram, (LOOPBACK, port)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(written().is_empty());
        assert_eq!(unknown(), 0, "held, not dropped");

        shared.tables.store(Arc::new(receiver(Some(0x5001))));
        // The worker looks again at its next wake-up (at most POLL_MS).
        wait_until(Duration::from_secs(2), || !written().is_empty());
        let got = written();
        assert_eq!(got.len(), 1);
        // The IP header is rebuilt (transport mode); the UDP datagram is
        // the one that was sealed.
        assert_eq!(got[0][20..], pkt[20..]);
        assert_eq!(unknown(), 0);

        let (stray, _) = sealed(0x6001);
        let sent = Instant::now();
        sender.send_to(&stray, (LOOPBACK, port)).unwrap();
        wait_until(Duration::from_secs(2), || unknown() > 0);
        assert_eq!(unknown(), 1);
        assert!(
            sent.elapsed() >= EarlyEsp::HOLD,
            "dropped before the hold ended"
        );

        // Not from a peer: nothing to wait for.
        shared.tables.store(Arc::new({
            let mut t = receiver(Some(0x5001));
            let mut moved = t.peer(0).unwrap().clone();
            moved.underlay = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
            let inbound = t.inbound.clone();
            t.insert_peer(0, moved).unwrap();
            t.inbound = inbound;
            t
        }));
        let sent = Instant::now();
        sender.send_to(&stray, (LOOPBACK, port)).unwrap();
        wait_until(Duration::from_secs(2), || unknown() > 1);
        assert_eq!(unknown(), 2);
        assert!(sent.elapsed() < EarlyEsp::HOLD, "held for a stranger");
        assert_eq!(written().len(), 1);
    }

    /// With UDP GRO, a run of datagrams sent with UDP GSO arrives as one
    /// buffer; each is opened in place (transport mode rebuilds its IP
    /// header over the tail of the one before) and written in order.
    #[test]
    fn a_gso_run_opens_datagram_by_datagram() {
        let rx = RxWorker::start(receiver(Some(0x5001)), true);
        let (shared, port) = (&rx.shared, rx.port);
        let run = sealed_run(0x5001, 12);
        let sender = DatagramSocket::udp(SocketAddr::from((LOOPBACK, 0))).unwrap();
        let dst = SocketAddr::from((LOOPBACK, port));
        let datagrams: Vec<(&[u8], SocketAddr)> =
            run.iter().map(|(d, _)| (d.as_slice(), dst)).collect();
        let sent = Batch::new(4).send_gso(&sender, &datagrams);
        assert_eq!((sent.sent, sent.refused, sent.gso_failed), (12, 0, false));
        let written = || rx.written();
        wait_until(Duration::from_secs(2), || written().len() >= 12);
        let got = written();
        assert_eq!(got.len(), 12);
        for (w, (_, pkt)) in got.iter().zip(&run) {
            assert_eq!(w[..], pkt[..], "the rebuilt packet is the one sealed");
        }
        for drop in [
            PathDrop::Esp,
            PathDrop::Malformed,
            PathDrop::Policy,
            PathDrop::UnknownSpi,
        ] {
            assert_eq!(shared.stats.drops(drop), 0, "{drop:?}");
        }
    }
}
