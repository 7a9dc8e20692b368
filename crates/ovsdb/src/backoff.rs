//! Reconnection delays: exponential, capped, with jitter so that many
//! clients of one restarted server do not come back in step.

use std::time::Duration;

/// Delays that start at `min`, double up to `max`, and are each drawn
/// from the upper half of their step (`[d/2, d]`).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Option<Duration>,
}

impl Backoff {
    /// 100 ms doubling to 8 s.
    pub const DEFAULT_MIN: Duration = Duration::from_millis(100);
    /// See [`Backoff::DEFAULT_MIN`].
    pub const DEFAULT_MAX: Duration = Duration::from_secs(8);

    /// Delays from `min` to `max` (`max` is raised to `min` if lower).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            step: None,
        }
    }

    /// The largest step.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The next delay, with `random` (any value) choosing where in
    /// `[step/2, step]` it falls.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let step = match self.step {
            None => self.min,
            Some(s) => (s * 2).min(self.max),
        };
        self.step = Some(step);
        let half = step / 2;
        let span = step - half;
        // random / 2^64 of the span, in whole nanoseconds.
        let extra = (span.as_nanos() * u128::from(random)) >> 64;
        half + Duration::from_nanos(u64::try_from(extra).unwrap_or(u64::MAX))
    }

    /// Starts again from `min`.
    pub fn reset(&mut self) {
        self.step = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_within_jitter() {
        let mut b = Backoff::new(Backoff::DEFAULT_MIN, Backoff::DEFAULT_MAX);
        let steps = [100u64, 200, 400, 800, 1600, 3200, 6400, 8000, 8000];
        for (i, s) in steps.iter().enumerate() {
            let d = b.next_delay(if i % 2 == 0 { 0 } else { u64::MAX });
            let step = Duration::from_millis(*s);
            assert!(
                d >= step / 2 && d <= step,
                "step {i}: {d:?} not in [{:?}, {step:?}]",
                step / 2
            );
            if i % 2 == 0 {
                assert_eq!(d, step / 2);
            } else {
                assert!(step - d < Duration::from_micros(1));
            }
        }
        b.reset();
        assert_eq!(b.next_delay(0), Duration::from_millis(50));
        assert_eq!(
            Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).max(),
            Duration::from_secs(2)
        );
    }
}
