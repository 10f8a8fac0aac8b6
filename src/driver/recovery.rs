//! Replacing a lost connection on the real path: which failures a new connection cures, and
//! swapping the connections under a running loop.
//!
//! The engines do the rest ([`crate::source::SourceEngine::on_reconnect`],
//! [`crate::dest::DestEngine::on_reconnect`]). The ring stays: on the destination its armed
//! userfaultfd read, and any fault message it already holds, carry over to the new connection.

use super::event_loop::{self, LoopIo, LoopOptions, LoopState, Turned, Wing};
use super::inject::Injector;
use super::DriverError;
use crate::control::Control;
use crate::transport::ring_streams::StreamError;
use crate::transport::tcp::{StreamPair, TcpError};
use crate::wire::StreamKind;
use std::time::Duration;

/// How a side gets a new connection for its session: the source dials again, the destination
/// accepts the source's resume. Called with the time it may take, again and again in slices of
/// at most [`RECONNECT_SLICE`] (so an operator's cancel or new address is taken between two);
/// errors are what the last attempt met. It returns an error before its time is up only for a
/// failure no retry can change (a refusal of the session), which ends the recovery. Boxed, so
/// a migration the caller steps ([`Recovering`]) can own it.
pub type Reconnect<'a> = Box<dyn FnMut(Duration) -> Result<StreamPair, TcpError> + 'a>;

/// Longest single call of a [`Reconnect`].
pub const RECONNECT_SLICE: Duration = Duration::from_millis(250);

/// A side's recovery settings.
pub struct Recovery<'a> {
    /// Gets the new connection.
    pub reconnect: Reconnect<'a>,
    /// How long a recovery may take before the side gives up.
    pub timeout: Duration,
}

impl std::fmt::Debug for Recovery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery").field("timeout", &self.timeout).finish()
    }
}

/// What the recoveries of one run cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecoveryCount {
    /// New connections that replaced a lost one.
    pub recoveries: u64,
    /// Time from each failure to its new connection, summed (ms).
    pub recovery_ms: f64,
}

/// A wing whose engine can go on over a new connection.
pub trait Resumable: Wing {
    /// What this side keeps while no connection is up (for the error if none comes).
    fn holding(&self) -> String;
    /// A new connection is attached: the engine resumes from where the peer stands.
    fn on_reconnect(&mut self) -> Result<(), DriverError>;
}

/// Runs `wing` to its end, replacing each lost connection through `recovery` (none: a lost
/// connection ends it, as it does when the injection plan refuses to reconnect). The injector
/// lives across the runs, so each injected fault fires once.
pub fn run_recovering<W: Resumable>(
    wing: &mut W,
    io: &mut LoopIo,
    opts: &LoopOptions,
    recovery: Option<Recovery<'_>>,
) -> Result<RecoveryCount, DriverError> {
    let mut recovering = Recovering::new(io, opts, recovery);
    loop {
        if let Some(count) = recovering.turn(wing, io, opts, opts.tick)? {
            return Ok(count);
        }
    }
}

/// The loop of one side between turns, with its recoveries: [`run_recovering`] turns it to
/// the end, and a caller with a loop of its own turns it from there.
pub struct Recovering<'r> {
    recovery: Option<Recovery<'r>>,
    injector: Option<Injector>,
    refuses: bool,
    count: RecoveryCount,
    state: LoopState,
}

impl std::fmt::Debug for Recovering<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovering").field("count", &self.count).finish()
    }
}

impl<'r> Recovering<'r> {
    /// Arms `opts`' injection plan on `io` and takes the thread's priority `opts` asks for.
    pub fn new(io: &mut LoopIo, opts: &LoopOptions, recovery: Option<Recovery<'r>>) -> Self {
        event_loop::prioritize(opts);
        let injector = event_loop::start_injector(io, opts);
        let refuses = opts.inject.as_ref().is_some_and(|i| i.plan.refuse_reconnect);
        let state = LoopState::new(io);
        Self { recovery, injector, refuses, count: RecoveryCount::default(), state }
    }

    /// One turn, waiting at most `max_wait`; the recoveries' cost once `wing` is done. A lost
    /// connection is replaced inside the turn, which then blocks for up to the recovery's
    /// timeout while the new connection comes.
    pub fn turn<W: Resumable>(
        &mut self,
        wing: &mut W,
        io: &mut LoopIo,
        opts: &LoopOptions,
        max_wait: Duration,
    ) -> Result<Option<RecoveryCount>, DriverError> {
        let control = opts.control.as_deref();
        let turned =
            event_loop::turn(wing, io, opts, &mut self.injector, &mut self.state, max_wait);
        let error = match turned {
            Ok(Turned::Pending) => return Ok(None),
            Ok(Turned::Done) => {
                if let Some(control) = control {
                    event_loop::publish(control, wing, io);
                }
                return Ok(Some(self.count));
            }
            Err(error) => error,
        };
        let refuses = self.refuses;
        let Some(recovery) = self.recovery.as_mut().filter(|_| !refuses && is_recoverable(&error))
        else {
            return Err(error);
        };
        if let Some(control) = control {
            control.set_recovering(true);
        }
        let reconnected = reconnect(io, recovery, error, &*wing, control);
        if let Some(control) = control {
            control.set_recovering(false);
        }
        self.count.recovery_ms += reconnected?;
        self.count.recoveries += 1;
        wing.on_reconnect()?;
        self.state = LoopState::new(io);
        Ok(None)
    }
}

/// True for a failure of the connection itself, which a new one cures: the peer closed it or
/// reset it, it timed out (liveness), nothing moved for the progress deadline, or a frame on
/// it failed its check (a CRC mismatch is never used; what it carried is sent again), or a
/// record on it did not decrypt (changed on the way; a new connection brings a new
/// handshake). An engine's or the VM's failure is not.
pub fn is_recoverable(error: &DriverError) -> bool {
    match error {
        DriverError::PeerClosed { .. } | DriverError::NoProgress { .. } => true,
        DriverError::Stream(stream) => matches!(
            stream,
            StreamError::Io { .. }
                | StreamError::TimedOut { .. }
                | StreamError::Wire { .. }
                | StreamError::Secure { .. }
        ),
        _ => false,
    }
}

/// Takes both old connections off the ring (shut down first, so the peer sees them end even
/// where another handle keeps the socket open) and puts `pair`'s on.
pub fn swap_connections(io: &mut LoopIo, pair: StreamPair) -> Result<(), DriverError> {
    for stream in StreamKind::ALL {
        if io.streams.is_attached(stream) {
            // Best effort: a connection the peer already reset cannot be shut down again.
            let _ = io.streams.shutdown(stream);
            drop(io.streams.detach(&mut io.ring, stream)?);
        }
    }
    let (bulk, urgent, framing) = pair.into_parts();
    let [bulk_framing, urgent_framing] = framing.ok_or(StreamError::FramingTaken)?;
    io.streams.attach_with(&mut io.ring, StreamKind::Bulk, bulk, bulk_framing)?;
    io.streams.attach_with(&mut io.ring, StreamKind::Urgent, urgent, urgent_framing)?;
    io.submit()
}

/// Sheds the old connections and waits for new ones, for at most `recovery.timeout`; on
/// failure the error says what this side holds ([`Resumable::holding`]). Between two slices of
/// the wait, an operator's cancel on `control` is answered as the loop answers it.
pub fn reconnect<W: Resumable>(
    io: &mut LoopIo,
    recovery: &mut Recovery<'_>,
    cause: DriverError,
    wing: &W,
    control: Option<&Control>,
) -> Result<f64, DriverError> {
    let started = std::time::Instant::now();
    tracing::warn!(%cause, "connection lost; recovering");
    for stream in StreamKind::ALL {
        if io.streams.is_attached(stream) {
            let _ = io.streams.shutdown(stream);
        }
    }
    let deadline = started + recovery.timeout;
    let pair = loop {
        if control.is_some_and(|c| c.take_cancel_request(|| wing.may_cancel())) {
            return Err(DriverError::Cancelled { phase: wing.phase() });
        }
        let slice_from = std::time::Instant::now();
        let slice = deadline.saturating_duration_since(slice_from).min(RECONNECT_SLICE);
        let last = match (recovery.reconnect)(slice) {
            Ok(pair) => break pair,
            Err(last) => last,
        };
        let now = std::time::Instant::now();
        if now >= deadline || now < slice_from + slice {
            return Err(DriverError::RecoveryFailed {
                waited_ms: started.elapsed().as_millis() as u64,
                holding: wing.holding(),
                cause: Box::new(cause),
                last: Box::new(last),
            });
        }
    };
    swap_connections(io, pair)?;
    let recovery_ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::warn!(recovery_ms, "new connection attached");
    Ok(recovery_ms)
}
