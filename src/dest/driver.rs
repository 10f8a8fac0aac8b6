//! Runs a [`DestEngine`] on the shared event loop ([`crate::driver::event_loop`]):
//! userfaultfd reads, both socket receives and the fault-request sends share its ring.
//!
//! Guest memory is registered with the userfaultfd *before* the first frame is read, so fault
//! service is running before the state is restored (restoring devices may touch memory). The
//! stream pair arrives with the session the handshake opened, which gives the mode.

use super::engine::{DestEngine, DestEvent, DestPhase, DestStats};
use super::sink::{UffdSink, UffdVm};
use super::uffd::{Uffd, UffdEvent, UFFD_MSG_LEN_BYTES};
use super::DestError;
use crate::control::{CancelRefusal, Control, Counters, View};
use crate::driver::event_loop::{self, LoopIo, LoopOptions, Next, Turn, Wing};
use crate::driver::inject::Injection;
use crate::driver::recovery::{Recovering, Recovery, Resumable};
use crate::driver::schedule::{self, DestSide};
use crate::driver::{DriverError, WingPhase};
use crate::metrics::mono_ns;
use crate::ports::{layout_of, page_of_host_addr, HostRegion, MigratableVm};
use crate::ring::{Buf, Completion, Ring};
use crate::transport::ring_streams::{StreamEvent, FIRST_CALLER_TAG};
use crate::transport::tcp::StreamPair;
use crate::wire::StreamKind;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

const TAG_UFFD: u64 = FIRST_CALLER_TAG;
/// How often the loop looks at its fault retries while a fault waits.
const RETRY_LOOK: Duration = Duration::from_millis(1);
/// How long the destination waits, at the end, for the source to close the streams.
const LINGER_FOR_SOURCE: Duration = Duration::from_secs(10);
/// Send buffers per stream (acks and fault requests are small; a few let requests overlap).
const SEND_BUFS: usize = 4;
/// Bytes per send buffer.
const SEND_BUF_BYTES: usize = 64 * 1024;
/// Fault messages read per uffd read.
const UFFD_MSGS_PER_READ: usize = 64;

/// Tunables of the destination's event loop.
#[derive(Debug, Clone)]
pub struct DestDriverOptions {
    /// Period of the caller's tick hook.
    pub tick: Duration,
    /// Give up after this long without progress (no byte moved, no frame handled).
    pub progress_timeout: Duration,
    /// Ask for real-time priority for the loop's thread.
    pub prioritize_thread: bool,
    /// Pages of a background window placed between two looks for faults, once the guest
    /// runs (see [`DestEngine::set_place_chunk`]; 0 places whole windows).
    pub place_chunk_pages: u32,
    /// Faults to inject ([`crate::driver::inject`]); `None` in a real migration.
    pub inject: Option<Injection>,
    /// The control channel to publish to and take cancels from ([`crate::control`]).
    pub control: Option<Arc<Control>>,
}

impl Default for DestDriverOptions {
    fn default() -> Self {
        let shared = LoopOptions::default();
        Self {
            tick: shared.tick,
            progress_timeout: shared.progress_timeout,
            prioritize_thread: shared.prioritize_thread,
            place_chunk_pages: 8,
            inject: None,
            control: None,
        }
    }
}

/// What the destination measured, beyond the engine's counters.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DestRun {
    /// The engine's counters.
    pub stats: DestStats,
    /// When the guest resumed here (mono ns).
    pub resume_ns: u64,
    /// Migration mode, from the session.
    pub mode: Option<String>,
    /// Fault latency percentiles (us).
    pub fault_us_p50: u64,
    /// 99th percentile.
    pub fault_us_p99: u64,
    /// 99.9th percentile.
    pub fault_us_p999: u64,
    /// Sum of fault latencies: time vCPUs spent blocked on the network (ms).
    pub vcpu_blocked_ms: f64,
    /// `vcpu_blocked_ms` by vCPU index (ms): each fault's latency goes to the vCPU that
    /// raised it, named by its thread id ([`MigratableVm::vcpu_of_thread`]).
    #[serde(default)]
    pub vcpu_blocked_ms_per_vcpu: Vec<f64>,
    /// The part of `vcpu_blocked_ms` whose thread the VMM did not name as a vCPU (ms).
    #[serde(default)]
    pub vcpu_blocked_ms_unattributed: f64,
    /// Fault latencies in QEMU's 24 power-of-two buckets (bucket i: [2^i, 2^(i+1)) us).
    #[serde(default)]
    pub fault_latency_dist_us: Vec<u64>,
    /// Fault latency CDF: (us, fraction).
    pub fault_cdf: Vec<(u64, f64)>,
    /// Bytes this host sent on the bulk stream (acks, DoneAck).
    pub sent_bulk: u64,
    /// Bytes this host sent on the urgent stream (fault requests).
    pub sent_urgent: u64,
    /// Time from each lost connection to its replacement, summed (ms).
    #[serde(default)]
    pub recovery_ms: f64,
}

fn uffd_err(what: &'static str) -> impl FnOnce(super::uffd::UffdError) -> DriverError {
    move |source| DriverError::Uffd { what, source }
}

/// Receives a migration into `vm` over `pair`; returns once every page is here and the source
/// confirmed the digest. `on_tick` runs every `opts.tick` (after the resume too).
pub fn run_dest(
    vm: &mut dyn MigratableVm,
    pair: &StreamPair,
    opts: &DestDriverOptions,
    on_tick: &mut dyn FnMut(&DestEngine),
) -> Result<DestRun, DriverError> {
    run_dest_recovering(vm, pair, opts, on_tick, None)
}

/// [`run_dest`], where a lost connection is replaced through `recovery` (the destination
/// accepts the source's resume): every placed page stays, vCPUs that touch a missing page wait,
/// and the migration goes on once the source knows what is here.
pub fn run_dest_recovering(
    vm: &mut dyn MigratableVm,
    pair: &StreamPair,
    opts: &DestDriverOptions,
    on_tick: &mut dyn FnMut(&DestEngine),
    recovery: Option<Recovery<'_>>,
) -> Result<DestRun, DriverError> {
    let (uffd, _) = Uffd::open_with_features(super::uffd::UFFD_FEATURE_THREAD_ID)
        .map_err(uffd_err("userfaultfd open"))?;
    run_dest_with_uffd(uffd, vm, pair, opts, on_tick, recovery)
}

/// [`run_dest_recovering`] on a userfaultfd the caller opened (its `UFFDIO_API` handshake
/// done, see [`Uffd::from_owned_fd`]); the guest's regions are registered on it here.
pub fn run_dest_with_uffd(
    uffd: Uffd,
    vm: &mut dyn MigratableVm,
    pair: &StreamPair,
    opts: &DestDriverOptions,
    on_tick: &mut dyn FnMut(&DestEngine),
    recovery: Option<Recovery<'_>>,
) -> Result<DestRun, DriverError> {
    let mut dest = DestLoop::start(uffd, &*vm, pair, opts, recovery)?;
    loop {
        if let Some(run) = dest.turn(vm, on_tick, opts.tick)? {
            return Ok(run);
        }
    }
}

/// The destination's event loop between two turns, for a caller that turns it from a loop of
/// its own ([`DestLoop::turn`]); the VM stays the caller's, lent to each turn.
#[derive(Debug)]
pub struct DestLoop<'r> {
    engine: DestEngine,
    io: LoopIo,
    uffd: Uffd,
    regions: Vec<HostRegion>,
    layout: crate::memory::Layout,
    run: DestRun,
    recovering: Recovering<'r>,
    loop_opts: LoopOptions,
}

impl<'r> DestLoop<'r> {
    /// Registers `vm`'s memory with `uffd` and puts `pair`'s streams and the fault reads on a
    /// ring: fault service runs before the first frame is read.
    pub fn start(
        uffd: Uffd,
        vm: &dyn MigratableVm,
        pair: &StreamPair,
        opts: &DestDriverOptions,
        recovery: Option<Recovery<'r>>,
    ) -> Result<Self, DriverError> {
        let regions = vm.regions();
        let layout = layout_of(&regions).map_err(DestError::from)?;
        for r in &regions {
            uffd.register(r.host_addr() as u64, r.size_bytes)
                .map_err(uffd_err("userfaultfd register"))?;
        }
        let mut engine = DestEngine::new(layout.clone(), &pair.session);
        engine.set_place_chunk(opts.place_chunk_pages);
        let mut io = LoopIo::new(pair, crate::session::Role::Acceptor, SEND_BUFS, SEND_BUF_BYTES)?;
        let read_buf = Buf::with_capacity(UFFD_MSG_LEN_BYTES * UFFD_MSGS_PER_READ);
        arm_uffd_read(&mut io.ring, &uffd, read_buf)?;
        // Every mode keeps userfaultfd registered: a pre-copy that does not converge finishes
        // post-copy, and its missing pages then fault like any other.
        let run = DestRun { mode: Some(pair.session.mode.to_string()), ..DestRun::default() };
        let loop_opts = LoopOptions {
            tick: opts.tick,
            progress_timeout: opts.progress_timeout,
            prioritize_thread: opts.prioritize_thread,
            name: "destination",
            inject: opts.inject.clone(),
            control: opts.control.clone(),
        };
        let recovering = Recovering::new(&mut io, &loop_opts, recovery);
        Ok(Self { engine, io, uffd, regions, layout, run, recovering, loop_opts })
    }

    /// One turn of the loop, waiting at most `max_wait` (and at most the tick); what the
    /// destination measured once every page is here and the digest held. A lost connection is
    /// replaced inside the turn (see [`Recovering::turn`]), and the last turn waits up to
    /// 10 s for the source to close the streams.
    pub fn turn(
        &mut self,
        vm: &mut dyn MigratableVm,
        on_tick: &mut dyn FnMut(&DestEngine),
        max_wait: Duration,
    ) -> Result<Option<DestRun>, DriverError> {
        let ctx = Ctx {
            vm,
            uffd: &self.uffd,
            regions: &self.regions,
            layout: &self.layout,
            run: &mut self.run,
        };
        let mut wing = DestWing { engine: &mut self.engine, ctx, on_tick };
        let turned = self.recovering.turn(&mut wing, &mut self.io, &self.loop_opts, max_wait)?;
        let Some(count) = turned else { return Ok(None) };
        self.finish(count.recovery_ms).map(Some)
    }

    /// The engine's phase, for errors.
    pub fn phase(&self) -> WingPhase {
        WingPhase::Dest(self.engine.phase())
    }

    /// Whether an operator's cancel may stop this side now, or why not.
    pub fn may_cancel(&self) -> Result<(), CancelRefusal> {
        may_cancel(&self.engine, self.run.resume_ns)
    }

    /// The ring's descriptor: it polls readable when a completion (a frame, a fault) waits for
    /// the next turn.
    pub fn ring_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.io.ring)
    }

    /// The loop's tick: the longest a caller should go between two turns, even with nothing
    /// to read. While a fault waits for its page, turn again within a millisecond.
    pub fn tick(&self) -> Duration {
        if self.engine.faults_waiting() {
            return RETRY_LOOK;
        }
        self.loop_opts.tick
    }

    fn finish(&mut self, recovery_ms: f64) -> Result<DestRun, DriverError> {
        let mut run = finish_run(self.run.clone(), &self.engine, &self.io)?;
        run.recovery_ms = recovery_ms;
        let io = &mut self.io;
        // The source lets go of the streams once it has the DoneAck; leaving first could reset
        // a connection whose DoneAck is still in flight (a loss being repaired).
        if let Ok(bulk) = io.streams.detach(&mut io.ring, StreamKind::Bulk) {
            crate::transport::tcp::wait_for_peer_close(&bulk, LINGER_FOR_SOURCE);
        }
        // The guest keeps running here without this loop: every page still missing is a zero
        // page (the need set is complete), so hand the memory back to the kernel's own fault
        // path. Unregistering also wakes any vCPU whose fault message was not read yet.
        for r in &self.regions {
            self.uffd
                .unregister(r.host_addr() as u64, r.size_bytes)
                .map_err(uffd_err("userfaultfd unregister"))?;
        }
        Ok(run)
    }
}

/// Fills in the counters and fault latencies, and checks the digest.
fn finish_run(mut run: DestRun, engine: &DestEngine, io: &LoopIo) -> Result<DestRun, DriverError> {
    let hist = engine.fault_histogram();
    run.stats = engine.stats().clone();
    run.stats.bytes_bulk = io.streams.bytes_received[0];
    run.stats.bytes_urgent = io.streams.bytes_received[1];
    run.sent_bulk = io.streams.bytes_sent[0];
    run.sent_urgent = io.streams.bytes_sent[1];
    run.fault_us_p50 = hist.quantile_us(0.5);
    run.fault_us_p99 = hist.quantile_us(0.99);
    run.fault_us_p999 = hist.quantile_us(0.999);
    run.vcpu_blocked_ms = hist.sum_us() as f64 / 1e3;
    run.vcpu_blocked_ms_per_vcpu =
        engine.blocked_us_per_vcpu().iter().map(|&us| us as f64 / 1e3).collect();
    run.vcpu_blocked_ms_unattributed = engine.blocked_us_unattributed() as f64 / 1e3;
    run.fault_latency_dist_us = hist.pow2_dist().to_vec();
    run.fault_cdf = hist.cdf();
    if !engine.verified() {
        return Err(DestError::DigestMismatch {
            source_digest: run.stats.source_digest,
            dest_digest: run.stats.memory_digest,
        }
        .into());
    }
    Ok(run)
}

/// The destination engine's steps in the shared loop.
struct DestWing<'l, 'c> {
    engine: &'l mut DestEngine,
    ctx: Ctx<'c>,
    on_tick: &'l mut dyn FnMut(&DestEngine),
}

impl DestWing<'_, '_> {
    /// Why this side ends after refusing the state (the VMM's error, once).
    fn refusal(&mut self) -> DriverError {
        self.engine.take_refusal().unwrap_or(DestError::StateRefused).into()
    }
}

impl Wing for DestWing<'_, '_> {
    fn phase(&self) -> WingPhase {
        WingPhase::Dest(self.engine.phase())
    }

    fn tick(&mut self) {
        (self.on_tick)(self.engine);
    }

    fn step(&mut self, io: &mut LoopIo) -> Result<Next, DriverError> {
        schedule::dest_flush(&mut Turn { wing: &mut *self, io: &mut *io })?;
        let flushed = io.streams.in_flight(StreamKind::Bulk) == 0;
        match self.engine.phase() {
            DestPhase::Complete if flushed => return Ok(Next::Done),
            // The refusal is out: the source resumes its guest, and this side ends.
            DestPhase::Refused if flushed => return Err(self.refusal()),
            _ => {}
        }
        Ok(Next::Wait)
    }

    fn on_event(&mut self, io: &mut LoopIo, event: StreamEvent) -> Result<(), DriverError> {
        match event {
            StreamEvent::Received(stream) => self.on_received(io, stream),
            StreamEvent::Sent(StreamKind::Urgent, _) => {
                // A buffer is free again: fault requests queued behind it leave now, not
                // after the loop has worked through every bulk receive that is ready.
                schedule::dest_after_faults(&mut Turn { wing: self, io })
            }
            StreamEvent::Sent(..) | StreamEvent::Closed(_) => Ok(()),
        }
    }

    fn closed_is_fine(&self) -> bool {
        self.engine.phase() == DestPhase::Complete
    }

    /// After a refused state the source closes as soon as it read the refusal: the refusal,
    /// not the closed stream, is why this side ends.
    fn on_closed(&mut self, _io: &mut LoopIo, stream: StreamKind) -> Result<(), DriverError> {
        match self.engine.phase() {
            DestPhase::Complete => Ok(()),
            DestPhase::Refused => Err(self.refusal()),
            _ => Err(DriverError::PeerClosed { stream, phase: self.phase() }),
        }
    }

    fn on_other(&mut self, io: &mut LoopIo, completion: Completion) -> Result<(), DriverError> {
        if completion.tag == TAG_UFFD {
            self.on_uffd_read(io, completion)?;
        }
        Ok(())
    }

    fn urgent_tags(&self) -> &[u64] {
        &[TAG_UFFD]
    }

    fn wait_limit(&self) -> Option<Duration> {
        self.engine.faults_waiting().then_some(RETRY_LOOK)
    }

    fn switchover_ns(&self) -> Option<u64> {
        Some(self.engine.stats().state_received_ns).filter(|&ns| ns > 0)
    }

    fn resume_ns(&self) -> Option<u64> {
        Some(self.ctx.run.resume_ns).filter(|&ns| ns > 0)
    }

    fn may_cancel(&self) -> Result<(), CancelRefusal> {
        may_cancel(self.engine, self.ctx.run.resume_ns)
    }

    fn control_view(&self, io: &LoopIo) -> Option<View> {
        let mut stats = self.engine.stats().clone();
        stats.bytes_bulk = io.streams.bytes_received[0];
        stats.bytes_urgent = io.streams.bytes_received[1];
        Some(View {
            phase: self.phase(),
            handed_over: self.engine.phase() != DestPhase::PreSwitch,
            pages_moved: stats.pages_placed,
            counters: Counters::Dest(Box::new(stats)),
            sent_bytes: io.streams.bytes_sent,
            received_bytes: io.streams.bytes_received,
            total_pages: self.engine.layout().total_pages(),
            vcpu_blocked_us: self.engine.fault_histogram().sum_us(),
            vcpu_blocked_us_per_vcpu: self.engine.blocked_us_per_vcpu().to_vec(),
            fault_latency_dist_us: Some(self.engine.fault_histogram().pow2_dist()),
        })
    }
}

impl Resumable for DestWing<'_, '_> {
    fn holding(&self) -> String {
        self.engine.holding()
    }

    fn on_reconnect(&mut self) -> Result<(), DriverError> {
        Ok(self.engine.on_reconnect()?)
    }
}

impl DestWing<'_, '_> {
    /// Handles every complete frame received on `stream`; after each bulk frame the shared
    /// schedule serves faults and places a large window in chunks.
    fn on_received(&mut self, io: &mut LoopIo, stream: StreamKind) -> Result<(), DriverError> {
        while let Some(frame) = io.streams.next_frame(stream)? {
            let event = self.engine.on_frame(stream, frame, &mut self.ctx.port())?;
            if let Some(event) = event {
                self.ctx.on_event(event)?;
            }
            if stream == StreamKind::Bulk {
                schedule::dest_after_bulk_frame(&mut Turn { wing: &mut *self, io: &mut *io })?;
            }
        }
        if stream == StreamKind::Urgent {
            // Best effort: a failure only leaves the kernel's delayed ACKs in place.
            let _ = io.streams.quickack(StreamKind::Urgent);
        }
        Ok(())
    }

    fn on_uffd_read(&mut self, io: &mut LoopIo, completion: Completion) -> Result<(), DriverError> {
        let buf = completion
            .buf
            .unwrap_or_else(|| Buf::with_capacity(UFFD_MSG_LEN_BYTES * UFFD_MSGS_PER_READ));
        match completion.result {
            Ok(_) => on_uffd_messages(self.engine, &mut self.ctx, buf.as_slice())?,
            Err(e)
                if e.raw_os_error() == Some(libc::EAGAIN)
                    || e.raw_os_error() == Some(libc::EINTR) => {}
            Err(source) => return Err(DriverError::Io { what: "userfaultfd read", source }),
        }
        let mut buf = buf;
        buf.clear();
        arm_uffd_read(&mut io.ring, self.ctx.uffd, buf)?;
        schedule::dest_after_faults(&mut Turn { wing: self, io })
    }
}

/// Only before the guest runs here: the state restores and the vCPUs start inside one
/// frame's handling, so the phase says it.
fn may_cancel(engine: &DestEngine, resume_ns: u64) -> Result<(), CancelRefusal> {
    match engine.phase() {
        // A state loaded once was answered with `Loaded`, after which the source may hand
        // over at any moment: from then on only the source decides.
        DestPhase::PreSwitch | DestPhase::Loaded | DestPhase::Refused
            if engine.stats().state_received_ns > 0 =>
        {
            Err(CancelRefusal::StateLoaded)
        }
        DestPhase::PreSwitch if resume_ns == 0 => Ok(()),
        _ => Err(CancelRefusal::GuestRunsHere),
    }
}

fn arm_uffd_read(ring: &mut Ring, uffd: &Uffd, buf: Buf) -> Result<(), DriverError> {
    ring.read(uffd.as_raw_fd(), buf, TAG_UFFD)
        .map_err(|r| DriverError::Ring { what: "userfaultfd read submit", source: r.error })
}

/// Everything a frame or a fault may need besides the engine.
struct Ctx<'a> {
    vm: &'a mut dyn MigratableVm,
    uffd: &'a Uffd,
    regions: &'a [HostRegion],
    layout: &'a crate::memory::Layout,
    run: &'a mut DestRun,
}

impl Ctx<'_> {
    fn sink(&self) -> UffdSink<'_> {
        UffdSink::new(self.uffd, self.regions, self.layout)
    }

    /// The VM port for a frame: placing pages, restoring the state, resuming.
    fn port(&mut self) -> UffdVm<'_> {
        UffdVm::new(UffdSink::new(self.uffd, self.regions, self.layout), &mut *self.vm)
    }

    fn on_event(&mut self, event: DestEvent) -> Result<(), DriverError> {
        match event {
            DestEvent::Resumed => self.run.resume_ns = mono_ns(),
            DestEvent::Complete => {}
        }
        Ok(())
    }
}

fn on_uffd_messages(
    engine: &mut DestEngine,
    ctx: &mut Ctx<'_>,
    bytes: &[u8],
) -> Result<(), DriverError> {
    for event in super::uffd::parse_messages(bytes) {
        if let UffdEvent::PageFault { addr, thread_id, .. } = event {
            let page = page_of_host_addr(ctx.regions, ctx.layout, addr as usize)
                .ok_or(DestError::FaultOutsideMemory { page: u64::MAX })?;
            // A thread the VMM does not name (its own device thread, or a VMM without the
            // method) is charged to no vCPU rather than guessed.
            let vcpu = ctx.vm.vcpu_of_thread(thread_id).unwrap_or(crate::wire::FAULT_VCPU_UNKNOWN);
            engine.on_fault(page, vcpu, &mut ctx.sink())?;
        }
    }
    Ok(())
}

impl<'l, 'c> DestSide for Turn<'_, DestWing<'l, 'c>> {
    fn engine(&mut self) -> &mut DestEngine {
        self.wing.engine
    }

    fn place_chunk(&mut self) -> Result<(), DriverError> {
        let wing = &mut *self.wing;
        if let Some(event) = wing.engine.place_more(&mut wing.ctx.sink())? {
            wing.ctx.on_event(event)?;
        }
        Ok(())
    }

    /// A system call, on purpose (see [`event_loop::serve_urgent_now`]): peeking at the shared
    /// completion queue without it left faults waiting longer.
    fn serve_urgent(&mut self) -> Result<(), DriverError> {
        event_loop::serve_urgent_now(self.wing, self.io).map(drop)
    }
}
