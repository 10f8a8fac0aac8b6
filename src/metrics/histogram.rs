//! A log-linear latency histogram (HDR-like): constant memory, about 3% relative error, and
//! beside it QEMU's coarse power-of-two distribution (`postcopy-latency-dist`).

/// Sub-buckets per power of two; 32 gives a worst-case relative error of 1/32.
const SUB_BUCKETS: usize = 32;
/// Powers of two covered: values up to 2^40 microseconds.
const OCTAVES: usize = 40;

/// Buckets of QEMU's latency distribution (QEMU 10.1's `postcopy-latency-dist`).
pub const POW2_BUCKETS: usize = 24;

/// QEMU's bucket of a latency in microseconds: bucket i holds [2^i, 2^(i+1)) us; bucket 0
/// also holds latencies under 1 us, and the last bucket everything from 2^23 us on.
pub fn pow2_bucket_us(latency_us: u64) -> usize {
    if latency_us == 0 {
        return 0;
    }
    (63 - latency_us.leading_zeros() as usize).min(POW2_BUCKETS - 1)
}

/// [`pow2_bucket_us`] of a latency in nanoseconds (whole microseconds, rounded down, as the
/// histogram records them).
pub fn pow2_bucket_ns(latency_ns: u64) -> usize {
    pow2_bucket_us(latency_ns / 1000)
}

/// Records latencies in microseconds and answers percentiles.
#[derive(Clone)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    /// The same samples in QEMU's power-of-two buckets: an exact count, not derived from the
    /// fine buckets.
    pow2: [u64; POW2_BUCKETS],
    total: u64,
    sum_us: u64,
    max_us: u64,
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LatencyHistogram {{ n: {}, max_us: {} }}", self.total, self.max_us)
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; SUB_BUCKETS * (OCTAVES + 1)],
            pow2: [0; POW2_BUCKETS],
            total: 0,
            sum_us: 0,
            max_us: 0,
        }
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    fn bucket_of(value: u64) -> usize {
        if value < SUB_BUCKETS as u64 {
            return value as usize;
        }
        let octave = 63 - value.leading_zeros() as usize; // >= 5
        let shift = octave - SUB_BUCKETS.trailing_zeros() as usize;
        let sub = ((value >> shift) as usize) - SUB_BUCKETS;
        ((octave - 4) * SUB_BUCKETS + sub).min(SUB_BUCKETS * (OCTAVES + 1) - 1)
    }

    fn bucket_high(index: usize) -> u64 {
        if index < SUB_BUCKETS {
            return index as u64;
        }
        let octave = index / SUB_BUCKETS + 4;
        let sub = (index % SUB_BUCKETS + SUB_BUCKETS) as u64;
        let shift = octave - SUB_BUCKETS.trailing_zeros() as usize;
        ((sub + 1) << shift) - 1
    }

    /// Records one latency.
    pub fn record(&mut self, value_us: u64) {
        self.counts[Self::bucket_of(value_us)] += 1;
        self.pow2[pow2_bucket_us(value_us)] += 1;
        self.total += 1;
        self.sum_us = self.sum_us.saturating_add(value_us);
        self.max_us = self.max_us.max(value_us);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        for (mine, theirs) in self.pow2.iter_mut().zip(&other.pow2) {
            *mine += theirs;
        }
        self.total += other.total;
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Sum of all samples, in microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// Counts in QEMU's power-of-two buckets (see [`pow2_bucket_us`]); they sum to
    /// [`LatencyHistogram::count`].
    pub fn pow2_dist(&self) -> [u64; POW2_BUCKETS] {
        self.pow2
    }

    /// The value at quantile `q` in 0..=1 (an upper bound within the bucket error); 0 if empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::bucket_high(index).min(self.max_us);
            }
        }
        self.max_us
    }

    /// (upper bound in us, cumulative fraction) for every non-empty bucket: a CDF to plot.
    pub fn cdf(&self) -> Vec<(u64, f64)> {
        let mut seen = 0;
        let mut points = Vec::new();
        for (index, &count) in self.counts.iter().enumerate() {
            if count > 0 {
                seen += count;
                points.push((Self::bucket_high(index), seen as f64 / self.total as f64));
            }
        }
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_relative_error() {
        let mut hist = LatencyHistogram::new();
        for v in 1..=10_000u64 {
            hist.record(v);
        }
        for (q, exact) in [(0.5, 5_000f64), (0.99, 9_900.0), (0.999, 9_990.0)] {
            let got = hist.quantile_us(q) as f64;
            assert!(got >= exact && got <= exact * 1.04, "q{q}: {got} vs {exact}");
        }
        assert_eq!(hist.quantile_us(1.0), 10_000);
        assert_eq!(LatencyHistogram::new().quantile_us(0.5), 0);
        let cdf = hist.cdf();
        assert!((cdf.last().unwrap().1 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn qemu_buckets_have_power_of_two_bounds() {
        // Under 1 us and [1, 2) us share bucket 0, as in QEMU.
        assert_eq!(pow2_bucket_ns(500), 0);
        assert_eq!(pow2_bucket_us(0), 0);
        assert_eq!(pow2_bucket_us(1), 0);
        assert_eq!(pow2_bucket_ns(1_999), 0);
        assert_eq!(pow2_bucket_us(2), 1);
        assert_eq!(pow2_bucket_us(3), 1);
        assert_eq!(pow2_bucket_us(4), 2);
        assert_eq!(pow2_bucket_us(1023), 9);
        assert_eq!(pow2_bucket_us(1024), 10);
        assert_eq!(pow2_bucket_us((1 << 23) - 1), 22);
        assert_eq!(pow2_bucket_us(1 << 23), 23);
        assert_eq!(pow2_bucket_us(u64::MAX), POW2_BUCKETS - 1);
        let mut hist = LatencyHistogram::new();
        for us in [0, 1, 3, 1023, 1024, u64::MAX] {
            hist.record(us);
        }
        let dist = hist.pow2_dist();
        assert_eq!(dist.iter().sum::<u64>(), hist.count());
        assert_eq!((dist[0], dist[1], dist[9], dist[10], dist[23]), (2, 1, 1, 1, 1));
        let mut merged = LatencyHistogram::new();
        merged.merge(&hist);
        assert_eq!(merged.pow2_dist(), dist);
    }

    #[test]
    fn buckets_are_monotonic() {
        let mut last = 0;
        for v in [0u64, 1, 31, 32, 33, 63, 64, 1000, 1 << 20, 1 << 39] {
            let b = LatencyHistogram::bucket_of(v);
            assert!(b >= last);
            assert!(LatencyHistogram::bucket_high(b) >= v);
            last = b;
        }
    }
}
