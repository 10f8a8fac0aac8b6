//! The wiring: one function per side, through hybridmig's embedding API alone
//! (`hybridmig::facade`: a builder per side, run on the caller's thread).

use crate::machine::Machine;
use hybridmig::dest::driver::DestRun;
use hybridmig::facade::{DestBuilder, FacadeError, Outcome, SourceBuilder, WorkingSet};
use hybridmig::secure::Credential;
use hybridmig::source::{SourceConfig, SourceStats};
use hybridmig::wire::MigrationMode;
use std::net::SocketAddr;
use std::time::Duration;
use thiserror::Error;

/// Errors of a migration, by layer.
#[derive(Debug, Error)]
pub enum MigrateError {
    /// The library's error (connection, engine, event loop, VM), typed by the layer that failed.
    #[error(transparent)]
    Facade(#[from] FacadeError),
    /// The migration failed before the hand-over: the destination never ran the guest, so the
    /// library gave it back running here.
    #[error("cancelled before the hand-over, the guest runs on at the source: {0}")]
    Cancelled(String),
    /// The destination was cancelled before its guest ran (it holds nothing).
    #[error("the destination was cancelled before the guest ran there: {0}")]
    DestCancelled(String),
}

/// How long hybrid's working set is sampled before the migration starts.
const WORKING_SET_SAMPLE_MS: u64 = 300;

/// How long the destination waits for the source to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The source side: migrates `vm` in `mode` to the destination at `dest`, proving `key`. The
/// VM stays paused afterwards: the guest now runs there. A failure before the hand-over leaves
/// the guest running here ([`MigrateError::Cancelled`]).
pub fn migrate_source(
    vm: &mut Machine,
    dest: SocketAddr,
    mode: MigrationMode,
    session_id: u64,
    key: Credential,
) -> Result<SourceStats, MigrateError> {
    let cfg = SourceConfig::new(mode, session_id);
    // Hybrid's working set, sampled by the library while the guest runs: this VMM has no
    // access sampler, so the library falls back to dirty-log windows (the pages written).
    let working_set = WorkingSet::Sample { for_ms: WORKING_SET_SAMPLE_MS };
    // The caller's thread keeps its priority (the builders never raise it unless asked).
    let end = SourceBuilder::new(cfg)
        .connect(dest)
        .credential(key)
        .working_set(working_set)
        .run(&mut *vm);
    match end.result {
        Ok(Outcome::Completed) => Ok(end.stats),
        Ok(Outcome::Cancelled { reason }) => {
            // Dirty logging only slows the guest's writes from now on: not worth failing for.
            let _ = vm.set_dirty_logging(false);
            Err(MigrateError::Cancelled(reason))
        }
        Err(error) => Err(error.into()),
    }
}

/// The destination side: listens on `listen` for a VM of this one's layout, tells
/// `on_listening` where, and receives the migration into `vm`, whose memory the library
/// registers with userfaultfd. Returns once every page is here and both digests matched; the
/// guest runs on.
pub fn migrate_dest(
    vm: &mut Machine,
    listen: SocketAddr,
    key: Credential,
    on_listening: impl FnOnce(SocketAddr) + Send,
) -> Result<DestRun, MigrateError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let builder =
        DestBuilder::listen(listen).credential(key).accept_timeout(ACCEPT_TIMEOUT).on_listening(tx);
    std::thread::scope(|scope| {
        // The builder runs on this thread; the address goes out as soon as it is bound.
        scope.spawn(move || {
            if let Ok(addr) = rx.recv_timeout(ACCEPT_TIMEOUT) {
                on_listening(addr);
            }
        });
        let end = builder.run(&mut *vm);
        match end.result {
            Ok(Outcome::Completed) => Ok(end.run),
            Ok(Outcome::Cancelled { reason }) => Err(MigrateError::DestCancelled(reason)),
            Err(error) => Err(error.into()),
        }
    })
}
