//! The source side of the embedding API.

use super::handle::MigrationHandle;
use super::{FacadeError, Outcome};
use crate::control::{connect, Control, Side};
use crate::driver::recovery::Recovery;
use crate::embed::MigratableVm;
use crate::secure::{Credential, SecureConfig};
use crate::session::{wire_regions, Offer, SessionIntent};
use crate::source::driver::{run_source_recovering, SourceDriverOptions};
use crate::source::{SourceConfig, SourceEngine, SourceStats};
use crate::transport::tcp::{self, StreamPair, TcpOptions};
use std::net::SocketAddr;
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
    control: Arc<Control>,
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
    pub fn run<V: MigratableVm>(self, mut vm: V) -> SourceEnd<V> {
        let control = self.control.clone();
        let mut handed_over = false;
        let mut stats = SourceStats::default();
        let result = self.migrate(&mut vm, &mut stats, &mut handed_over);
        let result = match result {
            Ok(()) => Ok(Outcome::Completed),
            // The guest never left: it runs on here, resumed if the switch-over paused it.
            Err(error) if !handed_over => cancel(&mut vm, error),
            Err(error) => Err(error),
        };
        Outcome::publish(&result, &control);
        SourceEnd { vm, result, stats, handed_over }
    }

    fn migrate(
        self,
        vm: &mut dyn MigratableVm,
        stats: &mut SourceStats,
        handed_over: &mut bool,
    ) -> Result<(), FacadeError> {
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
        let mut redial = |timeout: Duration| {
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
        let recovery =
            self.recover_timeout.map(|timeout| Recovery { reconnect: &mut redial, timeout });
        let opts = SourceDriverOptions { control: Some(self.control.clone()), ..self.driver };
        let result = run_source_recovering(&mut engine, vm, &pair, &opts, &mut |_| {}, recovery);
        *handed_over = engine.handed_over();
        *stats = match &result {
            Ok(done) => done.clone(),
            Err(_) => engine.stats().clone(),
        };
        result.map(|_| ()).map_err(FacadeError::from)
    }
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
