//! The seeded simulation driver: both engines, a synthetic guest and [`SimNet`] in one
//! process, on a virtual clock.
//!
//! This sits *beside* the real paths (KVM, userfaultfd, io_uring, TCP): it drives the very
//! same [`SourceEngine`] and [`DestEngine`], but the guest is a deterministic program over a
//! byte array ([`SimVm`]) and the network is [`SimNet`], which can lose, delay, reorder,
//! disconnect and corrupt. A run ends by comparing the destination's memory and guest state
//! with an unmigrated run of the same guest, byte for byte. A failure prints its seed.

mod guest;

pub use guest::{SimGuestSpec, SimVm};

use crate::dest::sink::{PageSink, SinkError};
use crate::dest::{DestEngine, DestError, DestEvent, DestPhase};
use crate::memory::PAGE_SIZE;
use crate::ports::{layout_of, MigratableVm, VirtualClock};
use crate::source::{LivePass, SourceConfig, SourceEngine, SourceError};
use crate::transport::sim::{Side, SimEvent, SimFaults, SimNet};
use crate::wire::{FrameReader, Limits, MigrationMode, StreamKind};
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
}

/// What a finished simulated migration reports.
#[derive(Debug, Clone)]
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
}

/// A [`PageSink`] over a [`SimVm`]'s memory that models userfaultfd: placing a present page
/// fails like EEXIST would (and is skipped), a discarded page is missing again.
struct SimSink<'a> {
    vm: &'a mut SimVm,
}

impl PageSink for SimSink<'_> {
    fn place(&mut self, first: u64, data: &[u8]) -> Result<(), SinkError> {
        for (i, page) in data.chunks_exact(PAGE_SIZE).enumerate() {
            let p = first + i as u64;
            if !self.vm.present.get(p) {
                self.vm.page_mut(p)?.copy_from_slice(page);
                self.vm.present.set(p);
            }
        }
        Ok(())
    }

    fn place_zero(&mut self, first: u64, count: u64) -> Result<(), SinkError> {
        for p in first..first + count {
            if !self.vm.present.get(p) {
                self.vm.page_mut(p)?.fill(0);
                self.vm.present.set(p);
            }
        }
        Ok(())
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

/// Loop iterations between two bulk frames (the link's rate).
const BULK_EVERY_STEPS: u64 = 4;

/// Virtual microseconds per loop iteration (one guest step on the running side).
const STEP_US: u64 = 2;

/// Runs one simulated migration and checks it against an unmigrated run.
pub fn run(spec: &SimRun) -> Result<SimOutcome, SimRunError> {
    let mut reference = SimVm::new(&spec.guest);
    reference.run_steps(spec.steps_total);

    let mut src_vm = SimVm::new(&spec.guest);
    src_vm.run_steps(spec.steps_before);
    let mut dst_vm = SimVm::new_incoming(&spec.guest);
    let layout = layout_of(&src_vm.regions()).map_err(SourceError::from)?;

    let mut cfg = SourceConfig::new(spec.mode, spec.seed | 1);
    cfg.working_set = src_vm.hot_pages();
    cfg.true_hot_set = src_vm.hot_pages();
    cfg.max_rounds = 8;
    cfg.live_pass = spec.live_pass;
    // Small frames on a link much slower than the guest, as on a real network: the push takes
    // a good part of the run, so faults during it matter.
    cfg.push_pages = 4;
    // Blocks of a few pages, so that arming and zero scans happen all through the live phase.
    cfg.prepare_block_pages = 16;
    // One virtual clock for both engines: every timing decision follows from the seed.
    let clock = VirtualClock::new();
    let mut net = SimNet::new(spec.seed, spec.faults.clone());
    let session = crate::session::sim::open(&mut net, &cfg, &src_vm.regions(), &dst_vm.regions())?;
    let mut source =
        SourceEngine::new(cfg, &session.source, &src_vm)?.with_clock(Arc::new(clock.clone()));
    let mut dest =
        DestEngine::new(layout.clone(), &session.dest).with_clock(Arc::new(clock.clone()));
    dest.set_place_chunk(spec.place_chunk_pages);
    let mut readers = [0, 1, 2, 3].map(|_| FrameReader::new(Limits::default()));
    source.start(&mut src_vm)?;

    let mut blocked_on: Option<u64> = None;
    let mut dest_running = false;
    let budget = 4_000_000u64;
    for iteration in 0..budget {
        let now = iteration * STEP_US;
        clock.set_ns(net.now_us().max(now) * 1000);
        // The guest runs where it lives: on the source until the pause, then on the destination.
        if dest_running {
            blocked_on = step_dest_guest(&mut dst_vm, &mut dest, blocked_on, spec.steps_total)?;
        } else if !src_vm.paused {
            src_vm.run_steps(1);
        }
        pump_source(&mut source, &mut src_vm, &mut net, iteration % BULK_EVERY_STEPS == 0)?;
        if dest.placing() {
            // One chunk per turn: guest steps, faults and fault answers come in between.
            dest.place_more(&mut SimSink { vm: &mut dst_vm })?;
        }
        pump_dest(&mut dest, &mut net)?;
        net.advance_to(now);
        while net.peek_time_us().is_some_and(|t| t <= now) {
            let Some((at_us, event)) = net.next_event() else { break };
            match event {
                SimEvent::Deliver { to, stream, bytes } => {
                    let reader = &mut readers[to_index(to, stream)];
                    reader.push_bytes(&bytes);
                    while let Some(frame) = reader
                        .next_frame()
                        .map_err(|source| SimRunError::Wire { side: to, stream, source })?
                    {
                        match to {
                            Side::Source => source.on_frame(stream, frame, &mut src_vm)?,
                            Side::Dest => {
                                let event =
                                    dest.on_frame(stream, frame, &mut SimSink { vm: &mut dst_vm })?;
                                if let Some(DestEvent::Resume(blob)) = event {
                                    dst_vm.restore_state(&blob).map_err(SourceError::from)?;
                                    dst_vm.resume().map_err(SourceError::from)?;
                                    dest_running = true;
                                }
                            }
                        }
                    }
                }
                SimEvent::Disconnected { .. } => return Err(SimRunError::Disconnected { at_us }),
            }
        }
        if source.is_finished() && dest.phase() == DestPhase::Complete {
            let unacked_pages = source.unacked_pages(StreamKind::Bulk);
            let stale_repass_pages = source.stats().stale_repass_pages;
            return finish(spec, &reference, dst_vm, &dest, now).map(|o| SimOutcome {
                unacked_pages,
                stale_repass_pages,
                ..o
            });
        }
    }
    Err(SimRunError::Stuck {
        steps: budget,
        source_phase: source.phase(),
        dest_phase: dest.phase(),
    })
}

fn to_index(side: Side, stream: StreamKind) -> usize {
    (if side == Side::Source { 0 } else { 2 }) + stream.index()
}

/// One step of the destination guest, or a fault if the page it needs is missing.
fn step_dest_guest(
    vm: &mut SimVm,
    dest: &mut DestEngine,
    blocked_on: Option<u64>,
    steps_total: u64,
) -> Result<Option<u64>, SimRunError> {
    if vm.steps >= steps_total {
        return Ok(None);
    }
    if let Some(page) = blocked_on {
        if !vm.present.get(page) {
            return Ok(Some(page));
        }
    }
    let page = vm.next_page();
    if !vm.present.get(page) {
        dest.on_fault(page, 0, &mut SimSink { vm })?;
        return Ok((!vm.present.get(page)).then_some(page));
    }
    vm.run_steps(1);
    Ok(None)
}

fn pump_source(
    source: &mut SourceEngine,
    vm: &mut SimVm,
    net: &mut SimNet,
    bulk_turn: bool,
) -> Result<(), SimRunError> {
    let mut out = Vec::new();
    while source.poll_urgent(&mut out) {}
    send(net, Side::Source, StreamKind::Urgent, &mut out)?;
    if !bulk_turn {
        return Ok(());
    }
    // One bulk frame per bulk turn: the link, not the engine, sets the pace, so the source
    // waited on it since the last turn.
    source.on_link_wait((BULK_EVERY_STEPS - 1) * STEP_US * 1000);
    source.poll_bulk(&mut out, vm)?;
    let len = out.len() as u64;
    send(net, Side::Source, StreamKind::Bulk, &mut out)?;
    source.on_bulk_sent(len, net.now_us() * 1000 + 1);
    Ok(())
}

fn pump_dest(dest: &mut DestEngine, net: &mut SimNet) -> Result<(), SimRunError> {
    let mut out = Vec::new();
    while dest.poll_urgent(&mut out) {}
    send(net, Side::Dest, StreamKind::Urgent, &mut out)?;
    while dest.poll_bulk(&mut out) {}
    send(net, Side::Dest, StreamKind::Bulk, &mut out)
}

fn send(
    net: &mut SimNet,
    from: Side,
    stream: StreamKind,
    out: &mut Vec<u8>,
) -> Result<(), SimRunError> {
    if !out.is_empty() {
        net.send(from, stream, out)
            .map_err(|_| SimRunError::Disconnected { at_us: net.now_us() })?;
        out.clear();
    }
    Ok(())
}

fn finish(
    spec: &SimRun,
    reference: &SimVm,
    mut dst_vm: SimVm,
    dest: &DestEngine,
    now_us: u64,
) -> Result<SimOutcome, SimRunError> {
    // Every page the destination never received is a zero page by the engines' contract.
    let missing: Vec<u64> = (0..dst_vm.total_pages()).filter(|&p| !dst_vm.present.get(p)).collect();
    for p in missing {
        SimSink { vm: &mut dst_vm }.place_zero(p, 1).map_err(DestError::from)?;
    }
    let left = spec.steps_total.saturating_sub(dst_vm.steps);
    dst_vm.run_steps(left);
    let exact = dst_vm.same_as(reference);
    Ok(SimOutcome {
        exact,
        network_faults: dest.stats().network_faults,
        total_us: now_us,
        pages_discarded: dest.stats().pages_discarded,
        unacked_pages: 0,
        stale_repass_pages: 0,
    })
}
