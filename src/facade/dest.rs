//! The destination side of the embedding API.

use super::handle::MigrationHandle;
use super::stepping::{self, Stepper, Turning};
use super::{FacadeError, Outcome, Step};
use crate::control::{connect, CancelRefusal, Control, ControlError, MigrationStatus, Side};
use crate::dest::driver::{DestDriverOptions, DestLoop, DestRun};
use crate::dest::uffd::{Uffd, UFFD_FEATURE_THREAD_ID};
use crate::driver::recovery::Recovery;
use crate::driver::{DriverError, WingPhase};
use crate::embed::MigratableVm;
use crate::secure::{Credential, SecureConfig};
use crate::session::{wire_regions, AcceptorConfig};
use crate::transport::tcp::{PairListener, StreamPair, TcpOptions};
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

/// Where the destination's connections come from.
#[derive(Debug)]
enum Target {
    /// Listen on this address (and accept the source's resume there, or where
    /// [`MigrationHandle::recover`] says).
    Listen(SocketAddr),
    /// Connections the caller accepted; no recovery unless an address is given later.
    Streams(Box<StreamPair>),
}

/// Builds the destination side of a migration. See the [module docs](super).
#[derive(Debug)]
pub struct DestBuilder {
    target: Target,
    tcp: TcpOptions,
    driver: DestDriverOptions,
    accept_timeout: Duration,
    recover_timeout: Option<Duration>,
    uffd: Option<Uffd>,
    control: Arc<Control>,
    on_listening: Option<std::sync::mpsc::SyncSender<SocketAddr>>,
}

/// How the destination side ended, with its VM.
#[derive(Debug)]
pub struct DestEnd<V> {
    /// The VM, given back: after a completed migration its guest runs here, whole.
    pub vm: V,
    /// Completed, cancelled, or the error that ended it.
    pub result: Result<Outcome, FacadeError>,
    /// The counters and fault latencies (empty when no connection opened).
    pub run: DestRun,
}

impl<V> DestEnd<V> {
    /// True when the migration completed and the digests matched.
    pub fn verified(&self) -> bool {
        matches!(self.result, Ok(Outcome::Completed))
    }
}

impl DestBuilder {
    fn with(target: Target) -> Self {
        let driver = DestDriverOptions { prioritize_thread: false, ..Default::default() };
        Self {
            target,
            tcp: TcpOptions::default(),
            driver,
            accept_timeout: Duration::from_secs(600),
            recover_timeout: Some(Duration::from_secs(60)),
            uffd: None,
            control: Arc::new(Control::new(Side::Destination)),
            on_listening: None,
        }
    }

    /// Listens on `addr` for the source (port 0: any free port, see [`Self::on_listening`]).
    pub fn listen(addr: SocketAddr) -> Self {
        Self::with(Target::Listen(addr))
    }

    /// Uses connections the caller accepted and handshook.
    pub fn streams(pair: StreamPair) -> Self {
        Self::with(Target::Streams(Box::new(pair)))
    }

    /// Sends the address actually bound (useful with port 0) once the listener is up.
    pub fn on_listening(mut self, tx: std::sync::mpsc::SyncSender<SocketAddr>) -> Self {
        self.on_listening = Some(tx);
        self
    }

    /// Places pages and reads faults through this userfaultfd instead of opening one.
    pub fn userfaultfd(mut self, uffd: Uffd) -> Self {
        self.uffd = Some(uffd);
        self
    }

    /// How long to wait for the source's first connection (default 10 minutes).
    pub fn accept_timeout(mut self, timeout: Duration) -> Self {
        self.accept_timeout = timeout;
        self
    }

    /// How long a lost connection may take to come back (None: it ends the migration).
    pub fn recover_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.recover_timeout = timeout;
        self
    }

    /// Asks for real-time priority for the loop's thread (off by default: the caller decides).
    pub fn realtime_priority(mut self, on: bool) -> Self {
        self.driver.prioritize_thread = on;
        self
    }

    /// Requires `credential` of every connection and proves it back, and encrypts every frame
    /// (see docs/security.md). Required when the destination listens.
    pub fn credential(mut self, credential: Credential) -> Self {
        self.tcp.security = Some(SecureConfig::new(credential));
        self
    }

    /// Keeps the authentication but takes frames in the clear after the handshake (`false`);
    /// both sides must agree. Call after [`Self::credential`].
    pub fn encrypt(mut self, on: bool) -> Self {
        if let Some(security) = self.tcp.security.as_mut() {
            security.encrypt = on;
        }
        self
    }

    /// The TCP options of the listener and its connections.
    pub fn tcp_options(mut self, options: TcpOptions) -> Self {
        self.tcp = options;
        self
    }

    /// The control channel the migration will publish to.
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Starts receiving on a thread of its own and returns its handle.
    pub fn spawn<V: MigratableVm + Send + 'static>(
        self,
        vm: V,
    ) -> Result<MigrationHandle<DestEnd<V>>, FacadeError> {
        let control = self.control.clone();
        let events = control.subscribe();
        let thread = std::thread::Builder::new()
            .name("hybridmig-dest".into())
            .spawn(move || Ok(self.run(vm)))
            .map_err(|e| FacadeError::Thread(e.to_string()))?;
        Ok(MigrationHandle::new(control, thread, events))
    }

    /// Receives the migration on the caller's thread, to its end.
    pub fn run<V: MigratableVm>(self, vm: V) -> DestEnd<V> {
        let control = self.control.clone();
        match Receiving::open(self, vm, &control) {
            Ok(receiving) => stepping::run_to_end(receiving, &control),
            Err(end) => *end,
        }
    }

    /// Opens the migration for the caller's own loop, which then turns it with
    /// [`DestMigration::step`]. The source's first connection is awaited here, blocking for up
    /// to the accept timeout ([`Self::accept_timeout`]); a failure there is the first step's
    /// outcome.
    pub fn start<V: MigratableVm>(self, vm: V) -> DestMigration<V> {
        let control = self.control.clone();
        let opened = Receiving::open(self, vm, &control);
        DestMigration { stepper: Stepper::new(control, opened) }
    }

    /// Listens or takes the caller's connections, and starts the loop: everything before the
    /// first turn. `Ok(None)`: cancelled before the source came.
    fn connect_and_start(
        self,
        vm: &dyn MigratableVm,
    ) -> Result<Option<(DestLoop<'static>, StreamPair)>, FacadeError> {
        let control = Some(&*self.control);
        let accept = AcceptorConfig::new(wire_regions(&vm.regions()));
        let (pair, mut listener) = match self.target {
            Target::Listen(_) if self.tcp.security.is_none() => {
                return Err(FacadeError::NoCredential { side: "destination" })
            }
            Target::Listen(addr) => {
                let mut listener = PairListener::bind(addr, self.tcp.clone(), accept.clone())?;
                if let (Some(tx), Ok(bound)) = (&self.on_listening, listener.local_addr()) {
                    let _ = tx.try_send(bound);
                }
                let next = connect::relisten_on_recover(control, &self.tcp, &accept);
                let first =
                    connect::first_pair(control, &mut listener, &next, self.accept_timeout)?;
                let Some(pair) = first else { return Ok(None) };
                (pair, Some((listener, next)))
            }
            Target::Streams(pair) => (*pair, None),
        };
        let uffd = match self.uffd {
            Some(uffd) => uffd,
            None => Uffd::open_with_features(UFFD_FEATURE_THREAD_ID)?.0,
        };
        let session_id = pair.session.session_id;
        let reaccept = move |timeout: Duration| match listener.as_mut() {
            Some((listener, next)) => {
                connect::swap_in(listener, next);
                listener.accept_session(session_id, timeout)
            }
            None => {
                std::thread::sleep(timeout);
                Err(crate::transport::tcp::TcpError::NoAddress)
            }
        };
        let recovery: Option<Recovery<'static>> =
            self.recover_timeout.map(|timeout| Recovery { reconnect: Box::new(reaccept), timeout });
        let opts = DestDriverOptions { control: Some(self.control.clone()), ..self.driver };
        let dest = DestLoop::start(uffd, vm, &pair, &opts, recovery)?;
        Ok(Some((dest, pair)))
    }
}

/// A destination-side migration turned by the caller's own loop ([`DestBuilder::start`]).
///
/// Call [`Self::step`] whenever [`Self::poll_fd`] polls readable (a frame or a guest's fault
/// came), and at least every [`Self::step_within`]; each step waits at most its `max_wait`.
/// One step may block longer: while a lost connection is being replaced (up to the recover
/// timeout, [`DestBuilder::recover_timeout`]), and the last one while the source closes the
/// connections (up to 10 s). While a vCPU waits for a page it is this loop that brings it:
/// step often.
#[derive(Debug)]
pub struct DestMigration<V: MigratableVm> {
    stepper: Stepper<Receiving<V>>,
}

/// A migration between two turns: the VM and the loop.
#[derive(Debug)]
struct Receiving<V> {
    vm: V,
    dest: DestLoop<'static>,
    /// The caller's handles on the connections, kept open while the loop uses its own.
    _pair: StreamPair,
    /// True once the guest was resumed here.
    resumed: bool,
}

impl<V: MigratableVm> Receiving<V> {
    /// The migration up to its first turn; else its end already.
    fn open(builder: DestBuilder, vm: V, control: &Control) -> Result<Self, Box<DestEnd<V>>> {
        let result = match builder.connect_and_start(&vm) {
            Ok(Some((dest, pair))) => return Ok(Self { vm, dest, _pair: pair, resumed: false }),
            Ok(None) => {
                Ok(Outcome::Cancelled { reason: "cancelled before the source came".into() })
            }
            Err(error) => Err(error),
        };
        Err(Box::new(settle(vm, result, DestRun::default(), control)))
    }
}

impl<V: MigratableVm> Turning for Receiving<V> {
    type Done = DestRun;
    type End = DestEnd<V>;

    fn turn(&mut self, max_wait: Duration) -> Option<Result<DestRun, DriverError>> {
        let mut watched = Watched { vm: &mut self.vm, resumed: self.resumed };
        let turned = self.dest.turn(&mut watched, &mut |_| {}, max_wait);
        self.resumed = watched.resumed;
        turned.transpose()
    }

    fn finish(self, result: Result<DestRun, DriverError>, control: &Control) -> DestEnd<V> {
        let Receiving { vm, dest, _pair, resumed } = self;
        drop((dest, _pair));
        let (result, run) = match result {
            Ok(run) => (Ok(Outcome::Completed), run),
            // Never resumed here: the source still has the guest, and nothing here is needed.
            Err(error) if !resumed => {
                (Ok(Outcome::Cancelled { reason: error.to_string() }), DestRun::default())
            }
            Err(error) => (Err(error.into()), DestRun::default()),
        };
        settle(vm, result, run, control)
    }

    fn phase(&self) -> WingPhase {
        self.dest.phase()
    }

    fn ring_fd(&self) -> BorrowedFd<'_> {
        self.dest.ring_fd()
    }

    fn step_within(&self) -> Duration {
        self.dest.tick()
    }

    fn may_cancel(&self) -> Result<(), CancelRefusal> {
        self.dest.may_cancel()
    }
}

super::stepping::step_calls!(DestMigration, DestEnd);

/// Ends the destination side and publishes the end on `control`.
fn settle<V>(
    vm: V,
    result: Result<Outcome, FacadeError>,
    run: DestRun,
    control: &Control,
) -> DestEnd<V> {
    Outcome::publish(&result, control);
    DestEnd { vm, result, run }
}

/// The caller's VM, watched for the one call that tells whether the guest ever ran here.
struct Watched<'a, V> {
    vm: &'a mut V,
    resumed: bool,
}

impl<V: MigratableVm> MigratableVm for Watched<'_, V> {
    fn regions(&self) -> Vec<crate::embed::HostRegion> {
        self.vm.regions()
    }
    fn start_dirty_log(&mut self) -> Result<(), crate::embed::EmbedError> {
        self.vm.start_dirty_log()
    }
    fn harvest_dirty(
        &mut self,
        out: &mut crate::memory::PageBitmap,
    ) -> Result<(), crate::embed::EmbedError> {
        self.vm.harvest_dirty(out)
    }
    fn pause(&mut self) -> Result<Duration, crate::embed::EmbedError> {
        self.vm.pause()
    }
    fn save_state(&mut self) -> Result<Vec<u8>, crate::embed::EmbedError> {
        self.vm.save_state()
    }
    fn restore_state(&mut self, blob: &[u8]) -> Result<(), crate::embed::EmbedError> {
        self.vm.restore_state(blob)
    }
    fn resume(&mut self) -> Result<(), crate::embed::EmbedError> {
        self.resumed = true;
        self.vm.resume()
    }
    fn vcpu_of_thread(&self, thread_id: u32) -> Option<u32> {
        self.vm.vcpu_of_thread(thread_id)
    }
}
