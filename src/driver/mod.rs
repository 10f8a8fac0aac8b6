//! The driver wing: what runs an engine on a host, above the sans-IO engines and below the
//! hosts and the CLI.
//!
//! [`event_loop`] is the one io_uring loop both sides share: thread priority, the progress
//! deadline, the periodic tick and the urgent-first service. The source's and destination's
//! drivers ([`crate::source::driver`], [`crate::dest::driver`]) plug their engine's steps into
//! it as a [`event_loop::Wing`], and do their work in the order [`schedule`] gives, which the
//! simulator follows too. Everything that fails on the way up comes out as one
//! [`DriverError`], each variant carrying its typed source.

pub mod event_loop;
pub mod inject;
pub mod recovery;
pub mod schedule;

use crate::dest::{DestError, DestPhase};
use crate::ring::RingError;
use crate::source::{Phase, SourceError};
use crate::transport::ring_streams::StreamError;
use crate::wire::StreamKind;

/// Which engine's phase a driver error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WingPhase {
    /// The source engine's phase.
    Source(Phase),
    /// The destination engine's phase.
    Dest(DestPhase),
}

impl std::fmt::Display for WingPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WingPhase::Source(phase) => write!(f, "source phase {phase:?}"),
            WingPhase::Dest(phase) => write!(f, "destination phase {phase:?}"),
        }
    }
}

/// Errors of a driver: its ring, its streams, its engine, the VM, the peer, the clock.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The io_uring failed an operation of the loop itself.
    #[error("{what}: {source}")]
    Ring {
        /// What the loop was doing.
        what: &'static str,
        /// The ring's error.
        #[source]
        source: RingError,
    },
    /// A migration stream failed (a send, a receive, or the frames received).
    #[error("migration stream: {0}")]
    Stream(#[from] StreamError),
    /// The source engine failed.
    #[error("source engine: {0}")]
    Source(#[from] SourceError),
    /// The destination engine failed.
    #[error("destination engine: {0}")]
    Dest(#[from] DestError),
    /// The VMM failed an effect the driver carried out (restore, resume).
    #[error(transparent)]
    Vm(#[from] crate::ports::EmbedError),
    /// The userfaultfd failed (open, register, unregister).
    #[error("{what}: {source}")]
    Uffd {
        /// What was being done.
        what: &'static str,
        /// The userfaultfd wrapper's error.
        #[source]
        source: crate::dest::uffd::UffdError,
    },
    /// A read of fault messages failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The peer closed a stream (or the connection broke) before the migration finished.
    #[error("the peer closed the {stream:?} stream in {phase}")]
    PeerClosed {
        /// Which stream.
        stream: StreamKind,
        /// Where this side was.
        phase: WingPhase,
    },
    /// A connection was lost and no new one came within the recovery timeout; each side keeps
    /// what it holds.
    #[error(
        "no new connection within {waited_ms} ms after: {cause}; last attempt: {last}; \
         this side holds: {holding}"
    )]
    RecoveryFailed {
        /// Time spent waiting for one.
        waited_ms: u64,
        /// What this side keeps (the engine's account), for the operator.
        holding: String,
        /// What ended the old connection.
        cause: Box<DriverError>,
        /// What the last attempt met.
        last: Box<crate::transport::tcp::TcpError>,
    },
    /// An operator cancelled the migration through the control channel (`migrate-cancel`),
    /// before the hand-over.
    #[error("cancelled by the operator (migrate-cancel) in {phase}")]
    Cancelled {
        /// Where this side was.
        phase: WingPhase,
    },
    /// Nothing moved for the whole progress deadline: no byte sent or received, no frame.
    #[error("no progress for {idle_secs} s in {phase}")]
    NoProgress {
        /// Seconds without progress.
        idle_secs: u64,
        /// The phase it stalled in.
        phase: WingPhase,
    },
}

impl DriverError {
    /// The phase the failure happened in, when it says.
    pub fn phase(&self) -> Option<WingPhase> {
        match self {
            DriverError::PeerClosed { phase, .. }
            | DriverError::NoProgress { phase, .. }
            | DriverError::Cancelled { phase } => Some(*phase),
            DriverError::RecoveryFailed { cause, .. } => cause.phase(),
            _ => None,
        }
    }

    /// A ring error of the loop, named by what the loop was doing.
    pub fn ring(what: &'static str) -> impl FnOnce(RingError) -> DriverError {
        move |source| DriverError::Ring { what, source }
    }
}
