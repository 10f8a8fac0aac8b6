//! Recovery on the source after a lost connection: the source stays authoritative, keeps every
//! page the destination has not confirmed, and re-sends exactly what the destination's report
//! names missing.
//!
//! From the new connection until the report's `Resume` control, nothing goes out: what the
//! destination holds decides what goes next. Then the ledger forgets every delivery the
//! destination lacks (those pages are queued again), and the phase resumes:
//! - the guest still runs here (rounds, live pass): the pass goes on;
//! - the guest is paused here and the destination does not run it (the state, or part of the
//!   switch-over, was lost): the switch-over is emitted again, need set and state;
//! - the destination runs the guest: the push goes on, and `Done` goes again at its end.

use super::switchover::SwitchPlan;
use super::*;

/// What the destination's report has named so far.
pub(super) struct Recovery {
    missing: PageBitmap,
}

impl SourceEngine {
    /// A new connection replaced the lost one. Until the destination's report is whole,
    /// neither stream carries anything.
    pub fn on_reconnect(&mut self) {
        self.recovery = Some(Recovery { missing: PageBitmap::new(self.layout.total_pages()) });
        // A window not acknowledged may be lost, and the destination may hold an older copy
        // of its pages, which its report would not name: those pages go again (a destination
        // that does not run the guest yet overwrites a present copy). Acknowledgement
        // sequences start again on the new connection.
        self.bulk_answers.clear();
        // A `Loaded` that came on the old connection is void: the destination forgets a
        // restored state it was not told to run, and the state goes again.
        self.dest_loaded = false;
        for (first, count) in self.acks.take_unacked() {
            self.stats.pages_resent += self.ledger.doubt(first, count);
        }
        self.stats.recoveries += 1;
        tracing::info!(phase = ?self.phase, "source: new connection, waiting for the destination's report");
    }

    /// What this side keeps while no connection is up, for an operator: where the guest is,
    /// and what the destination has not confirmed.
    pub fn holding(&self) -> String {
        let guest = if self.stats.pause_ns == 0 { "running here" } else { "paused here" };
        let unacked =
            self.acks.unacked_pages(StreamKind::Bulk) + self.acks.unacked_pages(StreamKind::Urgent);
        format!(
            "the guest {guest} (phase {:?}), all {} pages of its memory; {} pages current on \
             the destination as far as it confirmed, {unacked} sent and not acknowledged",
            self.phase,
            self.layout.total_pages(),
            self.ledger.valid_count(),
        )
    }

    /// True while a new connection waits for the destination's report.
    pub fn recovering(&self) -> bool {
        self.recovery.is_some()
    }

    /// One region of the report: pages missing on the destination.
    pub(super) fn on_missing(&mut self, set: &wire::DirtySetRef<'_>) -> Result<(), SourceError> {
        let base = self.layout.global(set.region, 0, 1)?;
        let Some(recovery) = self.recovery.as_mut() else {
            return Err(SourceError::UnexpectedFrame {
                stream: StreamKind::Bulk,
                frame: wire::FrameType::DirtySet,
                phase: self.phase,
            });
        };
        for run in set.runs(&self.wire_regions)? {
            recovery.missing.set_range(base + run.first_page, run.count);
        }
        Ok(())
    }

    /// The report is whole: reconcile the ledger and resume the phase.
    pub(super) fn on_report_end(&mut self, dest_flags: u64) -> Result<(), SourceError> {
        let Some(recovery) = self.recovery.take() else {
            return Err(SourceError::UnexpectedFrame {
                stream: StreamKind::Bulk,
                frame: wire::FrameType::Control,
                phase: self.phase,
            });
        };
        let lost = self.ledger.reconcile(&recovery.missing);
        self.stats.pages_resent += lost;
        let dest_runs = dest_flags & wire::RESUME_DEST_RUNNING != 0;
        if dest_flags & wire::RESUME_DEST_COMPLETE != 0 {
            // What goes again now is acknowledged only by the DoneAck: nothing to wait for.
            self.acks.lift_cap();
        }
        match self.phase {
            Phase::Setup | Phase::Rounds | Phase::WorkingSet | Phase::Finished => {}
            Phase::SwitchOver | Phase::Push | Phase::AwaitDoneAck if !dest_runs => {
                self.phase = Phase::SwitchOver;
                let plan = SwitchPlan::again(self.method(), self.rounds.fallback(), self.version);
                self.ledger.drop_pending();
                if plan.sends_pages() {
                    self.ledger.queue_needed();
                }
                self.switch = Some(plan);
            }
            Phase::SwitchOver | Phase::Push | Phase::AwaitDoneAck => {
                // Done, if it went, went with the old connection: it goes again after the push.
                self.phase = Phase::Push;
            }
        }
        tracing::info!(lost, dest_runs, phase = ?self.phase, "source: report whole, resuming");
        Ok(())
    }
}
