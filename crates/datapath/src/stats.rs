//! Data-path counters: drops by reason, and frames per network.
//!
//! Workers bump relaxed atomics (no lock, no formatting); the control plane
//! reads them for `tunsec status`. Per-SA counters live in each
//! [`tunsec_esp::Sa`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Why the data path dropped a frame or a datagram, outside of ESP
/// processing (which each SA counts under [`tunsec_esp::DropReason`]).
///
/// Named for the layer that counts it (the data path's [`Stats`]), so that
/// it neither shadows [`std::ops::Drop`] nor reads as a synonym of
/// [`tunsec_esp::DropReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PathDrop {
    /// A `require` policy and no usable outbound SA: the frame is not sent
    /// at all, never in the clear.
    NoSa = 0,
    /// ESP for an SPI that no inbound SA has.
    UnknownSpi,
    /// Cleartext tunnel traffic from a peer whose policy for that network
    /// is `require`.
    ClearRefused,
    /// A datagram from an address that is no configured peer.
    UnknownPeer,
    /// A VNI that no configured network has on that port.
    UnknownVni,
    /// Traffic for a network the sending peer does not carry, ESP from an
    /// address other than the SA's peer, or a decrypted packet that is not
    /// the peer's tunnel traffic (the SA's implicit selectors).
    Policy,
    /// A frame larger than the network's MTU allows.
    TooBig,
    /// A packet that does not parse.
    Malformed,
    /// A Geneve packet with a critical option this host does not know
    /// (RFC 8926 section 3.5), or a GUE control message.
    Unsupported,
    /// An IKE message on the ESP-in-UDP port that the control plane did
    /// not take (no IKE driver runs, or its inbox is full).
    Ike,
    /// The ESP layer dropped it; the SA's own counters say why.
    Esp,
    /// Writing a frame to the TAP device failed.
    TapWrite,
    /// Sending a datagram failed.
    Send,
    /// A tunnel-mode ESP payload whose inner IP header is not the peer's
    /// tunnel traffic to this host: the wrong next header or family, a bad
    /// version, length or checksum, other addresses, a protocol other than
    /// UDP, or a fragment (RFC 4303 section 3.1.2, RFC 4301 section 5.2).
    InnerHeader,
    /// A tunnel datagram outside the SA's negotiated traffic selectors:
    /// decrypted, its ports (or addresses) match none of them (RFC 4301
    /// section 5.2), or, outbound, neither the flow's source port nor the
    /// tunnel port would match them.
    Selector,
    /// A frame opened with an SA bound to one virtual network (keys per
    /// network) whose tunnel header names another, or none this host
    /// has: a peer (or a demultiplexing bug) putting a frame into a
    /// network its SA does not carry.
    NetworkMismatch,
    /// A packet of a virtual network whose policy with the peer is
    /// `discard` (gateway mode).
    Discarded,
}

impl PathDrop {
    /// The number of reasons.
    pub const COUNT: usize = 17;

    /// Every reason, in index order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::NoSa,
        Self::UnknownSpi,
        Self::ClearRefused,
        Self::UnknownPeer,
        Self::UnknownVni,
        Self::Policy,
        Self::TooBig,
        Self::Malformed,
        Self::Unsupported,
        Self::Ike,
        Self::Esp,
        Self::TapWrite,
        Self::Send,
        Self::InnerHeader,
        Self::Selector,
        Self::NetworkMismatch,
        Self::Discarded,
    ];

    /// A stable snake_case name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::NoSa => "no_sa",
            Self::UnknownSpi => "unknown_spi",
            Self::ClearRefused => "clear_refused",
            Self::UnknownPeer => "unknown_peer",
            Self::UnknownVni => "unknown_vni",
            Self::Policy => "policy",
            Self::TooBig => "too_big",
            Self::Malformed => "malformed",
            Self::Unsupported => "unsupported",
            Self::Ike => "ike",
            Self::Esp => "esp",
            Self::TapWrite => "tap_write",
            Self::Send => "send",
            Self::InnerHeader => "inner_header",
            Self::Selector => "selector",
            Self::NetworkMismatch => "network_mismatch",
            Self::Discarded => "discarded",
        }
    }
}

/// Frame counters of one network (one shard of them: see [`Stats`]), on
/// a cache line of their own.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct NetworkCounters {
    /// Frames read from the TAP device and sent to at least one peer.
    pub tx_frames: AtomicU64,
    /// Their bytes.
    pub tx_bytes: AtomicU64,
    /// Frames received from peers and written to the TAP device.
    pub rx_frames: AtomicU64,
    /// Their bytes.
    pub rx_bytes: AtomicU64,
    /// Frames flooded (broadcast, multicast, unknown unicast).
    pub flooded: AtomicU64,
    /// Frames whose tunnel header named this network but that came under
    /// another network's SA, dropped (`network_mismatch`).
    pub network_mismatch: AtomicU64,
}

/// The sum of a network's counters over its shards.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetworkTotals {
    /// See [`NetworkCounters::tx_frames`].
    pub tx_frames: u64,
    /// See [`NetworkCounters::tx_bytes`].
    pub tx_bytes: u64,
    /// See [`NetworkCounters::rx_frames`].
    pub rx_frames: u64,
    /// See [`NetworkCounters::rx_bytes`].
    pub rx_bytes: u64,
    /// See [`NetworkCounters::flooded`].
    pub flooded: u64,
    /// See [`NetworkCounters::network_mismatch`].
    pub network_mismatch: u64,
}

std::thread_local! {
    /// The counter shard of this thread ([`set_shard`]); 0 unless set.
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes this thread count in shard `shard` (modulo the shards a
/// [`Stats`] has): each worker thread takes its own, so that no cache line
/// of per-network counters is written per packet by two threads (see
/// docs/scaling.md).
pub fn set_shard(shard: usize) {
    SHARD.with(|s| s.set(shard));
}

/// This thread's shard ([`set_shard`]).
#[inline]
pub fn current_shard() -> usize {
    SHARD.with(std::cell::Cell::get)
}

/// All data-path counters. The per-network ones are sharded: each worker
/// thread writes the shard [`set_shard`] gave it, and readers sum them
/// ([`Stats::network_total`]).
#[derive(Debug)]
pub struct Stats {
    drops: [AtomicU64; PathDrop::COUNT],
    /// `networks × shards`, a network's shards side by side.
    networks: Vec<NetworkCounters>,
    shards: usize,
    /// Datagrams received on the ESP socket that were NAT keepalives.
    pub keepalives: AtomicU64,
    /// IKE messages received on the ESP socket and handed to the control
    /// plane.
    pub ike_received: AtomicU64,
}

impl Stats {
    /// Counters for `networks` networks, in one shard.
    pub fn new(networks: usize) -> Self {
        Self::with_shards(networks, 1)
    }

    /// Counters for `networks` networks in `shards` shards (one per
    /// worker thread).
    pub fn with_shards(networks: usize, shards: usize) -> Self {
        let shards = shards.max(1);
        Self {
            shards,
            drops: Default::default(),
            networks: (0..networks * shards)
                .map(|_| NetworkCounters::default())
                .collect(),
            keepalives: AtomicU64::new(0),
            ike_received: AtomicU64::new(0),
        }
    }

    /// Counts a drop.
    #[inline]
    pub fn drop(&self, reason: PathDrop) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the drop that `result` is, if it is one, and passes it on.
    /// The per-packet functions of both modes return their drops
    /// uncounted; the workers count them here, in one place each, so that
    /// no path forgets.
    #[inline]
    pub fn count<T>(&self, result: Result<T, PathDrop>) -> Result<T, PathDrop> {
        if let Err(reason) = result {
            self.drop(reason);
        }
        result
    }

    /// The count of one reason.
    pub fn drops(&self, reason: PathDrop) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// This thread's shard of a network's counters, to count in.
    #[inline]
    pub fn network(&self, index: usize) -> Option<&NetworkCounters> {
        let shard = current_shard() % self.shards;
        self.networks.get(index * self.shards + shard)
    }

    /// A network's counters summed over the shards.
    pub fn network_total(&self, index: usize) -> Option<NetworkTotals> {
        let shards = self
            .networks
            .get(index * self.shards..(index + 1) * self.shards)?;
        let mut t = NetworkTotals::default();
        for c in shards {
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            t.tx_frames += get(&c.tx_frames);
            t.tx_bytes += get(&c.tx_bytes);
            t.rx_frames += get(&c.rx_frames);
            t.rx_bytes += get(&c.rx_bytes);
            t.flooded += get(&c.flooded);
            t.network_mismatch += get(&c.network_mismatch);
        }
        Some(t)
    }
}

/// Adds `n` to a counter.
#[inline]
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two threads in two shards count into two cache lines of their own;
    /// the total is their sum.
    #[test]
    fn shards_are_per_thread_and_sum() {
        let stats = std::sync::Arc::new(Stats::with_shards(3, 4));
        let lines: Vec<usize> = [1, 2]
            .map(|shard| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    set_shard(shard);
                    let c = stats.network(2).unwrap();
                    add(&c.tx_frames, shard as u64 * 10);
                    c as *const NetworkCounters as usize
                })
            })
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_ne!(lines[0] / 64, lines[1] / 64, "one cache line shared");
        assert_eq!(align_of::<NetworkCounters>(), 64);
        assert_eq!(stats.network_total(2).unwrap().tx_frames, 30);
        assert_eq!(stats.network_total(1).unwrap(), NetworkTotals::default());
        assert!(stats.network_total(3).is_none());
    }
}
