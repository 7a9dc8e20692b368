//! Gateway mode's workers: a TUN device on one side, the ESP socket on
//! the other.
//!
//! The transmit worker ([`run_tx`]) reads the IP packets that policy
//! routing steered into the TUN device, seals them with
//! [`gateway::protect`] and sends them, a batch per `sendmmsg`, from the
//! ESP socket. The receive worker ([`run_rx`], the skeleton's loop with
//! this mode's `Receive`) opens ESP with [`crate::esp_rx::open_inbound`] and
//! writes the packet to the TUN device, so the kernel receives it as if
//! it had come off the wire. Outbound SAs are used only by the first and
//! inbound SAs only by the second.

use std::sync::Arc;
use std::time::Instant;

use super::{BATCH, BUFFER_LEN, FrameDevice, MAX_PACKET, Receive, Sender, Shared, Sockets, wait};
use crate::gateway::{self, GatewayCtx, GatewayTables, Unprotected};
use crate::io::socket::{Batch, Poller, SocketKind};
use crate::offload::{self, TunPacket, UdpBatcher, VnetHeader, vnet};
use crate::packet::{HEADROOM, Transmit, Via};
use crate::stats::{PathDrop, Stats, add};

/// What the gateway workers share with the control plane.
pub type GatewayShared = Shared<GatewayTables>;

impl GatewayShared {
    /// Shared state around the first tables (each peer carries its own
    /// counters, [`crate::gateway::GatewayPeer::counters`]).
    pub fn new(tables: GatewayTables) -> Self {
        Self::with(tables, (), 0, 1)
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
    let stats = &shared.stats;
    let mut sender = Sender::<BATCH> {
        batch: Batch::new(BATCH),
        udp_gso: udp_gso && esp.kind() == SocketKind::Udp,
    };
    let mut poller = Poller::new(&[tun.fd()]);
    let mut pool: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; BUFFER_LEN]).collect();
    let mut pending: Vec<(usize, Transmit)> = Vec::with_capacity(BATCH);
    let mut clear_batch = Batch::new(BATCH);
    // Reads start with a virtio-net header, in front of the packet.
    let front = if tun.vnet_hdr() { vnet::HEADER_LEN } else { 0 };
    while !shared.stopping() {
        if !wait(&mut poller) || !poller.is_ready(0) {
            continue;
        }
        // Drain the device a batch at a time.
        loop {
            let tables = shared.tables.load();
            let ctx = shared.ctx(&tables, Instant::now());
            let mut read = 0;
            for (b, buf) in pool.iter_mut().enumerate() {
                let Ok(len) = tun.recv(&mut buf[HEADROOM - front..HEADROOM + MAX_PACKET]) else {
                    break;
                };
                read += 1;
                let sealed = strip_vnet_header(buf, front, len).and_then(|len| {
                    let tx = gateway::protect(&ctx, buf, HEADROOM, HEADROOM + len)?;
                    Ok((len, tx))
                });
                if let Ok((len, tx)) = stats.count(sealed) {
                    if let Some(c) = ctx.tables.peer(tx.peer).map(|p| &p.counters) {
                        if tx.via == Via::Esp {
                            add(&c.tx_frames, 1);
                            add(&c.tx_bytes, len as u64);
                        }
                    }
                    pending.push((b, tx));
                }
            }
            if !pending.is_empty() {
                let datagrams = pending
                    .iter()
                    .filter(|(_, tx)| tx.via == Via::Esp)
                    .map(|&(b, tx)| (&pool[b][tx.start..tx.end], tx.dst));
                sender.send(esp, datagrams, true, stats);
                send_clear(&mut clear_batch, &sockets, &pool, &pending, stats);
                pending.clear();
            }
            // Drained, or told to stop while the device keeps filling.
            if read < BATCH || shared.stopping() {
                break;
            }
        }
    }
}

/// Sends the `clear` VNIs' packets of a batch as they are, from the raw
/// IP socket; without one (none is configured), they are dropped as
/// `send`, never sent another way.
fn send_clear(
    batch: &mut Batch,
    sockets: &Sockets,
    pool: &[Vec<u8>],
    pending: &[(usize, Transmit)],
    stats: &Stats,
) {
    let mut clear = pending
        .iter()
        .filter(|(_, tx)| tx.via == Via::Clear)
        .map(|&(b, tx)| (&pool[b][tx.start..tx.end], tx.dst))
        .peekable();
    if clear.peek().is_none() {
        return;
    }
    let refused = match &sockets.clear {
        Some(sock) => batch.send(sock, clear).refused,
        None => clear.count(),
    };
    for _ in 0..refused {
        stats.drop(PathDrop::Send);
    }
}

/// Runs the receive worker until `shared.stop` is set: ESP socket to TUN
/// device. With `uso` and a device with a virtio-net header, the packets
/// opened from one batch of datagrams go through a [`UdpBatcher`]: runs of
/// UDP datagrams of one flow are written as one packet. With `udp_gro`
/// (and ESP in UDP), a run of datagrams from one peer arrives as one
/// buffer (`UDP_GRO`), opened datagram by datagram in place (see
/// the `worker` module).
pub fn run_rx(
    shared: Arc<GatewayShared>,
    tun: Arc<dyn FrameDevice>,
    sockets: Arc<Sockets>,
    uso: bool,
    udp_gro: bool,
) {
    let mut out = Tun {
        batcher: (tun.vnet_hdr() && uso).then(UdpBatcher::new),
        plain: tun.vnet_hdr().then(|| VnetHeader::default().to_bytes()),
        tun,
    };
    super::run_rx(&shared, &sockets, &mut out, udp_gro);
}

/// How the receive worker writes to the TUN device.
struct Tun {
    tun: Arc<dyn FrameDevice>,
    /// Joins runs of UDP datagrams (needs the virtio-net header).
    batcher: Option<UdpBatcher>,
    /// The header of a packet written on its own, when the device has
    /// one.
    plain: Option<[u8; vnet::HEADER_LEN]>,
}

impl Receive for Tun {
    type Tables = GatewayTables;

    /// Counts an opened packet for its peer, and writes it to the TUN
    /// device, or hands it to the batcher.
    fn deliver(&mut self, ctx: &GatewayCtx<'_>, buf: &[u8], p: Unprotected) {
        let stats = ctx.stats;
        let packet = &buf[p.start..p.end];
        if let Some(c) = ctx.tables.peer(p.peer).map(|p| &p.counters) {
            add(&c.rx_frames, 1);
            add(&c.rx_bytes, packet.len() as u64);
        }
        let tun = self.tun.as_ref();
        let written = match (&mut self.batcher, &self.plain) {
            (Some(b), _) => {
                b.push(packet, &mut |p: TunPacket<'_>| write(stats, tun, p));
                return;
            }
            (None, Some(plain)) => tun.send_with_header(plain, packet),
            (None, None) => tun.send(packet),
        };
        if written.is_err() {
            stats.drop(PathDrop::TapWrite);
        }
    }

    /// Writes out the batcher's run.
    fn flush(&mut self, stats: &Stats) {
        let tun = self.tun.as_ref();
        if let Some(b) = &mut self.batcher {
            b.flush(&mut |p: TunPacket<'_>| write(stats, tun, p));
        }
    }
}

/// Writes a packet behind its virtio-net header, counting a failure (once
/// per datagram it carries).
fn write(stats: &Stats, tun: &dyn FrameDevice, p: TunPacket<'_>) {
    if tun
        .send_with_header(&p.header.to_bytes(), p.packet)
        .is_err()
    {
        stats.drop(PathDrop::TapWrite);
    }
}

/// The packet read into `buf` behind `front` bytes of virtio-net header
/// (`len` in all): checks the header (the device has no offloads, so
/// there should be nothing to do) and returns the packet's length, which
/// starts at [`HEADROOM`].
fn strip_vnet_header(buf: &mut [u8], front: usize, len: usize) -> Result<usize, PathDrop> {
    if front == 0 {
        return Ok(len);
    }
    let packet_len = len.checked_sub(front).ok_or(PathDrop::Malformed)?;
    let header =
        VnetHeader::parse(&buf[HEADROOM - front..HEADROOM]).map_err(|_| PathDrop::Malformed)?;
    if header.is_gso() {
        return Err(PathDrop::Unsupported);
    }
    offload::complete_checksum(&header, &mut buf[HEADROOM..HEADROOM + packet_len])
        .map_err(|_| PathDrop::Malformed)?;
    Ok(packet_len)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use tunsec_esp::Suite;

    use super::*;
    use crate::early::EarlyEsp;
    use crate::gateway::GatewayMode;
    use crate::gateway::tests::{host, kernel_packet};
    use crate::io::socket::DatagramSocket;
    use crate::packet::Ctx;
    use crate::worker::test::{Recorder, wait_until};

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
                let ctx = Ctx {
                    tables: &from,
                    fdb: &(),
                    stats: &Stats::new(1),
                    now: Instant::now(),
                };
                let tx = gateway::protect(&ctx, &mut buf, HEADROOM, HEADROOM + pkt.len()).unwrap();
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
                clear: None,
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
            self.tun.written()
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

    /// As in overlay mode (`worker::overlay::tests`): ESP that arrives before its
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
