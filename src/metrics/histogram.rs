//! A log-linear latency histogram (HDR-like): constant memory, about 3% relative error.

/// Sub-buckets per power of two; 32 gives a worst-case relative error of 1/32.
const SUB_BUCKETS: usize = 32;
/// Powers of two covered: values up to 2^40 microseconds.
const OCTAVES: usize = 40;

/// Records latencies in microseconds and answers percentiles.
#[derive(Clone)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
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
        Self { counts: vec![0; SUB_BUCKETS * (OCTAVES + 1)], total: 0, sum_us: 0, max_us: 0 }
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
        self.total += 1;
        self.sum_us = self.sum_us.saturating_add(value_us);
        self.max_us = self.max_us.max(value_us);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
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
