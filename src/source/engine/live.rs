//! Hybrid's live pass, the part of the source engine that runs while the guest still runs on
//! the source: the working-set passes, the check that gives a pass up when the guest dirties
//! it faster than it crosses, the invalidations that name stale pages to the destination, and
//! the drain before the pause.

use super::*;

/// Pages of a live pass between two checks of how fast it goes stale (64 MiB).
const LIVE_CHECK_PAGES: u64 = 16_384;
/// Most live passes over hybrid's working set (see `working_set_again`).
const MAX_WS_PASSES: u32 = 4;

impl SourceEngine {
    /// Hybrid's live send of the working set. Pages written since the last harvest go last,
    /// hottest last: the shorter the time from sending a written page to the pause, the less
    /// likely it is stale by then. The others (read-hot, not written) go first and in page
    /// order: their order barely changes what is stale at the pause, and in page order they
    /// form runs, one window per 16 pages instead of one per page (in rank order the idle
    /// guest's working set cost 1.4 MB of window headers, 0.3% of its transfer).
    /// Known-zero pages stay out: the need set already tells the destination to fill them
    /// locally.
    pub(super) fn queue_working_set(
        &mut self,
        vm: &mut dyn MigratableVm,
    ) -> Result<(), SourceError> {
        self.prepare_working_set(vm)?;
        let (dirty, zero) = (&self.dirty_scratch, &self.zero);
        let (written, mut quiet): (Vec<u64>, Vec<u64>) = self
            .cfg
            .working_set
            .iter()
            .rev()
            .filter(|&&p| !zero.get(p))
            .partition(|&&p| dirty.get(p));
        quiet.sort_unstable();
        for &page in written.iter().chain(&quiet) {
            self.pending.set(page);
        }
        self.stats.ws_write_hot_pages = written.len() as u64;
        self.prev_ws_dirty = written.len() as u64;
        self.push.set_priority(quiet.into_iter().chain(written));
        self.begin_live_pass();
        Ok(())
    }

    /// Records the size of the live pass that starts now (what `pending` holds) and the pages
    /// the destination holds, for `check_live_pass`.
    pub(super) fn begin_live_pass(&mut self) {
        self.live_check.pass_pages = self.pending.count();
        self.live_check.valid_at = self.valid.count();
    }

    /// After a live pass over the working set: whether to make one more live pass (queued in
    /// `pending`), as a pre-copy round would, over two kinds of stale page:
    /// - the working-set pages written meanwhile, while they do not fit the downtime budget,
    ///   shrink to at most half each pass (the guest writes them slower than the link carries
    ///   them: a paced guest), and at most `MAX_WS_PASSES` passes were made. An unpaced guest
    ///   rewrites them as fast as they go, so this stops at once and they cross first after the
    ///   resume;
    /// - the pages outside the working set that went stale after the cold part sent them,
    ///   under the same three conditions. Their writes are rare and random (else the cold part
    ///   would have been given up), so each pass leaves fewer, and each page re-sent here is a
    ///   network fault fewer after the resume. The write-hot pages stay out of this: re-sending
    ///   them only chases them.
    ///
    /// The other pages go first, in page order; the written working-set pages go last.
    pub(super) fn working_set_again(&mut self) -> bool {
        self.dirty_scratch.union_with(&self.pass_written);
        self.pass_written.clear_all();
        let dirty = &self.dirty_scratch;
        let written: Vec<u64> =
            self.cfg.working_set.iter().rev().copied().filter(|&p| dirty.get(p)).collect();
        let count = written.len() as u64;
        let budget = self.downtime_page_budget() as u64;
        let more_passes = self.stats.ws_passes < MAX_WS_PASSES;
        let ws_again = count > budget && count * 2 <= self.prev_ws_dirty && more_passes;
        // Only after a cold part sent to its end: otherwise "stale" would be everything it
        // did not send (and listing it would walk all of memory for nothing).
        let cold_sent = self.cfg.live_pass == LivePass::All
            && !self.stats.cold_pass_abandoned
            && !self.stats.ws_pass_abandoned;
        let stale = if cold_sent { self.stale_outside_working_set() } else { Vec::new() };
        let stale_count = stale.len() as u64;
        let stale_again = cold_sent
            && stale_count > budget
            && stale_count * 2 <= self.prev_stale_outside
            && more_passes;
        tracing::debug!(
            pass = self.stats.ws_passes,
            written = count,
            stale_outside = stale_count,
            ws_again,
            stale_again,
            "source: working-set pass ended"
        );
        self.prev_ws_dirty = count;
        self.prev_stale_outside = stale_count;
        if !(ws_again || stale_again) {
            return false;
        }
        let resent_stale = if stale_again { stale } else { Vec::new() };
        let resent_ws = if ws_again { written } else { Vec::new() };
        self.stats.stale_repass_pages += resent_stale.len() as u64;
        for &page in resent_stale.iter().chain(&resent_ws) {
            self.pending.set(page);
        }
        self.push.set_priority(resent_stale.into_iter().chain(resent_ws));
        self.stats.ws_passes += 1;
        self.begin_live_pass();
        true
    }

    /// Pages outside the working set that the destination lacks and that are not known zero
    /// (in page order): after a cold part sent to its end, the ones the guest wrote since.
    fn stale_outside_working_set(&self) -> Vec<u64> {
        let mut needed = self.needed();
        for &page in &self.cfg.working_set {
            needed.clear(page);
        }
        needed.iter_ones().collect()
    }

    /// Every `LIVE_CHECK_PAGES` pages of a live pass (the cold part or a working-set pass):
    /// harvests the dirty log and gives the pass up when the guest dirties the pages it already
    /// sent faster than the link crosses the pass (`stale_to_send_ratio` above 1). Finishing
    /// such a pass would mostly send pages that are stale by the pause (at a ratio of 1, 37% of
    /// them are); what is left is pushed after the resume, as in post-copy.
    pub(super) fn check_live_pass(&mut self, vm: &mut dyn MigratableVm) -> Result<(), SourceError> {
        let sent = self.pages_sent();
        if sent < self.live_check.sent_at + LIVE_CHECK_PAGES {
            return Ok(());
        }
        let stale_before = self.stats.stale_pages;
        self.harvest(vm)?;
        self.forget_dirty();
        self.pass_written.union_with(&self.dirty_scratch);
        let went_stale = self.stats.stale_pages - stale_before;
        let sent_since = sent - self.live_check.sent_at;
        let ratio = stale_to_send_ratio(went_stale, sent_since, self.live_check);
        self.live_check.sent_at = sent;
        self.live_check.valid_at = self.valid.count();
        tracing::debug!(
            went_stale,
            sent_since,
            ratio,
            cold = self.cold_pass_open,
            "source: live-pass check"
        );
        if ratio > 1.0 {
            tracing::info!(
                went_stale,
                sent_since,
                ratio,
                cold = self.cold_pass_open,
                "source: the guest dirties memory faster than it crosses; the rest of this live pass waits for the push"
            );
            self.pending.clear_all();
            if self.cold_pass_open {
                self.stats.cold_pass_abandoned = true;
            } else {
                self.stats.ws_pass_abandoned = true;
            }
        }
        Ok(())
    }

    /// Asks the destination to confirm it has taken in everything sent so far (Ping on the
    /// bulk stream, answered by Pong once the frames before it are placed). The guest runs on
    /// meanwhile; what it dirties is handled at the switch-over like any stale page.
    pub(super) fn start_drain(&mut self, out: &mut Vec<u8>) -> Result<bool, SourceError> {
        let seq = self.drain.map_or(1, |d| d.seq + 1);
        let ping = wire::Control { kind: wire::ControlKind::Ping, seq, value: 0 };
        wire::encode_frame(out, self.version, &wire::FrameBody::Control(ping), &self.limits)?;
        self.drain = Some(Drain { seq, since_ns: self.now_ns(), confirmed: false });
        Ok(true)
    }

    /// Tells the destination which pages it holds stale copies of (DirtySet frames, which it
    /// adds to its need set, discarding the copies). Sent while the guest runs, this moves the
    /// discards out of the downtime; the final need set at the pause repeats them harmlessly.
    pub(super) fn send_invalidations(&mut self, out: &mut Vec<u8>) -> Result<(), SourceError> {
        if self.invalidate.is_empty() {
            return Ok(());
        }
        self.encode_dirty_sets(out, &self.invalidate, true)?;
        self.stats.pages_invalidated_live += self.invalidate.count();
        self.invalidate.clear_all();
        Ok(())
    }

    /// True while the drain Ping is unanswered and its time limit has not passed.
    pub(super) fn drain_pending(&self) -> bool {
        self.drain.is_some_and(|d| {
            !d.confirmed
                && self.now_ns().saturating_sub(d.since_ns) < self.cfg.drain_timeout_ms * 1_000_000
        })
    }
}

/// How many times over the guest would dirty a live pass while the link crosses it once, from
/// one check interval: the share of the fresh copies on the destination that went stale in it
/// (against the copies exposed on average: those at the last check plus half of those sent
/// since), over the share of the pass sent in it. A raw stale-to-sent count would rise through
/// the pass as more sent pages become exposed, whatever the guest does; this does not.
fn stale_to_send_ratio(went_stale: u64, sent_since: u64, at: LiveCheck) -> f64 {
    let exposed = (at.valid_at + sent_since / 2).max(1) as f64;
    let sent_share = sent_since.max(1) as f64 / at.pass_pages.max(1) as f64;
    went_stale as f64 / exposed / sent_share
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest that writes `written` random pages of a `part`-page pass per interval while the
    /// link sends `sent` of them: of `exposed` fresh copies, `written * exposed / part` go stale.
    fn interval(part: u64, written: u64, sent: u64, valid_at: u64) -> f64 {
        let exposed = valid_at + sent / 2;
        let went_stale = written * exposed / part;
        stale_to_send_ratio(went_stale, sent, LiveCheck { sent_at: 0, valid_at, pass_pages: part })
    }

    #[test]
    fn ratio_is_the_same_early_and_late_in_a_pass() {
        // Writes at twice the send rate: 2 early in the pass and 2 near its end (a raw
        // stale-to-sent count would read 0.27 at the first check and 1.7 at the last).
        let (part, sent) = (60_000, 16_384);
        for valid_at in [0, 16_384, 40_000] {
            let ratio = interval(part, 2 * sent, sent, valid_at);
            assert!((ratio - 2.0).abs() < 0.01, "valid_at {valid_at}: {ratio}");
        }
        let slow = interval(part, sent / 4, sent, 30_000);
        assert!((slow - 0.25).abs() < 0.01, "{slow}");
    }

    #[test]
    fn ratio_survives_empty_counts() {
        let empty = LiveCheck::default();
        assert_eq!(stale_to_send_ratio(0, 0, empty), 0.0);
        assert!(stale_to_send_ratio(5, 0, empty).is_finite());
    }
}
