//! The embedding API: build a migration, start it, and drive it through a handle.
//!
//! A VMM implements [`crate::embed::MigratableVm`] for its VM, then on the source host builds a
//! [`SourceBuilder`] and on the destination host a [`DestBuilder`]. Each takes the VM, the
//! configuration, the credential and where to connect (an address, a listener, or sockets the
//! caller already connected), and either runs the migration on a thread the library starts
//! ([`SourceBuilder::spawn`], [`DestBuilder::spawn`]), on the caller's thread
//! ([`SourceBuilder::run`], [`DestBuilder::run`]), or on the caller's own event loop, one
//! step at a time ([`SourceBuilder::start`], [`DestBuilder::start`], then
//! [`SourceMigration::step`] whenever its poll descriptor is readable). The [`MigrationHandle`]
//! gives the live
//! status with every counter, a cancel, a recovery to a new address, and a stream of events;
//! [`MigrationHandle::join`] gives the VM back with the outcome.
//!
//! The library never takes over more than the thread it runs on: real-time priority is the
//! caller's choice ([`SourceBuilder::realtime_priority`]), and the destination can be handed
//! its userfaultfd ([`DestBuilder::userfaultfd`]).
//!
//! ```no_run
//! use hybridmig::facade::{DestBuilder, SourceBuilder};
//! use hybridmig::secure::{Credential, Psk};
//! use hybridmig::source::SourceConfig;
//! use hybridmig::wire::MigrationMode;
//! # type Vm = Box<dyn hybridmig::embed::MigratableVm + Send>;
//! fn migrate(source_vm: Vm, dest_vm: Vm) -> Result<(), hybridmig::facade::FacadeError> {
//! let listen = "127.0.0.1:7701".parse().expect("address");
//! // Both hosts hold the same pre-shared key (`hybridmig keygen --out FILE` makes one).
//! let key = Psk::generate().expect("random key");
//! let dest = DestBuilder::listen(listen).credential(Credential::Psk(key.clone())).spawn(dest_vm)?;
//! let cfg = SourceConfig::new(MigrationMode::Hybrid, 42);
//! let source =
//!     SourceBuilder::new(cfg).connect(listen).credential(Credential::Psk(key)).spawn(source_vm)?;
//! for event in source.events().iter().take(1) {
//!     println!("source is now {}", event.status);
//! }
//! let source_end = source.join()?;
//! let dest_end = dest.join()?;
//! assert!(dest_end.verified(), "{:?} / {:?}", source_end.result, dest_end.result);
//! Ok(())
//! }
//! ```

mod dest;
mod handle;
mod source;
mod stepping;

pub use dest::{DestBuilder, DestEnd, DestMigration};
pub use handle::{MigrationEvent, MigrationHandle};
pub use source::{SourceBuilder, SourceEnd, SourceMigration, WorkingSet};

/// What one step of a migration the caller turns came to
/// ([`SourceMigration::step`], [`DestMigration::step`]).
#[derive(Debug)]
pub enum Step<T> {
    /// Not over yet: step again when the poll descriptor is readable, or within the interval
    /// the migration names.
    Pending,
    /// Over on this side: the end, with the VM.
    Finished(T),
}

use crate::driver::DriverError;
use crate::transport::tcp::TcpError;

/// How a migration ended on one host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It completed: the guest runs on the destination and the digests matched.
    Completed,
    /// It was cancelled before the hand-over: the guest runs on the source.
    Cancelled {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// Publishes how `result` ended as the migration's final status.
    fn publish(result: &Result<Outcome, FacadeError>, control: &crate::control::Control) {
        use crate::control::Ending;
        control.end(match result {
            Ok(Outcome::Completed) => Ending::Completed,
            Ok(Outcome::Cancelled { reason }) => Ending::Cancelled(Some(reason.clone())),
            Err(error) => Ending::Failed(error.to_string()),
        });
    }
}

/// Errors of the embedding API, typed all the way from the layer that failed.
#[derive(Debug, thiserror::Error)]
pub enum FacadeError {
    /// Connecting, listening or the handshake failed before the migration started (the
    /// source's guest was not touched).
    #[error("connection: {0}")]
    Tcp(#[from] TcpError),
    /// The migration failed after the hand-over: both hosts keep their half, and the error
    /// names what this one holds.
    #[error("migration: {0}")]
    Driver(#[from] DriverError),
    /// The source engine could not be built from the VM.
    #[error("source: {0}")]
    Source(#[from] crate::source::SourceError),
    /// The VM's regions do not form a valid layout.
    #[error("vm: {0}")]
    Vm(#[from] crate::ports::EmbedError),
    /// The VM failed to resume after a cancel: the guest is paused on the source, whole.
    #[error("the source guest could not be resumed after the cancel ({cancel}): {source}")]
    ResumeAfterCancel {
        /// Why the migration was cancelled.
        cancel: String,
        /// The VMM's error.
        source: crate::ports::EmbedError,
    },
    /// The userfaultfd given could not be set up.
    #[error("userfaultfd: {0}")]
    Uffd(#[from] crate::dest::uffd::UffdError),
    /// The migration was cancelled before its first connection opened.
    #[error("cancelled before {before}")]
    Cancelled {
        /// What had not happened yet.
        before: &'static str,
    },
    /// Authentication is on by default, and no credential was given.
    #[error("the {side} was given no credential: every connection is authenticated (give a pre-shared key with .credential())")]
    NoCredential {
        /// Which side.
        side: &'static str,
    },
    /// The builder was not told where to connect.
    #[error("the {side} was given no address, listener or connections")]
    NoTarget {
        /// Which side.
        side: &'static str,
    },
    /// A migration that already gave its end was stepped again.
    #[error("the migration has ended and its end was already given")]
    Finished,
    /// The thread the library started could not start, or it panicked.
    #[error("migration thread: {0}")]
    Thread(String),
}
