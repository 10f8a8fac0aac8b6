//! The destination side of a migration.
//!
//! Guest memory is registered with a userfaultfd ([`uffd`]) in MISSING mode before anything
//! arrives. [`engine::DestEngine`] decides what to place and what to ask for; a
//! [`crate::ports::PageSink`] places pages (`UFFDIO_COPY` / `UFFDIO_ZEROPAGE`, or plain writes for
//! pre-copy); [`driver`] runs it all on one io_uring that carries the uffd reads, both socket
//! receives and the fault-request sends.

pub mod driver;
pub mod engine;
pub mod sink;
pub mod uffd;

use crate::memory::MemoryError;
use crate::wire::{FrameType, StreamKind, WireError};
pub use engine::{DestEngine, DestEvent, DestPhase, DestStats};

/// The destination engine's bounded queues, as [`DestError::QueueFull`] names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestQueue {
    /// Faults waiting for a page from the network (one per blocked vCPU or VMM thread); it
    /// also bounds the fault requests queued for the urgent stream and the retry bookkeeping.
    FaultsWaiting,
    /// Frames waiting for the bulk stream (acknowledgements, Pongs, DoneAcks, requests asked
    /// again, the recovery report).
    BulkFrames,
}

impl std::fmt::Display for DestQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DestQueue::FaultsWaiting => "faults waiting for the network",
            DestQueue::BulkFrames => "frames for the bulk stream",
        })
    }
}

/// Errors of the destination engine (its driver's own errors are
/// [`crate::driver::DriverError`]).
#[derive(Debug, thiserror::Error)]
pub enum DestError {
    /// A frame could not be decoded or encoded.
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    /// A page reference outside guest memory.
    #[error("memory: {0}")]
    Memory(#[from] MemoryError),
    /// Placing pages failed.
    #[error("placing pages: {0}")]
    Sink(#[from] crate::ports::SinkError),
    /// The source sent a frame that makes no sense now.
    #[error("unexpected {frame:?} frame on the {stream:?} stream in phase {phase:?}")]
    UnexpectedFrame {
        /// Stream it came on.
        stream: StreamKind,
        /// Its type.
        frame: FrameType,
        /// The destination's phase.
        phase: DestPhase,
    },
    /// The handshake failed (this side refused the source, or its Hello was malformed).
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    /// A fault on an address outside guest memory.
    #[error("fault on page {page}, outside guest memory")]
    FaultOutsideMemory {
        /// The page.
        page: u64,
    },
    /// A fault before the state arrived: the guest must not run yet.
    #[error("fault on page {page} before the switch-over: the guest ran before its state arrived")]
    FaultBeforeSwitch {
        /// The page.
        page: u64,
    },
    /// The VMM failed.
    #[error(transparent)]
    Vm(#[from] crate::ports::EmbedError),
    /// The state did not load (the VMM's error was reported once, when it happened).
    #[error("the guest's state did not load here; the source keeps the guest")]
    StateRefused,
    /// A queue reached its bound: the input that would have grown it further is refused.
    #[error("the destination's queue of {queue} is full ({bound} entries)")]
    QueueFull {
        /// Which queue.
        queue: DestQueue,
        /// Its bound.
        bound: usize,
    },
    /// The memory digest did not match the source's.
    #[error(
        "memory digest mismatch: source {source_digest:#018x}, destination {dest_digest:#018x}"
    )]
    DigestMismatch {
        /// Source digest.
        source_digest: u64,
        /// Destination digest.
        dest_digest: u64,
    },
}
