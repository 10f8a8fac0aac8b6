//! The control channel of a running migration: what an operator or an orchestrator asks a
//! host (`query-migrate`, `migrate-cancel`, `migrate-recover`) and the events it is told.
//!
//! [`Control`] is the state both ends of the channel share. The drivers publish a [`View`] of
//! their engine into it (at most every 100 ms and at each phase change, from the event loop's
//! turn, never per page), and take the operator's requests out of it: a cancel, answered by
//! the one thread that can decide it without a race (the loop that owns the engine), and a new
//! address for the next recovery. [`server`] serves it on a Unix socket as line-delimited JSON
//! in the manner of QEMU's QMP; [`client`] is the small client behind `hybridmig control`.
//! A library user can hold the same `Arc<Control>` without any socket.

pub mod client;
pub mod connect;
pub mod protocol;
pub mod server;
pub mod status;

pub use server::ControlServer;
pub use status::{Counters, MigrationStatus, View};

use crate::driver::WingPhase;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Which host a control channel belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The source host.
    Source,
    /// The destination host.
    Destination,
}

/// Why a cancel was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRefusal {
    /// The source queued the frame that lets the destination run the guest.
    HandedOver,
    /// The destination runs the guest.
    GuestRunsHere,
    /// The destination loaded the state and answered `Loaded`: the source may have handed
    /// over, so only the source may cancel now.
    StateLoaded,
    /// The migration already ended.
    Ended(MigrationStatus),
}

impl std::fmt::Display for CancelRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CancelRefusal::HandedOver => f.write_str(
                "the source has handed the guest over and it runs on the destination; \
                 cancelling now could lose it (let it complete, or recover it)",
            ),
            CancelRefusal::StateLoaded => f.write_str(
                "the guest's state was loaded here and the source may have handed it over; \
                 only the source may cancel now (migrate-cancel on the source)",
            ),
            CancelRefusal::GuestRunsHere => f.write_str(
                "the guest runs on the destination (this host); only a completed migration \
                 or a recovery can follow",
            ),
            CancelRefusal::Ended(status) => {
                write!(f, "the migration already ended ({})", status.as_str())
            }
        }
    }
}

/// How a migration ended, for its final status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Completed.
    Completed,
    /// Cancelled before the hand-over, with the reason when known.
    Cancelled(Option<String>),
    /// Failed, with the error in words.
    Failed(String),
}

/// Errors of the control channel: the socket, a client's request, an answer refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket path is taken by something that is not a stale socket, or by a live one.
    #[error("control socket {path}: {why}")]
    PathInUse {
        /// The path.
        path: String,
        /// What is there.
        why: &'static str,
    },
    /// An OS call on the control socket failed.
    #[error("control socket {path}: {what}: {source}")]
    Io {
        /// The socket's path.
        path: String,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A cancel was refused.
    #[error("migrate-cancel refused: {reason}")]
    CancelRefused {
        /// Why.
        reason: CancelRefusal,
    },
    /// Nothing answered a cancel in time (the host is between two steps that check for it).
    #[error("migrate-cancel: no answer from the migration within {waited_ms} ms")]
    CancelNotAnswered {
        /// How long the request waited.
        waited_ms: u64,
    },
    /// A recover request came after the migration ended.
    #[error("migrate-recover refused: the migration already ended ({})", status.as_str())]
    RecoverEnded {
        /// Its final status.
        status: MigrationStatus,
    },
    /// The destination could not listen on the address a recover request gave.
    #[error("migrate-recover: {0}")]
    RecoverListen(#[source] crate::transport::tcp::TcpError),
    /// The command is served only on the other host.
    #[error("{command} is served by the {serves:?} host only")]
    OtherSide {
        /// The command.
        command: &'static str,
        /// The host that serves it.
        serves: Side,
    },
    /// The server answered the client with an error object.
    #[error("{class}: {desc}")]
    Remote {
        /// The error's class.
        class: String,
        /// Its description.
        desc: String,
    },
    /// The server's answer was not what the protocol allows.
    #[error("control socket {path}: unexpected answer: {line}")]
    BadAnswer {
        /// The socket's path.
        path: String,
        /// The line received.
        line: String,
    },
}

/// A destination's way to listen on a new address (binds it, closes the old listener).
pub type RecoverHook =
    Box<dyn FnMut(SocketAddr) -> Result<(), crate::transport::tcp::TcpError> + Send>;

/// Longest a `migrate-cancel` waits for the migration to decide.
pub const CANCEL_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Events queued per client at most; a client that reads none loses the newest.
const EVENTS_QUEUED: usize = 64;

#[derive(Debug, Default)]
enum CancelSlot {
    #[default]
    Idle,
    Requested,
    Answered(Result<(), CancelRefusal>),
}

/// What was last published, and the status it gave.
#[derive(Debug, Default)]
struct Published {
    view: Option<View>,
    status: MigrationStatus,
    /// A status the host set that no later view changes (completed, cancelled, failed).
    ended: bool,
    /// Why it failed or was cancelled.
    reason: Option<String>,
    /// When the driver first published (mono ns): the start of `total-time`.
    first_ns: u64,
    /// When it ended (mono ns).
    ended_ns: u64,
}

/// The state a host's control channel shares with its driver: see the module docs.
pub struct Control {
    side: Side,
    published: Mutex<Published>,
    recovering: AtomicBool,
    cancel_pending: AtomicBool,
    cancel: Mutex<CancelSlot>,
    cancel_answered: Condvar,
    /// Held by a cancel request from the start to its answer, so two never mix.
    cancel_turn: Mutex<()>,
    /// The address of the last `migrate-recover`; the drivers read it.
    recover_target: Mutex<Option<SocketAddr>>,
    /// The destination's way to listen there; only request threads take it, so a bind never
    /// holds up a driver.
    recover_hook: Mutex<Option<RecoverHook>>,
    subscribers: Mutex<Vec<SyncSender<String>>>,
    /// The operator's cap on the source's background push, bytes per second (0: none).
    push_cap_bytes_per_s: AtomicU64,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("side", &self.side).finish_non_exhaustive()
    }
}

/// A poisoned lock only means another thread panicked while it held it; the data (counters,
/// a request slot) is still the best there is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Control {
    /// A control channel for `side`, status `setup`.
    pub fn new(side: Side) -> Control {
        Control {
            side,
            published: Mutex::new(Published::default()),
            recovering: AtomicBool::new(false),
            cancel_pending: AtomicBool::new(false),
            cancel: Mutex::new(CancelSlot::Idle),
            cancel_answered: Condvar::new(),
            cancel_turn: Mutex::new(()),
            recover_target: Mutex::new(None),
            recover_hook: Mutex::new(None),
            subscribers: Mutex::new(Vec::new()),
            push_cap_bytes_per_s: AtomicU64::new(0),
        }
    }

    /// Which host this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The driver's view of its engine; sends an event when the status or the phase changed.
    /// Ignored once the host set a final status.
    pub fn publish(&self, view: View) {
        let mut p = lock(&self.published);
        if p.ended {
            return;
        }
        if p.first_ns == 0 {
            p.first_ns = crate::metrics::mono_ns();
        }
        let old_phase = p.view.as_ref().map(|v| v.phase);
        let new_phase = view.phase;
        p.view = Some(view);
        self.restatus(&mut p, old_phase != Some(new_phase));
    }

    /// Sets a final status (completed, cancelled, failed) with the reason, and sends its
    /// event; later views do not change it. A cancel still waiting is refused.
    pub fn finish(&self, status: MigrationStatus, reason: Option<String>) {
        {
            let mut p = lock(&self.published);
            p.reason = reason.or(p.reason.take());
            if !p.ended {
                p.ended_ns = crate::metrics::mono_ns();
                p.ended = true;
            }
            // The driver's last view may have given this status already: no second event.
            if p.status != status {
                self.set_status(&mut p, status);
            }
        }
        self.take_cancel_request(|| Err(CancelRefusal::Ended(status)));
    }

    /// Sets the final status from how the migration ended (see [`Control::finish`]).
    pub fn end(&self, ending: Ending) {
        match ending {
            Ending::Completed => self.finish(MigrationStatus::Completed, None),
            Ending::Cancelled(reason) => self.finish(MigrationStatus::Cancelled, reason),
            Ending::Failed(why) => self.finish(MigrationStatus::Failed, Some(why)),
        }
    }

    /// The current status.
    pub fn status(&self) -> MigrationStatus {
        lock(&self.published).status
    }

    /// A connection was lost and is being replaced (`true`), or the new one is attached.
    pub fn set_recovering(&self, recovering: bool) {
        self.recovering.store(recovering, Ordering::Release);
        let mut p = lock(&self.published);
        self.restatus(&mut p, false);
    }

    fn restatus(&self, p: &mut Published, phase_changed: bool) {
        if p.ended {
            return;
        }
        let Some(view) = p.view.as_ref() else { return };
        let recovering = self.recovering.load(Ordering::Acquire);
        let asked = recovering && lock(&self.recover_target).is_some();
        let status = status::status_of(view.phase, view.handed_over, recovering, asked);
        if status != p.status || phase_changed {
            self.set_status(p, status);
        }
    }

    fn set_status(&self, p: &mut Published, status: MigrationStatus) {
        p.status = status;
        let phase = p.view.as_ref().map(|v| status::phase_name(v.phase));
        self.broadcast(&protocol::migration_event(status, phase.as_deref()));
    }

    /// `query-migrate`'s answer (the `return` object).
    pub fn query(&self) -> serde_json::Value {
        let p = lock(&self.published);
        let recover_to = *lock(&self.recover_target);
        status::query_json(
            self.side,
            p.status,
            p.view.as_ref(),
            status::Times { first_ns: p.first_ns, ended_ns: p.ended_ns },
            p.reason.as_deref(),
            recover_to,
        )
    }

    /// Asks the migration to cancel and waits up to `timeout` for the answer (see
    /// [`Control::take_cancel_request`]).
    pub fn request_cancel(&self, timeout: Duration) -> Result<(), ControlError> {
        let _turn = lock(&self.cancel_turn);
        {
            let p = lock(&self.published);
            if p.ended {
                return Err(ControlError::CancelRefused { reason: CancelRefusal::Ended(p.status) });
            }
        }
        let mut slot = lock(&self.cancel);
        *slot = CancelSlot::Requested;
        self.cancel_pending.store(true, Ordering::Release);
        let (mut slot, _) = self
            .cancel_answered
            .wait_timeout_while(slot, timeout, |s| matches!(s, CancelSlot::Requested))
            .unwrap_or_else(|p| p.into_inner());
        self.cancel_pending.store(false, Ordering::Release);
        match std::mem::take(&mut *slot) {
            CancelSlot::Answered(Ok(())) => Ok(()),
            CancelSlot::Answered(Err(reason)) => Err(ControlError::CancelRefused { reason }),
            CancelSlot::Idle | CancelSlot::Requested => {
                Err(ControlError::CancelNotAnswered { waited_ms: timeout.as_millis() as u64 })
            }
        }
    }

    /// Answers a waiting cancel with `decide` (None when nothing waits; one atomic load then).
    /// True when the cancel was accepted: the caller stops the migration now. Only the thread
    /// that owns the engine calls this while the engine runs, so the answer cannot race the
    /// hand-over.
    pub fn take_cancel_request(&self, decide: impl FnOnce() -> Result<(), CancelRefusal>) -> bool {
        if !self.cancel_pending.load(Ordering::Acquire) {
            return false;
        }
        let mut slot = lock(&self.cancel);
        if !matches!(*slot, CancelSlot::Requested) {
            return false;
        }
        let answer = decide();
        let accepted = answer.is_ok();
        *slot = CancelSlot::Answered(answer);
        self.cancel_pending.store(false, Ordering::Release);
        self.cancel_answered.notify_all();
        drop(slot);
        if accepted {
            self.finish(MigrationStatus::Cancelled, Some("migrate-cancel".to_string()));
        }
        accepted
    }

    /// Installs the destination's way to listen on a new address.
    pub fn set_recover_hook(&self, hook: RecoverHook) {
        *lock(&self.recover_hook) = Some(hook);
    }

    /// `migrate-recover`: the next connection (of this recovery, or of the next one if none
    /// is under way) goes to `addr`. On the destination the hook listens there first.
    pub fn request_recover(&self, addr: SocketAddr) -> Result<(), ControlError> {
        {
            let p = lock(&self.published);
            if p.ended {
                return Err(ControlError::RecoverEnded { status: p.status });
            }
        }
        {
            if let Some(hook) = lock(&self.recover_hook).as_mut() {
                hook(addr).map_err(ControlError::RecoverListen)?;
            }
            *lock(&self.recover_target) = Some(addr);
        }
        let mut p = lock(&self.published);
        self.restatus(&mut p, false);
        Ok(())
    }

    /// The address a recover request gave, if any.
    pub fn recover_target(&self) -> Option<SocketAddr> {
        *lock(&self.recover_target)
    }

    /// A new receiver of event lines (at most 64 queued; a receiver that falls behind loses
    /// the newest).
    pub fn subscribe(&self) -> std::sync::mpsc::Receiver<String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(EVENTS_QUEUED);
        lock(&self.subscribers).push(tx);
        rx
    }

    /// Queues `line` for every subscriber without waiting; a gone one is forgotten.
    fn broadcast(&self, line: &str) {
        lock(&self.subscribers).retain(|tx| match tx.try_send(line.to_string()) {
            Ok(()) | Err(TrySendError::Full(_)) => true,
            Err(TrySendError::Disconnected(_)) => false,
        });
    }

    /// `migrate-set-parameters`' `max-postcopy-bandwidth`: caps the source's background push
    /// at `bytes_per_s` from now on (0 lifts the cap). The source only.
    pub fn set_push_cap(&self, bytes_per_s: u64) -> Result<(), ControlError> {
        if self.side != Side::Source {
            let command = "migrate-set-parameters";
            return Err(ControlError::OtherSide { command, serves: Side::Source });
        }
        self.push_cap_bytes_per_s.store(bytes_per_s, Ordering::Release);
        Ok(())
    }

    /// The cap on the background push, bytes per second (0: none); one atomic load.
    pub fn push_cap(&self) -> u64 {
        self.push_cap_bytes_per_s.load(Ordering::Acquire)
    }

    /// The phase last published, if any.
    pub fn phase(&self) -> Option<WingPhase> {
        lock(&self.published).view.as_ref().map(|v| v.phase)
    }
}
