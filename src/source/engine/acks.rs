//! The acknowledgement log: every window sent and not yet acknowledged, per stream.
//!
//! A window enters when it is encoded (`track`) and leaves when the destination's `Ack` for
//! its stream covers its sequence number (`on_ack`). A connection lost in post-copy is resumed
//! by re-sending exactly what is left here.
//!
//! Two bounds keep it small. Bulk windows wait while the bulk pages not acknowledged reach
//! the cap (`bulk_room`: backpressure on the push, the rounds and the live pass). Urgent
//! windows never wait (a vCPU does), so each stream also keeps at most
//! [`UNACKED_WINDOWS_MAX`] windows one by one: past that the oldest are folded into one span,
//! released by the first `Ack` that covers them all, and doubted whole on a lost connection
//! (a few pages too many go again; none is lost).

use crate::wire::StreamKind;
use std::collections::VecDeque;

/// Windows kept one by one per stream; older ones are folded into a span. A destination
/// acknowledges every few dozen windows, so only a stream whose acknowledgements are held up
/// (bulk stalled while urgent answers flow) ever reaches it.
pub const UNACKED_WINDOWS_MAX: usize = 4096;

/// One window sent and not yet acknowledged.
#[derive(Debug, Clone, Copy)]
struct Unacked {
    seq: u64,
    /// The window's first page; kept for re-sending after a lost connection.
    first: u64,
    count: u32,
}

/// The oldest unacknowledged windows of a stream, folded into the span that holds them all.
#[derive(Debug, Clone, Copy)]
struct Folded {
    /// The newest sequence number folded in: an `Ack` of it releases the whole span.
    seq: u64,
    first: u64,
    end: u64,
    /// Pages sent in the folded windows (not the span's length).
    pages: u64,
}

/// One stream's windows not yet acknowledged.
#[derive(Debug, Default)]
struct StreamLog {
    windows: VecDeque<Unacked>,
    folded: Option<Folded>,
    /// Pages in `windows` and `folded`.
    pages: u64,
}

impl StreamLog {
    /// Folds the oldest window into the span (the log is at its bound).
    fn fold_oldest(&mut self) {
        let Some(w) = self.windows.pop_front() else {
            return;
        };
        let end = w.first + u64::from(w.count);
        let pages = u64::from(w.count);
        self.folded = Some(match self.folded {
            None => Folded { seq: w.seq, first: w.first, end, pages },
            Some(f) => Folded {
                seq: w.seq,
                first: f.first.min(w.first),
                end: f.end.max(end),
                pages: f.pages + pages,
            },
        });
    }

    /// Every window up to sequence `seq` arrived.
    fn release(&mut self, seq: u64) {
        if let Some(f) = self.folded.filter(|f| f.seq <= seq) {
            self.pages -= f.pages;
            self.folded = None;
        }
        while let Some(window) = self.windows.front().filter(|w| w.seq <= seq) {
            self.pages -= u64::from(window.count);
            self.windows.pop_front();
        }
    }
}

/// Windows sent and not yet acknowledged, per stream (see the module docs).
#[derive(Debug)]
pub(super) struct AckLog {
    logs: [StreamLog; 2],
    /// Windows sent per stream (the next sequence number is this + 1).
    windows_sent: [u64; 2],
    /// Bulk pages not acknowledged at which bulk windows wait.
    cap_pages: u64,
    /// Whether bulk windows were held at the cap when last asked.
    held: bool,
    /// Times bulk windows started waiting at the cap.
    stalls: u64,
}

impl AckLog {
    /// An empty log whose bulk windows wait once `cap_pages` bulk pages are unacknowledged.
    pub(super) fn new(cap_pages: u64) -> Self {
        Self { logs: Default::default(), windows_sent: [0; 2], cap_pages, held: false, stalls: 0 }
    }

    /// Records a window of `count` pages from `first` sent on `stream`; returns the pages now
    /// unacknowledged on both streams.
    pub(super) fn track(&mut self, stream: StreamKind, first: u64, count: u32) -> u64 {
        let i = stream.index();
        self.windows_sent[i] += 1;
        let log = &mut self.logs[i];
        if log.windows.len() >= UNACKED_WINDOWS_MAX {
            log.fold_oldest();
        }
        log.windows.push_back(Unacked { seq: self.windows_sent[i], first, count });
        log.pages += u64::from(count);
        self.logs.iter().map(|l| l.pages).sum()
    }

    /// Every window of stream `stream_index` up to sequence `seq` arrived.
    pub(super) fn on_ack(&mut self, stream_index: u64, seq: u64) {
        if let Some(log) = usize::try_from(stream_index).ok().and_then(|i| self.logs.get_mut(i)) {
            log.release(seq);
        }
    }

    /// Whether another bulk window may go: false while the bulk pages not acknowledged are at
    /// the cap. The destination acknowledges every few dozen windows, and the cap holds more
    /// than that many (checked when the engine is built), so an `Ack` always comes to lift it.
    pub(super) fn bulk_room(&mut self) -> bool {
        let held = self.logs[StreamKind::Bulk.index()].pages >= self.cap_pages;
        if held && !self.held {
            self.stalls += 1;
        }
        self.held = held;
        !held
    }

    /// Bulk windows no longer wait: the destination has every page and acknowledges nothing
    /// more before its DoneAck (a recovery found it complete).
    pub(super) fn lift_cap(&mut self) {
        self.cap_pages = u64::MAX;
    }

    /// Times bulk windows started waiting at the cap.
    pub(super) fn stalls(&self) -> u64 {
        self.stalls
    }

    /// Empties the log (a connection was lost) and returns every span it held, as (first
    /// page, page count): what may not have arrived.
    pub(super) fn take_unacked(&mut self) -> Vec<(u64, u64)> {
        let mut taken = Vec::new();
        for log in &mut self.logs {
            if let Some(f) = log.folded.take() {
                taken.push((f.first, f.end - f.first));
            }
            taken.extend(log.windows.drain(..).map(|w| (w.first, u64::from(w.count))));
            log.pages = 0;
        }
        self.windows_sent = [0; 2];
        self.held = false;
        taken
    }

    /// Pages sent on `stream` and not yet acknowledged.
    pub(super) fn unacked_pages(&self, stream: StreamKind) -> u64 {
        self.logs[stream.index()].pages
    }

    /// Windows kept one by one on `stream` (at most [`UNACKED_WINDOWS_MAX`]).
    #[cfg(test)]
    fn windows_kept(&self, stream: StreamKind) -> usize {
        self.logs[stream.index()].windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BULK: u64 = 0;
    const URGENT: u64 = 1;

    #[test]
    fn an_ack_releases_its_windows_and_no_later_ones() {
        assert_eq!(StreamKind::Bulk.index() as u64, BULK);
        assert_eq!(StreamKind::Urgent.index() as u64, URGENT);
        let mut log = AckLog::new(u64::MAX);
        assert_eq!(log.track(StreamKind::Bulk, 0, 16), 16);
        assert_eq!(log.track(StreamKind::Urgent, 100, 1), 17);
        assert_eq!(log.track(StreamKind::Bulk, 16, 8), 25);
        log.on_ack(BULK, 1);
        assert_eq!(log.unacked_pages(StreamKind::Bulk), 8);
        assert_eq!(log.unacked_pages(StreamKind::Urgent), 1);
        log.on_ack(7, 99); // no such stream: ignored
        log.on_ack(URGENT, 5);
        assert_eq!(log.track(StreamKind::Bulk, 24, 2), 10);
    }

    #[test]
    fn bulk_waits_at_the_cap_until_an_ack_and_urgent_never_counts() {
        let mut log = AckLog::new(32);
        assert!(log.bulk_room());
        log.track(StreamKind::Bulk, 0, 16);
        // Urgent pages do not hold bulk back: they are bounded by the outbox instead.
        log.track(StreamKind::Urgent, 500, 16);
        log.track(StreamKind::Urgent, 600, 16);
        assert!(log.bulk_room());
        log.track(StreamKind::Bulk, 16, 16);
        assert!(!log.bulk_room(), "32 bulk pages unacknowledged: at the cap");
        assert!(!log.bulk_room());
        assert_eq!(log.stalls(), 1, "one stall, however often it is asked");
        log.on_ack(BULK, 1);
        assert!(log.bulk_room(), "the ack released room");
        log.track(StreamKind::Bulk, 32, 16);
        assert!(!log.bulk_room());
        assert_eq!(log.stalls(), 2);
    }

    #[test]
    fn a_long_unacknowledged_stream_is_folded_not_grown_and_nothing_is_lost() {
        let mut log = AckLog::new(u64::MAX);
        let windows = UNACKED_WINDOWS_MAX as u64 + 100;
        for i in 0..windows {
            log.track(StreamKind::Urgent, 1000 + 4 * i, 2);
        }
        assert_eq!(log.windows_kept(StreamKind::Urgent), UNACKED_WINDOWS_MAX);
        assert_eq!(log.unacked_pages(StreamKind::Urgent), 2 * windows);
        // An ack inside the folded span releases nothing of it: its last windows may be lost.
        log.on_ack(URGENT, 50);
        assert_eq!(log.unacked_pages(StreamKind::Urgent), 2 * windows);
        // Every page of every window is still covered by what a lost connection doubts.
        let taken = log.take_unacked();
        for i in 0..windows {
            let page = 1000 + 4 * i;
            assert!(
                taken.iter().any(|&(f, c)| f <= page && page + 2 <= f + c),
                "window at page {page} would not be sent again"
            );
        }
        assert_eq!(log.unacked_pages(StreamKind::Urgent), 0);
    }

    #[test]
    fn an_ack_past_the_folded_span_releases_it() {
        let mut log = AckLog::new(u64::MAX);
        let windows = UNACKED_WINDOWS_MAX as u64 + 10;
        for i in 0..windows {
            log.track(StreamKind::Bulk, i, 1);
        }
        log.on_ack(BULK, 11); // the folded windows are 1..=10
        assert_eq!(log.unacked_pages(StreamKind::Bulk), windows - 11);
        log.on_ack(BULK, windows);
        assert_eq!(log.unacked_pages(StreamKind::Bulk), 0);
        assert!(log.take_unacked().is_empty());
    }
}
