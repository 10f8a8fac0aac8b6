//! What each host reports, and the merged report of a migration.

use crate::dest::driver::DestRun;
use crate::driver::inject::Injected;
use crate::metrics::{
    degradation_pct, ms_between, score_at_op_positions, OpSpanScore, ProgressTimeline,
};
use crate::source::SourceStats;
use serde::{Deserialize, Serialize};

/// How a migration ended, in the names QEMU's operators know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The guest moved: the destination runs it, the source released it.
    #[default]
    Completed,
    /// Called off before the hand-over: the source guest ran on, the destination freed all.
    Cancelled,
}

/// Which host ran the guest to the end of its ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestSite {
    /// The source (the migration was cancelled).
    Source,
    /// The destination.
    #[default]
    Destination,
}

/// The source host's report (one JSON line on the source process's stdout).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceReport {
    /// Migration mode.
    pub mode: String,
    /// Engine counters and instants.
    pub stats: SourceStats,
    /// Guest progress on the source: (mono ns, cumulative ops).
    pub timeline: ProgressTimeline,
    /// Guest ops per second before the migration started.
    pub baseline_ops_per_sec: f64,
    /// Guest ops counter right after the pause.
    pub ops_at_pause: u64,
    /// Guest ops counter when the source released the VM (must equal `ops_at_pause`).
    pub ops_at_release: u64,
    /// Sampling windows the working-set tracker saw.
    pub ws_windows: u32,
    /// Time the guest was stopped for working-set samples before the migration (ms).
    pub ws_sample_pause_ms: f64,
    /// Pages of the workload's true write-hot set (hotcold; 0 for the others).
    #[serde(default)]
    pub write_hot_pages: u64,
    /// Completed, or cancelled before the hand-over.
    #[serde(default)]
    pub outcome: Outcome,
    /// Why the migration was cancelled (the error, as displayed).
    #[serde(default)]
    pub cancel_reason: Option<String>,
    /// When it was cancelled (mono ns; 0 unless cancelled).
    #[serde(default)]
    pub cancelled_ns: u64,
    /// Cancelled: the guest's own digest when it finished its ops here.
    #[serde(default)]
    pub guest_digest: Option<u64>,
    /// Cancelled: when the guest finished here (mono ns).
    #[serde(default)]
    pub guest_finished_ns: u64,
    /// Faults this host injected (`--inject`).
    #[serde(default)]
    pub injected: Vec<Injected>,
    /// The source process's peak resident memory (VmHWM), guest memory included (bytes).
    #[serde(default)]
    pub peak_rss_bytes: u64,
    /// Every frame on both streams was encrypted (false with `--no-encrypt`).
    #[serde(default)]
    pub encrypted: bool,
    /// CPU time of the source process (user + system, all threads, vCPUs included; ms).
    #[serde(default)]
    pub cpu_ms: f64,
}

/// The destination host's report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DestReport {
    /// Receiver counters, fault latencies and instants.
    pub run: DestRun,
    /// Guest progress on the destination: (mono ns, cumulative ops).
    pub timeline: ProgressTimeline,
    /// The guest's own digest when it finished its ops (None if it did not finish).
    pub guest_digest: Option<u64>,
    /// When the guest finished (mono ns).
    pub guest_finished_ns: u64,
    /// Completed, or cancelled before the guest was allowed to run here.
    #[serde(default)]
    pub outcome: Outcome,
    /// Why it was cancelled (the error, as displayed).
    #[serde(default)]
    pub cancel_reason: Option<String>,
    /// Faults this host injected (`--inject`).
    #[serde(default)]
    pub injected: Vec<Injected>,
    /// The destination process's peak resident memory (VmHWM), guest memory included (bytes).
    #[serde(default)]
    pub peak_rss_bytes: u64,
    /// Every frame on both streams was encrypted (false with `--no-encrypt`).
    #[serde(default)]
    pub encrypted: bool,
    /// CPU time of the destination process (user + system, all threads, vCPUs included; ms).
    #[serde(default)]
    pub cpu_ms: f64,
}

/// The version of the report's layout: raised when a field changes meaning or goes away (a
/// new field alone does not raise it), so a reader can refuse what it does not understand.
/// 2: `degradation_pct` is scored against the unmigrated reference run, and null without one.
pub const REPORT_SCHEMA_VERSION: u32 = 2;

/// The merged report of one migration (the `--json` object of `hybridmig migrate`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MigrationReport {
    /// [`REPORT_SCHEMA_VERSION`] of the build that wrote it (0: a report from before it).
    #[serde(default)]
    pub schema_version: u32,
    /// Migration mode.
    pub mode: String,
    /// Lost connections replaced by a new one (the source's count; each side counts each).
    #[serde(default)]
    pub recoveries: u64,
    /// Time from each lost connection to its replacement, summed, the longer side's (ms).
    #[serde(default)]
    pub recovery_ms: f64,
    /// Pages the source sent again after recoveries (unacknowledged, or missing there).
    #[serde(default)]
    pub pages_resent: u64,
    /// Fault requests asked again on bulk after no answer in time.
    #[serde(default)]
    pub fault_retries: u64,
    /// The destination process's peak resident memory, guest memory included (MiB).
    #[serde(default)]
    pub dest_peak_rss_mb: f64,
    /// The source process's peak resident memory, guest memory included (MiB).
    #[serde(default)]
    pub source_peak_rss_mb: f64,
    /// The longest a vCPU waited for a page from the network (us).
    #[serde(default)]
    pub fault_us_max: u64,
    /// Completed, or cancelled before the hand-over (the guest then finished on the source).
    #[serde(default)]
    pub outcome: Outcome,
    /// Where the guest ran to the end of its ops.
    #[serde(default)]
    pub guest_finished_on: GuestSite,
    /// Cancelled: the source's error, as displayed.
    #[serde(default)]
    pub cancel_reason: Option<String>,
    /// Cancelled: the destination's error, as displayed (or how its process failed).
    #[serde(default)]
    pub dest_cancel_reason: Option<String>,
    /// Cancelled: from the migration's start to the cancel (ms).
    #[serde(default)]
    pub cancelled_at_ms: f64,
    /// Faults injected with `--inject`, by both hosts.
    #[serde(default)]
    pub injected: Vec<Injected>,
    /// Every frame on both streams was encrypted, as both hosts saw it (false with
    /// `--no-encrypt`).
    #[serde(default)]
    pub encrypted: bool,
    /// CPU time of the source process, vCPUs included (ms).
    #[serde(default)]
    pub src_cpu_ms: f64,
    /// CPU time of the destination process, vCPUs included (ms).
    #[serde(default)]
    pub dst_cpu_ms: f64,
    /// Workload name.
    pub workload: String,
    /// Workload memory in bytes.
    pub mem_bytes: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Ops the guest ran in all.
    pub ops: u64,
    /// Pace cap (ops/s per vCPU), 0 when unpaced.
    pub pace: u64,
    /// Migration start to the source no longer needed.
    pub total_ms: f64,
    /// Source pause to destination resume, on the shared clock.
    pub downtime_ms: f64,
    /// Bytes on both streams, both ways.
    pub bytes_wire_total: u64,
    /// Bytes on the bulk stream (both ways).
    pub bytes_bulk: u64,
    /// Bytes on the urgent stream (both ways).
    pub bytes_urgent: u64,
    /// Pages sent as zero.
    pub pages_zero: u64,
    /// Zero pages known from the VMM (never touched) without being read.
    #[serde(default)]
    pub pages_untouched: u64,
    /// Pre-copy and hybrid: time spent arming blocks for the dirty log and asking which pages
    /// were never touched, spread over the live phase, block by block (post-copy reads nothing
    /// before the pause and scans nothing).
    #[serde(default)]
    pub zero_scan_ms: f64,
    /// Pages sent raw.
    pub pages_raw: u64,
    /// Pages sent lz4-compressed.
    pub pages_lz4: u64,
    /// Pages sent while the guest was paused.
    pub pages_in_downtime: u64,
    /// Faults that needed the network.
    pub network_faults: u64,
    /// Faults served locally.
    pub local_faults: u64,
    /// Fault latency, 50th percentile (uffd message to page placed).
    pub fault_us_p50: u64,
    /// 99th percentile.
    pub fault_us_p99: u64,
    /// 99.9th percentile.
    pub fault_us_p999: u64,
    /// Time vCPUs spent blocked on network faults.
    pub vcpu_blocked_ms: f64,
    /// `vcpu_blocked_ms` by vCPU index (ms); with `vcpu_blocked_ms_unattributed` it sums to
    /// `vcpu_blocked_ms`.
    #[serde(default)]
    pub vcpu_blocked_ms_per_vcpu: Vec<f64>,
    /// The part of `vcpu_blocked_ms` whose faulting thread the VMM did not name as a vCPU (ms).
    #[serde(default)]
    pub vcpu_blocked_ms_unattributed: f64,
    /// Network-fault latencies in QEMU's `postcopy-latency-dist` buckets: 24 counts, bucket i
    /// for [2^i, 2^(i+1)) us (bucket 0 also under 1 us, the last one everything above).
    #[serde(default)]
    pub fault_latency_dist_us: Vec<u64>,
    /// Working-set pages.
    pub ws_pages: u64,
    /// Fraction of the workload's true hot set in the working set.
    pub ws_recall: f64,
    /// Pre-copy rounds.
    pub rounds: u32,
    /// Pre-copy did not converge and finished post-copy.
    #[serde(default)]
    pub precopy_fallback: bool,
    /// Pages sent and dirtied afterwards (stale on the destination until replaced).
    pub stale_pages: u64,
    /// Stale pages dropped on the destination (before the resume).
    pub pages_discarded: u64,
    /// Of those, the ones the source named while the guest still ran (hybrid's live pass).
    #[serde(default)]
    pub pages_invalidated_live: u64,
    /// Pages of the workload's true write-hot set (hotcold's rewritten subset of the hot set):
    /// the part that must cross after the pause whatever the mode, when unpaced.
    #[serde(default)]
    pub write_hot_pages: u64,
    /// Working-set pages the guest wrote during the cold part of hybrid's live pass (sent
    /// last in the working-set pass).
    #[serde(default)]
    pub ws_write_hot_pages: u64,
    /// Hybrid gave up the cold part of its live pass (the guest dirtied it faster than it
    /// crossed).
    #[serde(default)]
    pub cold_pass_abandoned: bool,
    /// Hybrid gave up a working-set pass (the guest dirtied it faster than it crossed).
    #[serde(default)]
    pub ws_pass_abandoned: bool,
    /// Hybrid's live passes after the cold part (the working-set pass, then re-sends of the
    /// written working-set pages and the stale cold pages while they shrink by half or more).
    #[serde(default)]
    pub ws_passes: u32,
    /// Hybrid: pages outside the working set sent again before the pause, because the guest
    /// wrote them after the cold part had sent them.
    #[serde(default)]
    pub stale_repass_pages: u64,
    /// Wait, with the guest still running, for the destination to confirm the live data before
    /// the pause (ms, summed over the drains: one more is made while many pages went stale).
    #[serde(default)]
    pub drain_ms: f64,
    /// Slowdown of the guest during the migration against the unmigrated reference run at
    /// the same op positions (`degradation_basis`); `None` when no reference run was made.
    #[serde(default)]
    pub degradation_pct: Option<f64>,
    /// What `degradation_pct` compared: the op span, and the time each run took over it.
    #[serde(default)]
    pub degradation_basis: Option<OpSpanScore>,
    /// The fallback without a reference run: the slowdown against the guest's rate in the
    /// first tenth of its warm-up, which understates it (that rate is below the steady one).
    #[serde(default)]
    pub degradation_warmup_pct: f64,
    /// The guest's digest after its ops, on the destination (hex).
    pub digest: String,
    /// The digest of an unmigrated run of the same workload (hex).
    pub digest_expected: String,
    /// True only if the two digests match and the memory digests of both hosts matched.
    pub verified: bool,
    /// Memory digest exchanged in Done/DoneAck matched.
    pub memory_digest_match: bool,
    /// The source guest made no progress after the pause (no split brain).
    pub source_stayed_paused: bool,
    /// The destination resumed only after the state arrived.
    pub dest_resumed_after_state: bool,
    /// Whether lz4 was in use.
    pub lz4_used: bool,
    /// Most pages in flight without an acknowledgement.
    pub unacked_pages_max: u64,
    /// Bulk pages never acknowledged by DoneAck (must be 0).
    pub unacked_pages_at_end: u64,
    /// Times the source's bulk windows stopped at its unacknowledged-page cap.
    #[serde(default)]
    pub unacked_cap_stalls: u64,
    /// Fault requests whose page already waited in a queued answer (not queued again).
    #[serde(default)]
    pub fault_answers_deduped: u64,
    /// Fault answers left to the push because the source's outbox was full.
    #[serde(default)]
    pub fault_answers_deferred: u64,
    /// Faults answered without their window while earlier answers were still crossing.
    #[serde(default)]
    pub fault_windows_held: u64,
    /// `--mode auto`'s decisions: when (ms from the start), what, why, and the figures.
    #[serde(default)]
    pub auto_decisions: Vec<crate::source::auto::AutoDecision>,
    /// Guest progress (ops per 10 ms bucket) from migration start: (ms since start, ops).
    pub progress_buckets: Vec<(f64, f64)>,
    /// Fault latency CDF: (us, cumulative fraction).
    pub fault_cdf: Vec<(u64, f64)>,
    /// Instants relative to migration start (ms): pause, resume, done.
    pub pause_at_ms: f64,
    /// Destination resume.
    pub resume_at_ms: f64,
    /// Source released.
    pub done_at_ms: f64,
}

/// Formats a digest as the CLI prints it.
pub fn hex(digest: u64) -> String {
    format!("{digest:016x}")
}

impl MigrationReport {
    /// Merges the two hosts' reports; `expected` is the unmigrated run's digest. Without a
    /// reference run's timeline `degradation_pct` stays `None`: see
    /// [`MigrationReport::score_against_reference`].
    pub fn merge(src: &SourceReport, dst: &DestReport, expected: u64, dest_sent: [u64; 2]) -> Self {
        let s = &src.stats;
        let d = &dst.run;
        let (timeline, start, end) = migrated_span(src, Some(dst));
        let digest = dst.guest_digest.unwrap_or(0);
        let memory_digest_match = d.stats.memory_digest == s.memory_digest && s.memory_digest != 0;
        MigrationReport {
            schema_version: REPORT_SCHEMA_VERSION,
            mode: src.mode.clone(),
            encrypted: src.encrypted && dst.encrypted,
            src_cpu_ms: src.cpu_ms,
            dst_cpu_ms: dst.cpu_ms,
            recoveries: s.recoveries.max(d.stats.recoveries),
            recovery_ms: s.recovery_ms.max(d.recovery_ms),
            pages_resent: s.pages_resent,
            fault_retries: d.stats.fault_retries,
            dest_peak_rss_mb: dst.peak_rss_bytes as f64 / (1 << 20) as f64,
            source_peak_rss_mb: src.peak_rss_bytes as f64 / (1 << 20) as f64,
            fault_us_max: d.stats.fault_us_max,
            total_ms: ms_between(start, s.finished_ns),
            downtime_ms: ms_between(s.pause_ns, d.resume_ns),
            bytes_bulk: s.bytes_bulk + dest_sent[0],
            bytes_urgent: s.bytes_urgent + dest_sent[1],
            bytes_wire_total: s.bytes_bulk + s.bytes_urgent + dest_sent[0] + dest_sent[1],
            pages_zero: s.pages_zero,
            pages_untouched: s.pages_untouched,
            zero_scan_ms: s.zero_scan_ms,
            pages_raw: s.pages_raw,
            pages_lz4: s.pages_lz4,
            pages_in_downtime: s.pages_in_downtime,
            network_faults: d.stats.network_faults,
            local_faults: d.stats.local_faults,
            fault_us_p50: d.fault_us_p50,
            fault_us_p99: d.fault_us_p99,
            fault_us_p999: d.fault_us_p999,
            vcpu_blocked_ms: d.vcpu_blocked_ms,
            vcpu_blocked_ms_per_vcpu: d.vcpu_blocked_ms_per_vcpu.clone(),
            vcpu_blocked_ms_unattributed: d.vcpu_blocked_ms_unattributed,
            fault_latency_dist_us: d.fault_latency_dist_us.clone(),
            ws_pages: s.ws_pages,
            ws_recall: s.ws_recall,
            rounds: s.rounds,
            precopy_fallback: s.precopy_fallback,
            stale_pages: s.stale_pages,
            pages_discarded: d.stats.pages_discarded,
            pages_invalidated_live: s.pages_invalidated_live,
            ws_write_hot_pages: s.ws_write_hot_pages,
            ws_passes: s.ws_passes,
            stale_repass_pages: s.stale_repass_pages,
            cold_pass_abandoned: s.cold_pass_abandoned,
            ws_pass_abandoned: s.ws_pass_abandoned,
            write_hot_pages: src.write_hot_pages,
            drain_ms: s.drain_ms,
            degradation_warmup_pct: degradation_pct(
                &timeline,
                start,
                end,
                src.baseline_ops_per_sec,
            ),
            digest: hex(digest),
            digest_expected: hex(expected),
            verified: dst.guest_digest == Some(expected) && memory_digest_match,
            memory_digest_match,
            source_stayed_paused: src.ops_at_pause == src.ops_at_release,
            dest_resumed_after_state: d.stats.state_received_ns > 0
                && d.stats.state_received_ns <= d.resume_ns,
            lz4_used: s.lz4_used,
            unacked_pages_max: s.unacked_pages_max,
            unacked_pages_at_end: s.unacked_pages_at_end,
            unacked_cap_stalls: s.unacked_cap_stalls,
            fault_answers_deduped: s.fault_answers_deduped,
            fault_answers_deferred: s.fault_answers_deferred,
            fault_windows_held: s.fault_windows_held,
            auto_decisions: s.auto_decisions.clone(),
            progress_buckets: timeline
                .buckets(start)
                .into_iter()
                .map(|(t, ops)| (ms_between(start, t), ops))
                .collect(),
            fault_cdf: d.fault_cdf.clone(),
            pause_at_ms: ms_between(start, s.pause_ns),
            resume_at_ms: ms_between(start, d.resume_ns),
            done_at_ms: ms_between(start, s.finished_ns),
            injected: src.injected.iter().chain(&dst.injected).cloned().collect(),
            ..MigrationReport::default()
        }
    }

    /// The report of a migration the source cancelled before the hand-over: the guest ran to
    /// the end of its ops on the source, and `verified` says that its digest matches
    /// `expected` and that the destination (when it reported) never ran it.
    pub fn merge_cancelled(src: &SourceReport, dst: Option<&DestReport>, expected: u64) -> Self {
        let s = &src.stats;
        let (_, start, end) = migrated_span(src, None);
        let dest_ran = dst.is_some_and(|d| d.run.resume_ns > 0);
        let dest_injected = dst.map(|d| d.injected.as_slice()).unwrap_or_default();
        MigrationReport {
            schema_version: REPORT_SCHEMA_VERSION,
            mode: src.mode.clone(),
            outcome: Outcome::Cancelled,
            guest_finished_on: GuestSite::Source,
            cancel_reason: src.cancel_reason.clone(),
            dest_cancel_reason: dst.and_then(|d| d.cancel_reason.clone()),
            cancelled_at_ms: ms_between(start, src.cancelled_ns),
            injected: src.injected.iter().chain(dest_injected).cloned().collect(),
            total_ms: ms_between(start, src.cancelled_ns),
            rounds: s.rounds,
            pages_zero: s.pages_zero,
            pages_raw: s.pages_raw,
            pages_lz4: s.pages_lz4,
            stale_pages: s.stale_pages,
            degradation_warmup_pct: degradation_pct(
                &src.timeline,
                start,
                end,
                src.baseline_ops_per_sec,
            ),
            digest: hex(src.guest_digest.unwrap_or(0)),
            digest_expected: hex(expected),
            verified: src.guest_digest == Some(expected) && !dest_ran,
            progress_buckets: src
                .timeline
                .buckets(start)
                .into_iter()
                .map(|(t, ops)| (ms_between(start, t), ops))
                .collect(),
            pause_at_ms: if s.pause_ns > 0 { ms_between(start, s.pause_ns) } else { 0.0 },
            ..MigrationReport::default()
        }
    }

    /// Scores `degradation_pct` against `reference`, the timeline of an unmigrated run of the
    /// same guest: the time the migrated guest took from the ops it had done at the
    /// migration's start to those it had done at its end, against the time the reference run
    /// took between the same ops. `paced_ops_per_sec` (all vCPUs) holds a paced guest to its
    /// pace, since the reference run is unpaced. `dst` is the destination's half (`None` for
    /// a cancelled migration, whose guest finished on the source).
    pub fn score_against_reference(
        &mut self,
        src: &SourceReport,
        dst: Option<&DestReport>,
        reference: &ProgressTimeline,
        paced_ops_per_sec: Option<f64>,
    ) {
        let dst = dst.filter(|_| self.outcome == Outcome::Completed);
        let (timeline, start, end) = migrated_span(src, dst);
        let score = score_at_op_positions(&timeline, start, end, reference, paced_ops_per_sec);
        self.degradation_pct = score.as_ref().map(|s| s.degradation_pct);
        self.degradation_basis = score;
    }

    /// One line for people: the figures that matter.
    pub fn summary_line(&self) -> String {
        format!(
            "mode={} total_ms={:.1} downtime_ms={:.2} bytes_wire_total={} network_faults={} fault_us_p50={} fault_us_p99={} vcpu_blocked_ms={:.1} ws_pages={} ws_recall={:.2} rounds={} degradation_pct={} pages_zero={} pages_raw={} pages_lz4={} verified={}",
            self.mode, self.total_ms, self.downtime_ms, self.bytes_wire_total, self.network_faults,
            self.fault_us_p50, self.fault_us_p99, self.vcpu_blocked_ms, self.ws_pages, self.ws_recall,
            self.rounds, self.degradation_pct.map_or("none".into(), |p| format!("{p:.1}")),
            self.pages_zero, self.pages_raw, self.pages_lz4, self.verified
        )
    }
}

/// The guest's progress over the migration, on the shared clock, with the migration's start
/// and end: for a completed migration both hosts' timelines, from the start to the later of
/// the source's release and the destination's last page; for a cancelled one (`dst` `None`)
/// the source's, to the guest's end there.
fn migrated_span(src: &SourceReport, dst: Option<&DestReport>) -> (ProgressTimeline, u64, u64) {
    let s = &src.stats;
    match dst {
        Some(dst) => {
            let mut timeline = src.timeline.clone();
            timeline.extend(&dst.timeline);
            (timeline, s.start_ns, s.finished_ns.max(dst.run.stats.complete_ns))
        }
        None => {
            // A cancel before the engine started (no connection) has no start: count from it.
            let start = if s.start_ns > 0 { s.start_ns } else { src.cancelled_ns };
            (src.timeline.clone(), start, src.guest_finished_ns)
        }
    }
}
