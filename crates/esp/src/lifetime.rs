//! SA lifetimes (RFC 4301 section 4.4.2.1): soft limits ask for a rekey,
//! hard limits stop the SA.

use std::time::{Duration, Instant};

/// Limits on one SA's use. `None` means no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Payload bytes processed.
    pub bytes: Option<u64>,
    /// Packets processed.
    pub packets: Option<u64>,
    /// Time since the SA was created.
    pub time: Option<Duration>,
}

impl Limits {
    /// No limits.
    pub const NONE: Self = Self {
        bytes: None,
        packets: None,
        time: None,
    };

    fn reached(&self, bytes: u64, packets: u64, age: Duration) -> bool {
        self.bytes.is_some_and(|b| bytes >= b)
            || self.packets.is_some_and(|p| packets >= p)
            || self.time.is_some_and(|t| age >= t)
    }
}

/// The soft and hard limits of an SA.
///
/// RFC 4301 section 4.4.2.1: when a soft lifetime expires the SA stays and
/// its owner is told (so IKE can rekey); when a hard lifetime expires the
/// SA is terminated and processes no more packets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetime {
    /// Reaching any of these asks for a rekey.
    pub soft: Limits,
    /// Reaching any of these stops the SA.
    pub hard: Limits,
}

/// Where an SA stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LifetimeState {
    /// Below every limit.
    Live,
    /// A soft limit was reached: a rekey is due, packets still flow.
    Soft,
    /// A hard limit was reached (or the sequence space ran out): no packet
    /// is processed any more.
    Expired,
}

/// Tracks an SA's use against its [`Lifetime`].
#[derive(Debug, Clone)]
pub(crate) struct LifetimeTracker {
    limits: Lifetime,
    created: Instant,
    state: LifetimeState,
    /// The nearest limit that could move the state on, precomputed so the
    /// per-packet check is three compares (see [`Self::due`]).
    next_bytes: u64,
    next_packets: u64,
    deadline: Option<Instant>,
}

impl LifetimeTracker {
    pub(crate) fn new(limits: Lifetime, now: Instant) -> Self {
        let mut t = Self {
            limits,
            created: now,
            state: LifetimeState::Live,
            next_bytes: u64::MAX,
            next_packets: u64::MAX,
            deadline: None,
        };
        t.refresh();
        t
    }

    /// The limits that still matter in the current state: soft and hard
    /// while live, hard once soft, none once expired.
    fn pending(&self) -> impl Iterator<Item = &Limits> {
        let soft = (self.state == LifetimeState::Live).then_some(&self.limits.soft);
        let hard = (self.state != LifetimeState::Expired).then_some(&self.limits.hard);
        soft.into_iter().chain(hard)
    }

    fn refresh(&mut self) {
        self.next_bytes = self
            .pending()
            .filter_map(|l| l.bytes)
            .min()
            .unwrap_or(u64::MAX);
        self.next_packets = self
            .pending()
            .filter_map(|l| l.packets)
            .min()
            .unwrap_or(u64::MAX);
        self.deadline = self
            .pending()
            .filter_map(|l| l.time)
            .min()
            .and_then(|t| self.created.checked_add(t));
    }

    /// Whether a limit may have been reached: the cheap test done for
    /// every packet before the full [`Self::update`].
    #[inline]
    pub(crate) fn due(&self, bytes: u64, packets: u64, now: Instant) -> bool {
        bytes >= self.next_bytes
            || packets >= self.next_packets
            || self.deadline.is_some_and(|d| now >= d)
    }

    pub(crate) fn state(&self) -> LifetimeState {
        self.state
    }

    pub(crate) fn created(&self) -> Instant {
        self.created
    }

    pub(crate) fn expire(&mut self) {
        self.state = LifetimeState::Expired;
        self.refresh();
    }

    /// Re-evaluates the state; returns the new state if it changed.
    pub(crate) fn update(
        &mut self,
        bytes: u64,
        packets: u64,
        now: Instant,
    ) -> Option<LifetimeState> {
        let age = now.saturating_duration_since(self.created);
        let next = if self.limits.hard.reached(bytes, packets, age) {
            LifetimeState::Expired
        } else if self.limits.soft.reached(bytes, packets, age) {
            LifetimeState::Soft
        } else {
            LifetimeState::Live
        };
        // States only move forward.
        if next > self.state {
            self.state = next;
            self.refresh();
            Some(next)
        } else {
            None
        }
    }

    /// The next instant at which a time limit will be reached.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn soft_then_hard() {
        let now = Instant::now();
        let mut t = LifetimeTracker::new(
            Lifetime {
                soft: Limits {
                    packets: Some(10),
                    time: Some(Duration::from_secs(60)),
                    ..Limits::NONE
                },
                hard: Limits {
                    packets: Some(20),
                    time: Some(Duration::from_secs(90)),
                    ..Limits::NONE
                },
            },
            now,
        );
        assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(60)));
        assert_eq!(t.update(0, 9, now), None);
        assert_eq!(t.update(0, 10, now), Some(LifetimeState::Soft));
        assert_eq!(t.update(0, 11, now), None);
        assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(90)));
        assert_eq!(
            t.update(0, 11, now + Duration::from_secs(90)),
            Some(LifetimeState::Expired)
        );
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.state(), LifetimeState::Expired);
    }

    #[test]
    fn due_is_exact_for_counts_and_time() {
        let now = Instant::now();
        let t = LifetimeTracker::new(
            Lifetime {
                soft: Limits {
                    bytes: Some(1000),
                    packets: Some(50),
                    time: Some(Duration::from_secs(30)),
                },
                hard: Limits {
                    bytes: Some(500),
                    ..Limits::NONE
                },
            },
            now,
        );
        // The nearest byte limit is the hard one.
        assert!(!t.due(499, 49, now + Duration::from_secs(29)));
        assert!(t.due(500, 0, now));
        assert!(t.due(0, 50, now));
        assert!(t.due(0, 0, now + Duration::from_secs(30)));
        // No limits: never due.
        let none = LifetimeTracker::new(Lifetime::default(), now);
        assert!(!none.due(
            u64::MAX - 1,
            u64::MAX - 1,
            now + Duration::from_secs(1 << 30)
        ));
        assert_eq!(none.next_deadline(), None);
    }

    #[test]
    fn bytes_can_jump_straight_to_hard() {
        let now = Instant::now();
        let mut t = LifetimeTracker::new(
            Lifetime {
                soft: Limits {
                    bytes: Some(100),
                    ..Limits::NONE
                },
                hard: Limits {
                    bytes: Some(200),
                    ..Limits::NONE
                },
            },
            now,
        );
        assert_eq!(t.update(250, 1, now), Some(LifetimeState::Expired));
    }
}
