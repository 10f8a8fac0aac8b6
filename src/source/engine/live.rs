//! Hybrid's live pass, the part of the source engine that runs while the guest still runs on
//! the source: the working-set passes, the check that gives a pass up when the guest dirties
//! it faster than it crosses, the invalidations that name stale pages to the destination, and
//! the drain before the pause. The pass's state is kept in [`LiveState`].

use super::live_state::Abandoned;
use super::*;

impl SourceEngine {
    /// Hybrid's live send of the working set. Pages written since the last harvest go last,
    /// hottest last: the shorter the time from sending a written page to the pause, the less
    /// likely it is stale by then. The others (read-hot, not written) go first and in page
    /// order: their order barely changes what is stale at the pause, and in page order they
    /// form runs, one window per 16 pages instead of one per page (in rank order the window
    /// headers of an idle guest's working set add up).
    /// Known-zero pages stay out: the need set already tells the destination to fill them
    /// locally.
    pub(super) fn queue_working_set(
        &mut self,
        vm: &mut dyn MigratableVm,
    ) -> Result<(), SourceError> {
        self.prepare_working_set(vm)?;
        let (dirty, zero) = (&self.dirty_scratch, self.ledger.zero());
        let (written, mut quiet): (Vec<u64>, Vec<u64>) = self
            .cfg
            .working_set
            .iter()
            .rev()
            .filter(|&&p| !zero.get(p))
            .partition(|&&p| dirty.get(p));
        quiet.sort_unstable();
        for &page in written.iter().chain(&quiet) {
            self.ledger.queue(page);
        }
        self.stats.ws_write_hot_pages = written.len() as u64;
        self.stats.ws_passes = self.live.first_ws_pass(written.len() as u64);
        self.push.set_priority(quiet.into_iter().chain(written));
        self.begin_live_pass();
        Ok(())
    }

    /// Records the size of the live pass that starts now (what `pending` holds) and the pages
    /// the destination holds, for `check_live_pass`.
    pub(super) fn begin_live_pass(&mut self) {
        self.live.begin_pass(self.ledger.pending_count(), self.ledger.valid_count());
    }

    /// After a live pass over the working set: whether to make one more live pass (queued in
    /// `pending`), as a pre-copy round would, over two kinds of stale page:
    /// - the working-set pages written meanwhile, while they do not fit the downtime budget,
    ///   shrink to at most half each pass (the guest writes them slower than the link carries
    ///   them: a paced guest), and passes are left. An unpaced guest rewrites them as fast as
    ///   they go, so this stops at once and they cross first after the resume;
    /// - the pages outside the working set that went stale after the cold part sent them,
    ///   under the same three conditions. Their writes are rare and random (else the cold part
    ///   would have been given up), so each pass leaves fewer, and each page re-sent here is a
    ///   network fault fewer after the resume. The write-hot pages stay out of this: re-sending
    ///   them only chases them.
    ///
    /// The other pages go first, in page order; the written working-set pages go last.
    pub(super) fn working_set_again(&mut self) -> bool {
        self.live.take_written(&mut self.dirty_scratch);
        let dirty = &self.dirty_scratch;
        let written: Vec<u64> =
            self.cfg.working_set.iter().rev().copied().filter(|&p| dirty.get(p)).collect();
        let count = written.len() as u64;
        let budget = self.downtime_page_budget() as u64;
        // Once auto found the working set written faster than the link, its written pages
        // follow the switch-over: another pass would only chase them.
        let ws_again = !self.goes_postcopy() && self.live.worth_again(count, budget, false);
        // Only after a cold part sent to its end: otherwise "stale" would be everything it
        // did not send (and listing it would walk all of memory for nothing).
        let cold_sent = self.cfg.live_pass == LivePass::All && self.live.cold_sent_whole();
        let stale = if cold_sent { self.stale_outside_working_set() } else { Vec::new() };
        let stale_count = stale.len() as u64;
        let stale_again = cold_sent && self.live.worth_again(stale_count, budget, true);
        tracing::debug!(
            pass = self.live.ws_passes(),
            written = count,
            stale_outside = stale_count,
            ws_again,
            stale_again,
            "source: working-set pass ended"
        );
        self.live.end_ws_pass(count, stale_count);
        if !(ws_again || stale_again) {
            return false;
        }
        let resent_stale = if stale_again { stale } else { Vec::new() };
        let resent_ws = if ws_again { written } else { Vec::new() };
        self.stats.stale_repass_pages += resent_stale.len() as u64;
        for &page in resent_stale.iter().chain(&resent_ws) {
            self.ledger.queue(page);
        }
        self.push.set_priority(resent_stale.into_iter().chain(resent_ws));
        self.stats.ws_passes = self.live.another_ws_pass();
        self.begin_live_pass();
        true
    }

    /// Pages outside the working set that the destination lacks and that are not known zero
    /// (in page order): after a cold part sent to its end, the ones the guest wrote since.
    fn stale_outside_working_set(&self) -> Vec<u64> {
        let mut needed = self.ledger.needed();
        for &page in &self.cfg.working_set {
            needed.clear(page);
        }
        needed.iter_ones().collect()
    }

    /// Every few thousand pages of a live pass (the cold part or a working-set pass):
    /// harvests the dirty log and gives the pass up when the guest dirties the pages it already
    /// sent faster than the link crosses the pass (stale-to-send ratio above 1). Finishing
    /// such a pass would mostly send pages that are stale by the pause (at a ratio of 1, 37% of
    /// them are); what is left is pushed after the resume, as in post-copy.
    pub(super) fn check_live_pass(&mut self, vm: &mut dyn MigratableVm) -> Result<(), SourceError> {
        let sent = self.pages_sent();
        // Auto judges more often than the pass is checked, so a write-heavy guest goes
        // post-copy before much of its memory crossed for nothing.
        if !self.live.check_due(sent) && !self.auto_due() {
            return Ok(());
        }
        self.harvest(vm)?;
        let went_stale = self.forget_dirty();
        let valid = self.ledger.valid_count();
        let (ratio, sent_since) = self.live.check(sent, went_stale, &self.dirty_scratch, valid);
        let cold = self.live.cold_open();
        tracing::debug!(went_stale, sent_since, ratio, cold, "source: live-pass check");
        if self.auto_due() {
            self.auto_judge(ratio);
        }
        if ratio > 1.0 {
            tracing::info!(
                went_stale,
                sent_since,
                ratio,
                cold,
                "source: the guest dirties memory faster than it crosses; the rest of this live pass waits for the push"
            );
            self.ledger.drop_pending();
            match self.live.abandon() {
                Abandoned::Cold => self.stats.cold_pass_abandoned = true,
                Abandoned::WorkingSet => self.stats.ws_pass_abandoned = true,
            }
        }
        Ok(())
    }

    /// Asks the destination to confirm it has taken in everything sent so far (Ping on the
    /// bulk stream, answered by Pong once the frames before it are placed). The guest runs on
    /// meanwhile; what it dirties is handled at the switch-over like any stale page.
    pub(super) fn start_drain(&mut self, out: &mut Vec<u8>) -> Result<bool, SourceError> {
        let seq = self.live.next_drain_seq();
        let ping = wire::Control { kind: wire::ControlKind::Ping, seq, value: 0 };
        wire::encode_frame(out, self.version, &wire::FrameBody::Control(ping), &self.limits)?;
        self.live.start_drain(seq, self.now_ns());
        Ok(true)
    }

    /// Tells the destination which pages it holds stale copies of (DirtySet frames, which it
    /// adds to its need set, discarding the copies). Sent while the guest runs, this moves the
    /// discards out of the downtime; the final need set at the pause repeats them harmlessly.
    pub(super) fn send_invalidations(&mut self, out: &mut Vec<u8>) -> Result<(), SourceError> {
        let invalidate = self.ledger.invalidations();
        // `is_empty` is true only for a set over no pages; with nothing stale, the regions are
        // all skipped below and no frame goes.
        if invalidate.is_empty() {
            return Ok(());
        }
        self.encode_dirty_sets(out, invalidate, true)?;
        self.stats.pages_invalidated_live += invalidate.count();
        self.ledger.clear_invalidations();
        Ok(())
    }

    /// True while the drain Ping is unanswered and its time limit has not passed.
    pub(super) fn drain_pending(&self) -> bool {
        self.live.drain_pending(self.now_ns(), self.cfg.drain_timeout_ms)
    }
}
