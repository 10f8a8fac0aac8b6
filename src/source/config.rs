//! What the source is told (its tunables), what it reports (its counters), and the names of
//! its phases. The engine in [`super::engine`] reads the first and fills the second.

use crate::dest::engine::ACK_EVERY_WINDOWS;
use crate::wire::MigrationMode;

/// Tunables of the source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Migration method.
    pub mode: MigrationMode,
    /// Session id carried by both connections.
    pub session_id: u64,
    /// Pages in a fault answer (the hybrid window); post-copy answers with one page.
    pub window_pages: u32,
    /// Grow the fault window while faults walk memory in order, shrink it when they jump
    /// (`window_pages` is then the starting size).
    pub adaptive_window: bool,
    /// Pages in one background-push or round frame.
    pub push_pages: u32,
    /// Bulk pages sent and not yet acknowledged at which the push, the rounds and the live
    /// pass wait for an acknowledgement (fault answers never wait). At least
    /// [`ACK_EVERY_WINDOWS`] windows of `push_pages`, or the engine refuses the config.
    pub unacked_cap_pages: u64,
    /// Pre-copy: rounds before the switch-over is forced.
    pub max_rounds: u32,
    /// Pre-copy: switch over once the dirty pages fit this downtime at the measured rate.
    pub downtime_target_ms: f64,
    /// lz4 policy.
    pub compression: CompressionPolicy,
    /// Working set, most important first (hybrid modes), and the true hot set for scoring.
    pub working_set: Vec<u64>,
    /// Hybrid: what crosses while the guest still runs, before the switch-over.
    pub live_pass: LivePass,
    /// Longest wait, with the guest still running, for the destination to confirm it has taken
    /// in everything sent live before the guest is paused (ms). The confirmation keeps the
    /// downtime free of the data still queued in socket buffers.
    pub drain_timeout_ms: u64,
    /// The workload's true hot set, to compute `ws_recall` (empty when unknown).
    pub true_hot_set: Vec<u64>,
    /// Pages per block that the source arms for the dirty log and scans for untouched pages
    /// at once, just before it first reads the block while the guest runs (at least 1).
    pub prepare_block_pages: u64,
    /// Post-copy and hybrid: hold the background push this long after the state is sent
    /// (0: push at once). Faults are served meanwhile, so a delay longer than the guest's run
    /// leaves it on demand paging alone: the floor of the fault path, with nothing else on
    /// either loop.
    pub push_delay_ms: u64,
}

impl SourceConfig {
    /// The smallest [`SourceConfig::unacked_cap_pages`] that cannot wait forever: the
    /// destination acknowledges every [`ACK_EVERY_WINDOWS`] windows, so with this many bulk
    /// pages unacknowledged an Ack is always on its way.
    pub fn min_unacked_cap_pages(&self) -> u64 {
        ACK_EVERY_WINDOWS * u64::from(self.push_pages.max(1))
    }

    /// Defaults for `mode`.
    pub fn new(mode: MigrationMode, session_id: u64) -> Self {
        let push_pages = 16;
        Self {
            mode,
            session_id,
            window_pages: 16,
            adaptive_window: false,
            push_pages,
            // 512 acknowledgement intervals, above the Ack lag of healthy loopback runs
            // (docs/results/2026-12-03-bounded-queues.md): only a stalled destination meets it.
            unacked_cap_pages: 512 * ACK_EVERY_WINDOWS * u64::from(push_pages),
            max_rounds: 30,
            downtime_target_ms: 5.0,
            compression: CompressionPolicy::Auto,
            working_set: Vec::new(),
            live_pass: LivePass::All,
            drain_timeout_ms: 1000,
            true_hot_set: Vec::new(),
            prepare_block_pages: 2048,
            push_delay_ms: 0,
        }
    }
}

/// What hybrid sends while the guest still runs, before it pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LivePass {
    /// Only the working set.
    WorkingSet,
    /// One pass over every non-zero page: the cold part first, then the working set (hottest
    /// last, so that it is the freshest). Pages the guest first touches after the resume are
    /// then already there unless it wrote them during the pass, so faults drop to the pages
    /// dirtied late; the pass is never repeated, so the downtime does not grow with it.
    #[default]
    All,
}

impl std::str::FromStr for LivePass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ws" | "working-set" => Ok(LivePass::WorkingSet),
            "all" => Ok(LivePass::All),
            other => Err(format!("unknown live pass {other:?} (expected ws or all)")),
        }
    }
}

impl std::fmt::Display for LivePass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LivePass::WorkingSet => "ws",
            LivePass::All => "all",
        })
    }
}

/// Whether pages are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionPolicy {
    /// Never.
    Off,
    /// Always try lz4.
    On,
    /// Decide from the measured link rate against the measured compressor rate.
    Auto,
}

/// Where the source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Built after the handshake, not started yet (QEMU's `setup`).
    Setup,
    /// Pre-copy rounds over the dirty log while the guest runs.
    Rounds,
    /// Hybrid: sending the working set while the guest runs.
    WorkingSet,
    /// Guest paused: sending what the destination needs before it resumes.
    SwitchOver,
    /// Destination running: fault answers and background push.
    Push,
    /// Done sent, waiting for DoneAck.
    AwaitDoneAck,
    /// DoneAck matched: the source is no longer needed.
    Finished,
}

/// Counters and instants the source reports.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SourceStats {
    /// `--mode auto`'s decisions, oldest first (empty in the fixed modes).
    pub auto_decisions: Vec<crate::source::auto::AutoDecision>,
    /// Faults answered without their window because earlier answers were still crossing the
    /// link (the neighbours went first on the push instead).
    pub fault_windows_held: u64,
    /// When the migration started (mono ns).
    pub start_ns: u64,
    /// When the guest was paused (mono ns).
    pub pause_ns: u64,
    /// When the VmState frame was handed to the driver (mono ns).
    pub state_sent_ns: u64,
    /// When the `Run` command (the hand-over) was handed to the driver (mono ns; with a
    /// version-2 peer, the VmState's instant).
    #[serde(default)]
    pub run_sent_ns: u64,
    /// When DoneAck arrived (mono ns).
    pub finished_ns: u64,
    /// Frame bytes produced for the bulk stream.
    pub bytes_bulk: u64,
    /// Frame bytes produced for the urgent stream.
    pub bytes_urgent: u64,
    /// Pages sent as zero.
    pub pages_zero: u64,
    /// Pages the VMM reported as never touched, so zero without being read.
    pub pages_untouched: u64,
    /// Pre-copy and hybrid: time spent arming blocks for the dirty log and asking which pages
    /// were never touched (spread over the live phase, block by block).
    pub zero_scan_ms: f64,
    /// Pages sent raw.
    pub pages_raw: u64,
    /// Pages sent lz4-compressed.
    pub pages_lz4: u64,
    /// Pre-copy rounds (1 for one full pass).
    pub rounds: u32,
    /// Pages sent in the downtime.
    pub pages_in_downtime: u64,
    /// Fault requests served.
    pub faults_served: u64,
    /// Pages of the working set.
    pub ws_pages: u64,
    /// Fraction of the true hot set that the working set holds.
    pub ws_recall: f64,
    /// Pages sent and dirtied afterwards (re-sent by a later round, or dropped on the
    /// destination at the switch-over).
    pub stale_pages: u64,
    /// Pages the destination had to fetch after the resume.
    pub need_pages: u64,
    /// Whether lz4 was in use at the end.
    pub lz4_used: bool,
    /// Pause latency of the VMM (ms).
    pub pause_latency_ms: f64,
    /// Digest of guest memory as sent.
    pub memory_digest: u64,
    /// Fault window of the last answer (pages).
    pub window_pages_last: u32,
    /// Most pages sent and not yet acknowledged at any time.
    pub unacked_pages_max: u64,
    /// Bulk-stream pages still unacknowledged when DoneAck arrived (must be 0).
    pub unacked_pages_at_end: u64,
    /// Times bulk windows stopped at [`SourceConfig::unacked_cap_pages`] until an Ack.
    #[serde(default)]
    pub unacked_cap_stalls: u64,
    /// Fault requests whose page was already in a queued answer (a retry): not queued again.
    #[serde(default)]
    pub fault_answers_deduped: u64,
    /// Fault answers left to the push because the outbox was full.
    #[serde(default)]
    pub fault_answers_deferred: u64,
    /// Pre-copy stopped without converging and finished post-copy.
    #[serde(default)]
    pub precopy_fallback: bool,
    /// Stale pages the destination was told to discard while the guest still ran.
    #[serde(default)]
    pub pages_invalidated_live: u64,
    /// Working-set pages the guest wrote during the cold part of hybrid's live pass (sent at
    /// the end of the working-set pass).
    #[serde(default)]
    pub ws_write_hot_pages: u64,
    /// Hybrid: the cold part of the live pass was given up because the guest dirtied it faster
    /// than it crossed.
    #[serde(default)]
    pub cold_pass_abandoned: bool,
    /// Hybrid: a working-set pass was given up for the same reason (the rest crosses after
    /// the resume).
    #[serde(default)]
    pub ws_pass_abandoned: bool,
    /// Hybrid: live passes after the cold part (the working-set pass, plus the re-sends of the
    /// working-set pages written meanwhile and of the stale cold pages while those shrink).
    #[serde(default)]
    pub ws_passes: u32,
    /// Hybrid: pages outside the working set sent once more before the pause because the guest
    /// wrote them after the cold part had sent them (see `working_set_again`).
    #[serde(default)]
    pub stale_repass_pages: u64,
    /// Time from the drain Ping to its Pong, with the guest still running, summed over the
    /// drains (ms; 0 when the mode has no live phase or no Pong came back in time). A drain
    /// is repeated, at most 3 in all, while more than 64 sent pages went stale during it.
    #[serde(default)]
    pub drain_ms: f64,
    /// Connections that replaced a lost one.
    #[serde(default)]
    pub recoveries: u64,
    /// Pages sent again because the destination's recovery report named them missing.
    #[serde(default)]
    pub pages_resent: u64,
    /// Fault requests the destination asked again on bulk.
    #[serde(default)]
    pub fault_retries_served: u64,
    /// Time from each lost connection to its replacement, summed (ms; the driver's).
    #[serde(default)]
    pub recovery_ms: f64,
}
