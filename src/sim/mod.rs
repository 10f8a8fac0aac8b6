//! The seeded simulation driver: both engines, a synthetic guest and [`SimNet`] in one
//! process, on a virtual clock.
//!
//! This sits *beside* the real paths (KVM, userfaultfd, io_uring, TCP): it drives the very
//! same [`SourceEngine`] and [`DestEngine`], but the guest is a deterministic program over a
//! byte array ([`SimVm`]), the network is [`SimNet`] (loss, delay, reordering, disconnects,
//! corruption), and time is a [`VirtualClock`] both engines read. A run is a function of its
//! [`SimRun`]: the same spec gives the same event trace, whose hash ([`TraceHash`]) the outcome
//! carries. [`seeds`] turns a seed into a spec from a mix of modes, guests and link faults, and
//! runs many; a failure names its seed and the command that replays it.
//!
//! Each run is checked against an unmigrated run of the same guest, byte for byte, and for the
//! invariants in [`SimOutcome::check`]: no page placed twice, every fault answered, the bytes
//! held on the link within a stated bound.

mod guest;
mod recovery;
pub mod seeds;
mod sides;
mod trace;

pub use guest::{SimGuestSpec, SimVm};
pub use trace::{TraceHash, TraceKind};

use crate::dest::{DestEngine, DestError, DestEvent, DestPhase};
use crate::driver::schedule;
use crate::memory::{PageBitmap, PAGE_SIZE};
use crate::ports::{
    layout_of, DestVm, EmbedError, MigratableVm, PageSink, SinkError, VirtualClock,
};
use crate::session::{FrameGate, Role};
use crate::source::{LivePass, SourceConfig, SourceEngine, SourceError};
use crate::transport::sim::{Side, SimEvent, SimFaults, SimNet};
use crate::wire::{FrameReader, FrameType, Limits, MigrationMode, StreamKind};
use recovery::{open_session, RECONNECT_US};
use sides::{DestTurn, SourceTurn};
use std::sync::Arc;

/// Errors of a simulated migration (typed, like the real ones).
#[derive(Debug, thiserror::Error)]
pub enum SimRunError {
    /// The source engine failed.
    #[error("source: {0}")]
    Source(#[from] SourceError),
    /// The destination engine failed.
    #[error("destination: {0}")]
    Dest(#[from] DestError),
    /// A frame did not decode.
    #[error("{side:?} received a bad frame on {stream:?}: {source}")]
    Wire {
        /// Receiving side.
        side: Side,
        /// Stream.
        stream: StreamKind,
        /// The decoder's error.
        source: crate::wire::WireError,
    },
    /// The simulated link dropped.
    #[error("the link dropped at {at_us} us")]
    Disconnected {
        /// Virtual time of the drop.
        at_us: u64,
    },
    /// The run did not finish within its step budget.
    #[error("no progress: stuck after {steps} steps (source {source_phase:?}, destination {dest_phase:?})")]
    Stuck {
        /// Loop iterations.
        steps: u64,
        /// Source phase.
        source_phase: crate::source::Phase,
        /// Destination phase.
        dest_phase: DestPhase,
    },
}

/// A run that finished but broke one of the simulator's checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimCheckError {
    /// The destination's memory or guest state differs from the unmigrated run's.
    #[error("digest mismatch: the destination's guest differs from the unmigrated run")]
    DigestMismatch,
    /// The destination engine asked the sink to place a page that was already present.
    #[error("{pages} page(s) placed twice (first: page {first})")]
    PlacedTwice {
        /// How many placements hit a present page.
        pages: u64,
        /// The first such page.
        first: u64,
    },
    /// A page a vCPU faulted on was still missing when the migration ended.
    #[error("{pages} fault(s) never answered (first: page {first})")]
    UnansweredFault {
        /// How many faulted pages stayed missing.
        pages: u64,
        /// The first of them.
        first: u64,
    },
    /// The link held more bytes at once than the bound allows.
    #[error("the link held {peak_bytes} bytes at once, over the bound of {bound_bytes}")]
    MemoryBound {
        /// The peak.
        peak_bytes: u64,
        /// The bound (guest memory plus [`LINK_SLACK_BYTES`]).
        bound_bytes: u64,
    },
    /// Bulk pages the source sent and the destination never acknowledged.
    #[error("{pages} bulk page(s) never acknowledged")]
    Unacknowledged {
        /// The count.
        pages: u64,
    },
}

/// A fault planted in the simulated link to prove the checks catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    /// The link silently drops the `nth` PageWindow frame the source sends on bulk (0-based).
    DropPageWindow {
        /// Which window.
        nth: u64,
    },
}

/// One simulated migration's set-up.
#[derive(Debug, Clone)]
pub struct SimRun {
    /// Mode to migrate in.
    pub mode: MigrationMode,
    /// The guest.
    pub guest: SimGuestSpec,
    /// Guest steps before the migration starts.
    pub steps_before: u64,
    /// Guest steps in all.
    pub steps_total: u64,
    /// The link's faults.
    pub faults: SimFaults,
    /// Seed of the link.
    pub seed: u64,
    /// Hybrid's live pass.
    pub live_pass: LivePass,
    /// Pages of a background window the destination places per loop turn once the guest
    /// runs, as the io_uring driver does between looks for faults (0: whole windows).
    pub place_chunk_pages: u32,
    /// Both sides stop reading for a while: (start, duration) in virtual microseconds.
    pub stall_us: Option<(u64, u64)>,
    /// A planted fault (tests of the checks only).
    pub plant: Option<Plant>,
    /// The source's cap on unacknowledged bulk pages at its smallest allowed value, so that
    /// the push, the rounds and the live pass keep stopping for acknowledgements.
    pub tight_unacked_cap: bool,
}

impl Default for SimRun {
    fn default() -> Self {
        Self {
            mode: MigrationMode::Hybrid,
            guest: SimGuestSpec::default(),
            steps_before: 3_000,
            steps_total: 20_000,
            faults: SimFaults::default(),
            seed: 1,
            live_pass: LivePass::All,
            place_chunk_pages: 0,
            stall_us: None,
            plant: None,
            tight_unacked_cap: false,
        }
    }
}

/// What a finished simulated migration reports.
#[derive(Debug, Clone, Default)]
pub struct SimOutcome {
    /// True when memory and guest state equal the unmigrated run's.
    pub exact: bool,
    /// Faults that went over the (simulated) network.
    pub network_faults: u64,
    /// Virtual time the migration took (us).
    pub total_us: u64,
    /// Stale pages dropped on the destination.
    pub pages_discarded: u64,
    /// Bulk pages the source sent that the destination never acknowledged (must be 0).
    pub unacked_pages: u64,
    /// Hybrid: pages outside the working set sent again before the pause (stale after the
    /// cold part).
    pub stale_repass_pages: u64,
    /// Hash of the event trace: equal for equal specs.
    pub trace_hash: u64,
    /// Events in the trace.
    pub trace_events: u64,
    /// Placements that hit an already-present page, and the first such page.
    pub placed_twice: (u64, u64),
    /// Faulted pages still missing at the end, and the first of them.
    pub unanswered: (u64, u64),
    /// Most bytes in flight on the link at once.
    pub peak_link_bytes: u64,
    /// Guest memory in bytes (the memory bound's base).
    pub guest_bytes: u64,
    /// New connections that replaced a lost one (each disconnect, or refused frame, one).
    pub recoveries: u64,
    /// Frames the codec refused (a corrupted CRC), each of which broke its connection.
    pub frames_refused: u64,
    /// Pages the source sent again after a recovery report.
    pub pages_resent: u64,
    /// Fault requests the destination asked again on bulk.
    pub fault_retries: u64,
    /// Times the source's bulk windows stopped at its unacknowledged-page cap.
    pub unacked_cap_stalls: u64,
}

/// Bytes the link may hold beyond the guest's memory: a few frames per stream in flight, each
/// at most a window of pages.
pub const LINK_SLACK_BYTES: u64 = 1 << 20;

impl SimOutcome {
    /// The simulator's checks, in order of how much they say.
    pub fn check(&self) -> Result<(), SimCheckError> {
        if !self.exact {
            return Err(SimCheckError::DigestMismatch);
        }
        if self.placed_twice.0 > 0 {
            let (pages, first) = self.placed_twice;
            return Err(SimCheckError::PlacedTwice { pages, first });
        }
        if self.unanswered.0 > 0 {
            let (pages, first) = self.unanswered;
            return Err(SimCheckError::UnansweredFault { pages, first });
        }
        let bound_bytes = self.guest_bytes + LINK_SLACK_BYTES;
        if self.peak_link_bytes > bound_bytes {
            return Err(SimCheckError::MemoryBound {
                peak_bytes: self.peak_link_bytes,
                bound_bytes,
            });
        }
        if self.unacked_pages > 0 {
            return Err(SimCheckError::Unacknowledged { pages: self.unacked_pages });
        }
        Ok(())
    }
}

/// A [`PageSink`] over a [`SimVm`]'s memory that models userfaultfd: placing a present page
/// fails like EEXIST would (it is skipped and counted), a discarded page is missing again.
struct SimSink<'a> {
    vm: &'a mut SimVm,
    placed_twice: &'a mut (u64, u64),
}

impl SimSink<'_> {
    fn place_one(&mut self, page: u64, data: Option<&[u8]>) -> Result<(), SinkError> {
        if self.vm.present.get(page) {
            if self.placed_twice.0 == 0 {
                self.placed_twice.1 = page;
            }
            self.placed_twice.0 += 1;
            return Ok(());
        }
        let bytes = self.vm.page_mut(page)?;
        match data {
            Some(d) => bytes.copy_from_slice(d),
            None => bytes.fill(0),
        }
        self.vm.present.set(page);
        Ok(())
    }
}

impl PageSink for SimSink<'_> {
    fn place(&mut self, first: u64, data: &[u8]) -> Result<(), SinkError> {
        for (i, page) in data.chunks_exact(PAGE_SIZE).enumerate() {
            self.place_one(first + i as u64, Some(page))?;
        }
        Ok(())
    }

    fn place_zero(&mut self, first: u64, count: u64) -> Result<(), SinkError> {
        (first..first + count).try_for_each(|p| self.place_one(p, None))
    }

    fn overwrite(&mut self, first: u64, data: &[u8]) -> Result<(), SinkError> {
        for (i, page) in data.chunks_exact(PAGE_SIZE).enumerate() {
            self.vm.page_mut(first + i as u64)?.copy_from_slice(page);
        }
        Ok(())
    }

    fn discard(&mut self, first: u64, count: u64) -> Result<(), SinkError> {
        for p in first..first + count {
            self.vm.page_mut(p)?.fill(0);
            self.vm.present.clear(p);
        }
        Ok(())
    }

    fn wake(&mut self, _first: u64, _count: u64) -> Result<(), SinkError> {
        Ok(())
    }
}

impl DestVm for SimSink<'_> {
    fn restore_state(&mut self, blob: &[u8]) -> Result<(), EmbedError> {
        self.vm.restore_state(blob)
    }
    fn resume(&mut self) -> Result<(), EmbedError> {
        self.vm.resume()
    }
}

/// Loop iterations between two bulk frames (the link's rate).
const BULK_EVERY_STEPS: u64 = 4;

/// Virtual microseconds per loop iteration (one guest step on the running side).
const STEP_US: u64 = 2;

/// Bulk bytes the source may have in flight, unread by the destination: the socket buffers
/// of a real link, which make a sender wait while the receiver does not read.
const SEND_WINDOW_BYTES: u64 = 1 << 20;

/// Bytes of a simulated bulk buffer: one frame each, so the link paces frame by frame.
const SIM_BULK_BUF_BYTES: usize = 1;

/// Loop iterations a run may take at most.
const STEP_BUDGET: u64 = 4_000_000;

/// Both hosts, the link and the trace of one simulated migration.
struct World<'s> {
    spec: &'s SimRun,
    clock: VirtualClock,
    source: SourceEngine,
    src_vm: SimVm,
    dest: DestEngine,
    dst_vm: SimVm,
    net: SimNet,
    readers: [FrameReader; 4],
    /// Per-stream order checks after the handshake, as the real drivers make them.
    gates: [FrameGate; 4],
    trace: TraceHash,
    out: Vec<u8>,
    blocked_on: Option<u64>,
    dest_running: bool,
    /// Pages a destination vCPU faulted on over the network.
    faulted: PageBitmap,
    placed_twice: (u64, u64),
    peak_link_bytes: u64,
    /// PageWindow frames the source sent on bulk (for [`Plant::DropPageWindow`]).
    bulk_windows: u64,
    /// Bulk bytes the source sent and the destination has not read yet.
    bulk_in_flight_bytes: u64,
    /// When the connection dropped, until a new one is up.
    down_since_us: Option<u64>,
    /// Bytes sent on lost connections and never delivered.
    link_bytes_lost: u64,
    /// When each reader last received bytes.
    last_rx_us: [u64; 4],
    /// New connections that replaced a lost one.
    recoveries: u64,
    /// Frames the codec refused (each broke its connection).
    frames_refused: u64,
}

/// Runs one simulated migration and checks it against an unmigrated run.
pub fn run(spec: &SimRun) -> Result<SimOutcome, SimRunError> {
    run_traced(spec).1
}

/// [`run`], with the hash of the trace up to the end or the error (so a failing seed's replay
/// can be compared with the original).
pub fn run_traced(spec: &SimRun) -> (u64, Result<SimOutcome, SimRunError>) {
    let mut reference = SimVm::new(&spec.guest);
    reference.run_steps(spec.steps_total);
    let mut world = match World::new(spec) {
        Ok(world) => world,
        Err(e) => return (TraceHash::default().value(), Err(e)),
    };
    let result = world.run_to_end();
    match result {
        Ok(()) => {
            let outcome = world.finish(&reference);
            (outcome.as_ref().map_or(0, |o| o.trace_hash), outcome)
        }
        Err(e) => (world.trace.value(), Err(e)),
    }
}

impl<'s> World<'s> {
    fn new(spec: &'s SimRun) -> Result<Self, SimRunError> {
        let mut src_vm = SimVm::new(&spec.guest);
        src_vm.run_steps(spec.steps_before);
        let dst_vm = SimVm::new_incoming(&spec.guest);
        let layout = layout_of(&src_vm.regions()).map_err(SourceError::from)?;
        let mut cfg = SourceConfig::new(spec.mode, spec.seed | 1);
        cfg.working_set = src_vm.hot_pages();
        cfg.true_hot_set = src_vm.hot_pages();
        cfg.max_rounds = 8;
        cfg.live_pass = spec.live_pass;
        // Small frames on a link much slower than the guest, as on a real network: the push
        // takes a good part of the run, so faults during it matter.
        cfg.push_pages = 4;
        // Blocks of a few pages, so that arming and zero scans happen all through the live
        // phase.
        cfg.prepare_block_pages = 16;
        if spec.tight_unacked_cap {
            cfg.unacked_cap_pages = cfg.min_unacked_cap_pages();
        }
        // One virtual clock for both engines: every timing decision follows from the seed.
        let clock = VirtualClock::new();
        let mut net = SimNet::new(spec.seed, spec.faults.clone());
        let session = open_session(&mut net, &cfg, &src_vm, &dst_vm)?;
        let source =
            SourceEngine::new(cfg, &session.source, &src_vm)?.with_clock(Arc::new(clock.clone()));
        let mut dest =
            DestEngine::new(layout.clone(), &session.dest).with_clock(Arc::new(clock.clone()));
        dest.set_place_chunk(spec.place_chunk_pages);
        Ok(Self {
            spec,
            clock,
            source,
            src_vm,
            dest,
            faulted: PageBitmap::new(layout.total_pages()),
            dst_vm,
            net,
            readers: [0, 1, 2, 3].map(|_| FrameReader::new(Limits::default())),
            gates: gates(session.source.version),
            trace: TraceHash::default(),
            out: Vec::new(),
            blocked_on: None,
            dest_running: false,
            placed_twice: (0, 0),
            peak_link_bytes: 0,
            bulk_windows: 0,
            bulk_in_flight_bytes: 0,
            down_since_us: None,
            link_bytes_lost: 0,
            last_rx_us: [0; 4],
            recoveries: 0,
            frames_refused: 0,
        })
    }

    fn run_to_end(&mut self) -> Result<(), SimRunError> {
        self.source.start(&mut self.src_vm)?;
        for iteration in 0..STEP_BUDGET {
            if self.step(iteration)? {
                return Ok(());
            }
        }
        Err(SimRunError::Stuck {
            steps: STEP_BUDGET,
            source_phase: self.source.phase(),
            dest_phase: self.dest.phase(),
        })
    }

    /// One loop turn; true once both ends are finished.
    fn step(&mut self, iteration: u64) -> Result<bool, SimRunError> {
        let now_us = iteration * STEP_US;
        self.clock.set_ns(self.net.now_us().max(now_us) * 1000);
        // The guest runs where it lives: on the source until the pause, then on the
        // destination.
        if self.dest_running {
            self.step_dest_guest()?;
            schedule::dest_after_faults(&mut DestTurn(self))?;
        } else if !self.src_vm.paused && self.src_vm.steps < self.spec.steps_total {
            // A guest that finished its steps idles, as the unmigrated run does.
            self.src_vm.run_steps(1);
        }
        if let Some(since_us) = self.down_since_us {
            if now_us.max(self.net.now_us()) >= since_us + RECONNECT_US {
                self.reconnect(now_us)?;
            }
        }
        if self.down_since_us.is_none() {
            self.pump_source(iteration % BULK_EVERY_STEPS == 0)?;
            schedule::dest_flush(&mut DestTurn(self))?;
        }
        self.net.advance_to(now_us);
        let stats = self.net.stats();
        let held = stats.bytes_sent.saturating_sub(stats.bytes_delivered + self.link_bytes_lost);
        self.peak_link_bytes = self.peak_link_bytes.max(held);
        if !self.stalled(now_us) {
            self.deliver_due(now_us)?;
            self.check_partial_frames(now_us);
        }
        Ok(self.source.is_finished() && self.dest.phase() == DestPhase::Complete)
    }

    /// True while both sides stop reading ([`SimRun::stall_us`]).
    fn stalled(&self, now_us: u64) -> bool {
        self.spec.stall_us.is_some_and(|(at, dur)| now_us >= at && now_us < at + dur)
    }

    fn deliver_due(&mut self, now_us: u64) -> Result<(), SimRunError> {
        while self.net.peek_time_us().is_some_and(|t| t <= now_us) {
            let Some((at_us, event)) = self.net.next_event() else { break };
            match event {
                SimEvent::Deliver { to, stream, bytes } => {
                    if (to, stream) == (Side::Dest, StreamKind::Bulk) {
                        self.bulk_in_flight_bytes -= bytes.len() as u64;
                    }
                    self.trace_delivery(at_us, to, stream, &bytes);
                    self.receive(to, stream, &bytes)?;
                }
                SimEvent::Disconnected { .. } => self.link_lost(at_us),
            }
        }
        Ok(())
    }

    /// Records one delivered segment in the trace.
    fn trace_delivery(&mut self, at_us: u64, to: Side, stream: StreamKind, bytes: &[u8]) {
        let crc = u64::from(crc32fast::hash(bytes));
        let words = [to as u64, stream as u64, bytes.len() as u64, crc];
        self.trace.event(TraceKind::Deliver, at_us, &words);
    }

    /// Hands a segment to a side's frame reader, and each frame, once its gate passed it, to
    /// the engine; after a bulk frame the destination follows the shared schedule.
    fn receive(&mut self, to: Side, stream: StreamKind, bytes: &[u8]) -> Result<(), SimRunError> {
        let at = to_index(to, stream);
        self.readers[at].push_bytes(bytes);
        self.last_rx_us[at] = self.net.now_us();
        let bad = |source| SimRunError::Wire { side: to, stream, source };
        loop {
            let frame = match self.readers[at].next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    // A frame the codec refuses (a CRC that does not match) is never used: the
                    // connection counts as broken, and recovery re-sends what it carried.
                    tracing::debug!(%error, "sim: bad frame, the connection is dropped");
                    self.frames_refused += 1;
                    self.net.break_now();
                    self.link_lost(self.net.now_us());
                    return Ok(());
                }
            };
            self.gates[at].check(&frame).map_err(bad)?;
            if to == Side::Source {
                self.source.on_frame(stream, frame, &mut self.src_vm)?;
                continue;
            }
            let mut sink = SimSink { vm: &mut self.dst_vm, placed_twice: &mut self.placed_twice };
            if let Some(DestEvent::Resumed) = self.dest.on_frame(stream, frame, &mut sink)? {
                self.dest_running = true;
                self.trace.event(TraceKind::Resume, self.net.now_us(), &[]);
            }
            if stream == StreamKind::Bulk {
                schedule::dest_after_bulk_frame(&mut DestTurn(self))?;
            }
        }
        Ok(())
    }

    /// One step of the destination guest, or a fault if the page it needs is missing.
    fn step_dest_guest(&mut self) -> Result<(), SimRunError> {
        if self.dst_vm.steps >= self.spec.steps_total {
            self.blocked_on = None;
            return Ok(());
        }
        if let Some(page) = self.blocked_on {
            if !self.dst_vm.present.get(page) {
                return Ok(());
            }
        }
        let page = self.dst_vm.next_page();
        if self.dst_vm.present.get(page) {
            self.dst_vm.run_steps(1);
            self.blocked_on = None;
            return Ok(());
        }
        self.trace.event(TraceKind::Fault, self.net.now_us(), &[page]);
        let mut sink = SimSink { vm: &mut self.dst_vm, placed_twice: &mut self.placed_twice };
        self.dest.on_fault(page, 0, &mut sink)?;
        let missing = !self.dst_vm.present.get(page);
        if missing {
            self.faulted.set(page);
        }
        self.blocked_on = missing.then_some(page);
        Ok(())
    }

    /// The source's turn, in the shared schedule's order: urgent frames, then one bulk buffer
    /// of one frame if this is a bulk turn and the send window has room.
    fn pump_source(&mut self, bulk_turn: bool) -> Result<(), SimRunError> {
        let window_open = bulk_turn && self.bulk_in_flight_bytes < SEND_WINDOW_BYTES;
        if window_open {
            // The link, not the engine, sets the pace: the source waited on it since the last
            // bulk turn.
            self.source.on_link_wait((BULK_EVERY_STEPS - 1) * STEP_US * 1000);
        }
        let mut turn = SourceTurn { world: self, bulk_bufs: u32::from(window_open) };
        schedule::source_urgent(&mut turn)?;
        schedule::source_bulk(&mut turn, SIM_BULK_BUF_BYTES)?;
        Ok(())
    }

    /// True when `buf` is the PageWindow frame [`Plant::DropPageWindow`] drops.
    fn planted_drop(&mut self, buf: &[u8]) -> bool {
        if buf.get(6) != Some(&(FrameType::PageWindow as u8)) {
            return false;
        }
        let nth = self.bulk_windows;
        self.bulk_windows += 1;
        matches!(self.spec.plant, Some(Plant::DropPageWindow { nth: n }) if n == nth)
    }

    /// Takes back the scratch buffer, emptied.
    fn put_back(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        self.out = buf;
    }

    /// Sends `buf`; on a link that drops, the bytes are lost with it, as TCP's would be.
    fn send(&mut self, from: Side, stream: StreamKind, buf: Vec<u8>) -> Result<(), SimRunError> {
        if !buf.is_empty() && self.net.send(from, stream, &buf).is_err() {
            self.link_lost(self.net.now_us());
        }
        self.put_back(buf);
        Ok(())
    }

    fn finish(mut self, reference: &SimVm) -> Result<SimOutcome, SimRunError> {
        let now_us = self.net.now_us();
        self.trace.event(TraceKind::Finished, now_us, &[self.dest.stats().memory_digest]);
        let unanswered = first_missing(&self.faulted, &self.dst_vm.present);
        // Every page the destination never received is a zero page by the engines' contract.
        let missing: Vec<u64> =
            (0..self.dst_vm.total_pages()).filter(|&p| !self.dst_vm.present.get(p)).collect();
        let mut sink = SimSink { vm: &mut self.dst_vm, placed_twice: &mut self.placed_twice };
        for p in missing {
            sink.place_zero(p, 1).map_err(DestError::from)?;
        }
        let left = self.spec.steps_total.saturating_sub(self.dst_vm.steps);
        self.dst_vm.run_steps(left);
        Ok(SimOutcome {
            exact: self.dst_vm.same_as(reference),
            network_faults: self.dest.stats().network_faults,
            total_us: now_us,
            pages_discarded: self.dest.stats().pages_discarded,
            unacked_pages: self.source.unacked_pages(StreamKind::Bulk),
            stale_repass_pages: self.source.stats().stale_repass_pages,
            trace_hash: self.trace.value(),
            trace_events: self.trace.events(),
            placed_twice: self.placed_twice,
            unanswered,
            peak_link_bytes: self.peak_link_bytes,
            guest_bytes: self.dst_vm.total_pages() * PAGE_SIZE as u64,
            recoveries: self.recoveries,
            frames_refused: self.frames_refused,
            pages_resent: self.source.stats().pages_resent,
            fault_retries: self.dest.stats().fault_retries,
            unacked_cap_stalls: self.source.stats().unacked_cap_stalls,
        })
    }
}

/// Pages set in `wanted` and missing from `present`: how many, and the first.
fn first_missing(wanted: &PageBitmap, present: &PageBitmap) -> (u64, u64) {
    let missing: Vec<u64> = wanted.iter_ones().filter(|&p| !present.get(p)).collect();
    (missing.len() as u64, missing.first().copied().unwrap_or(0))
}

/// The four gates, in [`to_index`] order: the source receives as the initiator.
fn gates(version: u16) -> [FrameGate; 4] {
    let gate = |role, stream| FrameGate::new(role, stream, version);
    [
        gate(Role::Initiator, StreamKind::Bulk),
        gate(Role::Initiator, StreamKind::Urgent),
        gate(Role::Acceptor, StreamKind::Bulk),
        gate(Role::Acceptor, StreamKind::Urgent),
    ]
}

fn to_index(side: Side, stream: StreamKind) -> usize {
    (if side == Side::Source { 0 } else { 2 }) + stream.index()
}
