//! The live pass's bookkeeping: where hybrid's passes over memory stand while the guest still
//! runs on the source, and the drain before the pause (pre-copy drains too).
//!
//! The engine reports what it sent and what went stale (`begin_pass`, `check`, `end_ws_pass`);
//! this part answers whether to give a pass up or make another, and tracks the drain's Ping
//! until its Pong comes back (`start_drain`, `on_pong`).

use crate::memory::PageBitmap;

/// Drains before the pause at most: one, then one more while the guest dirtied more than
/// `DRAIN_AGAIN_PAGES` stale pages during the previous one.
const MAX_DRAINS: u64 = 3;
/// Most live passes over hybrid's working set (see `SourceEngine::working_set_again`).
const MAX_WS_PASSES: u32 = 4;
/// Pages of a live pass between two checks of how fast it goes stale (64 MiB).
const LIVE_CHECK_PAGES: u64 = 16_384;

/// Where the last dirty-log check of hybrid's live pass was, and the size of the pass.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LiveCheck {
    /// Pages sent (all phases) at the last check.
    sent_at: u64,
    /// Pages the destination held fresh copies of right after the last check.
    valid_at: u64,
    /// Pages the current live pass set out to send.
    pass_pages: u64,
}

/// The wait, before the pause, for the destination to take in the live data in flight.
#[derive(Debug, Clone, Copy)]
struct Drain {
    /// Sequence number of this drain's Ping (1 for the first, then 2, 3).
    seq: u64,
    since_ns: u64,
    confirmed: bool,
}

/// How a live pass ended when it was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Abandoned {
    /// The cold part (every page outside the working set).
    Cold,
    /// A pass over the working set.
    WorkingSet,
}

/// The live pass's state (see the module docs).
#[derive(Debug)]
pub(super) struct LiveState {
    /// Working-set pages found written at the end of the previous pass.
    prev_ws_dirty: u64,
    /// Pages outside the working set found stale at the end of the previous pass.
    prev_stale_outside: u64,
    check: LiveCheck,
    /// Pages the dirty-log checks found written since the pass began (the end of the pass
    /// adds them to what it harvests).
    pass_written: PageBitmap,
    /// The cold part is still being sent (the working set follows it).
    cold_open: bool,
    cold_abandoned: bool,
    ws_abandoned: bool,
    /// Passes over the working set so far.
    ws_passes: u32,
    /// The drain, once started.
    drain: Option<Drain>,
}

impl LiveState {
    /// No pass yet, over `pages` pages.
    pub(super) fn new(pages: u64) -> Self {
        Self {
            prev_ws_dirty: u64::MAX,
            prev_stale_outside: u64::MAX,
            check: LiveCheck::default(),
            pass_written: PageBitmap::new(pages),
            cold_open: false,
            cold_abandoned: false,
            ws_abandoned: false,
            ws_passes: 0,
            drain: None,
        }
    }

    /// The cold part starts.
    pub(super) fn open_cold(&mut self) {
        self.cold_open = true;
    }

    /// True while the cold part is being sent.
    pub(super) fn cold_open(&self) -> bool {
        self.cold_open
    }

    /// The cold part was sent (or given up).
    pub(super) fn close_cold(&mut self) {
        self.cold_open = false;
    }

    /// A pass of `pass_pages` pages starts with `valid_pages` fresh on the destination.
    pub(super) fn begin_pass(&mut self, pass_pages: u64, valid_pages: u64) {
        self.check.pass_pages = pass_pages;
        self.check.valid_at = valid_pages;
    }

    /// True when `pages_sent` reached the next check of the pass.
    pub(super) fn check_due(&self, pages_sent: u64) -> bool {
        pages_sent >= self.check.sent_at + LIVE_CHECK_PAGES
    }

    /// A check at `pages_sent` found `went_stale` copies stale and `written` pages written:
    /// returns the stale-to-send ratio and the pages sent since the last check.
    pub(super) fn check(
        &mut self,
        pages_sent: u64,
        went_stale: u64,
        written: &PageBitmap,
        valid_pages: u64,
    ) -> (f64, u64) {
        self.pass_written.union_with(written);
        let sent_since = pages_sent - self.check.sent_at;
        let ratio = stale_to_send_ratio(went_stale, sent_since, self.check);
        self.check.sent_at = pages_sent;
        self.check.valid_at = valid_pages;
        (ratio, sent_since)
    }

    /// The current pass is given up; says which kind it was.
    pub(super) fn abandon(&mut self) -> Abandoned {
        if self.cold_open {
            self.cold_abandoned = true;
            Abandoned::Cold
        } else {
            self.ws_abandoned = true;
            Abandoned::WorkingSet
        }
    }

    /// True when a cold part ran and was sent to its end (no pass was given up).
    pub(super) fn cold_sent_whole(&self) -> bool {
        !self.cold_abandoned && !self.ws_abandoned
    }

    /// Adds what the checks of the pass found written to `dirty` and starts afresh.
    pub(super) fn take_written(&mut self, dirty: &mut PageBitmap) {
        dirty.union_with(&self.pass_written);
        self.pass_written.clear_all();
    }

    /// The first pass over the working set, with `written` of its pages written; returns the
    /// passes made (1).
    pub(super) fn first_ws_pass(&mut self, written: u64) -> u32 {
        self.prev_ws_dirty = written;
        self.ws_passes = 1;
        self.ws_passes
    }

    /// Whether another pass is worth it: `count` stale pages (outside the working set when
    /// `outside`) above `budget`, at most half the previous pass's, and passes left.
    pub(super) fn worth_again(&self, count: u64, budget: u64, outside: bool) -> bool {
        let prev = if outside { self.prev_stale_outside } else { self.prev_ws_dirty };
        count > budget && count * 2 <= prev && self.ws_passes < MAX_WS_PASSES
    }

    /// The pass ended with `ws_written` working-set pages written and `stale_outside` stale.
    pub(super) fn end_ws_pass(&mut self, ws_written: u64, stale_outside: u64) {
        self.prev_ws_dirty = ws_written;
        self.prev_stale_outside = stale_outside;
    }

    /// Another pass over the working set starts; returns the passes made.
    pub(super) fn another_ws_pass(&mut self) -> u32 {
        self.ws_passes += 1;
        self.ws_passes
    }

    /// Passes over the working set so far.
    pub(super) fn ws_passes(&self) -> u32 {
        self.ws_passes
    }

    /// True once the first drain started.
    pub(super) fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// True when another drain may follow the current one.
    pub(super) fn may_drain_again(&self) -> bool {
        self.drain.is_some_and(|d| d.seq < MAX_DRAINS)
    }

    /// The sequence number of the next drain's Ping (1 for the first).
    pub(super) fn next_drain_seq(&self) -> u64 {
        self.drain.map_or(1, |d| d.seq + 1)
    }

    /// The drain whose Ping carries `seq` starts at `now_ns`.
    pub(super) fn start_drain(&mut self, seq: u64, now_ns: u64) {
        self.drain = Some(Drain { seq, since_ns: now_ns, confirmed: false });
    }

    /// A Pong of sequence `seq` came back at `now_ns`: the drain's duration in ms when it
    /// confirms the current drain (a late Pong of an earlier drain that timed out confirms
    /// nothing).
    pub(super) fn on_pong(&mut self, seq: u64, now_ns: u64) -> Option<f64> {
        let d = self.drain.as_mut().filter(|d| d.seq == seq && !d.confirmed)?;
        d.confirmed = true;
        Some(now_ns.saturating_sub(d.since_ns) as f64 / 1e6)
    }

    /// True while the drain's Ping is unanswered and `timeout_ms` has not passed.
    pub(super) fn drain_pending(&self, now_ns: u64, timeout_ms: u64) -> bool {
        self.drain.is_some_and(|d| {
            !d.confirmed && now_ns.saturating_sub(d.since_ns) < timeout_ms * 1_000_000
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

    #[test]
    fn a_late_pong_confirms_nothing() {
        let mut live = LiveState::new(8);
        assert_eq!(live.next_drain_seq(), 1);
        live.start_drain(1, 0);
        assert_eq!(live.next_drain_seq(), 2);
        live.start_drain(2, 5_000_000);
        assert_eq!(live.on_pong(1, 6_000_000), None);
        assert_eq!(live.on_pong(2, 7_000_000), Some(2.0));
        assert!(!live.drain_pending(8_000_000, 1_000));
        assert!(live.may_drain_again());
    }
}
