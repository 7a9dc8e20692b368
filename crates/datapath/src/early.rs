//! ESP that arrives just before its SA: held briefly instead of dropped.
//!
//! When tunsecd initiates the exchange that creates a Child SA (IKE_AUTH,
//! or CREATE_CHILD_SA), the responder installs the SA as it sends its
//! answer, and may send on it at once. strongSwan does so for the first
//! Child SA of a new IKE SA, which is what a re-authentication makes. Such
//! packets can overtake our processing of the answer: they reach the
//! receive worker before the IKE driver has published the new inbound SA,
//! and would be dropped as `unknown_spi` (a lost packet in every
//! make-before-break switch that races).
//!
//! RFC 7296 section 2.8 tells a responder how it can be sure that the
//! initiator is ready to receive ("if either (1) it has received a
//! cryptographically valid message on the other half of the SA pair or
//! (2) the new SA rekeys an existing SA and it receives an IKE request to
//! close the replaced SA"), but nothing obliges it to wait. So the
//! receive worker holds up to [`EarlyEsp::CAPACITY`] datagrams with an
//! unknown SPI from known peers for at most [`EarlyEsp::HOLD`], tries them
//! again at every wake-up, and counts them as `unknown_spi` only when they
//! expire. Nothing is decrypted before its SA exists, and a flood of
//! unknown SPIs costs at most the fixed buffers allocated here.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What a new try at a held datagram found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Its SA exists now: the datagram was handled (delivered or dropped
    /// for another reason) and leaves the hold.
    Handled,
    /// Still no SA for its SPI.
    StillUnknown,
}

/// One held datagram.
struct Slot {
    buf: Box<[u8]>,
    len: usize,
    src: IpAddr,
    udp: bool,
    since: Instant,
    used: bool,
}

/// A receive worker's held datagrams; see the module documentation.
pub struct EarlyEsp {
    slots: Vec<Slot>,
    held: usize,
}

impl EarlyEsp {
    /// Datagrams held at most, per receive worker.
    pub const CAPACITY: usize = 32;
    /// How long a datagram is held at most. The IKE driver publishes a new
    /// SA within a millisecond or so of the answer; the margin covers a
    /// loaded machine. (The worker looks again at every wake-up, at least
    /// every 100 ms.)
    pub const HOLD: Duration = Duration::from_millis(200);
    /// The longest datagram held (longer ones are dropped at once).
    pub const MAX_LEN: usize = 2048;

    /// An empty hold; its buffers are allocated here, once.
    pub fn new() -> Self {
        let slots = (0..Self::CAPACITY)
            .map(|_| Slot {
                buf: vec![0; Self::MAX_LEN].into_boxed_slice(),
                len: 0,
                src: IpAddr::from([0, 0, 0, 0]),
                udp: false,
                since: Instant::now(),
                used: false,
            })
            .collect();
        Self { slots, held: 0 }
    }

    /// How many datagrams are held.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Holds a copy of `datagram` (ESP from the SPI on; `udp`: it came in
    /// UDP) from `src`. `false` when the hold is full or the datagram too
    /// long: the caller drops it.
    pub fn hold(&mut self, src: IpAddr, udp: bool, datagram: &[u8], now: Instant) -> bool {
        if datagram.len() > Self::MAX_LEN {
            return false;
        }
        let Some(slot) = self.slots.iter_mut().find(|s| !s.used) else {
            return false;
        };
        slot.buf[..datagram.len()].copy_from_slice(datagram);
        slot.len = datagram.len();
        slot.src = src;
        slot.udp = udp;
        slot.since = now;
        slot.used = true;
        self.held += 1;
        true
    }

    /// Tries every held datagram again, oldest first: `try_one(src, udp,
    /// datagram)` may open it in place. A datagram leaves the hold when
    /// `try_one` handled it, or when it is still unknown after
    /// [`Self::HOLD`]. Returns how many expired (the caller counts them as
    /// `unknown_spi`).
    pub fn retry(
        &mut self,
        now: Instant,
        mut try_one: impl FnMut(IpAddr, bool, &mut [u8]) -> Retry,
    ) -> usize {
        if self.held == 0 {
            return 0;
        }
        let mut order: [usize; Self::CAPACITY] = std::array::from_fn(|i| i);
        order.sort_unstable_by_key(|&i| (!self.slots[i].used, self.slots[i].since));
        let mut expired = 0;
        for &i in &order[..self.held] {
            let slot = &mut self.slots[i];
            let done = match try_one(slot.src, slot.udp, &mut slot.buf[..slot.len]) {
                Retry::Handled => true,
                Retry::StillUnknown => {
                    let old = now.saturating_duration_since(slot.since) >= Self::HOLD;
                    expired += usize::from(old);
                    old
                }
            };
            if done {
                slot.used = false;
            }
        }
        self.held = self.slots.iter().filter(|s| s.used).count();
        expired
    }
}

impl Default for EarlyEsp {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    /// A held datagram comes back unchanged, in arrival order, until it is
    /// handled; then it is gone.
    #[test]
    fn held_until_handled_in_order() {
        let mut early = EarlyEsp::new();
        let t0 = Instant::now();
        assert!(early.hold(PEER, true, b"first", t0));
        assert!(early.hold(PEER, false, b"second", t0 + Duration::from_millis(1)));
        let mut seen = Vec::new();
        let expired = early.retry(t0 + Duration::from_millis(2), |src, udp, d| {
            seen.push((src, udp, d.to_vec()));
            Retry::StillUnknown
        });
        assert_eq!(expired, 0);
        assert_eq!(
            seen,
            [
                (PEER, true, b"first".to_vec()),
                (PEER, false, b"second".to_vec())
            ]
        );
        assert_eq!(early.len(), 2);
        let expired = early.retry(t0 + Duration::from_millis(3), |_, _, d| {
            if d == b"first" {
                Retry::Handled
            } else {
                Retry::StillUnknown
            }
        });
        assert_eq!((expired, early.len()), (0, 1));
    }

    /// A datagram whose SA never comes expires after HOLD, and is
    /// reported so that the caller counts it.
    #[test]
    fn expires_after_hold() {
        let mut early = EarlyEsp::new();
        let t0 = Instant::now();
        assert!(early.hold(PEER, true, b"x", t0));
        let just_before = t0 + EarlyEsp::HOLD - Duration::from_millis(1);
        assert_eq!(early.retry(just_before, |_, _, _| Retry::StillUnknown), 0);
        assert_eq!(early.len(), 1);
        assert_eq!(
            early.retry(t0 + EarlyEsp::HOLD, |_, _, _| Retry::StillUnknown),
            1
        );
        assert!(early.is_empty());
    }

    /// The hold is bounded: beyond CAPACITY, or beyond MAX_LEN bytes, the
    /// caller must drop. A freed slot takes a new datagram.
    #[test]
    fn bounded() {
        let mut early = EarlyEsp::new();
        let now = Instant::now();
        assert!(!early.hold(PEER, true, &[0; EarlyEsp::MAX_LEN + 1], now));
        for i in 0..EarlyEsp::CAPACITY {
            assert!(early.hold(PEER, true, &[i as u8; 100], now), "{i}");
        }
        assert!(!early.hold(PEER, true, b"one too many", now));
        early.retry(now, |_, _, d| {
            if d[0] == 7 {
                Retry::Handled
            } else {
                Retry::StillUnknown
            }
        });
        assert_eq!(early.len(), EarlyEsp::CAPACITY - 1);
        assert!(early.hold(PEER, true, b"room again", now));
    }
}
