//! The forwarding database: which peer is behind a MAC address, per
//! virtual network.
//!
//! Entries are learned from the source MAC of frames received from peers
//! (RFC 7348 section 4: "learning ... the association of the inner source
//! MAC address to the outer source IP address"), age out when unused, and
//! may be configured statically. The receive worker learns while the
//! transmit worker looks up: lookups and refreshes of a known entry take
//! only a read lock and an atomic store; only a new or moved MAC takes the
//! write lock.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tunsec_wire::ethernet::EthernetAddress;

use crate::fast_map::FastMap;

/// The default ageing time, as in the Linux bridge.
pub const DEFAULT_AGEING: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Entry {
    peer: usize,
    is_static: bool,
    /// Milliseconds since the database's epoch.
    last_seen: AtomicU64,
}

/// One forwarding entry, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    /// The network index.
    pub network: usize,
    /// The MAC address.
    pub mac: EthernetAddress,
    /// The peer index.
    pub peer: usize,
    /// Whether it came from the configuration.
    pub is_static: bool,
    /// How long ago it was last seen (zero for static entries).
    pub age: Duration,
}

/// MAC address to peer, per network.
#[derive(Debug)]
pub struct Fdb {
    map: RwLock<FastMap<(usize, EthernetAddress), Entry>>,
    epoch: Instant,
    ageing: Duration,
}

impl Fdb {
    /// An empty database whose learned entries live for `ageing` after
    /// they were last seen.
    pub fn new(ageing: Duration, now: Instant) -> Self {
        Self {
            map: RwLock::new(FastMap::default()),
            epoch: now,
            ageing,
        }
    }

    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Adds a static entry; learning never overrides it.
    pub fn add_static(&self, network: usize, mac: EthernetAddress, peer: usize) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.insert(
            (network, mac),
            Entry {
                peer,
                is_static: true,
                last_seen: AtomicU64::new(0),
            },
        );
    }

    /// Forgets every entry, learned or static, that leads to `peer` (a
    /// peer removed at run time, whose slot may go to another).
    pub fn forget_peer(&self, peer: usize) -> usize {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let before = map.len();
        map.retain(|_, e| e.peer != peer);
        before - map.len()
    }

    /// The peer behind `mac` in `network`, unless the entry aged out.
    pub fn lookup(&self, network: usize, mac: EthernetAddress, now: Instant) -> Option<usize> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let entry = map.get(&(network, mac))?;
        if entry.is_static {
            return Some(entry.peer);
        }
        let age = self
            .millis(now)
            .saturating_sub(entry.last_seen.load(Ordering::Relaxed));
        (Duration::from_millis(age) < self.ageing).then_some(entry.peer)
    }

    /// Records that `mac` was seen behind `peer` in `network`. Only unicast
    /// source addresses are learned.
    pub fn learn(&self, network: usize, mac: EthernetAddress, peer: usize, now: Instant) {
        if !mac.is_unicast() {
            return;
        }
        let t = self.millis(now);
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = map.get(&(network, mac)) {
                if entry.is_static {
                    return;
                }
                if entry.peer == peer {
                    entry.last_seen.store(t, Ordering::Relaxed);
                    return;
                }
            }
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry((network, mac)).or_insert(Entry {
            peer,
            is_static: false,
            last_seen: AtomicU64::new(t),
        });
        if !entry.is_static {
            // A new entry, or a MAC that moved to another peer.
            entry.peer = peer;
            entry.last_seen.store(t, Ordering::Relaxed);
        }
    }

    /// Removes learned entries that aged out; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let t = self.millis(now);
        let ageing = self.ageing.as_millis() as u64;
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let before = map.len();
        map.retain(|_, e| {
            e.is_static || t.saturating_sub(e.last_seen.load(Ordering::Relaxed)) < ageing
        });
        before - map.len()
    }

    /// Every entry, sorted by network and MAC.
    pub fn entries(&self, now: Instant) -> Vec<FdbEntry> {
        let t = self.millis(now);
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<FdbEntry> = map
            .iter()
            .map(|(&(network, mac), e)| FdbEntry {
                network,
                mac,
                peer: e.peer,
                is_static: e.is_static,
                age: if e.is_static {
                    Duration::ZERO
                } else {
                    Duration::from_millis(t.saturating_sub(e.last_seen.load(Ordering::Relaxed)))
                },
            })
            .collect();
        out.sort_by_key(|e| (e.network, e.mac.0));
        out
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const M1: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const M2: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);

    #[test]
    fn learns_moves_and_ages() {
        let t0 = Instant::now();
        let fdb = Fdb::new(Duration::from_secs(10), t0);
        assert_eq!(fdb.lookup(0, M1, t0), None);
        fdb.learn(0, M1, 3, t0);
        assert_eq!(fdb.lookup(0, M1, t0), Some(3));
        // Per network.
        assert_eq!(fdb.lookup(1, M1, t0), None);
        // The MAC moves to another peer.
        fdb.learn(0, M1, 4, t0 + Duration::from_secs(1));
        assert_eq!(fdb.lookup(0, M1, t0 + Duration::from_secs(1)), Some(4));
        // Refreshing keeps it alive; then it ages out.
        fdb.learn(0, M1, 4, t0 + Duration::from_secs(8));
        assert_eq!(fdb.lookup(0, M1, t0 + Duration::from_secs(17)), Some(4));
        assert_eq!(fdb.lookup(0, M1, t0 + Duration::from_secs(18)), None);
        assert_eq!(fdb.expire(t0 + Duration::from_secs(18)), 1);
        assert!(fdb.entries(t0).is_empty());
    }

    #[test]
    fn static_entries_win_and_never_age() {
        let t0 = Instant::now();
        let fdb = Fdb::new(Duration::from_secs(10), t0);
        fdb.add_static(0, M2, 1);
        fdb.learn(0, M2, 7, t0);
        let much_later = t0 + Duration::from_secs(1000);
        assert_eq!(fdb.lookup(0, M2, much_later), Some(1));
        assert_eq!(fdb.expire(much_later), 0);
        assert!(fdb.entries(much_later)[0].is_static);
    }

    #[test]
    fn multicast_sources_are_not_learned() {
        let t0 = Instant::now();
        let fdb = Fdb::new(DEFAULT_AGEING, t0);
        fdb.learn(0, EthernetAddress([1, 0, 0x5e, 0, 0, 1]), 1, t0);
        fdb.learn(0, EthernetAddress::BROADCAST, 1, t0);
        assert!(fdb.entries(t0).is_empty());
    }

    #[test]
    fn forget_peer_drops_its_entries_static_or_learned() {
        let now = Instant::now();
        let fdb = Fdb::new(DEFAULT_AGEING, now);
        fdb.add_static(0, M1, 3);
        fdb.learn(0, M2, 3, now);
        fdb.learn(1, M2, 4, now);
        assert_eq!(fdb.forget_peer(3), 2);
        assert_eq!(fdb.lookup(0, M1, now), None);
        assert_eq!(fdb.lookup(0, M2, now), None);
        assert_eq!(fdb.lookup(1, M2, now), Some(4));
    }
}
