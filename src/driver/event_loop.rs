//! The event loop both drivers share: one io_uring thread that waits on completions and a
//! periodic tick, and hands each completion to the side's [`Wing`].
//!
//! Data enters as ring completions (socket receives and send completions, turned into
//! [`StreamEvent`]s by [`RingStreams`], and the wing's own operations such as userfaultfd
//! reads) and leaves as sends the wing queues in [`Wing::step`]. The loop fails only when
//! nothing has moved for [`LoopOptions::progress_timeout`]: no byte either way, no frame.
//! Urgent work comes first: [`serve_urgent_now`] lets a wing in the middle of long work (a
//! bulk buffer being encoded, a page window being placed) pick the urgent stream's and its own
//! urgent completions out of the ring before the rest. A fault-injection plan
//! ([`super::inject`]), when given, is checked at the top of every loop turn.

use super::inject::{Injection, Injector};
use super::schedule::Outlet;
use super::{DriverError, WingPhase};
use crate::control::{CancelRefusal, Control, View};
use crate::metrics::mono_ns;
use crate::ring::{Completion, Ring};
use crate::session::Role;
use crate::transport::ring_streams::{RingStreams, StreamEvent};
use crate::transport::tcp::StreamPair;
use crate::wire::{Limits, StreamKind};
use std::sync::Arc;
use std::time::Duration;

/// Submission queue entries of a driver's ring.
const RING_ENTRIES: u32 = 256;
/// Longest time between two views published to the control channel.
const PUBLISH_NS: u64 = 100_000_000;

/// Tunables of the shared loop.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// Period of the wing's tick hook (also the longest single wait).
    pub tick: Duration,
    /// Fail after this long without progress.
    pub progress_timeout: Duration,
    /// Ask for real-time priority for the loop's thread (needs CAP_SYS_NICE).
    pub prioritize_thread: bool,
    /// Which side runs the loop, for the log.
    pub name: &'static str,
    /// Faults to inject (tests and drills); `None` costs one check a turn.
    pub inject: Option<Injection>,
    /// The control channel this side publishes to and takes cancels from; `None` costs one
    /// check a turn.
    pub control: Option<Arc<Control>>,
}

impl Default for LoopOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(10),
            progress_timeout: Duration::from_secs(600),
            prioritize_thread: true,
            name: "driver",
            inject: None,
            control: None,
        }
    }
}

/// The ring and the two streams on it. The ring is declared first so it is dropped first: its
/// drop cancels what is in flight while the streams' sockets are still open.
#[derive(Debug)]
pub struct LoopIo {
    /// The loop's io_uring.
    pub ring: Ring,
    /// The bulk and urgent streams.
    pub streams: RingStreams,
}

impl LoopIo {
    /// A ring with both streams of `pair` on it, each with `send_bufs` send buffers of
    /// `send_buf_bytes`.
    /// Every frame received is checked by the session's [`crate::session::FrameGate`] for
    /// `role` before the wing sees it.
    pub fn new(
        pair: &StreamPair,
        role: Role,
        send_bufs: usize,
        send_buf_bytes: usize,
    ) -> Result<LoopIo, DriverError> {
        let mut ring = Ring::new(RING_ENTRIES).map_err(DriverError::ring("io_uring setup"))?;
        let mut streams =
            RingStreams::new(&mut ring, pair, send_bufs, send_buf_bytes, Limits::default())?;
        streams.guard(role, pair.session.version);
        Ok(LoopIo { ring, streams })
    }

    /// Submits queued operations without waiting.
    pub fn submit(&mut self) -> Result<(), DriverError> {
        self.ring.submit().map(drop).map_err(DriverError::ring("io_uring submit"))
    }
}

/// What the loop does after a wing's step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The migration is over on this side: leave the loop.
    Done,
    /// Wait for a completion or the tick.
    Wait,
    /// Every send buffer is in the kernel: wait, and tell the wing how long the link held it
    /// ([`Wing::on_link_wait`]).
    WaitOnLink,
}

/// One side's engine-specific steps, plugged into the shared loop.
pub trait Wing {
    /// The engine's phase, for errors.
    fn phase(&self) -> WingPhase;

    /// Runs every [`LoopOptions::tick`] (the caller's hook).
    fn tick(&mut self);

    /// Queues what the engine has to send; says whether the loop is done.
    fn step(&mut self, io: &mut LoopIo) -> Result<Next, DriverError>;

    /// A stream event other than [`StreamEvent::Closed`].
    fn on_event(&mut self, io: &mut LoopIo, event: StreamEvent) -> Result<(), DriverError>;

    /// The peer closed `stream`. The streams survive it; by default this side fails with
    /// [`DriverError::PeerClosed`] unless [`Wing::closed_is_fine`].
    fn on_closed(&mut self, _io: &mut LoopIo, stream: StreamKind) -> Result<(), DriverError> {
        if self.closed_is_fine() {
            return Ok(());
        }
        Err(DriverError::PeerClosed { stream, phase: self.phase() })
    }

    /// True once a closed stream no longer matters (this side's work is over).
    fn closed_is_fine(&self) -> bool {
        false
    }

    /// A completion of the wing's own operations (tags from
    /// [`crate::transport::ring_streams::FIRST_CALLER_TAG`] up).
    fn on_other(&mut self, _io: &mut LoopIo, _completion: Completion) -> Result<(), DriverError> {
        Ok(())
    }

    /// The wing's own tags that [`serve_urgent_now`] serves ahead of bulk work.
    fn urgent_tags(&self) -> &[u64] {
        &[]
    }

    /// The longest the loop may wait for a completion now, if shorter than the tick (the
    /// destination, while a fault waits, must look at its retry times often).
    fn wait_limit(&self) -> Option<Duration> {
        None
    }

    /// The loop waited `_wait_ns` with every send buffer in the kernel.
    fn on_link_wait(&mut self, _wait_ns: u64) {}

    /// When this side saw the switch-over (mono ns), for `switchover+MS` injection points:
    /// the source's pause; on the destination, the state's arrival.
    fn switchover_ns(&self) -> Option<u64> {
        None
    }

    /// When this side saw the resume (mono ns), for `resume+MS` injection points: the
    /// destination's resume; on the source, the hand-over (the state queued for sending).
    fn resume_ns(&self) -> Option<u64> {
        None
    }

    /// Whether an operator's cancel may stop this side now, or why not.
    fn may_cancel(&self) -> Result<(), CancelRefusal> {
        Ok(())
    }

    /// What this side publishes to its control channel (None: nothing).
    fn control_view(&self, _io: &LoopIo) -> Option<View> {
        None
    }
}

/// When the loop last published to the control channel, and in which phase.
#[derive(Debug, Default)]
struct Published {
    at_ns: u64,
    phase: Option<WingPhase>,
}

/// The control channel's part of a turn: an operator's cancel is answered here, on the thread
/// that owns the engine (so the answer cannot race the hand-over), and a view is published at
/// each phase change and every [`PUBLISH_NS`].
fn control_turn<W: Wing>(
    control: &Control,
    wing: &W,
    io: &LoopIo,
    now: u64,
    published: &mut Published,
) -> Result<(), DriverError> {
    if control.take_cancel_request(|| wing.may_cancel()) {
        return Err(DriverError::Cancelled { phase: wing.phase() });
    }
    let phase = wing.phase();
    if published.phase != Some(phase) || now.saturating_sub(published.at_ns) >= PUBLISH_NS {
        publish(control, wing, io);
        *published = Published { at_ns: now, phase: Some(phase) };
    }
    Ok(())
}

/// Publishes `wing`'s view now.
pub fn publish<W: Wing>(control: &Control, wing: &W, io: &LoopIo) {
    if let Some(view) = wing.control_view(io) {
        control.publish(view);
    }
}

/// One turn's view of a wing and its I/O: what the shared scheduling ([`super::schedule`])
/// works through on the real path.
pub struct Turn<'a, W> {
    /// The side's wing.
    pub wing: &'a mut W,
    /// Its ring and streams.
    pub io: &'a mut LoopIo,
}

impl<W: Wing> Outlet for Turn<'_, W> {
    type Error = DriverError;

    fn take_buf(&mut self, stream: StreamKind) -> Option<Vec<u8>> {
        self.io.streams.take_send_buf(stream)
    }

    fn put_back(&mut self, stream: StreamKind, buf: Vec<u8>) {
        self.io.streams.put_back(stream, buf);
    }

    fn send(&mut self, stream: StreamKind, buf: Vec<u8>) -> Result<(), DriverError> {
        Ok(self.io.streams.send(&mut self.io.ring, stream, buf)?)
    }

    fn push_now(&mut self) -> Result<(), DriverError> {
        self.io.submit()
    }

    fn seals(&self, stream: StreamKind) -> bool {
        self.io.streams.is_sealed(stream)
    }
}

/// Runs `wing` until its step says [`Next::Done`].
pub fn run<W: Wing>(wing: &mut W, io: &mut LoopIo, opts: &LoopOptions) -> Result<(), DriverError> {
    let mut injector = start_injector(io, opts);
    run_with(wing, io, opts, &mut injector)
}

/// The injector of `opts`' plan, armed on `io`'s streams (None without a plan). A driver that
/// runs the loop again after a recovery keeps it, so each injection fires once.
pub fn start_injector(io: &mut LoopIo, opts: &LoopOptions) -> Option<Injector> {
    opts.inject.as_ref().map(|plan| Injector::start(plan, mono_ns(), &mut io.streams))
}

/// [`run`] with the injector kept by the caller.
pub fn run_with<W: Wing>(
    wing: &mut W,
    io: &mut LoopIo,
    opts: &LoopOptions,
    injector: &mut Option<Injector>,
) -> Result<(), DriverError> {
    prioritize(opts);
    let mut state = LoopState::new(io);
    loop {
        if turn(wing, io, opts, injector, &mut state, opts.tick)? == Turned::Done {
            return Ok(());
        }
    }
}

/// Asks for real-time priority for the calling thread when `opts` says so.
pub fn prioritize(opts: &LoopOptions) {
    if opts.prioritize_thread && !crate::ring::prioritize_this_thread() {
        tracing::info!("{} event loop runs at normal priority (no CAP_SYS_NICE)", opts.name);
    }
}

/// What one [`turn`] of the loop came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turned {
    /// The wing is done: the migration is over on this side.
    Done,
    /// More turns are needed.
    Pending,
}

/// What the loop remembers from one turn to the next.
#[derive(Debug)]
pub struct LoopState {
    next_tick_ns: u64,
    last_marker: u64,
    last_progress_ns: u64,
    published: Published,
}

impl LoopState {
    /// A fresh state for `io`'s streams: the tick is due and progress counts from now.
    pub fn new(io: &LoopIo) -> Self {
        Self {
            next_tick_ns: 0,
            last_marker: io.streams.progress_marker(),
            last_progress_ns: mono_ns(),
            published: Published::default(),
        }
    }
}

/// One turn of the loop: the tick when due, the control channel, the injections, the
/// progress deadline, the wing's step, one wait of at most `max_wait` (and at most the tick),
/// and every completion that is ready.
pub fn turn<W: Wing>(
    wing: &mut W,
    io: &mut LoopIo,
    opts: &LoopOptions,
    injector: &mut Option<Injector>,
    state: &mut LoopState,
    max_wait: Duration,
) -> Result<Turned, DriverError> {
    let now = mono_ns();
    let longest_wait = opts.tick.min(max_wait);
    if now >= state.next_tick_ns {
        wing.tick();
        state.next_tick_ns = now + opts.tick.as_nanos() as u64;
    }
    if let Some(control) = opts.control.as_deref() {
        control_turn(control, wing, io, now, &mut state.published)?;
    }
    if let Some(injector) = injector.as_mut() {
        if stalls(injector, wing, io, now, longest_wait)? {
            // A stall of this side's own making is not the peer's lack of progress.
            state.last_progress_ns = mono_ns();
            return Ok(Turned::Pending);
        }
    }
    let marker = io.streams.progress_marker();
    if marker != state.last_marker {
        (state.last_marker, state.last_progress_ns) = (marker, now);
    } else if now.saturating_sub(state.last_progress_ns) > opts.progress_timeout.as_nanos() as u64 {
        let idle_secs = opts.progress_timeout.as_secs();
        return Err(DriverError::NoProgress { idle_secs, phase: wing.phase() });
    }
    match wing.step(io)? {
        Next::Done => return Ok(Turned::Done),
        Next::WaitOnLink => wait_on_link(wing, io, longest_wait)?,
        Next::Wait => {
            let wait = wing.wait_limit().map_or(longest_wait, |limit| limit.min(longest_wait));
            io.ring.submit_and_wait(1, Some(wait)).map_err(DriverError::ring("io_uring wait"))?;
        }
    }
    while let Some(completion) = io.ring.next_completion() {
        dispatch(wing, io, completion)?;
    }
    Ok(Turned::Pending)
}

/// Fires the injections due now; true when this side stalls, after sleeping up to one tick
/// of the stall (no completion handled, no send queued).
fn stalls<W: Wing>(
    injector: &mut Injector,
    wing: &W,
    io: &mut LoopIo,
    now: u64,
    tick: Duration,
) -> Result<bool, DriverError> {
    let left_ns = injector.turn(now, wing.switchover_ns(), wing.resume_ns(), &mut io.streams)?;
    if left_ns == 0 {
        return Ok(false);
    }
    std::thread::sleep(Duration::from_nanos(left_ns).min(tick));
    Ok(true)
}

/// Hands one completion to the wing: a stream event, a closed stream, or its own.
pub fn dispatch<W: Wing>(
    wing: &mut W,
    io: &mut LoopIo,
    completion: Completion,
) -> Result<(), DriverError> {
    match io.streams.on_completion(&mut io.ring, completion)? {
        Ok(StreamEvent::Closed(stream)) => wing.on_closed(io, stream),
        Ok(event) => wing.on_event(io, event),
        Err(completion) => wing.on_other(io, completion),
    }
}

/// Serves the urgent stream's completions (receives, and sends that free a buffer for the
/// next answer) and the wing's urgent tags ahead of everything else ready; true when any
/// was served. The submit is a system call on purpose: entering the kernel runs the ring's
/// task work, which is what posts a waiting urgent completion.
pub fn serve_urgent_now<W: Wing>(wing: &mut W, io: &mut LoopIo) -> Result<bool, DriverError> {
    io.submit()?;
    let recv_tag = io.streams.recv_tag(StreamKind::Urgent);
    let send_tag = io.streams.send_tag(StreamKind::Urgent);
    let mut served = false;
    loop {
        let extra = wing.urgent_tags();
        let wanted = |tag: u64| tag == recv_tag || tag == send_tag || extra.contains(&tag);
        let Some(completion) = io.ring.take_completion(wanted) else { break };
        dispatch(wing, io, completion)?;
        served = true;
    }
    Ok(served)
}

/// Waits with every send buffer in the kernel, and tells the wing how long that took. The
/// sends go in first, timed apart from the wait: on loopback and veth a send delivers its
/// packets inside the call, which is the loop's own work, not a wait on the link.
fn wait_on_link<W: Wing>(wing: &mut W, io: &mut LoopIo, tick: Duration) -> Result<(), DriverError> {
    if io.ring.submit().map_err(DriverError::ring("io_uring submit"))? > 0 {
        return Ok(()); // a send finished inside the call: no wait
    }
    let from_ns = mono_ns();
    io.ring.submit_and_wait(1, Some(tick)).map_err(DriverError::ring("io_uring wait"))?;
    wing.on_link_wait(mono_ns().saturating_sub(from_ns));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::inject::{InjectLog, InjectPlan, Side};
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    /// A wing that sends nothing and is done after `done_after_ns`.
    struct Idle {
        started_ns: u64,
        done_after_ns: u64,
        /// When the first stream event came (mono ns; 0 before).
        first_event_ns: u64,
    }

    fn idle(done_after_ns: u64) -> Idle {
        Idle { started_ns: mono_ns(), done_after_ns, first_event_ns: 0 }
    }

    impl Wing for Idle {
        fn phase(&self) -> WingPhase {
            WingPhase::Source(crate::source::Phase::Setup)
        }
        fn tick(&mut self) {}
        fn step(&mut self, _io: &mut LoopIo) -> Result<Next, DriverError> {
            let done = mono_ns() - self.started_ns >= self.done_after_ns;
            Ok(if done { Next::Done } else { Next::Wait })
        }
        fn on_event(&mut self, io: &mut LoopIo, event: StreamEvent) -> Result<(), DriverError> {
            if self.first_event_ns == 0 {
                self.first_event_ns = mono_ns();
            }
            if let StreamEvent::Received(stream) = event {
                // Raw bytes, not frames: dropping the reader's error keeps the test small.
                let _ = io.streams.next_frame(stream);
            }
            Ok(())
        }
    }

    fn pair() -> (StreamPair, [TcpStream; 2]) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connect = || {
            let far = TcpStream::connect(addr).expect("connect");
            (listener.accept().expect("accept").0, far)
        };
        let ((bulk, far_bulk), (urgent, far_urgent)) = (connect(), connect());
        let session = crate::session::SessionParams {
            version: crate::wire::VERSION_CURRENT,
            session_id: 1,
            mode: crate::wire::MigrationMode::Postcopy,
            intent: crate::session::SessionIntent::New,
            regions: Vec::new(),
            page_size: 4096,
        };
        (StreamPair::new(bulk, urgent, session), [far_bulk, far_urgent])
    }

    fn opts(progress_timeout_ms: u64) -> LoopOptions {
        LoopOptions {
            progress_timeout: Duration::from_millis(progress_timeout_ms),
            prioritize_thread: false,
            ..LoopOptions::default()
        }
    }

    #[test]
    fn fails_only_after_the_progress_deadline_without_progress() {
        let (pair, _far) = pair();
        let mut io = LoopIo::new(&pair, Role::Acceptor, 1, 1024).expect("io");
        let mut wing = idle(u64::MAX);
        let err = run(&mut wing, &mut io, &opts(100)).expect_err("nothing moves");
        assert!(matches!(err, DriverError::NoProgress { .. }), "{err}");
        assert!(mono_ns() - wing.started_ns >= 100_000_000);
    }

    #[test]
    fn bytes_arriving_keep_the_loop_alive_past_the_deadline() {
        let (pair, [mut far_bulk, _far_urgent]) = pair();
        let mut io = LoopIo::new(&pair, Role::Acceptor, 1, 1024).expect("io");
        let feeder = std::thread::spawn(move || {
            for _ in 0..30 {
                std::thread::sleep(Duration::from_millis(20));
                if far_bulk.write_all(&[0u8; 8]).is_err() {
                    break;
                }
            }
        });
        // Done after 400 ms, four deadlines of 100 ms, with a byte every 20 ms meanwhile.
        let mut wing = idle(400_000_000);
        run(&mut wing, &mut io, &opts(100)).expect("progress keeps it alive");
        feeder.join().expect("feeder");
    }

    #[test]
    fn a_closed_stream_is_a_typed_peer_closed_error() {
        let (pair, far) = pair();
        drop(far);
        let mut io = LoopIo::new(&pair, Role::Acceptor, 1, 1024).expect("io");
        let mut wing = idle(u64::MAX);
        let err = run(&mut wing, &mut io, &opts(5_000)).expect_err("the peer closed");
        let DriverError::PeerClosed { stream, .. } = err else { panic!("{err}") };
        // The streams survive it: the dead connection comes off, ready for a new one.
        assert!(io.streams.is_closed(stream));
        io.streams.detach(&mut io.ring, stream).expect("detach the closed stream");
        assert!(!io.streams.is_attached(stream));
    }

    fn injecting(progress_timeout_ms: u64, spec: &str) -> (LoopOptions, InjectLog) {
        let plan = InjectPlan::parse(spec).expect("spec").only_for(Side::Source).expect("side");
        let injection = Injection::new(Side::Source, plan);
        let log = injection.log.clone();
        (LoopOptions { inject: Some(injection), ..opts(progress_timeout_ms) }, log)
    }

    #[test]
    fn an_injected_disconnect_closes_this_side_at_its_point() {
        let (pair, _far) = pair();
        let mut io = LoopIo::new(&pair, Role::Acceptor, 1, 1024).expect("io");
        let mut wing = idle(u64::MAX);
        let (opts, log) = injecting(5_000, "disconnect-bulk@start+50");
        let err = run(&mut wing, &mut io, &opts).expect_err("the bulk stream was shut down");
        let DriverError::PeerClosed { stream, .. } = err else { panic!("{err}") };
        assert_eq!(stream, StreamKind::Bulk);
        let elapsed_ms = (mono_ns() - wing.started_ns) / 1_000_000;
        assert!((50..1_000).contains(&elapsed_ms), "closed after {elapsed_ms} ms");
        let injected = log.entries();
        assert_eq!(injected.len(), 1);
        assert_eq!(injected[0].what, "disconnect-bulk@start+50");
        // Checked every loop turn: the tick is 10 ms.
        assert!((50.0..80.0).contains(&injected[0].at_ms), "{injected:?}");
    }

    #[test]
    fn a_stall_handles_nothing_and_is_not_a_lack_of_progress() {
        let (pair, [mut far_bulk, _far_urgent]) = pair();
        let mut io = LoopIo::new(&pair, Role::Acceptor, 1, 1024).expect("io");
        let feeder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            far_bulk.write_all(&[0u8; 8]).expect("write during the stall");
            far_bulk
        });
        // The stall outlasts the progress deadline; the loop is done 100 ms after it ends.
        let mut wing = idle(300_000_000);
        let (opts, log) = injecting(150, "stall@start+0:200");
        run(&mut wing, &mut io, &opts).expect("a stall is not a lack of progress");
        let _far_bulk = feeder.join().expect("feeder");
        let first_event_ms = (wing.first_event_ns - wing.started_ns) / 1_000_000;
        assert!(first_event_ms >= 199, "an event was handled {first_event_ms} ms in, mid-stall");
        assert_eq!(log.entries().len(), 1);
    }
}
