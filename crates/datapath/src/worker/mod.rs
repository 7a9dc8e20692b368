//! The packet workers: plain threads that own their file descriptors and
//! move batches, in either mode.
//!
//! This module is their common skeleton: what they share with the
//! control plane ([`Shared`]), the sockets ([`Sockets`]), the receive loop
//! (poll, `recvmmsg` with UDP GRO runs, ESP and cleartext dispatch, the
//! IKE inbox, ESP held for its SA and retried, [`crate::early`]) and the
//! send step (UDP GSO while the kernel takes it, else datagram by
//! datagram). What differs by mode sits beside it:
//!
//! - [`overlay`]: TAP devices. tunsecd runs `[node] workers` pairs (one
//!   by default); each TAP device has one queue per worker
//!   (`IFF_MULTI_QUEUE`) and each UDP port one socket per worker
//!   (`SO_REUSEPORT`). Frames are cut from TSO super-frames and coalesced
//!   into GRO super-frames ([`crate::offload`]).
//! - [`gateway`]: one pair around a TUN device.
//!
//! SAs are shared between workers: the per-SA lock is held only to take a
//! sequence number or to check and update the replay window, never while
//! a packet is encrypted or decrypted. Every buffer has headroom and
//! tailroom around the packet, so headers and ESP are written in place.
//! A mode's per-packet functions return their drops; the code here counts
//! them ([`Stats::count`]).

use std::io;
use std::iter;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::early::{EarlyEsp, Retry};
use crate::esp_rx::{Inbound, Received, open_inbound};
use crate::io::socket::{Batch, DatagramSocket, Poller, SocketKind, runs};
use crate::packet::{Ctx, HEADROOM, TAILROOM};
use crate::stats::{PathDrop, Stats, add};

pub mod gateway;
mod inbox;
pub mod overlay;

pub use inbox::IkeInbox;

/// Datagrams per system call.
pub const BATCH: usize = 64;
/// Datagrams the transmit worker seals before it sends them: several
/// whole TSO super-frames (up to 45 segments each at a 1500-byte MTU), so
/// that each leaves as one UDP GSO message, and one `sendmmsg` carries
/// several.
pub const TX_POOL: usize = 4 * BATCH;
/// The largest frame (overlay, jumbo frames included) or IP packet
/// (gateway) a buffer holds.
pub const MAX_PACKET: usize = 9216;
/// One buffer: headroom, the largest packet, tailroom.
pub const BUFFER_LEN: usize = HEADROOM + MAX_PACKET + TAILROOM;
/// A receive buffer with UDP GRO: a run of datagrams of up to 64 KB.
pub const GRO_BUFFER_LEN: usize = 65_536;
/// How often an idle worker wakes to check for shutdown.
const POLL_MS: i32 = 100;

/// What a mode's workers share with the control plane: `T` is the mode's
/// table snapshot, `F` its forwarding database (overlay mode; `()` in
/// gateway mode).
#[derive(Debug)]
pub struct Shared<T, F = ()> {
    /// The published tables.
    pub tables: ArcSwap<T>,
    /// The forwarding database.
    pub fdb: F,
    /// Counters: drops, keepalives, and in overlay mode per network (in
    /// gateway mode each peer carries its own).
    pub stats: Stats,
    /// Set to stop the workers.
    pub stop: AtomicBool,
    /// IKE messages that arrived on the ESP-in-UDP port, for the IKE
    /// driver (closed unless one runs).
    pub ike_inbox: IkeInbox,
    /// Held by every change of the tables: the IKE driver's SAs and the
    /// control plane's changes come from several threads, and a copy
    /// taken before another thread's store would undo that change.
    edits: Mutex<()>,
}

impl<T, F> Shared<T, F> {
    /// Shared state around the first tables, with `slots` per-network (or
    /// per-peer) counters in `shards` shards.
    fn with(tables: T, fdb: F, slots: usize, shards: usize) -> Self {
        Self {
            tables: ArcSwap::from_pointee(tables),
            fdb,
            stats: Stats::with_shards(slots, shards),
            stop: AtomicBool::new(false),
            ike_inbox: IkeInbox::default(),
            edits: Mutex::new(()),
        }
    }

    /// Copies the current tables, lets `f` change them, and publishes the
    /// copy (read-copy-update); one change at a time. The workers pick it
    /// up with their next batch.
    pub fn edit(&self, f: &mut dyn FnMut(&mut T))
    where
        T: Clone,
    {
        let _one_at_a_time = self.edits.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = (**self.tables.load()).clone();
        f(&mut next);
        self.tables.store(Arc::new(next));
    }

    /// The context of a batch read at `now` under the snapshot `tables`.
    fn ctx<'a>(&'a self, tables: &'a T, now: Instant) -> Ctx<'a, T, F> {
        Ctx {
            tables,
            fdb: &self.fdb,
            stats: &self.stats,
            now,
        }
    }

    /// Whether the workers are told to stop.
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A frame device of one network (a TAP device, in overlay mode), or the
/// TUN device (gateway mode).
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
    /// Cleartext tunnel sockets, one per tunnel port (overlay mode).
    pub tunnels: Vec<(u16, DatagramSocket)>,
    /// Gateway mode: the raw IP socket that sends the packets of `clear`
    /// VNIs as they are ([`crate::packet::Via::Clear`]), marked so that
    /// the steering lets them pass.
    pub clear: Option<DatagramSocket>,
}

/// Waits until a descriptor of `poller` is readable or [`POLL_MS`]
/// passes; `false` after a failed wait (after a short pause).
fn wait(poller: &mut Poller) -> bool {
    if poller.wait(POLL_MS).is_err() {
        std::thread::sleep(Duration::from_millis(10));
        return false;
    }
    true
}

/// A mode's half of the receive worker: what an opened datagram must be,
/// and where it goes.
pub(crate) trait Receive {
    /// The mode's table snapshot, which opens its ESP
    /// ([`open_inbound`]).
    type Tables: Inbound;

    /// Accepts a cleartext tunnel datagram `buf[start..end]` from `src`
    /// that arrived on tunnel port `port` (`ctx, src, port, buf, start,
    /// end`); `None` for a mode without tunnel sockets.
    const CLEAR: Option<ClearFn<Self>> = None;

    /// Writes out (or batches) what `buf` holds at `payload`, and counts
    /// it.
    fn deliver(&mut self, ctx: &RxCtx<'_, Self>, buf: &[u8], payload: Payload<Self>);

    /// Writes out whatever [`Self::deliver`] batched.
    fn flush(&mut self, stats: &Stats);
}

/// The per-packet context of a mode's receive worker.
type RxCtx<'a, R> = Ctx<'a, <R as Receive>::Tables, <<R as Receive>::Tables as Inbound>::Fdb>;
/// What a mode's receive worker delivers.
type Payload<R> = <<R as Receive>::Tables as Inbound>::Payload;
/// See [`Receive::CLEAR`].
type ClearFn<R> =
    fn(&RxCtx<'_, R>, IpAddr, u16, &mut [u8], usize, usize) -> Result<Payload<R>, PathDrop>;

/// A receive buffer: datagrams land [`HEADROOM`] bytes in, so that
/// gateway transport mode can rebuild the IP header in front of the first
/// one.
struct RxBuf(Vec<u8>);

impl AsMut<[u8]> for RxBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0[HEADROOM..]
    }
}

/// Runs a receive worker until `shared.stop` is set: from the ESP socket
/// and the tunnel sockets to `mode`.
///
/// With `udp_gro`, the UDP sockets hand over runs of equal datagrams of
/// one flow as one buffer (`UDP_GRO`), which is cut back into datagrams
/// and opened in place, one by one: one socket read per run instead of
/// per datagram. Rebuilding a gateway packet's IP header may overwrite the
/// tail of the datagram before, which was written out (or copied)
/// already.
///
/// ESP with an SPI that has no SA yet, from a known peer, is held
/// ([`EarlyEsp`]) and tried again at every wake-up (at least every
/// [`POLL_MS`]); it counts as `unknown_spi` only once its hold expires.
pub(crate) fn run_rx<R: Receive>(
    shared: &Shared<R::Tables, <R::Tables as Inbound>::Fdb>,
    sockets: &Sockets,
    mode: &mut R,
    udp_gro: bool,
) {
    let socks: Vec<(Option<u16>, &DatagramSocket)> = iter::once((None, &sockets.esp))
        .chain(sockets.tunnels.iter().map(|(p, s)| (Some(*p), s)))
        .collect();
    let fds: Vec<RawFd> = socks.iter().map(|(_, s)| s.as_raw_fd()).collect();
    let mut poller = Poller::new(&fds);
    // UDP GRO where the kernel allows it (a socket that refuses stays
    // datagram by datagram).
    let gro: Vec<bool> = socks
        .iter()
        .map(|(_, s)| udp_gro && s.kind() == SocketKind::Udp && s.set_udp_gro(true).is_ok())
        .collect();
    let room = if gro.iter().any(|&g| g) {
        GRO_BUFFER_LEN
    } else {
        BUFFER_LEN
    };
    let mut pool: Vec<RxBuf> = (0..BATCH)
        .map(|_| RxBuf(vec![0u8; HEADROOM + room]))
        .collect();
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut meta = vec![(0usize, unspecified, 0usize); BATCH];
    let mut batch = Batch::new(BATCH);
    let mut early = EarlyEsp::new();
    // A held datagram is opened here, behind headroom.
    let mut scratch = vec![0u8; BUFFER_LEN];
    while !shared.stopping() {
        if !wait(&mut poller) {
            continue;
        }
        for (i, &(port, sock)) in socks.iter().enumerate() {
            if !poller.is_ready(i) {
                continue;
            }
            let udp = sock.kind() == SocketKind::Udp;
            // Drain the socket a batch at a time, then look at the others.
            for _ in 0..4 {
                let n = batch
                    .recv_runs(sock, &mut pool, gro[i], &mut meta)
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                let tables = shared.tables.load();
                let ctx = shared.ctx(&tables, Instant::now());
                for (RxBuf(buf), &(total, src, segment)) in pool.iter_mut().zip(&meta[..n]) {
                    for run in runs(total, segment) {
                        let (s, e) = (HEADROOM + run.start, HEADROOM + run.end);
                        let datagram = Datagram { src, udp, s, e };
                        match port {
                            Some(port) => {
                                let r = match R::CLEAR {
                                    Some(clear) => clear(&ctx, src.ip(), port, buf, s, e),
                                    None => Err(PathDrop::Policy),
                                };
                                if let Ok(p) = ctx.stats.count(r) {
                                    mode.deliver(&ctx, buf, p);
                                }
                            }
                            None if sock.has_ip_header() => match ipv4_header_len(&buf[s..e]) {
                                Some(h) => {
                                    let d = Datagram {
                                        s: s + h,
                                        ..datagram
                                    };
                                    receive_esp(mode, &ctx, &shared.ike_inbox, &mut early, buf, d);
                                }
                                None => shared.stats.drop(PathDrop::Malformed),
                            },
                            None => receive_esp(
                                mode,
                                &ctx,
                                &shared.ike_inbox,
                                &mut early,
                                buf,
                                datagram,
                            ),
                        }
                    }
                }
                // A batch's packets go out before the next batch.
                mode.flush(&shared.stats);
            }
        }
        // Held ESP whose SA may have arrived since.
        if !early.is_empty() {
            let tables = shared.tables.load();
            let ctx = shared.ctx(&tables, Instant::now());
            let expired = early.retry(ctx.now, |src, udp, datagram| {
                let end = HEADROOM + datagram.len();
                scratch[HEADROOM..end].copy_from_slice(datagram);
                match open_inbound(&ctx, src, udp, &mut scratch, HEADROOM, end) {
                    Err(PathDrop::UnknownSpi) => return Retry::StillUnknown,
                    Ok(Received::Payload(p)) => mode.deliver(&ctx, &scratch, p),
                    // Held as ESP, so neither a keepalive nor IKE.
                    Ok(Received::Keepalive | Received::Ike { .. }) => {}
                    Err(d) => ctx.stats.drop(d),
                }
                Retry::Handled
            });
            for _ in 0..expired {
                shared.stats.drop(PathDrop::UnknownSpi);
            }
            mode.flush(&shared.stats);
        }
    }
}

/// Where one datagram lies in its receive buffer, `buf[s..e]` (from the
/// SPI on, for ESP), and where it came from.
#[derive(Clone, Copy)]
struct Datagram {
    src: SocketAddr,
    udp: bool,
    s: usize,
    e: usize,
}

/// Opens a datagram from the ESP socket and sends it on: a payload to
/// the mode, IKE to the inbox, ESP for an SA not yet installed to the
/// hold; counts the rest.
fn receive_esp<R: Receive>(
    mode: &mut R,
    ctx: &RxCtx<'_, R>,
    inbox: &IkeInbox,
    early: &mut EarlyEsp,
    buf: &mut [u8],
    d: Datagram,
) {
    let src = d.src.ip();
    match open_inbound(ctx, src, d.udp, buf, d.s, d.e) {
        Ok(Received::Payload(p)) => mode.deliver(ctx, buf, p),
        Ok(Received::Keepalive) => {}
        Ok(Received::Ike { start, end }) => {
            if inbox.push(d.src, &buf[start..end]) {
                add(&ctx.stats.ike_received, 1);
            } else {
                ctx.stats.drop(PathDrop::Ike);
            }
        }
        Err(PathDrop::UnknownSpi) => {
            // Perhaps an SA that the IKE driver is about to install.
            let known = ctx.tables.peer_by_addr(src).is_some();
            if !(known && early.hold(src, d.udp, &buf[d.s..d.e], ctx.now)) {
                ctx.stats.drop(PathDrop::UnknownSpi);
            }
        }
        Err(other) => ctx.stats.drop(other),
    }
}

/// Sends a transmit worker's datagrams: through UDP generic segmentation
/// offload ([`Batch::send_gso`]) while the kernel takes it, else datagram
/// by datagram ([`Batch::send`]). Datagrams the kernel refuses count as
/// `send` drops. `N` datagrams at most go to one [`Batch::send_gso`]
/// call, from a list on the stack.
struct Sender<const N: usize> {
    batch: Batch,
    /// Send with UDP GSO.
    udp_gso: bool,
}

impl<const N: usize> Sender<N> {
    /// Sends `datagrams` from `sock`. If the kernel refuses a GSO message
    /// on the `esp` socket, GSO is turned off for good.
    fn send<'a>(
        &mut self,
        sock: &DatagramSocket,
        datagrams: impl Iterator<Item = (&'a [u8], SocketAddr)>,
        esp: bool,
        stats: &Stats,
    ) {
        let refused = if self.udp_gso {
            self.send_gso(sock, datagrams, esp)
        } else {
            self.batch.send(sock, datagrams).refused
        };
        for _ in 0..refused {
            stats.drop(PathDrop::Send);
        }
    }

    /// [`Self::send`] through UDP GSO, up to `N` datagrams per call to
    /// [`Batch::send_gso`]; returns how many were refused.
    fn send_gso<'a>(
        &mut self,
        sock: &DatagramSocket,
        mut datagrams: impl Iterator<Item = (&'a [u8], SocketAddr)>,
        esp: bool,
    ) -> usize {
        let mut refused = 0;
        let mut gso_failed = None;
        // The overlay's pool holds more buffers than one list (`TX_POOL`
        // plus a flood's fan-out), so a flush may take several calls:
        // every pending datagram is sent or counted as refused, none is
        // left behind.
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut list: [(&[u8], SocketAddr); N] = [(&[], unspecified); N];
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
            if r.gso_failed && esp {
                gso_failed = Some(r.error);
            }
        }
        if let Some(error) = gso_failed {
            tracing::warn!(
                error = ?error.map(io::Error::from_raw_os_error),
                "the kernel refused UDP GSO; sending ESP datagram by datagram from now on"
            );
            self.udp_gso = false;
        }
        refused
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
    use std::io;
    use std::os::fd::RawFd;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::FrameDevice;

    /// A TAP or TUN device stand-in that records what the receive worker
    /// writes.
    #[derive(Default)]
    pub(crate) struct Recorder(pub(crate) Mutex<Vec<Vec<u8>>>);

    impl Recorder {
        /// What was written so far.
        pub(crate) fn written(&self) -> Vec<Vec<u8>> {
            self.0.lock().unwrap().clone()
        }
    }

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

    /// Waits up to `timeout` for `done`.
    pub(crate) fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn ipv4_header_len_of_raw_esp() {
        let mut p = [0u8; 28];
        p[0] = 0x45;
        assert_eq!(super::ipv4_header_len(&p), Some(20));
        p[0] = 0x46;
        assert_eq!(super::ipv4_header_len(&p), Some(24));
        p[0] = 0x44;
        assert_eq!(super::ipv4_header_len(&p), None, "shorter than 20");
        p[0] = 0x65;
        assert_eq!(super::ipv4_header_len(&p), None, "not IPv4");
        assert_eq!(super::ipv4_header_len(&p[..16]), None);
        assert_eq!(super::ipv4_header_len(&[]), None);
    }
}
