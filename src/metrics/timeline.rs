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

    /// The first instant the cumulative ops reached `ops`, interpolating linearly between
    /// samples (the first sample's time when it already had them); `None` if never reached.
    pub fn time_at_ops(&self, ops: f64) -> Option<f64> {
        let s = &self.samples;
        let i = s.partition_point(|&(_, o)| (o as f64) < ops);
        if i == s.len() {
            return None;
        }
        if i == 0 {
            return Some(s[0].0 as f64);
        }
        let (t0, o0) = (s[i - 1].0 as f64, s[i - 1].1 as f64);
        let (t1, o1) = (s[i].0 as f64, s[i].1 as f64);
        Some(t0 + (t1 - t0) * (ops - o0) / (o1 - o0))
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

/// A [`ProgressTimeline`] of bounded size for a run of any length: samples closer than the
/// current gap to the last one are skipped, and when the timeline is full every other sample
/// is dropped and the gap doubles.
#[derive(Debug, Clone)]
pub struct BoundedTimeline {
    timeline: ProgressTimeline,
    gap_ns: u64,
    max_samples: usize,
}

impl BoundedTimeline {
    /// At most `max_samples` (at least 4), at first no closer than `gap_ns`.
    pub fn new(max_samples: usize, gap_ns: u64) -> Self {
        Self { timeline: ProgressTimeline::default(), gap_ns, max_samples: max_samples.max(4) }
    }

    /// Records a sample; `last` keeps it whatever the gap (the run's end).
    pub fn record(&mut self, at_ns: u64, ops_total: u64, last: bool) {
        let samples = &mut self.timeline.samples;
        if !last && samples.last().is_some_and(|&(t, _)| at_ns < t.saturating_add(self.gap_ns)) {
            return;
        }
        if samples.len() >= self.max_samples {
            let mut index = 0;
            samples.retain(|_| {
                index += 1;
                index % 2 == 1
            });
            self.gap_ns = self.gap_ns.saturating_mul(2).max(1);
        }
        self.timeline.record(at_ns, ops_total);
    }

    /// The samples kept.
    pub fn into_timeline(self) -> ProgressTimeline {
        self.timeline
    }
}

/// The migrated guest against an unmigrated reference run of the same guest, between the same
/// two op positions: `ops_from` (ops done when the migration started) and `ops_to` (ops done
/// when it ended, or the guest's last op if it finished before).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpSpanScore {
    /// Ops done when the migration started.
    pub ops_from: u64,
    /// Ops done at the end of the span.
    pub ops_to: u64,
    /// Time the migrated guest took from `ops_from` to `ops_to` (ms).
    pub migrated_ms: f64,
    /// Time the reference run took between the same ops (ms).
    pub reference_ms: f64,
    /// A paced guest cannot run faster than its pace: the time the pace allows for the span
    /// (ms; 0 when unpaced). The reference time is the larger of this and `reference_ms`.
    pub paced_floor_ms: f64,
    /// `100 * (1 - reference time / migrated_ms)`, in 0..=100 (0: no slowdown, 100: the
    /// guest stood still).
    pub degradation_pct: f64,
}

/// Scores the migrated guest's progress during `[start_ns, end_ns]` against `reference` (an
/// unmigrated run's timeline) at the same op positions (see [`OpSpanScore`]). A paced guest
/// is held to `paced_ops_per_sec` (all vCPUs) at best, since the reference run is unpaced.
/// `None` when the span holds no op position the reference run reached (the guest had
/// finished before the start, or the reference timeline is empty).
pub fn score_at_op_positions(
    migrated: &ProgressTimeline,
    start_ns: u64,
    end_ns: u64,
    reference: &ProgressTimeline,
    paced_ops_per_sec: Option<f64>,
) -> Option<OpSpanScore> {
    let ref_last = reference.samples.last()?.1 as f64;
    let from = migrated.ops_at(start_ns);
    if end_ns <= start_ns || from >= ref_last {
        return None;
    }
    let at_end = migrated.ops_at(end_ns);
    // A guest that finished inside the span is scored up to its last op, not its idle end.
    let (to, to_ns) = if at_end >= ref_last {
        (ref_last, migrated.time_at_ops(ref_last).unwrap_or(end_ns as f64))
    } else {
        (at_end, end_ns as f64)
    };
    let migrated_ms = (to_ns - start_ns as f64).max(0.0) / 1e6;
    let reference_ms = match (reference.time_at_ops(from), reference.time_at_ops(to)) {
        (Some(a), Some(b)) => (b - a).max(0.0) / 1e6,
        _ => return None,
    };
    let paced_floor_ms =
        paced_ops_per_sec.filter(|&p| p > 0.0).map_or(0.0, |p| (to - from) / p * 1e3);
    let expected_ms = reference_ms.max(paced_floor_ms);
    let degradation_pct = if migrated_ms <= 0.0 {
        0.0
    } else {
        (100.0 * (1.0 - expected_ms / migrated_ms)).clamp(0.0, 100.0)
    };
    Some(OpSpanScore {
        ops_from: from.round() as u64,
        ops_to: to.round() as u64,
        migrated_ms,
        reference_ms,
        paced_floor_ms,
        degradation_pct,
    })
}

/// How much slower the guest ran during `[start_ns, end_ns)` than at `baseline_ops_per_sec`,
/// in percent (0 = no slowdown, 100 = stopped). 0 when there is no baseline. The report's
/// fallback when no reference run exists: a rate taken during the guest's warm-up can be far
/// below its steady rate, so this understates a slowdown.
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

    const MS: u64 = 1_000_000;

    /// A timeline of `rate` ops per ms from `t0_ms`, standing still during `stalls`
    /// (start ms, length ms), sampled every ms up to `until_ms` and capped at `cap` ops.
    fn synthetic(
        t0_ms: u64,
        rate: u64,
        stalls: &[(u64, u64)],
        until_ms: u64,
        cap: u64,
    ) -> ProgressTimeline {
        let mut t = ProgressTimeline::default();
        let mut ops = 0;
        for ms in t0_ms..=until_ms {
            t.record(ms * MS, ops);
            let stalled = stalls.iter().any(|&(s, len)| ms >= s && ms < s + len);
            if !stalled {
                ops = (ops + rate).min(cap);
            }
        }
        t
    }

    #[test]
    fn op_positions_score_a_stall_the_warm_up_rate_would_hide() {
        // The reference runs 100 ops/ms from 0 to 10,000 ops (100 ms of ops).
        let reference = synthetic(0, 100, &[], 200, 10_000);
        assert_eq!(reference.time_at_ops(5_000.0), Some(50.0 * MS as f64));
        assert_eq!(reference.time_at_ops(20_000.0), None);
        // The migrated guest starts 1,000 ms later, migrates from 1,020 ms to 1,070 ms, and
        // stands still for 25 ms of it.
        let migrated = synthetic(1_000, 100, &[(1_030, 25)], 1_200, 10_000);
        let s = score_at_op_positions(&migrated, 1_020 * MS, 1_070 * MS, &reference, None)
            .expect("a score");
        assert_eq!((s.ops_from, s.ops_to), (2_000, 4_500));
        assert!((s.migrated_ms - 50.0).abs() < 1e-9, "{s:?}");
        assert!((s.reference_ms - 25.0).abs() < 1e-9, "{s:?}");
        assert!((s.degradation_pct - 50.0).abs() < 1e-9, "{s:?}");
        // Unstalled, the same span scores 0.
        let smooth = synthetic(1_000, 100, &[], 1_200, 10_000);
        let s = score_at_op_positions(&smooth, 1_020 * MS, 1_070 * MS, &reference, None).unwrap();
        assert!(s.degradation_pct.abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn a_guest_that_finishes_inside_the_span_is_scored_to_its_last_op() {
        let reference = synthetic(0, 100, &[], 200, 10_000);
        // Stalled 20 ms, then finished at 1,120 ms; the migration ends at 1,190 ms.
        let migrated = synthetic(1_000, 100, &[(1_050, 20)], 1_200, 10_000);
        let s = score_at_op_positions(&migrated, 1_000 * MS, 1_190 * MS, &reference, None)
            .expect("a score");
        assert_eq!(s.ops_to, 10_000);
        assert!((s.migrated_ms - 120.0).abs() < 1e-6, "{s:?}");
        assert!((s.degradation_pct - 100.0 * 20.0 / 120.0).abs() < 1e-6, "{s:?}");
        // Finished before the migration started: nothing to score.
        assert_eq!(
            score_at_op_positions(&migrated, 1_150 * MS, 1_190 * MS, &reference, None),
            None
        );
        assert_eq!(
            score_at_op_positions(
                &migrated,
                1_000 * MS,
                1_190 * MS,
                &ProgressTimeline::default(),
                None
            ),
            None
        );
    }

    #[test]
    fn a_paced_guest_is_held_to_its_pace() {
        // Unpaced reference: 100 ops/ms. The paced guest runs 10 ops/ms, and one 50 ms stall
        // in a 200 ms span costs it a quarter of the span.
        let reference = synthetic(0, 100, &[], 200, 10_000);
        let migrated = synthetic(1_000, 10, &[(1_100, 50)], 1_400, 10_000);
        let s =
            score_at_op_positions(&migrated, 1_000 * MS, 1_200 * MS, &reference, Some(10_000.0))
                .expect("a score");
        assert_eq!((s.ops_from, s.ops_to), (0, 1_500));
        assert!((s.paced_floor_ms - 150.0).abs() < 1e-9, "{s:?}");
        assert!((s.degradation_pct - 25.0).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn a_bounded_timeline_halves_its_resolution_when_full() {
        let mut b = BoundedTimeline::new(8, 1);
        for k in 0..1_000u64 {
            b.record(k, k * 3, false);
        }
        b.record(1_000, 3_000, true);
        let t = b.into_timeline();
        assert!(t.samples.len() <= 8, "{}", t.samples.len());
        assert_eq!(t.samples.last(), Some(&(1_000, 3_000)), "the end is kept");
        assert_eq!(t.samples[0], (0, 0), "the start is kept");
        assert_eq!(t.time_at_ops(1_500.0), Some(500.0));
    }
}
