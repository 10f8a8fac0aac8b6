//! The step call's machinery, one for both sides: a migration between turns, its end kept
//! until a step gives it, and the calls the caller's loop makes.

use super::{FacadeError, Step};
use crate::control::{CancelRefusal, Control, ControlError};
use crate::driver::{DriverError, WingPhase};
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

/// One side's migration between two turns.
pub(super) trait Turning: Sized {
    /// What the side's loop gives at its end (its counters).
    type Done;
    /// What the side gives back at its end, with the VM.
    type End;
    /// One turn, waiting at most `max_wait`; the loop's result once it is over.
    fn turn(&mut self, max_wait: Duration) -> Option<Result<Self::Done, DriverError>>;
    /// The end from the loop's result, published on `control`.
    fn finish(self, result: Result<Self::Done, DriverError>, control: &Control) -> Self::End;
    /// The engine's phase, for a cancel's error.
    fn phase(&self) -> WingPhase;
    /// The descriptor that polls readable when a turn has something to do.
    fn ring_fd(&self) -> BorrowedFd<'_>;
    /// The longest the caller may go without a turn.
    fn step_within(&self) -> Duration;
    /// Whether this side may still call the migration off, or why not.
    fn may_cancel(&self) -> Result<(), CancelRefusal>;
}

/// Turns `running` to its end on this thread, each wait bounded by the loop's tick.
pub(super) fn run_to_end<R: Turning>(mut running: R, control: &Control) -> R::End {
    loop {
        if let Some(result) = running.turn(Duration::MAX) {
            return running.finish(result, control);
        }
    }
}

/// A migration the caller's loop turns: running, ended with its end not given yet, or gone.
pub(super) struct Stepper<R: Turning> {
    pub(super) control: Arc<Control>,
    stage: Stage<R>,
    /// The stepping thread cancelled: the next step ends the migration.
    cancelled: bool,
}

enum Stage<R: Turning> {
    Running(Box<R>),
    /// Ended before a step could tell it (the first connection failed, for one).
    Ended(Box<R::End>),
    /// The end was given to the caller.
    Gone,
}

impl<R: Turning> std::fmt::Debug for Stepper<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = match self.stage {
            Stage::Running(_) => "running",
            Stage::Ended(_) => "ended",
            Stage::Gone => "gone",
        };
        f.debug_struct("Stepper").field("stage", &stage).finish_non_exhaustive()
    }
}

impl<R: Turning> Stepper<R> {
    /// A migration that opened (`Ok`), or ended before its first turn (`Err`, its end).
    pub(super) fn new(control: Arc<Control>, opened: Result<R, Box<R::End>>) -> Self {
        let stage = match opened {
            Ok(running) => Stage::Running(Box::new(running)),
            Err(end) => Stage::Ended(end),
        };
        Self { control, stage, cancelled: false }
    }

    pub(super) fn step(&mut self, max_wait: Duration) -> Result<Step<R::End>, FacadeError> {
        match std::mem::replace(&mut self.stage, Stage::Gone) {
            Stage::Running(mut running) => {
                let result = match self.cancelled {
                    true => Some(Err(DriverError::Cancelled { phase: running.phase() })),
                    false => running.turn(max_wait),
                };
                let Some(result) = result else {
                    self.stage = Stage::Running(running);
                    return Ok(Step::Pending);
                };
                Ok(Step::Finished(running.finish(result, &self.control)))
            }
            Stage::Ended(end) => Ok(Step::Finished(*end)),
            Stage::Gone => Err(FacadeError::Finished),
        }
    }

    pub(super) fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.stage {
            Stage::Running(running) => Some(running.ring_fd()),
            Stage::Ended(_) | Stage::Gone => None,
        }
    }

    pub(super) fn step_within(&self) -> Duration {
        match &self.stage {
            Stage::Running(running) => running.step_within(),
            Stage::Ended(_) | Stage::Gone => Duration::ZERO,
        }
    }

    pub(super) fn cancel(&mut self) -> Result<(), ControlError> {
        let allowed = match &self.stage {
            Stage::Running(running) => running.may_cancel(),
            Stage::Ended(_) | Stage::Gone => Err(CancelRefusal::Ended(self.control.status())),
        };
        allowed.map_err(|reason| ControlError::CancelRefused { reason })?;
        self.cancelled = true;
        Ok(())
    }
}

/// The calls of a side's public stepped migration, made once for both sides: `$migration<V>`
/// holds a `stepper` whose end is `$end<V>`.
macro_rules! step_calls {
    ($migration:ident, $end:ident) => {
        impl<V: MigratableVm> $migration<V> {
            /// One turn of the migration, waiting at most `max_wait` for something to do; the
            /// end, with the VM, once it is over. Stepping again after that is
            /// [`FacadeError::Finished`].
            pub fn step(&mut self, max_wait: Duration) -> Result<Step<$end<V>>, FacadeError> {
                self.stepper.step(max_wait)
            }

            /// A descriptor that polls readable when the migration has something to do: a
            /// frame came, a send finished, on the destination a guest's fault (None once it
            /// ended). Poll it from the thread that steps: the ring's completions are posted
            /// there.
            pub fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
                self.stepper.poll_fd()
            }

            /// The longest the caller may wait between two steps with nothing to read: the
            /// loop's tick, on which the dirty-log passes and the deadlines run (on the
            /// destination a millisecond while a fault waits for its page); zero once the end
            /// waits.
            pub fn step_within(&self) -> Duration {
                self.stepper.step_within()
            }

            /// Cancels the migration from the stepping thread while this side may still call
            /// it off (the source until the hand-over, the destination until the state was
            /// loaded); the next step ends it, the guest running on at the source. Other
            /// threads cancel through [`Self::control`] ([`Control::request_cancel`]),
            /// answered in a step.
            pub fn cancel(&mut self) -> Result<(), ControlError> {
                self.stepper.cancel()
            }

            /// The status now.
            pub fn status(&self) -> MigrationStatus {
                self.stepper.control.status()
            }

            /// The status with every counter of the report, as [`MigrationHandle::query`]
            /// gives it.
            pub fn query(&self) -> serde_json::Value {
                self.stepper.control.query()
            }

            /// The control channel: to serve on a socket, to subscribe to events, or to cancel
            /// or redirect a recovery from another thread.
            pub fn control(&self) -> &Arc<Control> {
                &self.stepper.control
            }
        }
    };
}
pub(super) use step_calls;
