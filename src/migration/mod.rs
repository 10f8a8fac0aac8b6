//! A migration of the built-in VMM's guest, end to end: the source host, the destination
//! host, the local two-process run behind `hybridmig migrate`, and the merged report.

pub mod bench;
mod cancel;
mod controlled;
pub mod delayline;
pub mod host;
pub mod local;
pub mod netns;
pub mod phases;
pub mod progress;
pub mod reference;
pub mod report;

pub use host::{run_dest_host, run_source_host, DestHostOptions, KvmGuest, SourceHostOptions};
pub use local::{migrate_local, unmigrated_digest, LocalMigration};
pub use reference::{run_reference, ReferenceRun};
pub use report::{DestReport, GuestSite, MigrationReport, Outcome, SourceReport};

/// Exit status of a `hybridmig` process whose migration was cancelled before the hand-over
/// (it still prints its report): 0 is a completed migration, 1 a failure.
pub const EXIT_CANCELLED: i32 = 3;

/// Errors of a whole migration.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The VMM failed.
    #[error("vm: {0}")]
    Vm(#[from] crate::vm::VmError),
    /// The source engine failed.
    #[error("source: {0}")]
    Source(#[from] crate::source::SourceError),
    /// The destination engine failed.
    #[error("destination: {0}")]
    Dest(#[from] crate::dest::DestError),
    /// A driver (its ring, streams, engine, the peer) failed.
    #[error(transparent)]
    Driver(#[from] crate::driver::DriverError),
    /// The network namespaces or the listening address are unusable.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    /// Connecting the two streams failed.
    #[error("transport: {0}")]
    Tcp(#[from] crate::transport::tcp::TcpError),
    /// Making, writing or loading the migration's key failed.
    #[error("key: {0}")]
    Key(#[from] crate::secure::KeyError),
    /// An OS call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// `migrate` needs a finite op count to compare digests.
    #[error("a migration needs --ops K: the guest must finish to compare its digest with an unmigrated run")]
    NeedsOps,
    /// The reference run did not finish.
    #[error("the unmigrated reference run did not finish its ops")]
    ReferenceUnfinished,
    /// A host process failed.
    #[error("the {host} process failed ({status}): {detail}")]
    HostFailed {
        /// Which host.
        host: &'static str,
        /// Its exit status.
        status: String,
        /// The last line it printed on stderr.
        detail: String,
    },
    /// Neither host process showed progress (pages moved, guest ops) for the progress
    /// timeout while this one was still running.
    #[error(
        "the {host} process was given up: neither host showed progress (pages moved or guest \
         ops) for {idle_s} s"
    )]
    HostNoProgress {
        /// The host still running.
        host: &'static str,
        /// Seconds without progress.
        idle_s: u64,
    },
    /// The destination's guest stopped making progress before it finished its ops.
    #[error(
        "the guest made no progress for {idle_ms} ms before finishing (its ops counter stayed \
         at {ops_done})"
    )]
    GuestNoProgress {
        /// The guest's ops, unchanged all that time.
        ops_done: u64,
        /// Time without progress, ms.
        idle_ms: u64,
    },
    /// A host's report could not be read.
    #[error("the {host} report is unreadable: {detail}")]
    BadReport {
        /// Which host.
        host: &'static str,
        /// Why.
        detail: String,
    },
    /// An operator cancelled the migration (`migrate-cancel`) before it began.
    #[error("cancelled by the operator (migrate-cancel) before {before}")]
    OperatorCancelled {
        /// What had not happened yet.
        before: &'static str,
    },
    /// The source guest could not be resumed after a cancelled migration.
    #[error("resuming the source guest after the migration was cancelled: {0}")]
    ResumeAfterCancel(#[source] crate::ports::EmbedError),
    /// A host's output pipe was missing.
    #[error("no output pipe from the {host} process")]
    ChildOutput {
        /// Which host.
        host: &'static str,
    },
}
