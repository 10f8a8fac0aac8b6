//! The source engine: a sans-IO state machine.
//!
//! A driver (io_uring, plain sockets, or the simulator) feeds it received frames and asks it
//! for the next frame to send on each stream; the engine never touches a socket. It does call
//! the VMM (through [`MigratableVm`]) for the dirty log, the pause and the state blob.
//!
//! ```text
//!  Setup ─────▶ Rounds (precopy) ────────────┐
//!      │    └──▶ WorkingSet (hybrid) ─────────┤
//!      └─────────────────────────────────────▶ SwitchOver ──▶ Push ──▶ Done ──▶ Finished
//!      (postcopy, hybrid-paper: pause at once) pause, stale set,   faults on urgent,
//!                                              state             rest on bulk
//! ```
//!
//! While the guest runs (rounds, working set), each block of memory is armed for the dirty
//! log and scanned for never-touched pages just before its first page is sent (`blocks`).
//!
//! The state lives in parts under `engine/`, each owning its data behind a few methods:
//! `ledger` (what the destination holds and what must go), `acks` (windows not yet
//! acknowledged), `live_state` (hybrid's passes and the drain), `rounds` (pre-copy's stop
//! rule), `compress` (the compression choice), `zeroscan` (blocks made ready) and `outbox`
//! (fault answers waiting for the urgent stream). The orchestration that calls them is here
//! and in `blocks`, `live`, `faults` and `switchover`.

use super::auto::AutoPolicy;
use super::config::{LivePass, Phase, SourceConfig, SourceStats};
use super::policy::AdaptiveWindow;
use super::push::PushScheduler;
use super::workingset::recall;
use super::SourceError;
use crate::memory::{Layout, PageBitmap, PAGE_SIZE};
use crate::ports::{Clock, GuestPages, MigratableVm, MonoClock};
use crate::session::SessionParams;
use crate::wire::{self, MigrationMode, StreamKind, WindowMeta};
use std::sync::Arc;

mod acks;
mod blocks;
mod compress;
mod faults;
mod ledger;
mod live;
mod live_state;
mod method;
mod outbox;
mod recovery;
mod rounds;
mod switchover;
mod zeroscan;

use acks::AckLog;
use compress::CompressionChoice;
use ledger::PageLedger;
use live_state::LiveState;
use outbox::Outbox;
use rounds::{RoundLimits, Rounds};
use switchover::SwitchPlan;
use zeroscan::ZeroScan;

pub use acks::UNACKED_WINDOWS_MAX;
pub use faults::window_around;
pub use outbox::OUTBOX_RUNS_MAX;

/// The source state machine. See the module docs.
///
/// Its state is kept in parts that own their data, each behind a small API: the page ledger
/// (what the destination holds), the acknowledgement log, the live pass, pre-copy's rounds,
/// the compression choice, the zero scan and the outbox. The counters in `stats` are written
/// for the report and never read to decide anything.
pub struct SourceEngine {
    cfg: SourceConfig,
    /// Time, read through the port (the simulator passes a virtual clock).
    clock: Arc<dyn Clock>,
    /// Guest memory, read through the port.
    memory: GuestPages,
    wire_regions: Vec<wire::Region>,
    layout: Layout,
    limits: wire::Limits,
    version: u16,
    phase: Phase,
    ledger: PageLedger,
    zero_scan: ZeroScan,
    push: PushScheduler,
    outbox: Outbox,
    compression: CompressionChoice,
    stats: SourceStats,
    rounds: Rounds,
    live: LiveState,
    /// The switch-over's plan, present only while the switch-over runs.
    switch: Option<SwitchPlan>,
    dirty_scratch: PageBitmap,
    /// The need set, built in the switch-over into memory allocated (and faulted in) up front.
    need_scratch: PageBitmap,
    window: AdaptiveWindow,
    acks: AckLog,
    /// When the push may start (mono ns; see [`SourceConfig::push_delay_ms`]).
    push_from_ns: u64,
    /// The digest sent in `Done`, which the DoneAck must match.
    done_digest: u64,
    /// Present from a new connection until the destination's report is whole.
    recovery: Option<recovery::Recovery>,
    /// Answers to fault requests asked again on bulk, sent there ahead of the push.
    bulk_answers: std::collections::VecDeque<outbox::AnswerRun>,
    /// The frame that lets the destination run the guest has been queued (see
    /// [`SourceEngine::handed_over`]).
    handed_over: bool,
    /// The destination answered `Loaded` to the state last sent: `Run` may go.
    dest_loaded: bool,
    /// `--mode auto`'s policy (None in the fixed modes).
    auto: Option<AutoPolicy>,
    /// When the fault answers already handed to the urgent stream will have crossed, at the
    /// measured link rate (mono ns): a fault before then sends no window (`method`).
    urgent_free_at_ns: u64,
}

/// Stale pages left after a drain above which they are named and drained again rather than
/// discarded in the downtime (a discard costs several microseconds).
const DRAIN_AGAIN_PAGES: u64 = 64;

impl std::fmt::Debug for SourceEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceEngine")
            .field("phase", &self.phase)
            .field("pending", &self.ledger.pending())
            .finish()
    }
}

impl SourceEngine {
    /// A source for `vm`, whose memory it reads while the guest runs, in the session the
    /// handshake opened (its mode, id and version override `cfg`'s).
    pub fn new(
        mut cfg: SourceConfig,
        session: &SessionParams,
        vm: &dyn MigratableVm,
    ) -> Result<Self, SourceError> {
        cfg.mode = session.mode;
        cfg.session_id = session.session_id;
        let memory = GuestPages::new(vm.regions())?;
        let layout = memory.layout().clone();
        let pages = layout.total_pages();
        let wire_regions = memory
            .regions()
            .iter()
            .map(|r| wire::Region { guest_phys: r.guest_phys, size_bytes: r.size_bytes })
            .collect();
        let block_pages = cfg.prepare_block_pages;
        let acks = AckLog::new(cfg.unacked_cap_pages);
        let min_pages = cfg.min_unacked_cap_pages();
        if cfg.unacked_cap_pages < min_pages {
            let cap_pages = cfg.unacked_cap_pages;
            return Err(SourceError::UnackedCapTooSmall { cap_pages, min_pages });
        }
        Ok(Self {
            window: AdaptiveWindow::new(cfg.window_pages),
            compression: CompressionChoice::new(cfg.compression),
            cfg,
            clock: Arc::new(MonoClock),
            memory,
            wire_regions,
            layout,
            limits: wire::Limits::default(),
            version: session.version,
            phase: Phase::Setup,
            ledger: PageLedger::new(pages),
            zero_scan: ZeroScan::new(pages, block_pages),
            push: PushScheduler::new(),
            outbox: Outbox::default(),
            stats: SourceStats::default(),
            rounds: Rounds::default(),
            live: LiveState::new(pages),
            switch: None,
            dirty_scratch: PageBitmap::new(pages),
            need_scratch: PageBitmap::new(pages),
            acks,
            push_from_ns: 0,
            done_digest: 0,
            recovery: None,
            bulk_answers: std::collections::VecDeque::new(),
            handed_over: false,
            dest_loaded: false,
            auto: None,
            urgent_free_at_ns: 0,
        })
    }

    /// Reads time from `clock` instead of CLOCK_MONOTONIC (the simulator's virtual clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The engine's clock, now.
    fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// True once the frame that lets the destination run the guest has been queued for
    /// sending (the `Run` command; the VmState with a version-2 peer). Before it, the source is authoritative: a failure cancels
    /// the migration and the source guest runs on. From it on, the destination may run the
    /// guest, so the source must never resume its own copy, whatever fails.
    pub fn handed_over(&self) -> bool {
        self.handed_over
    }

    /// True once DoneAck matched: the source VM may be released (never resumed).
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Counters so far.
    pub fn stats(&self) -> &SourceStats {
        &self.stats
    }

    /// The page layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Starts the migration in the session's mode. Call once, after both streams are up.
    pub fn start(&mut self, vm: &mut dyn MigratableVm) -> Result<(), SourceError> {
        self.stats.start_ns = self.now_ns();
        self.begin(vm)
    }

    /// Handles one frame received on `stream`.
    pub fn on_frame(
        &mut self,
        stream: StreamKind,
        frame: wire::Frame<'_>,
        _vm: &mut dyn MigratableVm,
    ) -> Result<(), SourceError> {
        match frame.body {
            wire::FrameBody::FaultRequest(req)
                if stream == StreamKind::Bulk && self.phase == Phase::Push =>
            {
                self.on_fault_retry(&req)
            }
            wire::FrameBody::FaultRequest(req) => self.on_fault_request(&req),
            wire::FrameBody::DoneAck(ack) => self.on_done_ack(&ack),
            wire::FrameBody::DirtySet(set) => self.on_missing(&set),
            wire::FrameBody::Control(c) if c.kind == wire::ControlKind::Resume => {
                self.on_report_end(c.value)
            }
            wire::FrameBody::Control(c) if c.kind == wire::ControlKind::Loaded => {
                self.on_loaded(c.value)
            }
            wire::FrameBody::Control(c) => {
                self.on_control(&c);
                Ok(())
            }
            other => Err(SourceError::UnexpectedFrame {
                stream,
                frame: other.frame_type(),
                phase: self.phase,
            }),
        }
    }

    /// Both streams are up: enter the mode's first phase.
    ///
    /// Pre-copy and hybrid read memory while the guest runs, so they turn the dirty log on;
    /// each block of memory is armed and scanned for zero pages just before its first page
    /// goes (`blocks`). Post-copy and hybrid-paper read nothing before the pause, so they
    /// need neither: the guest pauses at once, every page is in the need set, and the push
    /// finds the zero pages as it reads them (they cross as 2-bit entries).
    fn begin(&mut self, vm: &mut dyn MigratableVm) -> Result<(), SourceError> {
        tracing::info!(mode = %self.cfg.mode, version = self.version, "source: both streams up, migration starts");
        if self.cfg.mode == MigrationMode::Auto {
            self.auto = Some(AutoPolicy::start(self.stats.start_ns, self.now_ns()));
            self.sync_auto_decisions();
        }
        match self.method() {
            MigrationMode::Precopy => {
                self.start_dirty_log(vm)?;
                self.phase = Phase::Rounds;
                self.stats.rounds = self.rounds.start();
                self.ledger.queue_all();
            }
            MigrationMode::Hybrid | MigrationMode::Auto => {
                self.start_dirty_log(vm)?;
                self.arm_working_set(vm)?;
                self.phase = Phase::WorkingSet;
                self.record_ws();
                match self.cfg.live_pass {
                    LivePass::WorkingSet => {
                        self.queue_working_set(vm)?;
                        // The first pass is not judged against an earlier one.
                        self.live.end_ws_pass(u64::MAX, u64::MAX);
                    }
                    LivePass::All => {
                        self.ledger.queue_needed_except(&self.cfg.working_set);
                        self.live.open_cold();
                        self.begin_live_pass();
                    }
                }
            }
            MigrationMode::Postcopy | MigrationMode::HybridPaper => {
                self.record_ws();
                self.switch_over(vm)?;
            }
        }
        Ok(())
    }

    fn start_dirty_log(&mut self, vm: &mut dyn MigratableVm) -> Result<(), SourceError> {
        vm.start_dirty_log()?;
        self.harvest(vm) // clear anything logged before this instant
    }

    fn record_ws(&mut self) {
        self.stats.ws_pages = self.cfg.working_set.len() as u64;
        self.stats.ws_recall = recall(&self.cfg.working_set, &self.cfg.true_hot_set);
    }

    fn harvest(&mut self, vm: &mut dyn MigratableVm) -> Result<(), SourceError> {
        self.dirty_scratch.clear_all();
        vm.harvest_dirty(&mut self.dirty_scratch)?;
        Ok(())
    }

    /// Appends the next control-stream-ordered bulk frame to `out`; false when there is
    /// nothing to send now.
    pub fn poll_bulk(
        &mut self,
        out: &mut Vec<u8>,
        vm: &mut dyn MigratableVm,
    ) -> Result<bool, SourceError> {
        if let Some(error) = self.outbox.take_failure() {
            return Err(error);
        }
        if self.recovery.is_some() {
            return Ok(false); // what goes next depends on the destination's report
        }
        let before = out.len();
        let produced = match self.phase {
            Phase::Setup | Phase::AwaitDoneAck | Phase::Finished => false,
            Phase::Rounds | Phase::WorkingSet => {
                self.bulk_room() && self.poll_pre_switch(out, vm)?
            }
            Phase::SwitchOver => self.poll_switch(out, vm)?,
            Phase::Push => {
                self.poll_bulk_answer(out)? || (self.bulk_room() && self.poll_push(out)?)
            }
        };
        self.stats.bytes_bulk += (out.len() - before) as u64;
        Ok(produced)
    }

    /// Appends the next urgent frame (a whole fault answer) to `out`; false when none. The
    /// answer is encoded here, straight into `out`, from the outbox's entries: nothing is
    /// allocated per fault (`out` grows only while it is smaller than an answer). An answer
    /// that cannot be encoded is reported by the next `poll_bulk`.
    pub fn poll_urgent(&mut self, out: &mut Vec<u8>) -> bool {
        self.poll_answer(out, false)
    }

    /// Appends only the faulting page's frame of the next answer, when the next answer still
    /// has it; false otherwise. A driver that seals its frames sends it as a record of its
    /// own, so the vCPU's page is neither sealed nor opened behind its window; the next
    /// `poll_urgent` takes the window.
    pub fn poll_faulted_page(&mut self, out: &mut Vec<u8>) -> bool {
        self.poll_answer(out, true)
    }

    fn poll_answer(&mut self, out: &mut Vec<u8>, faulted_page_only: bool) -> bool {
        if self.recovery.is_some() {
            return false;
        }
        let before = out.len();
        let mut first_of_answer = true;
        loop {
            let next = match (faulted_page_only, first_of_answer) {
                (true, true) => self.outbox.next_faulted_page(),
                (true, false) => None,
                (false, first) => self.outbox.next_answer_run(first),
            };
            let Some(run) = next else { break };
            first_of_answer = false;
            if let Err(error) = self.encode_answer_run(out, run) {
                self.outbox.fail(error);
                break;
            }
        }
        let bytes = (out.len() - before) as u64;
        self.stats.bytes_urgent += bytes;
        self.on_urgent_encoded(bytes);
        bytes > 0
    }

    /// Tells the engine that `bytes` of bulk data left this host at `now_ns` (for the rate).
    pub fn on_bulk_sent(&mut self, bytes: u64, now_ns: u64) {
        self.compression.on_bulk_sent(bytes, now_ns);
    }

    /// Tells the engine that the driver waited `ns` with bulk frames to send and every bulk
    /// send buffer in the kernel: the link, not the loop, was the limit for that long. The
    /// compression policy learns the link's rate only from such waits.
    pub fn on_link_wait(&mut self, ns: u64) {
        self.compression.on_link_wait(ns);
    }

    fn poll_pre_switch(
        &mut self,
        out: &mut Vec<u8>,
        vm: &mut dyn MigratableVm,
    ) -> Result<bool, SourceError> {
        if self.phase == Phase::WorkingSet && !self.live.draining() {
            self.check_live_pass(vm)?;
        }
        if self.send_next_live(out, vm)? {
            return Ok(true);
        }
        if self.drain_pending() {
            return Ok(false);
        }
        // The phase's set is sent: look at what the guest dirtied meanwhile.
        self.harvest(vm)?;
        self.forget_dirty();
        let draining = self.live.draining();
        let phase = self.phase;
        match phase {
            Phase::Rounds if !draining && !self.precopy_should_stop() => {
                self.ledger.queue_dirty(&self.dirty_scratch);
                self.stats.rounds = self.rounds.next();
                Ok(self.send_next_live(out, vm)? || !self.ledger.pending_spans_nothing())
            }
            Phase::WorkingSet if self.live.cold_open() => {
                // Cold part done (pages dirtied during it are stale now and wait for the push,
                // the destination is told so now); the working set goes last, its written pages
                // at the very end.
                self.live.close_cold();
                self.send_invalidations(out)?;
                // Everything written during the cold part, not only since its last check.
                self.live.take_written(&mut self.dirty_scratch);
                self.queue_working_set(vm)?;
                if self.send_next_live(out, vm)? {
                    return Ok(true);
                }
                self.start_drain(out)
            }
            Phase::WorkingSet if !draining && self.working_set_again() => {
                self.auto_record_round();
                Ok(self.send_next_live(out, vm)? || !self.ledger.pending_spans_nothing())
            }
            _ if !draining => {
                // Stale copies the destination will drop anyway (hybrid, and a pre-copy that
                // goes post-copy) are named now, so the discards happen while the guest runs.
                // A converged pre-copy overwrites its stale pages in the downtime instead.
                if self.names_stale() {
                    self.send_invalidations(out)?;
                }
                self.start_drain(out)
            }
            _ if self.ledger.invalidations().count() > DRAIN_AGAIN_PAGES
                && self.names_stale()
                && self.live.may_drain_again() =>
            {
                // The guest dirtied many sent pages during the drain: discarding them on the
                // destination would sit in the downtime. Name them now and drain again; the
                // next drain is short (no page data queued), so fewer pages go stale in it.
                self.send_invalidations(out)?;
                self.start_drain(out)
            }
            _ => {
                // Hybrid re-sends the dirtied working-set pages after the pause: not here, or
                // the working set would be chased like a pre-copy round.
                self.switch_over(vm)?;
                self.poll_switch(out, vm)
            }
        }
    }

    /// Whether stale copies are named to the destination while the guest runs (it will drop
    /// them anyway): in hybrid, and in a pre-copy that goes post-copy (decided at the end of
    /// the last round).
    fn names_stale(&self) -> bool {
        self.phase == Phase::WorkingSet || self.rounds.fallback()
    }

    /// The pages in the dirty scratch set lose their copy on the destination (now stale) and
    /// their zero mark; returns how many copies went stale.
    fn forget_dirty(&mut self) -> u64 {
        let went_stale = self.ledger.forget_dirty(&self.dirty_scratch);
        self.stats.stale_pages += went_stale;
        went_stale
    }

    /// Pre-copy's stop rule at the end of a round (see [`Rounds::should_stop`]).
    fn precopy_should_stop(&mut self) -> bool {
        let limits = RoundLimits {
            rate_bytes_per_ms: self.compression.bytes_per_ms(),
            downtime_target_ms: self.cfg.downtime_target_ms,
            max_rounds: self.cfg.max_rounds,
        };
        let stop = self.rounds.should_stop(self.dirty_scratch.count(), limits);
        self.stats.precopy_fallback = self.rounds.fallback();
        stop
    }

    /// Pages sent so far (a page sent twice counts twice).
    pub fn pages_sent(&self) -> u64 {
        self.ledger.pages_sent()
    }

    fn enter_push(&mut self) {
        tracing::info!("source: state sent, destination resumes; push and fault service");
        self.phase = Phase::Push;
        self.switch = None;
        self.push_from_ns = self.now_ns() + self.cfg.push_delay_ms * 1_000_000;
        self.ledger.queue_needed();
        if self.method() == MigrationMode::Hybrid {
            // Stale working-set pages first, in rank order: the guest needs them right away.
            let ledger = &self.ledger;
            let first: Vec<u64> =
                self.cfg.working_set.iter().copied().filter(|&p| ledger.is_pending(p)).collect();
            self.push.set_priority(first);
        }
    }

    fn poll_push(&mut self, out: &mut Vec<u8>) -> Result<bool, SourceError> {
        if self.cfg.push_delay_ms > 0 && self.now_ns() < self.push_from_ns {
            return Ok(false); // held back: only fault answers go (the driver polls on its tick)
        }
        if self.send_next_pending(out)? {
            return Ok(true);
        }
        let done = wire::Done {
            pages: self.pages_sent(),
            bytes: self.stats.bytes_bulk + self.stats.bytes_urgent,
            memory_digest: self.ledger.digest(),
        };
        self.stats.memory_digest = done.memory_digest;
        wire::encode_frame(out, self.version, &wire::FrameBody::Done(done), &self.limits)?;
        self.done_digest = done.memory_digest;
        self.phase = Phase::AwaitDoneAck;
        Ok(true)
    }

    /// The next run of pending pages the push scheduler picks.
    fn next_pending_run(&mut self) -> Option<(u64, u32)> {
        let ledger = &self.ledger;
        self.push.next_run(ledger.pending(), ledger.zero(), &self.layout, self.cfg.push_pages)
    }

    /// Encodes the next run of `pending` pages; false when `pending` is empty.
    fn send_next_pending(&mut self, out: &mut Vec<u8>) -> Result<bool, SourceError> {
        let Some((first, count)) = self.next_pending_run() else {
            return Ok(false);
        };
        self.send_bulk_run(out, first, count)?;
        Ok(true)
    }

    /// Encodes pages `first..first+count` as one bulk window, marks them sent and tracks the
    /// window until it is acknowledged.
    fn send_bulk_run(
        &mut self,
        out: &mut Vec<u8>,
        first: u64,
        count: u32,
    ) -> Result<(), SourceError> {
        let (region, first_page) =
            self.layout.locate(first).ok_or(SourceError::PageOutOfRange { page: first })?;
        let meta = WindowMeta { region, first_page, request_id: 0, urgent_answer: false };
        let bytes =
            self.memory.pages(first, count).ok_or(SourceError::PageOutOfRange { page: first })?;
        // A fault answer is never a probe: a vCPU waits for it.
        let (compression, probe) = self.compression.for_bulk_run();
        let (started_ns, before) = (if probe { self.now_ns() } else { 0 }, out.len());
        let stats =
            wire::encode_page_window(out, self.version, &meta, bytes, compression, &self.limits)?;
        self.ledger.mark_sent(first, bytes);
        let guest_bytes = u64::from(count - stats.zero_pages) * PAGE_SIZE as u64;
        if probe {
            let elapsed_ns = self.now_ns() - started_ns;
            self.compression.on_probe(guest_bytes, (out.len() - before) as u64, elapsed_ns);
        }
        self.compression.add_bulk_guest_bytes(guest_bytes);
        self.count_encoded(&stats);
        self.track(StreamKind::Bulk, first, count);
        Ok(())
    }

    /// Counts the pages of an encoded window by how they went.
    fn count_encoded(&mut self, window: &wire::WindowStats) {
        self.stats.pages_zero += u64::from(window.zero_pages);
        self.stats.pages_raw += u64::from(window.raw_pages);
        self.stats.pages_lz4 += u64::from(window.lz4_pages);
    }

    /// Records a window sent on `stream` until the destination acknowledges it.
    fn track(&mut self, stream: StreamKind, first: u64, count: u32) {
        let unacked_now = self.acks.track(stream, first, count);
        self.stats.unacked_pages_max = self.stats.unacked_pages_max.max(unacked_now);
    }

    /// An acknowledgement (every window of stream `value` up to sequence `seq` arrived), or a
    /// Pong that ends the drain.
    fn on_control(&mut self, c: &wire::Control) {
        match c.kind {
            wire::ControlKind::Pong => {
                if let Some(drain_ms) = self.live.on_pong(c.seq, self.now_ns()) {
                    self.stats.drain_ms += drain_ms;
                }
            }
            wire::ControlKind::Ack => self.acks.on_ack(c.value, c.seq),
            _ => {}
        }
    }

    /// Whether a bulk window may go: not while the bulk pages not acknowledged are at
    /// [`SourceConfig::unacked_cap_pages`] (fault answers and the switch-over never wait).
    fn bulk_room(&mut self) -> bool {
        let room = self.acks.bulk_room();
        self.stats.unacked_cap_stalls = self.acks.stalls();
        room
    }

    /// Pages sent on `stream` and not yet acknowledged by the destination.
    pub fn unacked_pages(&self, stream: StreamKind) -> u64 {
        self.acks.unacked_pages(stream)
    }

    fn on_done_ack(&mut self, ack: &wire::DoneAck) -> Result<(), SourceError> {
        if self.phase != Phase::AwaitDoneAck {
            return Err(SourceError::UnexpectedFrame {
                stream: StreamKind::Bulk,
                frame: wire::FrameType::DoneAck,
                phase: self.phase,
            });
        }
        if ack.verdict != wire::DoneVerdict::Match || ack.counts.memory_digest != self.done_digest {
            return Err(SourceError::DigestMismatch {
                source_digest: self.done_digest,
                dest_digest: ack.counts.memory_digest,
            });
        }
        self.stats.finished_ns = self.now_ns();
        // Bulk windows all precede Done on their stream and the destination acknowledges them
        // before DoneAck, so none may be left. A fault answer can still be in flight on the
        // urgent stream for a page the push already delivered; DoneAck's digest covers it.
        self.stats.unacked_pages_at_end = self.unacked_pages(StreamKind::Bulk);
        tracing::info!(digest = self.done_digest, "source: DoneAck matched, source released");
        self.stats.lz4_used = self.compression.in_force() == wire::Compression::Lz4;
        self.phase = Phase::Finished;
        Ok(())
    }
}
