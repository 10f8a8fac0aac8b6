//! Runs a [`SourceEngine`] on the shared event loop ([`crate::driver::event_loop`]) over the
//! two TCP streams.
//!
//! The source's steps keep a few bulk sends in flight (each a buffer of several frames), send
//! urgent frames the moment the engine has them, and serve fault requests that arrive while a
//! bulk buffer is being filled. The caller's tick hook samples the guest's progress.

use super::config::SourceStats;
use super::engine::SourceEngine;
use crate::control::{CancelRefusal, Control, Counters, View};
use crate::driver::event_loop::{self, LoopIo, LoopOptions, Next, Turn, Wing};
use crate::driver::inject::Injection;
use crate::driver::recovery::{Recovering, Recovery, Resumable};
use crate::driver::schedule::{self, SourceSide};
use crate::driver::{DriverError, WingPhase};
use crate::metrics::mono_ns;
use crate::ports::MigratableVm;
use crate::transport::ring_streams::StreamEvent;
use crate::transport::tcp::StreamPair;
use crate::wire::StreamKind;
use std::sync::Arc;
use std::time::Duration;

/// Tunables of the source's event loop.
#[derive(Debug, Clone)]
pub struct SourceDriverOptions {
    /// Bulk send buffers in flight at most.
    pub bulk_in_flight: usize,
    /// Bytes per bulk send buffer.
    pub bulk_buf_bytes: usize,
    /// Period of the caller's tick hook.
    pub tick: Duration,
    /// Give up after this long without progress (no byte moved, no frame handled).
    pub progress_timeout: Duration,
    /// Ask for real-time priority for the loop's thread.
    pub prioritize_thread: bool,
    /// Faults to inject ([`crate::driver::inject`]); `None` in a real migration.
    pub inject: Option<Injection>,
    /// The control channel to publish to and take cancels from ([`crate::control`]).
    pub control: Option<Arc<Control>>,
}

impl Default for SourceDriverOptions {
    fn default() -> Self {
        let shared = LoopOptions::default();
        Self {
            bulk_in_flight: 2,
            bulk_buf_bytes: 64 << 10,
            tick: shared.tick,
            progress_timeout: shared.progress_timeout,
            prioritize_thread: shared.prioritize_thread,
            inject: None,
            control: None,
        }
    }
}

/// Drives `engine` to the end of the migration; `on_tick` runs every `opts.tick`. A lost
/// connection ends it (see [`run_source_recovering`]).
pub fn run_source(
    engine: &mut SourceEngine,
    vm: &mut dyn MigratableVm,
    pair: &StreamPair,
    opts: &SourceDriverOptions,
    on_tick: &mut dyn FnMut(&SourceEngine),
) -> Result<SourceStats, DriverError> {
    run_source_recovering(engine, vm, pair, opts, on_tick, None)
}

/// [`run_source`], where a lost connection is replaced through `recovery` (the source dials
/// again) and the migration goes on from where the destination stands.
pub fn run_source_recovering(
    engine: &mut SourceEngine,
    vm: &mut dyn MigratableVm,
    pair: &StreamPair,
    opts: &SourceDriverOptions,
    on_tick: &mut dyn FnMut(&SourceEngine),
    recovery: Option<Recovery<'_>>,
) -> Result<SourceStats, DriverError> {
    let mut source = SourceLoop::start(engine, vm, pair, opts, recovery)?;
    loop {
        if let Some(stats) = source.turn(engine, vm, on_tick, opts.tick)? {
            return Ok(stats);
        }
    }
}

/// The source's event loop between two turns, for a caller that turns it from a loop of its
/// own ([`SourceLoop::turn`]); the engine and the VM stay the caller's, lent to each turn.
#[derive(Debug)]
pub struct SourceLoop<'r> {
    io: LoopIo,
    recovering: Recovering<'r>,
    loop_opts: LoopOptions,
    bulk_buf_bytes: usize,
    /// The operator's push cap in force: (since when, bulk bytes sent then, the cap).
    push_cap: Option<(u64, u64, u64)>,
}

impl<'r> SourceLoop<'r> {
    /// Puts `pair`'s streams on a ring and starts `engine` on `vm` (the first dirty-log pass).
    pub fn start(
        engine: &mut SourceEngine,
        vm: &mut dyn MigratableVm,
        pair: &StreamPair,
        opts: &SourceDriverOptions,
        recovery: Option<Recovery<'r>>,
    ) -> Result<Self, DriverError> {
        let role = crate::session::Role::Initiator;
        let mut io = LoopIo::new(pair, role, opts.bulk_in_flight, opts.bulk_buf_bytes)?;
        engine.start(vm)?;
        let loop_opts = LoopOptions {
            tick: opts.tick,
            progress_timeout: opts.progress_timeout,
            prioritize_thread: opts.prioritize_thread,
            name: "source",
            inject: opts.inject.clone(),
            control: opts.control.clone(),
        };
        let recovering = Recovering::new(&mut io, &loop_opts, recovery);
        Ok(Self { io, recovering, loop_opts, bulk_buf_bytes: opts.bulk_buf_bytes, push_cap: None })
    }

    /// One turn of the loop, waiting at most `max_wait` (and at most the tick); the final
    /// counters once the migration is over on this side. A lost connection is replaced inside
    /// the turn (see [`Recovering::turn`]).
    pub fn turn(
        &mut self,
        engine: &mut SourceEngine,
        vm: &mut dyn MigratableVm,
        on_tick: &mut dyn FnMut(&SourceEngine),
        max_wait: Duration,
    ) -> Result<Option<SourceStats>, DriverError> {
        let mut wing = SourceWing {
            engine,
            vm,
            on_tick,
            bulk_buf_bytes: self.bulk_buf_bytes,
            control: self.loop_opts.control.as_deref(),
            push_cap: &mut self.push_cap,
        };
        let turned = self.recovering.turn(&mut wing, &mut self.io, &self.loop_opts, max_wait)?;
        let Some(count) = turned else { return Ok(None) };
        let mut stats = wing.engine.stats().clone();
        stats.recovery_ms = count.recovery_ms;
        stats.bytes_bulk = self.io.streams.bytes_sent[0];
        stats.bytes_urgent = self.io.streams.bytes_sent[1];
        Ok(Some(stats))
    }

    /// The ring's descriptor: it polls readable when a completion waits for the next turn.
    pub fn ring_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.io.ring)
    }

    /// The loop's tick: the longest a caller should go between two turns, even with nothing
    /// to read, for the dirty-log passes and the progress deadline.
    pub fn tick(&self) -> Duration {
        self.loop_opts.tick
    }
}

/// The source engine's steps in the shared loop.
struct SourceWing<'a> {
    engine: &'a mut SourceEngine,
    vm: &'a mut dyn MigratableVm,
    on_tick: &'a mut dyn FnMut(&SourceEngine),
    bulk_buf_bytes: usize,
    control: Option<&'a Control>,
    /// The operator's push cap in force (kept by [`SourceLoop`] between turns).
    push_cap: &'a mut Option<(u64, u64, u64)>,
}

impl SourceWing<'_> {
    /// True while the push has sent more on bulk, since the cap was set or the push began,
    /// than the operator's cap (`migrate-set-parameters`) allows; fault answers on urgent are
    /// never held. One atomic load a turn when no cap is set.
    fn over_push_cap(&mut self, io: &LoopIo) -> bool {
        let cap = self.control.map_or(0, Control::push_cap);
        if cap == 0 || self.engine.phase() != crate::source::Phase::Push {
            *self.push_cap = None;
            return false;
        }
        let (now, sent) = (mono_ns(), io.streams.bytes_sent[0]);
        let (from_ns, from_bytes, from_cap) = *self.push_cap.get_or_insert((now, sent, cap));
        if from_cap != cap {
            *self.push_cap = Some((now, sent, cap));
            return false;
        }
        let allowed = u128::from(cap) * u128::from(now.saturating_sub(from_ns)) / 1_000_000_000;
        u128::from(sent.saturating_sub(from_bytes)) > allowed
    }
}

impl Wing for SourceWing<'_> {
    fn phase(&self) -> WingPhase {
        WingPhase::Source(self.engine.phase())
    }

    fn tick(&mut self) {
        (self.on_tick)(self.engine);
    }

    fn step(&mut self, io: &mut LoopIo) -> Result<Next, DriverError> {
        let buf_bytes = self.bulk_buf_bytes;
        let capped = self.over_push_cap(io);
        let mut turn = Turn { wing: &mut *self, io: &mut *io };
        schedule::source_urgent(&mut turn)?;
        let waits_on_link = !capped && schedule::source_bulk(&mut turn, buf_bytes)?;
        if self.engine.is_finished()
            && io.streams.in_flight(StreamKind::Bulk) == 0
            && io.streams.in_flight(StreamKind::Urgent) == 0
        {
            return Ok(Next::Done);
        }
        Ok(if waits_on_link { Next::WaitOnLink } else { Next::Wait })
    }

    fn on_event(&mut self, io: &mut LoopIo, event: StreamEvent) -> Result<(), DriverError> {
        match event {
            StreamEvent::Received(stream) => {
                while let Some(frame) = io.streams.next_frame(stream)? {
                    self.engine.on_frame(stream, frame, self.vm)?;
                }
            }
            StreamEvent::Sent(StreamKind::Bulk, bytes) => {
                self.engine.on_bulk_sent(bytes, mono_ns())
            }
            StreamEvent::Sent(..) | StreamEvent::Closed(_) => {}
        }
        Ok(())
    }

    fn closed_is_fine(&self) -> bool {
        self.engine.is_finished()
    }

    /// Once Done is out, the destination needs nothing more on the urgent stream, and its
    /// DoneAck comes on bulk: an urgent stream it closed first is not a lost connection.
    fn on_closed(&mut self, _io: &mut LoopIo, stream: StreamKind) -> Result<(), DriverError> {
        let awaiting_ack = self.engine.phase() == crate::source::Phase::AwaitDoneAck;
        if self.closed_is_fine() || (stream == StreamKind::Urgent && awaiting_ack) {
            return Ok(());
        }
        Err(DriverError::PeerClosed { stream, phase: self.phase() })
    }

    fn on_link_wait(&mut self, wait_ns: u64) {
        self.engine.on_link_wait(wait_ns);
    }

    fn switchover_ns(&self) -> Option<u64> {
        Some(self.engine.stats().pause_ns).filter(|&ns| ns > 0)
    }

    fn resume_ns(&self) -> Option<u64> {
        Some(self.engine.stats().run_sent_ns).filter(|&ns| ns > 0)
    }

    /// The source decides until the hand-over; after it the guest may run on the destination.
    fn may_cancel(&self) -> Result<(), CancelRefusal> {
        if self.engine.handed_over() {
            return Err(CancelRefusal::HandedOver);
        }
        Ok(())
    }

    fn control_view(&self, io: &LoopIo) -> Option<View> {
        let mut stats = self.engine.stats().clone();
        stats.bytes_bulk = io.streams.bytes_sent[0];
        stats.bytes_urgent = io.streams.bytes_sent[1];
        Some(View {
            phase: self.phase(),
            handed_over: self.engine.handed_over(),
            counters: Counters::Source(Box::new(stats)),
            sent_bytes: io.streams.bytes_sent,
            received_bytes: io.streams.bytes_received,
            total_pages: self.engine.layout().total_pages(),
            pages_moved: self.engine.pages_sent(),
            vcpu_blocked_us: 0,
            vcpu_blocked_us_per_vcpu: Vec::new(),
            fault_latency_dist_us: None,
        })
    }
}

impl Resumable for SourceWing<'_> {
    fn holding(&self) -> String {
        self.engine.holding()
    }

    fn on_reconnect(&mut self) -> Result<(), DriverError> {
        self.engine.on_reconnect();
        Ok(())
    }
}

impl<'w> SourceSide for Turn<'_, SourceWing<'w>> {
    fn parts(&mut self) -> (&mut SourceEngine, &mut dyn MigratableVm) {
        (&mut *self.wing.engine, &mut *self.wing.vm)
    }

    /// Fault requests that arrived while a bulk buffer was being filled (encoding one takes up
    /// to a few hundred microseconds with lz4).
    fn serve_urgent(&mut self) -> Result<bool, DriverError> {
        event_loop::serve_urgent_now(self.wing, self.io)
    }
}
