//! A small reproducible PRNG (SplitMix64): the whole simulation is a function of its seed.

/// SplitMix64 generator (Steele, Lea, Flood 2014): tiny, fast, statistically fine for fault
/// injection, and identical on every platform.
#[derive(Clone, Debug)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (clamped to [0, 1]).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.next_f64() < p
    }

    /// Uniform in the inclusive range [lo, hi] (lo when hi <= lo).
    pub fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo;
        if span == u64::MAX {
            return self.next_u64();
        }
        // Modulo bias is below 2^-40 for the spans used here (microseconds, byte offsets).
        lo + self.next_u64() % (span + 1)
    }

    /// Number of Bernoulli(p) failures before the next success (geometric), used to skip
    /// straight to the next corrupted byte instead of drawing once per byte.
    pub fn geometric_gap(&mut self, p: f64) -> u64 {
        if p >= 1.0 {
            return 0;
        }
        if p <= 0.0 {
            return u64::MAX;
        }
        let u = 1.0 - self.next_f64(); // (0, 1]
        let gap = (u.ln() / (1.0 - p).ln()).floor();
        if gap >= u64::MAX as f64 {
            u64::MAX
        } else {
            gap as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_sane_moments() {
        let (mut a, mut b) = (SimRng::new(42), SimRng::new(42));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        let mut r = SimRng::new(7);
        let n = 100_000;
        let mean = (0..n).map(|_| r.next_f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        let hits = (0..n).filter(|_| r.chance(0.1)).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
        let gaps = (0..n).map(|_| r.geometric_gap(0.01) as f64).sum::<f64>() / n as f64;
        assert!((gaps - 99.0).abs() < 3.0, "mean gap {gaps}");
        assert!((0..1000).all(|_| (5..=9).contains(&r.range_inclusive(5, 9))));
    }
}
