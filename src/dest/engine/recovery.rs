//! Recovery on the destination after a lost connection: this side keeps every page it placed,
//! tells the source what it holds, and asks again for every page a vCPU still waits on.
//!
//! The report is one DirtySet frame per region naming the pages missing here, then a `Resume`
//! control whose value says whether the guest runs here ([`wire::RESUME_DEST_RUNNING`]) and
//! whether every page is here ([`wire::RESUME_DEST_COMPLETE`]). The source re-sends what it
//! believed delivered and this side lacks; nothing here is dropped or placed twice.

use super::*;

impl DestEngine {
    /// What this side keeps while no connection is up, for an operator.
    pub fn holding(&self) -> String {
        let total = self.layout.total_pages();
        let missing: u64 = self
            .layout
            .regions()
            .iter()
            .map(|span| {
                let words = self.residency.missing_words(span.first_page, span.pages());
                words.iter().map(|w| u64::from(w.count_ones())).sum::<u64>()
            })
            .sum();
        format!(
            "phase {:?}, {} of {total} pages here, {} needed pages still to come, {} vCPU \
             faults waiting",
            self.phase,
            total - missing,
            self.residency.outstanding(),
            self.residency.requested().count()
        )
    }

    /// A new connection replaced the lost one (both streams, readers clean). What was queued
    /// for the old connection is dropped: its acknowledgements are superseded by the report,
    /// and every unanswered fault request is queued again.
    pub fn on_reconnect(&mut self) -> Result<(), DestError> {
        self.bulk_out.clear();
        self.fault_requests.clear();
        self.windows_received = [0; 2];
        self.stats.recoveries += 1;
        let mut report = Vec::new();
        for (index, span) in self.layout.regions().iter().enumerate() {
            let words = self.residency.missing_words(span.first_page, span.pages());
            wire::encode_dirty_set(
                &mut report,
                self.version,
                index as u32,
                &words,
                span.pages(),
                &self.limits,
            )?;
        }
        self.bulk_out.push_back(BulkFrame::Encoded(report));
        if self.phase == DestPhase::Loaded {
            // Not told to run: the restored state is forgotten, and the source sends the
            // switch-over again (its need set is read only before a state).
            self.phase = DestPhase::PreSwitch;
        }
        let value = match self.phase {
            DestPhase::PreSwitch | DestPhase::Loaded | DestPhase::Refused => 0,
            DestPhase::Running => wire::RESUME_DEST_RUNNING,
            DestPhase::Complete => wire::RESUME_DEST_RUNNING | wire::RESUME_DEST_COMPLETE,
        };
        let resume = wire::Control { kind: wire::ControlKind::Resume, seq: 0, value };
        self.bulk_out.push_back(BulkFrame::Control(resume));
        self.retries.restart(self.clock.now_ns());
        let waiting: Vec<u64> = self.residency.requested().collect();
        for page in waiting {
            self.queue_fault_request(page)?;
        }
        tracing::info!(
            phase = ?self.phase,
            asked_again = self.fault_requests.len(),
            "destination: new connection, holdings reported"
        );
        Ok(())
    }
}
