//! The guest's progress over time: operations per 10 ms bucket, on the shared clock.

/// Width of one progress bucket.
pub const BUCKET_MS: u64 = 10;

/// Samples of the guest's cumulative op counter, turned into ops per bucket.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProgressTimeline {
    /// (mono_ns, cumulative ops) samples, in time order.
    pub samples: Vec<(u64, u64)>,
}

impl ProgressTimeline {
    /// Records one sample; out-of-order samples are dropped.
    pub fn record(&mut self, at_ns: u64, ops_total: u64) {
        if self.samples.last().is_none_or(|&(t, _)| at_ns > t) {
            self.samples.push((at_ns, ops_total));
        }
    }

    /// Appends another timeline (the destination's after the source's).
    pub fn extend(&mut self, other: &ProgressTimeline) {
        for &(t, ops) in &other.samples {
            self.record(t, ops);
        }
    }

    /// Operations between two instants, interpolating linearly between samples.
    pub fn ops_between(&self, start_ns: u64, end_ns: u64) -> f64 {
        self.ops_at(end_ns) - self.ops_at(start_ns)
    }

    fn ops_at(&self, at_ns: u64) -> f64 {
        let s = &self.samples;
        if s.is_empty() {
            return 0.0;
        }
        let i = s.partition_point(|&(t, _)| t <= at_ns);
        if i == 0 {
            return s[0].1 as f64;
        }
        if i == s.len() {
            return s[s.len() - 1].1 as f64;
        }
        let (t0, o0) = s[i - 1];
        let (t1, o1) = s[i];
        o0 as f64 + (o1 as f64 - o0 as f64) * (at_ns - t0) as f64 / (t1 - t0) as f64
    }

    /// Ops per [`BUCKET_MS`] bucket from `start_ns` on: (bucket start ns, ops in bucket).
    pub fn buckets(&self, start_ns: u64) -> Vec<(u64, f64)> {
        let Some(&(last, _)) = self.samples.last() else { return Vec::new() };
        let width = BUCKET_MS * 1_000_000;
        (0..)
            .map(|k| start_ns + k * width)
            .take_while(|&t| t < last)
            .map(|t| (t, self.ops_between(t, t + width)))
            .collect()
    }
}

/// How much slower the guest ran during `[start_ns, end_ns)` than at `baseline_ops_per_sec`,
/// in percent (0 = no slowdown, 100 = stopped). 0 when there is no baseline.
pub fn degradation_pct(
    timeline: &ProgressTimeline,
    start_ns: u64,
    end_ns: u64,
    baseline_ops_per_sec: f64,
) -> f64 {
    let seconds = end_ns.saturating_sub(start_ns) as f64 / 1e9;
    if baseline_ops_per_sec <= 0.0 || seconds <= 0.0 {
        return 0.0;
    }
    let expected = baseline_ops_per_sec * seconds;
    let done = timeline.ops_between(start_ns, end_ns);
    (100.0 * (1.0 - done / expected)).clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_and_scores_a_stall() {
        let mut t = ProgressTimeline::default();
        // 1000 ops per 10 ms, a stall of 20 ms, then normal again.
        for k in 0..=10u64 {
            let ops = if k <= 4 {
                k * 1000
            } else if k <= 6 {
                4000
            } else {
                4000 + (k - 6) * 1000
            };
            t.record(k * 10_000_000, ops);
        }
        assert_eq!(t.ops_between(0, 40_000_000), 4000.0);
        assert_eq!(t.buckets(0).len(), 10);
        let pct = degradation_pct(&t, 0, 100_000_000, 100_000.0);
        assert!((pct - 20.0).abs() < 1e-9, "{pct}");
        assert_eq!(degradation_pct(&t, 0, 100_000_000, 0.0), 0.0);
    }
}
