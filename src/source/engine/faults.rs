//! Fault service: a fault request is answered on the urgent stream with the faulting page in a
//! frame of its own, then the pending pages of its window, and the push moves on to just past
//! the window.
//!
//! The answer is decided when the request arrives (which pages, marked sent, acknowledged
//! later) and queued in the outbox as small entries; `poll_urgent` encodes it straight into
//! the driver's buffer. Neither step allocates: the guest is paused on the source by now, so
//! the pages read at the poll are the ones the request decided on.

use super::outbox::AnswerRun;
use super::*;

impl SourceEngine {
    /// Serves a fault: the faulting page and the pending pages of its window are queued for
    /// the urgent stream, and the push pivots to just past the window.
    pub(super) fn on_fault_request(&mut self, req: &wire::FaultRequest) -> Result<(), SourceError> {
        if self.phase == Phase::Finished {
            // Sent on the urgent stream before the destination's DoneAck (on bulk) and read
            // after it: the page arrived by the push meanwhile, so nothing waits for an answer.
            req.validate(&self.wire_regions)?;
            tracing::debug!(page = req.page, "source: fault request after the DoneAck, ignored");
            return Ok(());
        }
        if !matches!(self.phase, Phase::Push | Phase::AwaitDoneAck | Phase::SwitchOver) {
            return Err(SourceError::UnexpectedFrame {
                stream: StreamKind::Urgent,
                frame: wire::FrameType::FaultRequest,
                phase: self.phase,
            });
        }
        req.validate(&self.wire_regions)?;
        let page = self.layout.global(req.region, req.page, 1)?;
        tracing::trace!(page, at_ns = self.now_ns(), "source: fault request");
        if self.outbox.holds(page) {
            // Asked again while its answer still waits here: that answer serves both.
            self.stats.fault_answers_deduped += 1;
            return Ok(());
        }
        self.stats.faults_served += 1;
        let window = self.fault_window(page);
        self.stats.window_pages_last = window;
        let (start, count) = window_around(&self.layout, page, window);
        // The faulting page always goes, even if the push already sent it: that copy may sit
        // behind bulk data, and the destination drops duplicates. It goes first, in a frame of
        // its own: the vCPU waits for it alone, and 4 KiB fits in the congestion window of a
        // connection that sat idle since the last fault (TCP restarts from its initial window
        // after an idle spell), where a whole 64 KiB window would take several round trips.
        if !self.queue_answer_run(page, 1, Some(req.request_id))? {
            // The urgent stream stopped draining: the push takes the window next, and the
            // destination asks again on bulk, which answers there too.
            self.stats.fault_answers_deferred += 1;
            self.push.pivot(start);
            return Ok(());
        }
        let end = start + count;
        let (mut cursor, mut rest) = (start, end);
        let pending = |engine: &Self, from: u64| engine.ledger.pending().next_set_before(from, end);
        while let Some(first) = pending(self, cursor) {
            let run_end = self.ledger.pending().next_unset(first).unwrap_or(end).min(end);
            if !self.queue_answer_run(first, (run_end - first) as u32, None)? {
                rest = first; // no room: the push sends the rest of the window next
                break;
            }
            cursor = run_end;
        }
        self.push.pivot(rest);
        Ok(())
    }

    /// A fault request asked again on bulk: the request or its answer is held up on the
    /// urgent connection (TCP retransmitting a lost segment). The answer goes both ways: on
    /// urgent, which is quick when it was the request that was lost (each direction of a
    /// connection retransmits on its own), and on bulk ahead of the push, behind the push's
    /// queue but not behind a lost answer. At most one bulk answer per page waits, and at most
    /// [`BULK_ANSWERS_MAX`] in all.
    pub(super) fn on_fault_retry(&mut self, req: &wire::FaultRequest) -> Result<(), SourceError> {
        self.on_fault_request(req)?;
        let page = self.layout.global(req.region, req.page, 1)?;
        self.stats.fault_retries_served += 1;
        let queued = self.bulk_answers.iter().any(|run| run.first == page);
        if queued || self.bulk_answers.len() >= BULK_ANSWERS_MAX {
            return Ok(());
        }
        let bytes = self.memory.pages(page, 1).ok_or(SourceError::PageOutOfRange { page })?;
        self.ledger.mark_sent(page, bytes);
        let compression = self.compression.in_force();
        let request_id = Some(req.request_id);
        self.bulk_answers.push_back(AnswerRun { first: page, count: 1, request_id, compression });
        Ok(())
    }

    /// Encodes the next answer asked again on bulk; false when none waits.
    pub(super) fn poll_bulk_answer(&mut self, out: &mut Vec<u8>) -> Result<bool, SourceError> {
        let Some(run) = self.bulk_answers.pop_front() else {
            return Ok(false);
        };
        self.encode_answer_run(out, run)?;
        // Tracked as it enters the stream, so its sequence matches the destination's count.
        self.track(StreamKind::Bulk, run.first, run.count);
        Ok(true)
    }

    /// Marks pages `first..first+count` sent on the urgent stream and queues them for
    /// `poll_urgent`, after checking everything their encoding will check. False, with
    /// nothing marked or queued, when the outbox is full.
    fn queue_answer_run(
        &mut self,
        first: u64,
        count: u32,
        request_id: Option<u32>,
    ) -> Result<bool, SourceError> {
        if !self.outbox.has_room() {
            return Ok(false);
        }
        self.layout.locate(first).ok_or(SourceError::PageOutOfRange { page: first })?;
        let max = self.limits.window_pages();
        if count > max {
            let error = wire::WireError::WindowTooLong { count: count.into(), max: max.into() };
            return Err(error.into());
        }
        if self.version < 2 && request_id.is_some_and(|id| id != 0) {
            let version = self.version;
            return Err(
                wire::WireError::FeatureNotInVersion { feature: "request id", version }.into()
            );
        }
        let bytes =
            self.memory.pages(first, count).ok_or(SourceError::PageOutOfRange { page: first })?;
        self.ledger.mark_sent(first, bytes);
        let compression = self.compression.in_force();
        let queued = self.outbox.queue_answer(AnswerRun { first, count, request_id, compression });
        self.track(StreamKind::Urgent, first, count);
        Ok(queued)
    }

    /// Encodes one queued answer run into `out` (no allocation once `out` has room).
    pub(super) fn encode_answer_run(
        &mut self,
        out: &mut Vec<u8>,
        run: AnswerRun,
    ) -> Result<(), SourceError> {
        let AnswerRun { first, count, request_id, compression } = run;
        let (region, first_page) =
            self.layout.locate(first).ok_or(SourceError::PageOutOfRange { page: first })?;
        let meta = WindowMeta {
            region,
            first_page,
            request_id: request_id.unwrap_or(0),
            urgent_answer: request_id.is_some(),
        };
        let bytes =
            self.memory.pages(first, count).ok_or(SourceError::PageOutOfRange { page: first })?;
        let stats =
            wire::encode_page_window(out, self.version, &meta, bytes, compression, &self.limits)?;
        self.count_encoded(&stats);
        Ok(())
    }
}

/// Answers asked again on bulk that may wait at once (a vCPU has at most one fault).
const BULK_ANSWERS_MAX: usize = 256;

/// The window of `window` pages around `page`: a quarter before it, the rest after (guests
/// mostly walk memory upwards), clipped to the page's region.
pub fn window_around(layout: &Layout, page: u64, window: u32) -> (u64, u64) {
    let (_, offset) = layout.locate(page).unwrap_or((0, 0));
    let back = (u64::from(window) / 4).min(offset);
    let start = page - back;
    let count = u64::from(window).min(layout.pages_left_in_region(start)).max(1);
    (start, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_clipped_to_its_region() {
        let layout = Layout::new(&[(0, 16 * 4096), (1 << 20, 64 * 4096)]).unwrap();
        assert_eq!(window_around(&layout, 2, 16), (0, 16));
        assert_eq!(window_around(&layout, 15, 16), (11, 5));
        assert_eq!(window_around(&layout, 40, 16), (36, 16));
        assert_eq!(window_around(&layout, 16, 1), (16, 1));
    }
}
