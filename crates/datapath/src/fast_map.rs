//! The hash map of the per-packet tables: the SPI, peer, network and
//! forwarding lookups that every frame and every ESP packet makes.
//!
//! `std`'s SipHash-1-3 cost about 3% of all CPU time in `tunsec bench`.
//! aHash (with keys drawn at random when the map is built, the
//! `runtime-rng` feature) is several times faster on short keys and keeps
//! the map resistant to collision floods, which matters here: the
//! forwarding database learns MAC addresses that peers choose.

use std::collections::HashMap;

/// A `HashMap` with aHash and random keys: build one with
/// `FastMap::default()`.
pub type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Two maps get different keys, so a key set that collides in one does
    /// not collide in every tunsecd.
    #[test]
    fn maps_are_keyed_at_random() {
        let a: FastMap<u32, ()> = FastMap::default();
        let b: FastMap<u32, ()> = FastMap::default();
        let hashes = |m: &FastMap<u32, ()>| {
            (0..8u32)
                .map(|k| m.hasher().hash_one(k))
                .collect::<Vec<_>>()
        };
        assert_ne!(hashes(&a), hashes(&b));
    }
}
