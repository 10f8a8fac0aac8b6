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

use super::config::{CompressionPolicy, LivePass, Phase, SourceConfig, SourceStats};
use super::policy::{lz4_worth, AdaptiveWindow, Lz4Check, Lz4Probe, RateMeter};
use super::push::PushScheduler;
use super::workingset::recall;
use super::SourceError;
use crate::memory::{Layout, PageBitmap, PAGE_SIZE};
use crate::ports::{memory_digest, zero_page_crc, Clock, GuestPages, MigratableVm, MonoClock};
use crate::session::SessionParams;
use crate::wire::{self, Compression, MigrationMode, StreamKind, WindowMeta};
use std::collections::VecDeque;
use std::sync::Arc;

mod blocks;
mod compress;
mod faults;
mod live;

pub use faults::window_around;

/// The source state machine. See the module docs.
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
    /// Pages whose current content the destination holds (or will, once in flight lands).
    valid: PageBitmap,
    /// What the current phase still has to send.
    pending: PageBitmap,
    /// Pages that were zero when scanned and not written since.
    zero: PageBitmap,
    /// Blocks of `cfg.prepare_block_pages` armed for the dirty log and scanned for untouched
    /// pages (one bit per block).
    prepared: PageBitmap,
    /// Scratch for the VMM's answer of which pages were never touched.
    untouched: PageBitmap,
    /// CRC32 of each page's content as last sent (zero pages: the zero CRC).
    page_crc: Vec<u32>,
    push: PushScheduler,
    urgent_out: VecDeque<Vec<u8>>,
    control_out: VecDeque<Vec<u8>>,
    rate: RateMeter,
    compression: Compression,
    stats: SourceStats,
    round_started_ns: u64,
    round_bytes: u64,
    switch_queue: VecDeque<SwitchItem>,
    dirty_scratch: PageBitmap,
    /// The need set, built in the switch-over into memory allocated (and faulted in) up front.
    need_scratch: PageBitmap,
    /// The auto compression policy's measurements.
    lz4_probe: Lz4Probe,
    /// The auto compression policy's trial of lz4 against the raw rate.
    lz4_check: Lz4Check,
    /// Non-zero guest bytes encoded on bulk since the last `on_bulk_sent` (for the rate).
    bulk_guest_bytes: u64,
    /// Hybrid: working-set pages found written at the end of the previous live pass.
    prev_ws_dirty: u64,
    /// Hybrid: pages outside the working set found stale at the end of the previous live pass.
    prev_stale_outside: u64,
    /// Hybrid's live pass: pages sent at its last dirty-log check.
    live_check: LiveCheck,
    /// Hybrid's live pass: pages the dirty-log checks found written since the pass began (the
    /// end of the pass adds them to what it harvests).
    pass_written: PageBitmap,
    /// Pre-copy: dirty pages found at the end of the previous round.
    prev_round_dirty: u64,
    /// Pages the destination holds a stale copy of and has not been told about yet (hybrid's
    /// live pass tells it before the pause, so the discards stay out of the downtime).
    invalidate: PageBitmap,
    window: AdaptiveWindow,
    /// Windows sent and not yet acknowledged, per stream: (sequence number, first page,
    /// count). A connection lost in post-copy is resumed by re-sending exactly these.
    unacked: [VecDeque<(u64, u64, u32)>; 2],
    /// Windows sent per stream (the next sequence number is this + 1).
    windows_sent: [u64; 2],
    /// Pages in `unacked`, both streams.
    unacked_pages_now: u64,
    /// Hybrid with [`LivePass::All`]: the cold part of the live pass is still being sent (the
    /// working set follows it).
    cold_pass_open: bool,
    /// The drain before the pause: when the Ping went out, and whether its Pong came back.
    drain: Option<Drain>,
    /// When the push may start (mono ns; see [`SourceConfig::push_delay_ms`]).
    push_from_ns: u64,
}

/// The wait, before the pause, for the destination to take in the live data in flight.
#[derive(Debug, Clone, Copy)]
struct Drain {
    /// Sequence number of this drain's Ping (1 for the first, then 2, 3).
    seq: u64,
    since_ns: u64,
    confirmed: bool,
}

/// Where the last dirty-log check of hybrid's live pass was, and the size of the pass.
#[derive(Debug, Clone, Copy, Default)]
struct LiveCheck {
    /// Pages sent (all phases) at the last check.
    sent_at: u64,
    /// Pages the destination held fresh copies of right after the last check.
    valid_at: u64,
    /// Pages the current live pass set out to send.
    pass_pages: u64,
}

/// Drains before the pause at most: one, then one more while the guest dirtied more than
/// [`DRAIN_AGAIN_PAGES`] stale pages during the previous one.
const MAX_DRAINS: u64 = 3;
/// Stale pages left after a drain above which they are named and drained again rather than
/// discarded in the downtime (a discard costs several microseconds on this host).
const DRAIN_AGAIN_PAGES: u64 = 64;

/// What a run of pages is sent for: it sets the window's flags and whether it may be an lz4
/// probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunKind {
    /// Rounds, live pass, switch-over pages and the push.
    Bulk,
    /// The page a vCPU faulted on, answering the request `request_id`.
    FaultPage { request_id: u32 },
    /// The rest of a fault's window, on the urgent stream behind the faulting page.
    FaultWindow,
}

/// What remains to be emitted during the switch-over, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SwitchItem {
    /// Pages in `pending` (pre-copy's last dirty set, hybrid-paper's working set).
    Pages,
    /// The need set, one DirtySet frame per region.
    NeedSet,
    /// The VmState blob.
    State,
}

impl std::fmt::Debug for SourceEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceEngine")
            .field("phase", &self.phase)
            .field("pending", &self.pending)
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
        let compression = match cfg.compression {
            CompressionPolicy::On => Compression::Lz4,
            _ => Compression::None,
        };
        let block_pages = cfg.prepare_block_pages.max(1);
        Ok(Self {
            window: AdaptiveWindow::new(cfg.window_pages),
            cfg,
            clock: Arc::new(MonoClock),
            memory,
            wire_regions,
            layout,
            limits: wire::Limits::default(),
            version: session.version,
            phase: Phase::Setup,
            valid: PageBitmap::new(pages),
            pending: PageBitmap::new(pages),
            zero: PageBitmap::new(pages),
            prepared: PageBitmap::new(pages.div_ceil(block_pages)),
            untouched: PageBitmap::new(pages),
            page_crc: vec![zero_page_crc(); pages as usize],
            push: PushScheduler::new(),
            urgent_out: VecDeque::new(),
            control_out: VecDeque::new(),
            rate: RateMeter::default(),
            compression,
            stats: SourceStats::default(),
            round_started_ns: 0,
            round_bytes: 0,
            switch_queue: VecDeque::new(),
            dirty_scratch: PageBitmap::new(pages),
            need_scratch: PageBitmap::new(pages),
            invalidate: PageBitmap::new(pages),
            prev_round_dirty: 0,
            live_check: LiveCheck::default(),
            pass_written: PageBitmap::new(pages),
            prev_ws_dirty: u64::MAX,
            prev_stale_outside: u64::MAX,
            lz4_probe: Lz4Probe::default(),
            lz4_check: Lz4Check::default(),
            bulk_guest_bytes: 0,
            push_from_ns: 0,
            unacked: [VecDeque::new(), VecDeque::new()],
            windows_sent: [0; 2],
            unacked_pages_now: 0,
            cold_pass_open: false,
            drain: None,
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
            wire::FrameBody::FaultRequest(req) => self.on_fault_request(&req),
            wire::FrameBody::DoneAck(ack) => self.on_done_ack(&ack),
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
        self.round_started_ns = self.now_ns();
        match self.cfg.mode {
            MigrationMode::Precopy => {
                self.start_dirty_log(vm)?;
                self.phase = Phase::Rounds;
                self.stats.rounds = 1;
                self.pending = PageBitmap::full(self.layout.total_pages());
            }
            MigrationMode::Hybrid => {
                self.start_dirty_log(vm)?;
                self.arm_working_set(vm)?;
                self.phase = Phase::WorkingSet;
                self.record_ws();
                match self.cfg.live_pass {
                    LivePass::WorkingSet => {
                        self.queue_working_set(vm)?;
                        self.prev_ws_dirty = u64::MAX;
                        self.stats.ws_passes = 1;
                    }
                    LivePass::All => {
                        self.pending = self.needed();
                        for &page in &self.cfg.working_set {
                            self.pending.clear(page);
                        }
                        self.cold_pass_open = true;
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
        if let Some(frame) = self.control_out.pop_front() {
            self.stats.bytes_bulk += frame.len() as u64;
            out.extend_from_slice(&frame);
            return Ok(true);
        }
        let before = out.len();
        let produced = match self.phase {
            Phase::Setup | Phase::AwaitDoneAck | Phase::Finished => false,
            Phase::Rounds | Phase::WorkingSet => self.poll_pre_switch(out, vm)?,
            Phase::SwitchOver => self.poll_switch(out, vm)?,
            Phase::Push => self.poll_push(out)?,
        };
        let added = (out.len() - before) as u64;
        self.stats.bytes_bulk += added;
        self.round_bytes += added;
        Ok(produced)
    }

    /// Appends the next urgent frame (fault answers) to `out`; false when none.
    pub fn poll_urgent(&mut self, out: &mut Vec<u8>) -> bool {
        match self.urgent_out.pop_front() {
            Some(frame) => {
                self.stats.bytes_urgent += frame.len() as u64;
                out.extend_from_slice(&frame);
                true
            }
            None => false,
        }
    }

    fn poll_pre_switch(
        &mut self,
        out: &mut Vec<u8>,
        vm: &mut dyn MigratableVm,
    ) -> Result<bool, SourceError> {
        if self.phase == Phase::WorkingSet && self.drain.is_none() {
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
        let phase = self.phase;
        match phase {
            Phase::Rounds if self.drain.is_none() && !self.precopy_should_stop() => {
                self.pending.union_with(&self.dirty_scratch);
                self.stats.rounds += 1;
                self.round_started_ns = self.now_ns();
                self.round_bytes = 0;
                Ok(self.send_next_live(out, vm)? || !self.pending.is_empty())
            }
            Phase::WorkingSet if self.cold_pass_open => {
                // Cold part done (pages dirtied during it are stale now and wait for the push,
                // the destination is told so now); the working set goes last, its written pages
                // at the very end.
                self.cold_pass_open = false;
                self.send_invalidations(out)?;
                // Everything written during the cold part, not only since its last check.
                self.dirty_scratch.union_with(&self.pass_written);
                self.pass_written.clear_all();
                self.queue_working_set(vm)?;
                self.stats.ws_passes = 1;
                if self.send_next_live(out, vm)? {
                    return Ok(true);
                }
                self.start_drain(out)
            }
            Phase::WorkingSet if self.drain.is_none() && self.working_set_again() => {
                Ok(self.send_next_live(out, vm)? || !self.pending.is_empty())
            }
            _ if self.drain.is_none() => {
                // Stale copies the destination will drop anyway (hybrid, and a pre-copy that
                // goes post-copy) are named now, so the discards happen while the guest runs.
                // A converged pre-copy overwrites its stale pages in the downtime instead.
                if self.phase == Phase::WorkingSet || self.stats.precopy_fallback {
                    self.send_invalidations(out)?;
                }
                self.start_drain(out)
            }
            _ if self.invalidate.count() > DRAIN_AGAIN_PAGES
                && (self.phase == Phase::WorkingSet || self.stats.precopy_fallback)
                && self.drain.is_some_and(|d| d.seq < MAX_DRAINS) =>
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

    /// Removes pages in the dirty scratch set from `valid` (their copy on the destination is
    /// stale) and from `zero`.
    fn forget_dirty(&mut self) {
        for page in self.dirty_scratch.iter_ones() {
            if self.valid.clear(page) {
                self.stats.stale_pages += 1;
                self.invalidate.set(page);
            }
            self.zero.clear(page);
        }
    }

    /// Pre-copy's stop rule, called once at the end of each round. It stops when the dirty
    /// pages fit the downtime target (converged), when a round left at least 90% as many dirty
    /// pages as the one before it (the guest dirties as fast as the link carries: more rounds
    /// only resend), or at `max_rounds`. Without convergence the switch-over goes post-copy.
    fn precopy_should_stop(&mut self) -> bool {
        let dirty = self.dirty_scratch.count();
        let dirty_bytes = dirty as f64 * PAGE_SIZE as f64;
        let rate = self.rate.bytes_per_ms().max(1.0);
        let fits = dirty_bytes / rate <= self.cfg.downtime_target_ms;
        let stalled = self.stats.rounds >= 2 && dirty * 10 >= self.prev_round_dirty * 9;
        tracing::debug!(
            round = self.stats.rounds,
            dirty_pages = dirty,
            prev_dirty_pages = self.prev_round_dirty,
            rate_bytes_per_ms = rate,
            fits,
            stalled,
            "source: pre-copy round ended"
        );
        self.prev_round_dirty = dirty;
        self.stats.precopy_fallback = !fits;
        if !fits && (stalled || self.stats.rounds >= self.cfg.max_rounds) {
            tracing::info!(
                rounds = self.stats.rounds,
                dirty_pages = dirty,
                stalled,
                "source: pre-copy does not converge; the rest goes post-copy"
            );
        }
        fits || stalled || self.stats.rounds >= self.cfg.max_rounds
    }

    /// Pauses the guest and queues what must precede the destination's resume.
    fn switch_over(&mut self, vm: &mut dyn MigratableVm) -> Result<(), SourceError> {
        let latency = vm.pause()?;
        self.stats.pause_ns = self.now_ns();
        tracing::info!(
            rounds = self.stats.rounds,
            pause_latency_us = latency.as_micros() as u64,
            "source: guest paused, switch-over"
        );
        self.stats.pause_latency_ms = latency.as_secs_f64() * 1e3;
        self.harvest(vm)?;
        self.forget_dirty();
        self.phase = Phase::SwitchOver;
        self.pending.clear_all();
        self.switch_queue.clear();
        match self.cfg.mode {
            MigrationMode::Precopy if self.stats.precopy_fallback => {
                // No convergence: what is still dirty would not fit the downtime, so it goes
                // post-copy (need set, state, then faults and the push), not stop-and-copy.
                self.switch_queue.extend([SwitchItem::NeedSet, SwitchItem::State]);
            }
            MigrationMode::Precopy => {
                // Every page not valid on the destination goes now, in the downtime.
                self.pending.assign_neither(&self.valid, &self.zero);
                self.switch_queue.extend([
                    SwitchItem::Pages,
                    SwitchItem::NeedSet,
                    SwitchItem::State,
                ]);
            }
            MigrationMode::HybridPaper => {
                for &page in &self.cfg.working_set {
                    self.pending.set(page);
                }
                self.switch_queue.extend([
                    SwitchItem::NeedSet,
                    SwitchItem::Pages,
                    SwitchItem::State,
                ]);
            }
            MigrationMode::Postcopy => {
                self.switch_queue.extend([SwitchItem::NeedSet, SwitchItem::State]);
            }
            MigrationMode::Hybrid => {
                // The hottest stale working-set pages go again in the downtime, as many as a
                // quarter of the downtime target carries at the measured rate: the guest touches them first
                // after the resume, so each one sent now is a network fault saved. The rest are
                // dropped on the destination and pushed first after the resume.
                let budget = self.downtime_page_budget();
                for page in self.stale_working_set().into_iter().take(budget) {
                    self.pending.set(page);
                }
                self.switch_queue.extend([
                    SwitchItem::Pages,
                    SwitchItem::NeedSet,
                    SwitchItem::State,
                ]);
            }
        }
        Ok(())
    }

    /// Working-set pages, in rank order, whose copy on the destination is stale or missing.
    fn stale_working_set(&self) -> Vec<u64> {
        let (valid, zero) = (&self.valid, &self.zero);
        self.cfg.working_set.iter().copied().filter(|&p| !valid.get(p) && !zero.get(p)).collect()
    }

    /// Pages that a quarter of the downtime target carries at the measured bulk rate (0 before
    /// any rate is known). A quarter, because the rate is measured where the ring hands data to
    /// the kernel, which runs ahead of the wire, and the need set, the state and the resume
    /// take their share of the downtime too.
    fn downtime_page_budget(&self) -> usize {
        let bytes = self.rate.bytes_per_ms() * self.cfg.downtime_target_ms / 4.0;
        (bytes / PAGE_SIZE as f64) as usize
    }

    /// Pages the destination does not hold and that are not known zero.
    fn needed(&self) -> PageBitmap {
        PageBitmap::in_neither(&self.valid, &self.zero)
    }

    fn poll_switch(
        &mut self,
        out: &mut Vec<u8>,
        vm: &mut dyn MigratableVm,
    ) -> Result<bool, SourceError> {
        while let Some(item) = self.switch_queue.front().copied() {
            match item {
                SwitchItem::Pages => {
                    let before = self.pages_sent();
                    if self.send_next_pending(out)? {
                        self.stats.pages_in_downtime += self.pages_sent() - before;
                        return Ok(true);
                    }
                }
                SwitchItem::NeedSet => {
                    self.encode_need_set(out)?;
                    self.switch_queue.pop_front();
                    return Ok(true);
                }
                SwitchItem::State => {
                    let blob = vm.save_state()?;
                    wire::encode_frame(
                        out,
                        self.version,
                        &wire::FrameBody::VmState(&blob),
                        &self.limits,
                    )?;
                    self.stats.state_sent_ns = self.now_ns();
                    self.switch_queue.pop_front();
                    self.enter_push();
                    return Ok(true);
                }
            }
            self.switch_queue.pop_front();
        }
        Ok(false)
    }

    /// Pages sent so far (a page sent twice counts twice).
    pub fn pages_sent(&self) -> u64 {
        self.stats.pages_zero + self.stats.pages_raw + self.stats.pages_lz4
    }

    /// The need set: pages that are neither valid on the destination nor zero (and, for
    /// hybrid-paper, not about to be sent in the downtime: those are still listed, since the
    /// destination marks them present as they arrive).
    fn encode_need_set(&mut self, out: &mut Vec<u8>) -> Result<(), SourceError> {
        self.need_scratch.assign_neither(&self.valid, &self.zero);
        self.stats.need_pages = self.need_scratch.count();
        self.encode_dirty_sets(out, &self.need_scratch, false)
    }

    /// One DirtySet frame per region of `pages` (regions with no page in it are left out when
    /// `skip_empty`; the need set names every region, so the destination knows it is whole).
    fn encode_dirty_sets(
        &self,
        out: &mut Vec<u8>,
        pages: &PageBitmap,
        skip_empty: bool,
    ) -> Result<(), SourceError> {
        for (index, span) in self.layout.regions().iter().enumerate() {
            let words = region_words(pages, span.first_page, span.pages());
            if skip_empty && words.iter().all(|&w| w == 0) {
                continue;
            }
            wire::encode_dirty_set(
                out,
                self.version,
                index as u32,
                &words,
                span.pages(),
                &self.limits,
            )?;
        }
        Ok(())
    }

    fn enter_push(&mut self) {
        tracing::info!("source: state sent, destination resumes; push and fault service");
        self.phase = Phase::Push;
        self.push_from_ns = self.now_ns() + self.cfg.push_delay_ms * 1_000_000;
        self.pending.assign_neither(&self.valid, &self.zero);
        if self.cfg.mode == MigrationMode::Hybrid {
            // Stale working-set pages first, in rank order: the guest needs them right away.
            let pending = &self.pending;
            let first: Vec<u64> =
                self.cfg.working_set.iter().copied().filter(|&p| pending.get(p)).collect();
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
            memory_digest: memory_digest(&self.page_crc),
        };
        self.stats.memory_digest = done.memory_digest;
        wire::encode_frame(out, self.version, &wire::FrameBody::Done(done), &self.limits)?;
        self.phase = Phase::AwaitDoneAck;
        Ok(true)
    }

    /// Encodes the next run of `pending` pages; false when `pending` is empty.
    fn send_next_pending(&mut self, out: &mut Vec<u8>) -> Result<bool, SourceError> {
        let Some((first, count)) =
            self.push.next_run(&self.pending, &self.zero, &self.layout, self.cfg.push_pages)
        else {
            return Ok(false);
        };
        self.send_run(out, first, count, RunKind::Bulk)?;
        self.track(StreamKind::Bulk, first, count);
        Ok(true)
    }

    /// Encodes pages `first..first+count` as one window and marks them sent.
    fn send_run(
        &mut self,
        out: &mut Vec<u8>,
        first: u64,
        count: u32,
        kind: RunKind,
    ) -> Result<(), SourceError> {
        let (region, page_in_region) =
            self.layout.locate(first).ok_or(SourceError::PageOutOfRange { page: first })?;
        let (request_id, urgent_answer) = match kind {
            RunKind::FaultPage { request_id } => (request_id, true),
            RunKind::Bulk | RunKind::FaultWindow => (0, false),
        };
        let meta = WindowMeta { region, first_page: page_in_region, request_id, urgent_answer };
        let bytes =
            self.memory.pages(first, count).ok_or(SourceError::PageOutOfRange { page: first })?;
        // Under the auto policy every LZ4_PROBE_EVERY-th bulk window goes lz4 and is timed,
        // which gives the compressor's rate and ratio on this guest's data. A fault answer is
        // never a probe: a vCPU waits for it.
        let probe = kind == RunKind::Bulk
            && self.cfg.compression == CompressionPolicy::Auto
            && self.lz4_probe.due();
        let compression = if probe { Compression::Lz4 } else { self.compression };
        let (started_ns, before) = (if probe { self.now_ns() } else { 0 }, out.len());
        let stats =
            wire::encode_page_window(out, self.version, &meta, bytes, compression, &self.limits)?;
        for (i, page) in bytes.chunks_exact(PAGE_SIZE).enumerate() {
            self.page_crc[first as usize + i] = crc32fast::hash(page);
        }
        if probe {
            let input = u64::from(count - stats.zero_pages) * PAGE_SIZE as u64;
            self.lz4_probe.record(input, (out.len() - before) as u64, self.now_ns() - started_ns);
            self.pick_compression();
        }
        for page in first..first + u64::from(count) {
            self.pending.clear(page);
            self.valid.set(page);
            // Fresh again on the destination: a later invalidation must not drop this copy.
            self.invalidate.clear(page);
        }
        if kind == RunKind::Bulk {
            self.bulk_guest_bytes += u64::from(count - stats.zero_pages) * PAGE_SIZE as u64;
        }
        self.stats.pages_zero += u64::from(stats.zero_pages);
        self.stats.pages_raw += u64::from(stats.raw_pages);
        self.stats.pages_lz4 += u64::from(stats.lz4_pages);
        Ok(())
    }

    /// Records a window sent on `stream` until the destination acknowledges it.
    fn track(&mut self, stream: StreamKind, first: u64, count: u32) {
        let i = stream.index();
        self.windows_sent[i] += 1;
        self.unacked[i].push_back((self.windows_sent[i], first, count));
        self.unacked_pages_now += u64::from(count);
        self.stats.unacked_pages_max = self.stats.unacked_pages_max.max(self.unacked_pages_now);
    }

    /// An acknowledgement: every window of stream `value` up to sequence `seq` arrived.
    fn on_control(&mut self, c: &wire::Control) {
        if c.kind == wire::ControlKind::Pong {
            // A late Pong of an earlier drain that timed out confirms nothing.
            let now_ns = self.now_ns();
            if let Some(d) = self.drain.as_mut().filter(|d| d.seq == c.seq && !d.confirmed) {
                d.confirmed = true;
                self.stats.drain_ms += now_ns.saturating_sub(d.since_ns) as f64 / 1e6;
            }
            return;
        }
        if c.kind != wire::ControlKind::Ack {
            return;
        }
        if let Some(log) = self.unacked.get_mut(c.value as usize) {
            while let Some(&(seq, _, count)) = log.front() {
                if seq > c.seq {
                    break;
                }
                log.pop_front();
                self.unacked_pages_now -= u64::from(count);
            }
        }
    }

    /// Pages sent on `stream` and not yet acknowledged by the destination.
    pub fn unacked_pages(&self, stream: StreamKind) -> u64 {
        self.unacked[stream.index()].iter().map(|&(_, _, n)| u64::from(n)).sum()
    }

    fn on_done_ack(&mut self, ack: &wire::DoneAck) -> Result<(), SourceError> {
        if self.phase != Phase::AwaitDoneAck {
            return Err(SourceError::UnexpectedFrame {
                stream: StreamKind::Bulk,
                frame: wire::FrameType::DoneAck,
                phase: self.phase,
            });
        }
        if ack.verdict != wire::DoneVerdict::Match
            || ack.counts.memory_digest != self.stats.memory_digest
        {
            return Err(SourceError::DigestMismatch {
                source_digest: self.stats.memory_digest,
                dest_digest: ack.counts.memory_digest,
            });
        }
        self.stats.finished_ns = self.now_ns();
        // Bulk windows all precede Done on their stream and the destination acknowledges them
        // before DoneAck, so none may be left. A fault answer can still be in flight on the
        // urgent stream for a page the push already delivered; DoneAck's digest covers it.
        self.stats.unacked_pages_at_end = self.unacked_pages(StreamKind::Bulk);
        tracing::info!(
            digest = self.stats.memory_digest,
            "source: DoneAck matched, source released"
        );
        self.stats.lz4_used = self.compression == Compression::Lz4;
        self.phase = Phase::Finished;
        Ok(())
    }
}

/// The words of `bitmap` for pages `first..first+pages`, re-based to 0 (KVM layout).
fn region_words(bitmap: &PageBitmap, first: u64, pages: u64) -> std::borrow::Cow<'_, [u64]> {
    let src = bitmap.words();
    let (at, shift) = ((first / 64) as usize, (first % 64) as u32);
    if shift == 0 && pages % 64 == 0 && at + (pages / 64) as usize <= src.len() {
        // A region on whole words (every KVM slot of a guest built here): the words as they
        // are, with no copy and no fresh allocation inside the downtime.
        return std::borrow::Cow::Borrowed(&src[at..at + (pages / 64) as usize]);
    }
    // Word by word (shifted when the region does not start on a word): the need set of a
    // 4 GiB post-copy holds a million pages, and it is built inside the downtime.
    let word = |j: usize| src.get(j).copied().unwrap_or(0);
    let mut words: Vec<u64> = (0..pages.div_ceil(64) as usize)
        .map(|i| {
            let low = word(at + i) >> shift;
            if shift == 0 {
                low
            } else {
                low | word(at + i + 1) << (64 - shift)
            }
        })
        .collect();
    if pages % 64 != 0 {
        if let Some(last) = words.last_mut() {
            *last &= (1u64 << (pages % 64)) - 1; // bits past the region belong to the next one
        }
    }
    std::borrow::Cow::Owned(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_words_rebase() {
        let mut b = PageBitmap::new(200);
        b.set(100);
        b.set(130);
        b.set(199);
        assert_eq!(region_words(&b, 100, 64), vec![1 | 1 << 30]);
        assert_eq!(region_words(&b, 64, 136), vec![1 << 36, 1 << 2, 1 << 7]);
        // A region that ends mid-word does not take the next region's bits.
        assert_eq!(region_words(&b, 90, 20), vec![1 << 10]);
        assert_eq!(region_words(&b, 0, 100), vec![0, 0]);
    }

    #[test]
    fn region_words_match_a_bit_by_bit_copy() {
        let mut b = PageBitmap::new(1000);
        for p in (0..1000).filter(|p| (p * 7919) % 13 < 5) {
            b.set(p);
        }
        // Aligned spans (borrowed as they are) and unaligned ones (copied, shifted).
        for (first, pages) in
            [(0, 1000), (3, 997), (64, 500), (129, 300), (999, 1), (0, 960), (128, 832)]
        {
            let words = region_words(&b, first, pages);
            let aligned = first % 64 == 0 && pages % 64 == 0;
            assert_eq!(matches!(words, std::borrow::Cow::Borrowed(_)), aligned);
            for local in 0..pages {
                let bit = words[(local / 64) as usize] >> (local % 64) & 1 == 1;
                assert_eq!(bit, b.get(first + local), "first {first} page {local}");
            }
        }
    }
}
