//! Overlay mode's workers: TAP devices on one side, the ESP and tunnel
//! sockets on the other.
//!
//! A pair's transmit worker ([`run_tx`]) reads frames from its queue of
//! every TAP device and sends tunnel datagrams; its receive worker
//! ([`run_rx`], the skeleton's loop with this mode's `Receive`) reads
//! datagrams from its ESP and tunnel sockets and writes frames to the TAP
//! devices, to the queue [`steer::queue_of`] picks for the flow. Every
//! pair shares one [`OverlayShared`]: the tables, the forwarding database,
//! the counters. With a virtio-net header the TAP devices hand over and
//! take back TCP super-frames ([`offload`]).

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    BATCH, BUFFER_LEN, FrameDevice, MAX_PACKET, Receive, Sender, Shared, Sockets, TX_POOL, wait,
};
use crate::fdb::Fdb;
use crate::io::socket::{Batch, Poller, SocketKind};
use crate::offload;
use crate::overlay::{self, Delivery, OverlayCtx, Tables, Targets};
use crate::packet::{HEADROOM, Transmit, Via};
use crate::stats::{PathDrop, Stats};
use crate::steer;

/// What the overlay's workers share with the control plane.
pub type OverlayShared = Shared<Tables, Fdb>;

impl OverlayShared {
    /// Shared state around the first tables, with an empty forwarding
    /// database that ages entries out after `ageing`, and counters for
    /// one worker pair.
    pub fn new(tables: Tables, now: Instant, ageing: Duration) -> Self {
        Self::with_workers(tables, now, ageing, 1)
    }

    /// [`Self::new`] with a counter shard for each thread of `workers`
    /// worker pairs: the transmit worker `w` counts in shard `2w` and the
    /// receive worker in `2w + 1` ([`worker_shards`]).
    pub fn with_workers(tables: Tables, now: Instant, ageing: Duration, workers: usize) -> Self {
        let networks = tables.networks.len();
        let shards = 2 * workers.max(1);
        Self::with(
            tables,
            Fdb::with_replicas(ageing, now, shards),
            networks,
            shards,
        )
    }
}

/// The counter shards of worker pair `w`: (transmit, receive).
pub fn worker_shards(w: usize) -> (usize, usize) {
    (2 * w, 2 * w + 1)
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
    shared: Arc<OverlayShared>,
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
        sender: Sender {
            batch: Batch::with_iovecs(BATCH, TX_POOL),
            udp_gso: udp_gso && sockets.esp.kind() == SocketKind::Udp,
        },
    };
    // One super-frame read from a device with a virtio-net header.
    let mut big = if devices.iter().any(|d| d.vnet_hdr()) {
        vec![0u8; offload::vnet::HEADER_LEN + offload::gro::MAX_FRAME_LEN]
    } else {
        Vec::new()
    };
    let stats = &shared.stats;
    while !shared.stopping() {
        if !wait(&mut poller) {
            continue;
        }
        let tables = shared.tables.load();
        // A flooded frame needs one buffer per peer of its network.
        tx.fanout = tables.max_fanout().max(1);
        if tx.pool.len() < TX_POOL + tx.fanout {
            // Only when the configuration grows, never per packet.
            tx.pool
                .resize_with(TX_POOL + tx.fanout, || vec![0u8; BUFFER_LEN]);
        }
        let ctx = shared.ctx(&tables, Instant::now());
        tx.used = 0;
        // Only the ready devices: with a thousand networks, the others
        // cost nothing.
        for &net in poller.ready() {
            let dev = &devices[net];
            for _ in 0..BATCH {
                tx.make_room(1, stats, &sockets);
                if !dev.vnet_hdr() {
                    let b = tx.used;
                    let Ok(len) = dev.recv(&mut tx.pool[b][HEADROOM..HEADROOM + MAX_PACKET]) else {
                        break;
                    };
                    tx.frame(&ctx, net, len);
                    continue;
                }
                let Ok(len) = dev.recv(&mut big) else {
                    break;
                };
                let Ok((hdr, frame)) = offload::VnetHeader::split(&big[..len]) else {
                    stats.drop(PathDrop::Malformed);
                    continue;
                };
                if hdr.is_gso() {
                    let Ok(mut segments) = offload::Segmenter::new(&hdr, frame) else {
                        stats.drop(PathDrop::Malformed);
                        continue;
                    };
                    // All the segments in one flush, so that they leave as
                    // one GSO message rather than two halves.
                    tx.make_room(segments.segment_count(), stats, &sockets);
                    let targets = overlay::targets(&ctx, net, frame);
                    loop {
                        tx.make_room(1, stats, &sockets);
                        let b = tx.used;
                        match segments.next_into(&mut tx.pool[b][HEADROOM..HEADROOM + MAX_PACKET]) {
                            Ok(Some(len)) => tx.frame_to(&ctx, net, len, &targets),
                            Ok(None) => break,
                            Err(_) => {
                                stats.drop(PathDrop::Malformed);
                                break;
                            }
                        }
                    }
                } else {
                    let b = tx.used;
                    let len = frame.len().min(MAX_PACKET);
                    let out = &mut tx.pool[b][HEADROOM..HEADROOM + len];
                    out.copy_from_slice(&frame[..len]);
                    if hdr.needs_csum() && offload::complete_checksum(&hdr, out).is_err() {
                        stats.drop(PathDrop::Malformed);
                        continue;
                    }
                    tx.frame(&ctx, net, len);
                }
            }
        }
        tx.flush(stats, &sockets);
    }
}

/// The transmit worker's buffers and pending datagrams.
struct Tx {
    pool: Vec<Vec<u8>>,
    /// Buffers of `pool` in use by pending datagrams.
    used: usize,
    /// Buffers one frame may need (head-end replication).
    fanout: usize,
    /// Sealed datagrams, each with the index of its buffer in `pool`.
    pending: Vec<(usize, Transmit)>,
    sender: Sender<TX_POOL>,
}

impl Tx {
    /// Sends what is pending if the next `frames` frames might not all
    /// find buffers.
    fn make_room(&mut self, frames: usize, stats: &Stats, sockets: &Sockets) {
        if self.used + frames * self.fanout > self.pool.len() {
            self.flush(stats, sockets);
        }
    }

    /// Sends what is pending: the ESP datagrams from the ESP socket, the
    /// cleartext ones from their tunnel port's socket.
    fn flush(&mut self, stats: &Stats, sockets: &Sockets) {
        if !self.pending.is_empty() {
            let vias = std::iter::once((Via::Esp, &sockets.esp)).chain(
                sockets
                    .tunnels
                    .iter()
                    .map(|(port, sock)| (Via::Tunnel(*port), sock)),
            );
            for (via, sock) in vias {
                let datagrams = self
                    .pending
                    .iter()
                    .filter(|(_, tx)| tx.via == via)
                    .map(|&(b, tx)| (&self.pool[b][tx.start..tx.end], tx.dst));
                self.sender.send(sock, datagrams, via == Via::Esp, stats);
            }
            self.pending.clear();
        }
        self.used = 0;
    }

    /// Sends the frame at `pool[used][HEADROOM..HEADROOM + len]` of network
    /// `net` to its peers.
    fn frame(&mut self, ctx: &OverlayCtx<'_>, net: usize, len: usize) {
        let frame = &self.pool[self.used][HEADROOM..HEADROOM + len];
        let targets = overlay::targets(ctx, net, frame);
        self.frame_to(ctx, net, len, &targets);
    }

    /// [`Self::frame`] with its peers already known: the segments of one
    /// TSO super-frame share its Ethernet header, so one forwarding lookup
    /// serves them all.
    fn frame_to(&mut self, ctx: &OverlayCtx<'_>, net: usize, len: usize, targets: &Targets) {
        let used = self.used;
        let (start, end) = (HEADROOM, HEADROOM + len);
        let peers: &[usize] = match targets {
            Targets::Unicast(p) => std::slice::from_ref(p),
            Targets::Flood => &ctx.tables.peers_of_network[net],
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
            let sealed = overlay::encapsulate(ctx, net, peer, &mut self.pool[b], start, end);
            if let Ok(tx) = ctx.stats.count(sealed) {
                self.pending.push((b, tx));
                sent_any = true;
            }
        }
        self.used += peers.len();
        if sent_any {
            overlay::count_tx(ctx.stats, net, len, matches!(targets, Targets::Flood));
        }
    }
}

/// Runs the receive worker until `shared.stop` is set.
///
/// Frames for a device with a virtio-net header get one in front; with
/// `gro`, the TCP frames of one flow within a batch are first coalesced
/// into super-frames ([`offload::Coalescer`]), so the kernel takes one
/// write where it took dozens. With `udp_gro`, the UDP sockets hand over
/// runs of datagrams (see the `worker` module).
///
/// `queues[i]` are the queues of network `i`'s device, one per worker:
/// each frame is written to the queue [`steer::queue_of`] picks for its
/// flow, so that the kernel sends that flow's frames back to the same
/// queue, whose transmit worker then carries them (one queue: always
/// that one).
pub fn run_rx(
    shared: Arc<OverlayShared>,
    queues: Vec<Vec<Arc<dyn FrameDevice>>>,
    sockets: Arc<Sockets>,
    gro: bool,
    udp_gro: bool,
) {
    let gro = queues
        .iter()
        .map(|q| gro && q.first().is_some_and(|d| d.vnet_hdr()))
        .collect();
    let mut taps = Taps {
        coalescers: (0..queues.len()).map(|_| None).collect(),
        gro,
        dirty: Vec::new(),
        queues,
        plain: offload::VnetHeader::default().to_bytes(),
    };
    super::run_rx(&shared, &sockets, &mut taps, udp_gro);
}

/// Where the receive worker writes frames: each network's TAP queues,
/// through the network's coalescer when it has one.
struct Taps {
    queues: Vec<Vec<Arc<dyn FrameDevice>>>,
    /// Each network's coalescer, made at its first frame (a thousand
    /// networks need not hold a thousand coalescers' buffers).
    coalescers: Vec<Option<offload::Coalescer>>,
    /// Whether a network coalesces (`[offload] gro` and a device with a
    /// virtio-net header).
    gro: Vec<bool>,
    /// The networks whose coalescer holds frames since the last flush.
    dirty: Vec<usize>,
    /// The virtio-net header of a frame written on its own.
    plain: [u8; offload::vnet::HEADER_LEN],
}

impl Receive for Taps {
    type Tables = Tables;

    const CLEAR: Option<super::ClearFn<Self>> = Some(overlay::receive_clear);

    /// Writes an opened frame to its network's TAP queue for its flow,
    /// through the network's coalescer when it has one.
    fn deliver(&mut self, ctx: &OverlayCtx<'_>, buf: &[u8], d: Delivery) {
        let stats = ctx.stats;
        let frame = &buf[d.start..d.end];
        let Some(devs) = self.queues.get(d.net).filter(|q| !q.is_empty()) else {
            stats.drop(PathDrop::TapWrite);
            return;
        };
        overlay::count_rx(stats, d.net, frame.len());
        if self.gro.get(d.net).copied().unwrap_or(false) {
            let c = self.coalescers[d.net].get_or_insert_with(|| {
                offload::Coalescer::new(offload::gro::DEFAULT_SLOTS, offload::Checksums::Verify)
            });
            if !self.dirty.contains(&d.net) {
                self.dirty.push(d.net);
            }
            c.push(frame, &mut |t: offload::TapFrame<'_>| {
                let dev = &devs[steer::queue_of(t.frame, devs.len())];
                write_tap(stats, dev.as_ref(), &t.header_bytes(), t.frame);
            });
            return;
        }
        let dev = &devs[steer::queue_of(frame, devs.len())];
        if dev.vnet_hdr() {
            write_tap(stats, dev.as_ref(), &self.plain, frame);
        } else if dev.send(frame).is_err() {
            stats.drop(PathDrop::TapWrite);
        }
    }

    /// Writes out what the coalescers that took frames hold.
    fn flush(&mut self, stats: &Stats) {
        for net in self.dirty.drain(..) {
            let devs = self.queues.get(net).filter(|q| !q.is_empty());
            if let (Some(Some(c)), Some(devs)) = (self.coalescers.get_mut(net), devs) {
                c.flush(&mut |t: offload::TapFrame<'_>| {
                    let dev = &devs[steer::queue_of(t.frame, devs.len())];
                    write_tap(stats, dev.as_ref(), &t.header_bytes(), t.frame);
                });
            }
        }
    }
}

/// Writes a virtio-net header and a frame to a TAP device, counting a
/// failure.
fn write_tap(stats: &Stats, dev: &dyn FrameDevice, header: &[u8], frame: &[u8]) {
    if dev.send_with_header(header, frame).is_err() {
        stats.drop(PathDrop::TapWrite);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
    use std::sync::Mutex;
    use std::sync::atomic::Ordering;

    use tunsec_esp::{Direction, Sa, SaConfig, SaKeys, Suite};

    use super::*;
    use crate::early::EarlyEsp;
    use crate::fast_map::FastMap;
    use crate::io::socket::DatagramSocket;
    use crate::overlay::{EspLayout, NetworkSpec, PeerEntry, PeerSpec, Policy, TunnelEncap};
    use crate::packet::{Ctx, EspTransport, TAILROOM};
    use crate::shared_sa::{InboundEntry, SharedSa};
    use crate::worker::test::{Recorder, wait_until};

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn esp_sa(spi: u32, direction: Direction) -> SharedSa {
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
            layout: EspLayout::EspInUdp,
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
        let fdb = Fdb::new(Duration::from_secs(300), Instant::now());
        let stats = Stats::new(1);
        let ctx = Ctx {
            tables: &tables,
            fdb: &fdb,
            stats: &stats,
            now: Instant::now(),
        };
        let mut buf = vec![0u8; HEADROOM + 200 + TAILROOM];
        let frame: Vec<u8> = (0..200u8).collect();
        buf[HEADROOM..HEADROOM + 200].copy_from_slice(&frame);
        let tx = overlay::encapsulate(&ctx, 0, 0, &mut buf, HEADROOM, HEADROOM + 200).unwrap();
        (buf[tx.start..tx.end].to_vec(), frame)
    }

    /// A receive worker on loopback without SAs; what it wrote so far.
    struct RxWorker {
        shared: Arc<OverlayShared>,
        tap: Arc<Recorder>,
        port: u16,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl RxWorker {
        fn start() -> Self {
            let shared = Arc::new(OverlayShared::new(
                loopback_tables(1, None),
                Instant::now(),
                Duration::from_secs(300),
            ));
            let esp = DatagramSocket::udp(SocketAddr::from((LOOPBACK, 0))).unwrap();
            let port = esp.local_addr().unwrap().port();
            let sockets = Arc::new(Sockets {
                clear: None,
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

        fn wait_written(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
            wait_until(timeout, || self.tap.written().len() >= n);
            self.tap.written()
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
        assert!(rx.tap.written().is_empty());
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
        wait_until(Duration::from_secs(2), || {
            rx.shared.stats.drops(PathDrop::UnknownSpi) > 0
        });
        assert_eq!(rx.shared.stats.drops(PathDrop::UnknownSpi), 1);
        assert!(
            sent.elapsed() >= EarlyEsp::HOLD,
            "dropped before the hold ended"
        );
        assert_eq!(rx.tap.written().len(), 1);
    }
}
