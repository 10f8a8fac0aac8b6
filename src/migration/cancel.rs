//! A migration called off before the hand-over.
//!
//! The source is authoritative until it queues the frame that lets the destination run the
//! guest ([`crate::source::SourceEngine::handed_over`]). A failure before that point cancels
//! the migration: the source resumes its guest if the switch-over had paused it (the state was
//! only saved, nothing was lost), lets it run to the end of its ops and digests it exactly as
//! an unmigrated run does; the destination, which never ran the guest, frees everything. Both
//! report `outcome: cancelled` with the error that caused it, and their processes exit with
//! [`super::EXIT_CANCELLED`].

use super::host::KvmGuest;
use super::report::{DestReport, Outcome, SourceReport};
use super::MigrationError;
use crate::metrics::mono_ns;
use crate::ports::MigratableVm;
use crate::vm::Vm;
use std::time::Duration;

/// How long a cancelled migration's guest may take to finish its ops on the source.
const FINISH_TIMEOUT: Duration = Duration::from_secs(600);
/// Progress sampling period while it does.
const SAMPLE: Duration = Duration::from_millis(10);

/// Cancels on the source after `error`: the guest runs on here to the end of its ops, and the
/// report carries its digest. Fails only if the guest itself cannot go on.
pub(super) fn cancel_source(
    vm: &mut Vm,
    mut report: SourceReport,
    error: &MigrationError,
) -> Result<SourceReport, MigrationError> {
    report.outcome = Outcome::Cancelled;
    report.cancel_reason = Some(error.to_string());
    report.cancelled_ns = mono_ns();
    tracing::warn!(
        "source: migration cancelled before the hand-over, the guest runs on here: {error}"
    );
    // Dirty logging only slows the guest's writes from now on; a failure to stop it is not
    // worth losing the guest over.
    if let Err(e) = vm.set_dirty_logging(false) {
        tracing::warn!("source: dirty logging stays on after the cancel: {e}");
    }
    // Restarts vCPUs the switch-over paused; a guest still running is left as it is.
    KvmGuest::new(vm).resume().map_err(MigrationError::ResumeAfterCancel)?;
    let deadline = mono_ns() + FINISH_TIMEOUT.as_nanos() as u64;
    while mono_ns() < deadline {
        if let Some(digest) = vm.wait_finished(SAMPLE)? {
            report.guest_digest = Some(digest);
            report.guest_finished_ns = mono_ns();
            break;
        }
        report.timeline.record(mono_ns(), vm.ops_done());
    }
    report.timeline.record(mono_ns(), vm.ops_done());
    Ok(report)
}

/// The destination's report of a migration cancelled before the guest ran here.
pub(super) fn cancelled_dest(mut report: DestReport, error: &dyn std::fmt::Display) -> DestReport {
    tracing::warn!("destination: migration cancelled before the guest ran here: {error}");
    report.outcome = Outcome::Cancelled;
    report.cancel_reason = Some(error.to_string());
    report
}
