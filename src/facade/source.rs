//! The source side of the embedding API.

use super::handle::MigrationHandle;
use super::stepping::{self, Stepper, Turning};
use super::{FacadeError, Outcome, Step};
use crate::control::{connect, CancelRefusal, Control, ControlError, MigrationStatus, Side};
use crate::driver::recovery::Recovery;
use crate::driver::{DriverError, WingPhase};
use crate::embed::MigratableVm;
use crate::ports::layout_of;
use crate::secure::{Credential, SecureConfig};
use crate::session::{wire_regions, Offer, SessionIntent};
use crate::source::driver::{SourceDriverOptions, SourceLoop};
use crate::source::workingset::{WorkingSetSampler, SAMPLE_WINDOW};
use crate::source::{SourceConfig, SourceEngine, SourceStats};
use crate::transport::tcp::{self, StreamPair, TcpOptions};
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

/// How long the first dial keeps trying a destination that is not listening yet.
const FIRST_DIAL: Duration = Duration::from_secs(10);

/// Where the source's connections come from.
#[derive(Debug)]
enum Target {
    /// Dial this address (and again to recover).
    Dial(SocketAddr),
    /// Connections the caller opened; recoveries dial the address, if one was given.
    Streams(Box<StreamPair>, Option<SocketAddr>),
}

/// Builds the source side of a migration. See the [module docs](super).
#[derive(Debug)]
pub struct SourceBuilder {
    cfg: SourceConfig,
    target: Option<Target>,
    tcp: TcpOptions,
    driver: SourceDriverOptions,
    recover_timeout: Option<Duration>,
    working_set: WorkingSet,
    control: Arc<Control>,
}

/// Where hybrid's working set comes from ([`SourceBuilder::working_set`]); other modes have
/// none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WorkingSet {
    /// As the [`SourceConfig`] has it (empty unless the caller filled it in). The default.
    #[default]
    AsConfigured,
    /// Sampled while the guest runs, for `for_ms` before the first connection: with the VMM's
    /// access sampler ([`MigratableVm::sample_accessed`]) when it has one, else from dirty-log
    /// windows (written pages only). At most a quarter of memory, most used first.
    Sample {
        /// How long to sample (ms); the caller's thread is busy for that long.
        for_ms: u64,
    },
    /// These pages (global page indices), most important first.
    Pages(Vec<u64>),
}

/// How the source side ended, with its VM.
#[derive(Debug)]
pub struct SourceEnd<V> {
    /// The VM, given back. After a cancel its guest runs; after a completed migration it is
    /// paused and may be released; after a failure past the hand-over it is paused and holds
    /// every page the destination has not confirmed, so it must be kept.
    pub vm: V,
    /// Completed, cancelled, or the error that ended it.
    pub result: Result<Outcome, FacadeError>,
    /// The engine's counters (empty when no connection opened).
    pub stats: SourceStats,
    /// True once the destination could run the guest: the source's copy must never resume.
    pub handed_over: bool,
}

impl SourceBuilder {
    /// A source for a migration configured by `cfg` (its mode and session id among others).
    /// Without [`Self::realtime_priority`] the loop's thread keeps the priority it has.
    pub fn new(cfg: SourceConfig) -> Self {
        let driver = SourceDriverOptions { prioritize_thread: false, ..Default::default() };
        Self {
            cfg,
            target: None,
            tcp: TcpOptions::default(),
            driver,
            recover_timeout: Some(Duration::from_secs(60)),
            working_set: WorkingSet::AsConfigured,
            control: Arc::new(Control::new(Side::Source)),
        }
    }

    /// Dials the destination listening at `addr` (again, to recover a lost connection).
    pub fn connect(mut self, addr: SocketAddr) -> Self {
        self.target = Some(Target::Dial(addr));
        self
    }

    /// Uses connections the caller opened and handshook ([`tcp::connect_with`]); a lost one
    /// is replaced by dialling `redial`, if given, or the address of [`MigrationHandle::recover`].
    pub fn streams(mut self, pair: StreamPair, redial: Option<SocketAddr>) -> Self {
        self.target = Some(Target::Streams(Box::new(pair), redial));
        self
    }

    /// How long a lost connection may take to come back before the side gives up (None: a
    /// lost connection ends the migration). Default 60 s.
    pub fn recover_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.recover_timeout = timeout;
        self
    }

    /// Where hybrid's working set comes from (default: the configuration's). With
    /// [`WorkingSet::Sample`] the guest is sampled on the caller's thread before the first
    /// connection, in [`Self::run`], [`Self::spawn`]'s thread or [`Self::start`].
    pub fn working_set(mut self, working_set: WorkingSet) -> Self {
        self.working_set = working_set;
        self
    }

    /// Asks for real-time priority for the loop's thread (off by default: the caller decides).
    pub fn realtime_priority(mut self, on: bool) -> Self {
        self.driver.prioritize_thread = on;
        self
    }

    /// Gives up after this long without progress (default 30 s).
    pub fn progress_timeout(mut self, timeout: Duration) -> Self {
        self.driver.progress_timeout = timeout;
        self
    }

    /// Proves `credential` to the destination on every connection, and encrypts every frame
    /// (see docs/security.md). Required when the source dials.
    pub fn credential(mut self, credential: Credential) -> Self {
        self.tcp.security = Some(SecureConfig::new(credential));
        self
    }

    /// Keeps the authentication but sends frames in the clear after the handshake (`false`),
    /// for trusted links; both sides must agree. Call after [`Self::credential`].
    pub fn encrypt(mut self, on: bool) -> Self {
        if let Some(security) = self.tcp.security.as_mut() {
            security.encrypt = on;
        }
        self
    }

    /// The TCP options of every connection the source dials (liveness, buffers, timeouts).
    pub fn tcp_options(mut self, options: TcpOptions) -> Self {
        self.tcp = options;
        self
    }

    /// The control channel the migration will publish to (to serve it on a socket before it
    /// starts, with [`crate::control::ControlServer`]).
    pub fn control(&self) -> Arc<Control> {
        self.control.clone()
    }

    /// Starts the migration on a thread of its own and returns its handle.
    pub fn spawn<V: MigratableVm + Send + 'static>(
        self,
        vm: V,
    ) -> Result<MigrationHandle<SourceEnd<V>>, FacadeError> {
        let control = self.control.clone();
        let events = control.subscribe();
        let thread = std::thread::Builder::new()
            .name("hybridmig-source".into())
            .spawn(move || Ok(self.run(vm)))
            .map_err(|e| FacadeError::Thread(e.to_string()))?;
        Ok(MigrationHandle::new(control, thread, events))
    }

    /// Runs the migration on the caller's thread, to its end.
    pub fn run<V: MigratableVm>(self, vm: V) -> SourceEnd<V> {
        let control = self.control.clone();
        match Running::open(self, vm, &control) {
            Ok(running) => stepping::run_to_end(running, &control),
            Err(end) => *end,
        }
    }

    /// Opens the migration for the caller's own loop, which then turns it with
    /// [`SourceMigration::step`]. The first connection is dialled here, blocking for up to
    /// 10 s while the destination is not listening yet (after the working set's sampling, if
    /// asked for); a failure there is the first step's outcome (the guest runs on).
    pub fn start<V: MigratableVm>(self, vm: V) -> SourceMigration<V> {
        let control = self.control.clone();
        let opened = Running::open(self, vm, &control);
        SourceMigration { stepper: Stepper::new(control, opened) }
    }

    /// Fills in hybrid's working set as [`Self::working_set`] says.
    fn estimate_working_set(&mut self, vm: &mut dyn MigratableVm) -> Result<(), FacadeError> {
        let hybrid = self.cfg.mode.uses_working_set();
        match std::mem::take(&mut self.working_set) {
            WorkingSet::AsConfigured => {}
            WorkingSet::Pages(pages) => self.cfg.working_set = pages,
            WorkingSet::Sample { for_ms } if hybrid => {
                let total_pages = layout_of(&vm.regions())?.total_pages();
                let mut sampler = WorkingSetSampler::new(total_pages, SAMPLE_WINDOW);
                let control = Some(&*self.control);
                let period = Duration::from_millis(for_ms);
                if !sampler.sample_for(vm, period, || !connect::cancel_taken(control))? {
                    return Err(FacadeError::Cancelled { before: "the migration started" });
                }
                self.cfg.working_set = sampler.estimate(total_pages / 4);
            }
            WorkingSet::Sample { .. } => {}
        }
        Ok(())
    }

    /// Connects, builds the engine from `vm` and starts it: everything before the first turn.
    fn connect_and_start(
        mut self,
        vm: &mut dyn MigratableVm,
    ) -> Result<(SourceEngine, SourceLoop<'static>, StreamPair), FacadeError> {
        self.estimate_working_set(vm)?;
        let control = Some(&*self.control);
        let offer = Offer::new(self.cfg.session_id, self.cfg.mode, wire_regions(&vm.regions()));
        let (pair, redial_to) = match self.target {
            Some(Target::Dial(_)) if self.tcp.security.is_none() => {
                return Err(FacadeError::NoCredential { side: "source" })
            }
            Some(Target::Dial(addr)) => {
                let pair = connect::first_dial(control, addr, &offer, &self.tcp, FIRST_DIAL)
                    .map_err(|e| match e {
                        connect::FirstConnectionError::Tcp(e) => FacadeError::Tcp(e),
                        connect::FirstConnectionError::Cancelled { before } => {
                            FacadeError::Cancelled { before }
                        }
                    })?;
                (pair, Some(addr))
            }
            Some(Target::Streams(pair, redial)) => (*pair, redial),
            None => return Err(FacadeError::NoTarget { side: "source" }),
        };
        let mut engine = SourceEngine::new(self.cfg, &pair.session, &*vm)?;
        // A resume carries the session's ticket: the destination takes no other stream for it.
        let resume = Offer { intent: SessionIntent::Resume, ticket: pair.ticket, ..offer };
        let tcp_options = self.tcp.clone();
        let ctl = self.control.clone();
        let redial = move |timeout: Duration| {
            let to = ctl.recover_target().or(redial_to);
            match to {
                Some(addr) => tcp::redial(addr, &resume, &tcp_options, timeout),
                // Nowhere to dial yet: wait out the slice for the operator's address.
                None => {
                    std::thread::sleep(timeout);
                    Err(tcp::TcpError::NoAddress)
                }
            }
        };
        let recovery: Option<Recovery<'static>> =
            self.recover_timeout.map(|timeout| Recovery { reconnect: Box::new(redial), timeout });
        let opts = SourceDriverOptions { control: Some(self.control.clone()), ..self.driver };
        let source = SourceLoop::start(&mut engine, vm, &pair, &opts, recovery)?;
        Ok((engine, source, pair))
    }
}

/// A source-side migration turned by the caller's own loop ([`SourceBuilder::start`]).
///
/// Call [`Self::step`] whenever [`Self::poll_fd`] polls readable, and at least every
/// [`Self::step_within`]; each step waits at most its `max_wait`. One step may block longer
/// only while a lost connection is being replaced: up to the recover timeout
/// ([`SourceBuilder::recover_timeout`]). The status and an operator's cancel go through the
/// same [`Control`] as a [`MigrationHandle`]'s.
#[derive(Debug)]
pub struct SourceMigration<V: MigratableVm> {
    stepper: Stepper<Running<V>>,
}

/// A migration between two turns: the VM, the engine and the loop.
#[derive(Debug)]
struct Running<V> {
    vm: V,
    engine: SourceEngine,
    source: SourceLoop<'static>,
    /// The caller's handles on the connections, kept open while the loop uses its own.
    _pair: StreamPair,
}

impl<V: MigratableVm> Running<V> {
    /// The migration up to its first turn; else its end already.
    fn open(
        builder: SourceBuilder,
        mut vm: V,
        control: &Control,
    ) -> Result<Self, Box<SourceEnd<V>>> {
        match builder.connect_and_start(&mut vm) {
            Ok((engine, source, pair)) => Ok(Self { vm, engine, source, _pair: pair }),
            Err(error) => {
                Err(Box::new(settle(vm, Err(error), SourceStats::default(), false, control)))
            }
        }
    }
}

impl<V: MigratableVm> Turning for Running<V> {
    type Done = SourceStats;
    type End = SourceEnd<V>;

    fn turn(&mut self, max_wait: Duration) -> Option<Result<SourceStats, DriverError>> {
        let Running { vm, engine, source, .. } = self;
        source.turn(engine, vm, &mut |_| {}, max_wait).transpose()
    }

    fn finish(self, result: Result<SourceStats, DriverError>, control: &Control) -> SourceEnd<V> {
        let Running { vm, engine, source, _pair } = self;
        // The connections close before the guest resumes or the end is published.
        drop((source, _pair));
        let handed_over = engine.handed_over();
        let stats = match &result {
            Ok(done) => done.clone(),
            Err(_) => engine.stats().clone(),
        };
        settle(vm, result.map(drop).map_err(FacadeError::from), stats, handed_over, control)
    }

    fn phase(&self) -> WingPhase {
        WingPhase::Source(self.engine.phase())
    }

    fn ring_fd(&self) -> BorrowedFd<'_> {
        self.source.ring_fd()
    }

    fn step_within(&self) -> Duration {
        self.source.tick()
    }

    /// The source decides until the hand-over.
    fn may_cancel(&self) -> Result<(), CancelRefusal> {
        match self.engine.handed_over() {
            true => Err(CancelRefusal::HandedOver),
            false => Ok(()),
        }
    }
}

super::stepping::step_calls!(SourceMigration, SourceEnd);

/// Ends the source side: a failure before the hand-over resumes the guest here, and the end
/// is published on `control`.
fn settle<V: MigratableVm>(
    mut vm: V,
    result: Result<(), FacadeError>,
    stats: SourceStats,
    handed_over: bool,
    control: &Control,
) -> SourceEnd<V> {
    let result = match result {
        Ok(()) => Ok(Outcome::Completed),
        // The guest never left: it runs on here, resumed if the switch-over paused it.
        Err(error) if !handed_over => cancel(&mut vm, error),
        Err(error) => Err(error),
    };
    Outcome::publish(&result, control);
    SourceEnd { vm, result, stats, handed_over }
}

/// A failure before the hand-over: the guest resumes here (a running guest is left as it is).
fn cancel(vm: &mut dyn MigratableVm, error: FacadeError) -> Result<Outcome, FacadeError> {
    let reason = error.to_string();
    tracing::warn!("source: migration cancelled before the hand-over, the guest runs on: {reason}");
    match vm.resume() {
        Ok(()) => Ok(Outcome::Cancelled { reason }),
        Err(source) => Err(FacadeError::ResumeAfterCancel { cancel: reason, source }),
    }
}
