//! The handle of a running migration: live status, cancel, recovery, events, and the end.

use super::FacadeError;
use crate::control::{Control, ControlError, MigrationStatus};
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long [`MigrationHandle::cancel`] waits for the migration's thread to decide.
const CANCEL_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A change of a migration's status, as its control channel tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationEvent {
    /// The status, in QEMU's words (`active`, `device`, `postcopy-active`, `postcopy-paused`,
    /// `postcopy-recover`, `completed`, `cancelled`, `failed`, ...).
    pub status: String,
    /// The engine's phase when it changed, if known.
    pub phase: Option<String>,
}

impl MigrationEvent {
    /// Parses an event line of the control channel; None for anything else.
    fn from_line(line: &str) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        let data = value.get("data")?;
        Some(Self {
            status: data.get("status")?.as_str()?.to_string(),
            phase: data.get("phase").and_then(|p| p.as_str()).map(str::to_string),
        })
    }

    /// True for the last event of a migration.
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "cancelled" | "failed")
    }
}

/// The events of one migration, in order, from when its handle was made.
#[derive(Debug)]
pub struct Events {
    lines: Receiver<String>,
}

impl Events {
    /// The next event, waiting at most `timeout`; None when none came or the migration's
    /// channel is gone.
    pub fn next_within(&self, timeout: Duration) -> Option<MigrationEvent> {
        loop {
            match self.lines.recv_timeout(timeout) {
                Ok(line) => match MigrationEvent::from_line(&line) {
                    Some(event) => return Some(event),
                    None => continue,
                },
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// The events as they come, until the final one (each wait bounded by an hour, so a
    /// migration that hangs cannot hold the caller forever).
    pub fn iter(&self) -> impl Iterator<Item = MigrationEvent> + '_ {
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let event = self.next_within(Duration::from_secs(3600))?;
            done = event.is_final();
            Some(event)
        })
    }
}

/// A migration running on a thread the library started. `T` is what [`Self::join`] gives
/// back: [`super::SourceEnd`] or [`super::DestEnd`], with the VM.
#[derive(Debug)]
pub struct MigrationHandle<T> {
    control: Arc<Control>,
    events: Events,
    thread: JoinHandle<Result<T, FacadeError>>,
}

impl<T> MigrationHandle<T> {
    pub(super) fn new(
        control: Arc<Control>,
        thread: JoinHandle<Result<T, FacadeError>>,
        lines: Receiver<String>,
    ) -> Self {
        Self { control, events: Events { lines }, thread }
    }

    /// The status now.
    pub fn status(&self) -> MigrationStatus {
        self.control.status()
    }

    /// The status with every counter of the report, live: `query-migrate`'s answer, with
    /// QEMU's names where they mean the same (see docs/control.md).
    pub fn query(&self) -> serde_json::Value {
        self.control.query()
    }

    /// Cancels the migration if it has not been handed over yet: the source's guest resumes
    /// and runs on there. After the hand-over, refused with the reason.
    pub fn cancel(&self) -> Result<(), ControlError> {
        self.control.request_cancel(CANCEL_ANSWER_TIMEOUT)
    }

    /// Moves the next recovery to `addr`: the source dials it, the destination listens there.
    pub fn recover(&self, addr: SocketAddr) -> Result<(), ControlError> {
        self.control.request_recover(addr)
    }

    /// The status changes since the handle was made.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The control channel itself, to serve on a socket ([`crate::control::ControlServer`]).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// True once the migration's thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the end: the VM back with the outcome, or the error.
    pub fn join(self) -> Result<T, FacadeError> {
        self.thread.join().map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string());
            FacadeError::Thread(what)
        })?
    }
}
