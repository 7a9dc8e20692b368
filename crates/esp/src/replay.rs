//! The anti-replay window (RFC 4303 section 3.4.3) with extended sequence
//! numbers (RFC 4303 appendix A2), kept as the block bitmap of RFC 6479.
//!
//! The receiver checks a sequence number *before* it spends time on
//! decryption, and updates the window only *after* the ICV verifies, so
//! forged packets can neither consume CPU past the check nor move the
//! window.

use crate::Error;

// RFC 6479 section 2: the bitmap is a ring of 64-bit blocks; the window
// slides a block at a time, clearing whole blocks instead of shifting bits.
const BLOCK_BITS: u64 = 64;

/// A sliding anti-replay window over 64-bit sequence numbers.
#[derive(Clone)]
pub struct ReplayWindow {
    /// The window size W: how far below the top a number is still accepted.
    size: u64,
    /// The highest sequence number that has verified; 0 before the first.
    top: u64,
    /// `blocks.len()` is a power of two, with room for W bits and one spare
    /// block, so sliding into a new block never clears a live bit.
    blocks: Box<[u64]>,
}

impl core::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("size", &self.size)
            .field("top", &self.top)
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// The smallest window: RFC 4303 section 3.4.3 says "a minimum window
    /// size of 32 packets MUST be supported", and 64 is one bitmap block.
    pub const MIN_SIZE: u32 = 64;
    /// The largest window.
    pub const MAX_SIZE: u32 = 65536;
    /// The default window.
    pub const DEFAULT_SIZE: u32 = 4096;

    /// A window of `size` packets, from [`Self::MIN_SIZE`] to
    /// [`Self::MAX_SIZE`].
    pub fn new(size: u32) -> Result<Self, Error> {
        if !(Self::MIN_SIZE..=Self::MAX_SIZE).contains(&size) {
            return Err(Error::ReplayWindow(size));
        }
        let blocks = (u64::from(size).div_ceil(BLOCK_BITS) + 1).next_power_of_two();
        Ok(Self {
            size: u64::from(size),
            top: 0,
            // usize holds at most 65536 / 64 + 1 rounded up: 2048.
            blocks: vec![0u64; blocks as usize].into_boxed_slice(),
        })
    }

    /// The window size in packets.
    pub fn size(&self) -> u32 {
        // Constructed from a u32.
        self.size as u32
    }

    /// The highest sequence number accepted so far (0 before the first).
    pub fn top(&self) -> u64 {
        self.top
    }

    /// Reconstructs the 64-bit sequence number of a packet that carries only
    /// its low 32 bits, for an SA with ESN. `None` when no consistent value
    /// exists (the packet is older than the start of the sequence space or
    /// past its end).
    pub fn infer_esn(&self, seq_low: u32) -> Option<u64> {
        //= https://www.rfc-editor.org/rfc/rfc4303#appendix-A2.2
        //# If (Tl >= W - 1)                            Case A
        //#     If (Seql >= Tl - W + 1)
        //#         Seqh = Th
        //#     else
        //#         Seqh = Th + 1
        //# If (Tl < W - 1)                             Case B
        //#     If (Seql >= Tl - W + 1)
        //#         Seqh = Th - 1
        //#     else
        //#         Seqh = Th
        let th = self.top >> 32;
        let tl = self.top & 0xffff_ffff;
        let seql = u64::from(seq_low);
        let w = self.size;
        let seqh = if tl + 1 >= w {
            if seql + w > tl {
                th
            } else {
                th.checked_add(1)?
            }
        } else {
            // Tl - W + 1 wraps modulo 2^32 in case B.
            let bottom = (tl + (1u64 << 32) + 1 - w) & 0xffff_ffff;
            if seql >= bottom {
                th.checked_sub(1)?
            } else {
                th
            }
        };
        if seqh > 0xffff_ffff {
            return None;
        }
        Some((seqh << 32) | seql)
    }

    /// Whether `seq` may be new: not 0, not older than the window, and not
    /// seen before. Does not change the window.
    pub fn check(&self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.top {
            return true;
        }
        // RFC 4303 section 3.4.3: a number left of the window, or one
        // already received, is rejected; one inside the window and new, or
        // right of it, goes on to ICV verification.
        if self.top - seq >= self.size {
            return false;
        }
        let (block, bit) = self.position(seq);
        self.blocks[block] & bit == 0
    }

    /// Whether `seq` is left of the window (too old), rather than a
    /// number already received inside it.
    pub fn is_too_old(&self, seq: u64) -> bool {
        seq <= self.top && self.top - seq >= self.size
    }

    /// Records `seq` as received. Call only after its ICV verified. Returns
    /// false (and changes nothing) if `seq` is no longer acceptable.
    pub fn update(&mut self, seq: u64) -> bool {
        if !self.check(seq) {
            return false;
        }
        if seq > self.top {
            // Slide: clear every block between the old top and the new one.
            let mask = self.blocks.len() as u64 - 1;
            let old_block = self.top / BLOCK_BITS;
            let new_block = seq / BLOCK_BITS;
            let diff = (new_block - old_block).min(self.blocks.len() as u64);
            for i in 1..=diff {
                self.blocks[((old_block + i) & mask) as usize] = 0;
            }
            self.top = seq;
        }
        let (block, bit) = self.position(seq);
        self.blocks[block] |= bit;
        true
    }

    fn position(&self, seq: u64) -> (usize, u64) {
        let mask = self.blocks.len() as u64 - 1;
        (
            ((seq / BLOCK_BITS) & mask) as usize,
            1u64 << (seq % BLOCK_BITS),
        )
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn size_bounds() {
        assert_eq!(ReplayWindow::new(63).unwrap_err(), Error::ReplayWindow(63));
        assert_eq!(
            ReplayWindow::new(65537).unwrap_err(),
            Error::ReplayWindow(65537)
        );
        assert_eq!(ReplayWindow::new(64).unwrap().size(), 64);
        assert_eq!(ReplayWindow::new(65536).unwrap().size(), 65536);
    }

    #[test]
    fn rejects_zero_duplicates_and_old() {
        let mut w = ReplayWindow::new(64).unwrap();
        assert!(!w.check(0));
        assert!(w.update(1));
        assert!(!w.check(1));
        assert!(w.update(100));
        // 100 - 64 = 36 is just outside, 37 just inside.
        assert!(!w.check(36));
        assert!(w.check(37));
        assert!(w.update(37));
        assert!(!w.update(37));
        assert!(w.check(99));
    }

    #[test]
    fn large_jump_clears_window() {
        let mut w = ReplayWindow::new(128).unwrap();
        for s in 1..=128 {
            assert!(w.update(s));
        }
        assert!(w.update(1_000_000));
        // Everything within the window below the new top is fresh.
        for s in 1_000_000 - 127..1_000_000 {
            assert!(w.check(s), "{s}");
        }
        assert!(!w.check(1_000_000 - 128));
    }

    #[test]
    fn esn_inference_across_the_32_bit_boundary() {
        let mut w = ReplayWindow::new(64).unwrap();
        // Before anything is received, low numbers are in epoch 0.
        assert_eq!(w.infer_esn(1), Some(1));
        // Numbers that would belong to epoch -1 do not exist.
        assert_eq!(w.infer_esn(u32::MAX), None);
        w.update(0xffff_fff0);
        // Case A: a low number after the top means the next epoch.
        assert_eq!(w.infer_esn(5), Some((1 << 32) | 5));
        assert_eq!(w.infer_esn(0xffff_ffe0), Some(0xffff_ffe0));
        w.update((1 << 32) | 5);
        // Case B: the top is low in its epoch; a high number is from the
        // previous epoch, still inside the window.
        assert_eq!(w.infer_esn(0xffff_fff8), Some(0xffff_fff8));
        assert_eq!(w.infer_esn(6), Some((1 << 32) | 6));
    }

    proptest! {
        /// The bitmap agrees with a model that remembers every number.
        #[test]
        fn matches_a_set_model(
            size in 64u32..600,
            steps in proptest::collection::vec((0u64..3000, any::<bool>()), 1..400),
        ) {
            let mut w = ReplayWindow::new(size).unwrap();
            let mut seen = BTreeSet::new();
            let mut top = 0u64;
            for (seq, verified) in steps {
                let fresh = seq != 0
                    && !seen.contains(&seq)
                    && (seq > top || top - seq < u64::from(size));
                prop_assert_eq!(w.check(seq), fresh, "seq {} top {}", seq, top);
                if fresh && verified {
                    prop_assert!(w.update(seq));
                    seen.insert(seq);
                    top = top.max(seq);
                }
            }
        }

        /// ESN inference recovers a number near the top of the window.
        #[test]
        fn esn_recovers_nearby_numbers(top in 1u64..(1 << 40), delta in -60i64..1000) {
            let mut w = ReplayWindow::new(64).unwrap();
            w.update(top);
            let seq = top as i64 + delta;
            prop_assume!(seq > 0 && (delta > -64));
            let seq = seq as u64;
            prop_assert_eq!(w.infer_esn(seq as u32), Some(seq));
        }
    }
}
