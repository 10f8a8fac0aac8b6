//! The wiring: one function per side, and nothing in them but hybridmig's public library
//! (TCP transport, session offer, engines and io_uring drivers).

use crate::guest::{CODE_GPA, PAGE_BYTES, PARAMS_GPA, STATUS_GPA};
use crate::machine::Machine;
use hybridmig::dest::driver::{run_dest, DestDriverOptions, DestRun};
use hybridmig::driver::DriverError;
use hybridmig::embed::{EmbedError, MigratableVm};
use hybridmig::session::{wire_regions, AcceptorConfig, Offer};
use hybridmig::source::driver::{run_source, SourceDriverOptions};
use hybridmig::source::{SourceConfig, SourceEngine, SourceError, SourceStats};
use hybridmig::transport::tcp::{self, PairListener, TcpError, TcpOptions};
use hybridmig::wire::MigrationMode;
use std::net::SocketAddr;
use std::time::Duration;
use thiserror::Error;

/// Errors of a migration, by layer.
#[derive(Debug, Error)]
pub enum MigrateError {
    /// Connecting, listening, or the session handshake.
    #[error(transparent)]
    Tcp(#[from] TcpError),
    /// Building the source engine.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The event loop (either side).
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The source's migration failed before the hand-over: the destination never ran the
    /// guest, so it is still the source's, and runs on there.
    #[error("cancelled before the hand-over, the guest runs on at the source: {0}")]
    Cancelled(#[source] DriverError),
    /// The VM's regions.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// The listener's own address.
    #[error("reading the listener's address: {0}")]
    ListenerAddr(std::io::Error),
}

/// How long the destination waits for the source to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The source side: offers the VM's layout and `mode` to the destination at `dest`, then runs
/// the migration to its end. The VM stays paused afterwards: the guest now runs there. A
/// failure before the hand-over resumes the guest here ([`MigrateError::Cancelled`]).
pub fn migrate_source(
    vm: &mut Machine,
    dest: SocketAddr,
    mode: MigrationMode,
    session_id: u64,
) -> Result<SourceStats, MigrateError> {
    let offer = Offer::new(session_id, mode, wire_regions(&vm.regions()));
    let pair = tcp::connect(dest, offer)?;
    let mut cfg = SourceConfig::new(mode, session_id);
    // Hybrid's working set, hottest first: this VMM has no access sampler, but it knows its
    // guest rereads its code, parameters and status on every pass.
    cfg.working_set =
        [CODE_GPA, PARAMS_GPA, STATUS_GPA].iter().map(|gpa| gpa / PAGE_BYTES).collect();
    let mut engine = SourceEngine::new(cfg, &pair.session, vm)?;
    // The caller's thread keeps its priority: an example shares the machine with its tests.
    let opts = SourceDriverOptions { prioritize_thread: false, ..Default::default() };
    match run_source(&mut engine, vm, &pair, &opts, &mut |_| {}) {
        Ok(stats) => Ok(stats),
        Err(error) if !engine.handed_over() => {
            // Dirty logging only slows the guest's writes from now on: not worth failing for.
            let _ = vm.set_dirty_logging(false);
            // Restarts a guest the switch-over paused; a running one is left as it is.
            MigratableVm::resume(vm)?;
            Err(MigrateError::Cancelled(error))
        }
        Err(error) => Err(error.into()),
    }
}

/// The destination side: listens on `listen` for a VM of this one's layout, tells
/// `on_listening` where, and receives the migration into `vm`, whose memory it registers with
/// userfaultfd. Returns once every page is here and both digests matched; the guest runs on.
pub fn migrate_dest(
    vm: &mut Machine,
    listen: SocketAddr,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<DestRun, MigrateError> {
    let accept = AcceptorConfig::new(wire_regions(&vm.regions()));
    let mut listener = PairListener::bind(listen, TcpOptions::default(), accept)?;
    on_listening(listener.local_addr().map_err(MigrateError::ListenerAddr)?);
    let pair = listener.accept_pair(ACCEPT_TIMEOUT)?;
    let opts = DestDriverOptions { prioritize_thread: false, ..Default::default() };
    Ok(run_dest(vm, &pair, &opts, &mut |_| {})?)
}
