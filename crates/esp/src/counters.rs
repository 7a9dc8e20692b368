//! Drop reasons and counters.
//!
//! A drop is a flat `Copy` enum whose discriminant indexes a counter array:
//! no allocation and no formatting on the data path (the boringtun
//! `WireGuardError` model).

use core::fmt;

/// Why the ESP engine dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// The sequence number was seen before: a duplicate inside the replay
    /// window (RFC 4303 section 3.4.3).
    Replay = 0,
    /// The ICV did not verify: a tampered packet or a wrong key (RFC 4303
    /// section 3.4.4).
    IcvFailure,
    /// The decrypted trailer carries a pad length that does not fit, or
    /// padding that is not 1, 2, 3, ... (RFC 4303 section 2.4).
    BadPadding,
    /// No SA exists for the inbound SPI, or a protect policy has no usable
    /// outbound SA.
    NoSa,
    /// The policy says discard, the packet should have been protected but
    /// came in the clear, or the decrypted packet does not match the SA's
    /// traffic selectors (RFC 4301 section 5.2).
    Policy,
    /// The packet is not well formed (truncated, bad length, bad checksum,
    /// a fragment where a whole datagram is needed, an unsupported header).
    Malformed,
    /// The SA reached a hard lifetime and no longer processes packets.
    SaExpired,
    /// The outbound sequence number space is used up (RFC 4303 section
    /// 3.3.3: it MUST NOT cycle).
    SeqExhausted,
    /// A dummy packet (next header 59), discarded as RFC 4303 section 2.6
    /// requires.
    Dummy,
    /// The caller's buffer has too little headroom or tailroom.
    NoRoom,
    /// The sequence number is left of the replay window: the packet came
    /// later than `replay_window` newer ones (RFC 4303 section 3.4.3). Told
    /// apart from a duplicate ([`Self::Replay`]) because it means
    /// reordering, not replay.
    TooOld,
}

impl DropReason {
    /// How many reasons there are: the length of a counter array.
    pub const COUNT: usize = 11;

    /// Every reason, in discriminant order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::Replay,
        Self::IcvFailure,
        Self::BadPadding,
        Self::NoSa,
        Self::Policy,
        Self::Malformed,
        Self::SaExpired,
        Self::SeqExhausted,
        Self::Dummy,
        Self::NoRoom,
        Self::TooOld,
    ];

    /// The index of this reason in a counter array.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A stable snake_case name, for status output and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Replay => "replay",
            Self::IcvFailure => "icv_failure",
            Self::BadPadding => "bad_padding",
            Self::NoSa => "no_sa",
            Self::Policy => "policy",
            Self::Malformed => "malformed",
            Self::SaExpired => "sa_expired",
            Self::SeqExhausted => "seq_exhausted",
            Self::Dummy => "dummy",
            Self::NoRoom => "no_room",
            Self::TooOld => "too_old",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One counter per [`DropReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::COUNT]);

impl DropCounters {
    /// Counts one drop.
    #[inline]
    pub fn incr(&mut self, reason: DropReason) {
        self.0[reason.index()] += 1;
    }

    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// The sum over all reasons.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Each reason with its count.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.get(r)))
    }

    /// Adds another set of counters into this one.
    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
}

/// Traffic and drop counters of one SA.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaCounters {
    /// Packets sealed (outbound) or opened and accepted (inbound).
    pub packets: u64,
    /// Payload bytes of those packets, before ESP (outbound) or after it
    /// (inbound).
    pub bytes: u64,
    /// Drops by reason.
    pub drops: DropCounters,
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn counts_per_reason() {
        let mut c = DropCounters::default();
        c.incr(DropReason::Replay);
        c.incr(DropReason::Replay);
        c.incr(DropReason::NoRoom);
        assert_eq!(c.get(DropReason::Replay), 2);
        assert_eq!(c.get(DropReason::NoRoom), 1);
        assert_eq!(c.get(DropReason::IcvFailure), 0);
        assert_eq!(c.total(), 3);
        let mut d = DropCounters::default();
        d.add(&c);
        d.add(&c);
        assert_eq!(d.get(DropReason::Replay), 4);
    }
}
