//! The forwarding database: which peer is behind a MAC address, per
//! virtual network.
//!
//! Entries are learned from the source MAC of frames received from peers
//! (RFC 7348 section 4: "learning ... the association of the inner source
//! MAC address to the outer source IP address"), age out when unused, and
//! may be configured statically.
//!
//! Every worker thread reads it for every frame, so a read must write no
//! cache line that another thread writes too (docs/scaling.md): the map is
//! kept in one replica per worker thread (its counter shard,
//! [`crate::stats::set_shard`]), each behind a lock of its own on a cache
//! line of its own. A lookup and the refresh of a known entry take only
//! the reader's own replica's read lock (and the refresh stores the
//! entry's time at most once a millisecond); a new or moved MAC, ageing
//! and removals change every replica, one writer at a time. The entries
//! themselves are shared between the replicas.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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

type Map = FastMap<(usize, EthernetAddress), Arc<Entry>>;

/// One replica, its lock on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Replica(RwLock<Map>);

/// MAC address to peer, per network.
#[derive(Debug)]
pub struct Fdb {
    replicas: Box<[Replica]>,
    /// One writer at a time, so that the replicas stay alike.
    writer: Mutex<()>,
    epoch: Instant,
    ageing: Duration,
}

impl Fdb {
    /// An empty database whose learned entries live for `ageing` after
    /// they were last seen, in one replica.
    pub fn new(ageing: Duration, now: Instant) -> Self {
        Self::with_replicas(ageing, now, 1)
    }

    /// [`Self::new`] with a replica for each of `replicas` worker threads
    /// (counter shards).
    pub fn with_replicas(ageing: Duration, now: Instant, replicas: usize) -> Self {
        Self {
            replicas: (0..replicas.max(1)).map(|_| Replica::default()).collect(),
            writer: Mutex::new(()),
            epoch: now,
            ageing,
        }
    }

    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// This thread's replica, for reading.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Map> {
        let i = crate::stats::current_shard() % self.replicas.len();
        self.replicas[i].0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f` to every replica, one writer at a time; returns what
    /// it returned for the first.
    fn change<R>(&self, mut f: impl FnMut(&mut Map) -> R) -> R {
        let _one = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut first = None;
        for r in self.replicas.iter() {
            let mut map = r.0.write().unwrap_or_else(|e| e.into_inner());
            let out = f(&mut map);
            first.get_or_insert(out);
        }
        // There is at least one replica.
        first.expect("an FDB has a replica")
    }

    /// Adds a static entry; learning never overrides it.
    pub fn add_static(&self, network: usize, mac: EthernetAddress, peer: usize) {
        let entry = Arc::new(Entry {
            peer,
            is_static: true,
            last_seen: AtomicU64::new(0),
        });
        self.change(|map| {
            map.insert((network, mac), entry.clone());
        });
    }

    /// Forgets every entry, learned or static, that leads to `peer` (a
    /// peer removed at run time, whose slot may go to another).
    pub fn forget_peer(&self, peer: usize) -> usize {
        self.change(|map| {
            let before = map.len();
            map.retain(|_, e| e.peer != peer);
            before - map.len()
        })
    }

    /// The peer behind `mac` in `network`, unless the entry aged out.
    pub fn lookup(&self, network: usize, mac: EthernetAddress, now: Instant) -> Option<usize> {
        let map = self.read();
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
            let map = self.read();
            if let Some(entry) = map.get(&(network, mac)) {
                if entry.is_static {
                    return;
                }
                if entry.peer == peer {
                    // At most one store a millisecond.
                    if entry.last_seen.load(Ordering::Relaxed) != t {
                        entry.last_seen.store(t, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
        // A new entry, or a MAC that moved to another peer.
        let entry = Arc::new(Entry {
            peer,
            is_static: false,
            last_seen: AtomicU64::new(t),
        });
        self.change(|map| {
            let keep = map.get(&(network, mac)).is_some_and(|e| e.is_static);
            if !keep {
                map.insert((network, mac), entry.clone());
            }
        });
    }

    /// Removes learned entries that aged out; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let t = self.millis(now);
        let ageing = self.ageing.as_millis() as u64;
        self.change(|map| {
            let before = map.len();
            map.retain(|_, e| {
                e.is_static || t.saturating_sub(e.last_seen.load(Ordering::Relaxed)) < ageing
            });
            before - map.len()
        })
    }

    /// Every entry, sorted by network and MAC.
    pub fn entries(&self, now: Instant) -> Vec<FdbEntry> {
        let t = self.millis(now);
        let map = self.read();
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

    /// With several replicas, every thread sees what any learned, and a
    /// move or an expiry reaches every replica.
    #[test]
    fn replicas_stay_alike() {
        let t0 = Instant::now();
        let fdb = Arc::new(Fdb::with_replicas(Duration::from_secs(10), t0, 3));
        type Job = Box<dyn FnOnce(&Fdb) -> Option<usize> + Send>;
        let on = |shard: usize, f: Job| {
            let fdb = fdb.clone();
            std::thread::spawn(move || {
                crate::stats::set_shard(shard);
                f(&fdb)
            })
            .join()
            .unwrap()
        };
        on(
            1,
            Box::new(move |f| {
                f.learn(0, M1, 3, t0);
                None
            }),
        );
        for shard in 0..3 {
            assert_eq!(on(shard, Box::new(move |f| f.lookup(0, M1, t0))), Some(3));
        }
        on(
            2,
            Box::new(move |f| {
                f.learn(0, M1, 4, t0);
                None
            }),
        );
        assert_eq!(on(0, Box::new(move |f| f.lookup(0, M1, t0))), Some(4));
        assert_eq!(fdb.expire(t0 + Duration::from_secs(20)), 1);
        assert_eq!(on(1, Box::new(move |f| f.lookup(0, M1, t0))), None);
    }
}
