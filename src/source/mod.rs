//! The source side of a migration: pre-copy rounds, working-set tracking, the switch-over,
//! the background push and the fault service.
//!
//! [`engine::SourceEngine`] is the sans-IO state machine, told what to do by [`config`] and
//! steered by the adaptive rules in [`policy`]; [`driver`] runs it on io_uring over the two
//! TCP streams. [`workingset`] estimates the hot pages from access or dirty-log samples and
//! [`push`] orders the background push.

pub mod auto;
pub mod config;
pub mod driver;
pub mod engine;
pub mod policy;
pub mod push;
pub mod workingset;

use crate::memory::MemoryError;
use crate::ports::EmbedError;
use crate::wire::{FrameType, StreamKind, WireError};
pub use config::{CompressionPolicy, LivePass, Phase, SourceConfig, SourceStats};
pub use engine::SourceEngine;
pub use policy::AdaptiveWindow;

/// Errors of the source engine (its driver's own errors are [`crate::driver::DriverError`]).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The VMM failed an operation.
    #[error(transparent)]
    Vm(#[from] EmbedError),
    /// A frame could not be encoded or decoded.
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    /// A page reference outside guest memory.
    #[error("memory: {0}")]
    Memory(#[from] MemoryError),
    /// A page index past the layout.
    #[error("page {page} is outside guest memory")]
    PageOutOfRange {
        /// The page.
        page: u64,
    },
    /// The destination sent a frame that makes no sense now.
    #[error("unexpected {frame:?} frame on the {stream:?} stream in phase {phase:?}")]
    UnexpectedFrame {
        /// Stream it came on.
        stream: StreamKind,
        /// Its type.
        frame: FrameType,
        /// The source's phase.
        phase: Phase,
    },
    /// [`SourceConfig::unacked_cap_pages`] is too small: bulk windows would wait for an Ack
    /// the destination never sends.
    #[error("unacked_cap_pages {cap_pages} is below {min_pages}, the bulk pages between two of the destination's acknowledgements")]
    UnackedCapTooSmall {
        /// The configured cap.
        cap_pages: u64,
        /// The smallest cap allowed ([`SourceConfig::min_unacked_cap_pages`]).
        min_pages: u64,
    },
    /// The handshake failed (the destination refused, or its answer was malformed).
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    /// The destination's memory digest differs from the source's: the source keeps its VM.
    #[error("memory digest mismatch: source {source_digest:#018x}, destination {dest_digest:#018x}; the source VM is kept paused")]
    DigestMismatch {
        /// Source digest.
        source_digest: u64,
        /// Destination digest.
        dest_digest: u64,
    },
    /// The destination could not load the state it was sent and will not run the guest: the
    /// migration is cancelled, and the guest resumes here.
    #[error("the destination could not load the guest's state (its log names why); the migration is cancelled and the guest stays on the source")]
    StateRefused,
}
