//! Capped exponential backoff: each wait twice the last, from `min` up to
//! `max`, back to `min` on success. With jitter, each wait is drawn from
//! the upper half of the current step, so a fleet that lost its hub at the
//! same moment does not reconnect in lockstep.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
    jitter: bool,
}

impl Backoff {
    /// Waits of `min`, `2·min`, … up to `max` (`max` below `min` is `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            step: min,
            jitter: false,
        }
    }

    /// Each wait drawn uniformly from `[step/2, step]`.
    pub fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The wait before the next attempt; the one after is twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let unit = if self.jitter {
            rand::thread_rng().gen_range(0.0..=1.0)
        } else {
            1.0
        };
        self.next_delay_at(unit)
    }

    /// [`Backoff::next_delay`] with the jitter's random draw given (`0.0` is
    /// the shortest wait of the step, `1.0` the longest).
    pub fn next_delay_at(&mut self, unit: f64) -> Duration {
        let step = self.step;
        self.step = self.step.saturating_mul(2).min(self.max);
        if self.jitter {
            step.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
        } else {
            step
        }
    }

    /// The un-jittered wait the next attempt would get.
    pub fn current(&self) -> Duration {
        self.step
    }

    /// Success: the next wait is `min` again.
    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(ms(100), ms(500));
        let waits: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(waits, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
    }

    proptest! {
        #[test]
        fn waits_stay_within_bounds(
            min in 1u64..10_000,
            extra in 0u64..1_000_000,
            jitter in any::<bool>(),
            draws in proptest::collection::vec(0.0f64..=1.0, 1..80),
        ) {
            let (min, max) = (ms(min), ms(min + extra));
            let mut b = Backoff::new(min, max);
            if jitter {
                b = b.with_jitter();
            }
            let mut last_step = Duration::ZERO;
            for unit in draws {
                let step = b.current();
                // Steps never shrink and never pass the cap.
                prop_assert!(step >= last_step && step >= min && step <= max);
                let d = b.next_delay_at(unit);
                prop_assert!(d <= step);
                if jitter {
                    prop_assert!(d >= step / 2);
                } else {
                    prop_assert_eq!(d, step);
                }
                last_step = step;
            }
            b.reset();
            prop_assert_eq!(b.current(), min);
        }

        #[test]
        fn reaches_the_cap_in_logarithmic_steps(min in 1u64..1_000, factor in 1u64..100_000) {
            let (min, max) = (ms(min), ms(min * factor));
            let mut b = Backoff::new(min, max);
            let mut n = 0;
            while b.current() < max {
                b.next_delay();
                n += 1;
            }
            // 2^n ≥ factor after n doublings.
            prop_assert!(n <= 64 - factor.leading_zeros() as usize);
        }
    }
}
