//! The acknowledgement log: every window sent and not yet acknowledged, per stream.
//!
//! A window enters when it is encoded (`track`) and leaves when the destination's `Ack` for
//! its stream covers its sequence number (`on_ack`). A connection lost in post-copy is resumed
//! by re-sending exactly what is left here.

use crate::wire::StreamKind;
use std::collections::VecDeque;

/// One window sent and not yet acknowledged.
#[derive(Debug, Clone, Copy)]
struct Unacked {
    seq: u64,
    /// The window's first page; kept for re-sending after a lost connection.
    first: u64,
    count: u32,
}

/// Windows sent and not yet acknowledged, per stream (see the module docs).
#[derive(Debug, Default)]
pub(super) struct AckLog {
    unacked: [VecDeque<Unacked>; 2],
    /// Windows sent per stream (the next sequence number is this + 1).
    windows_sent: [u64; 2],
    /// Pages in `unacked`, both streams.
    pages_now: u64,
}

impl AckLog {
    /// Records a window of `count` pages from `first` sent on `stream`; returns the pages now
    /// unacknowledged on both streams.
    pub(super) fn track(&mut self, stream: StreamKind, first: u64, count: u32) -> u64 {
        let i = stream.index();
        self.windows_sent[i] += 1;
        self.unacked[i].push_back(Unacked { seq: self.windows_sent[i], first, count });
        self.pages_now += u64::from(count);
        self.pages_now
    }

    /// Every window of stream `stream_index` up to sequence `seq` arrived.
    pub(super) fn on_ack(&mut self, stream_index: u64, seq: u64) {
        let Some(log) = usize::try_from(stream_index).ok().and_then(|i| self.unacked.get_mut(i))
        else {
            return;
        };
        while let Some(window) = log.front() {
            if window.seq > seq {
                break;
            }
            self.pages_now -= u64::from(window.count);
            log.pop_front();
        }
    }

    /// Empties the log (a connection was lost) and returns every window it held, as (first
    /// page, page count): what may not have arrived.
    pub(super) fn take_unacked(&mut self) -> Vec<(u64, u32)> {
        let windows =
            self.unacked.iter_mut().flat_map(|log| log.drain(..)).map(|w| (w.first, w.count));
        let taken = windows.collect();
        *self = Self::default();
        taken
    }

    /// Pages sent on `stream` and not yet acknowledged.
    pub(super) fn unacked_pages(&self, stream: StreamKind) -> u64 {
        self.unacked[stream.index()].iter().map(|w| u64::from(w.count)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_releases_its_windows_and_no_later_ones() {
        let mut log = AckLog::default();
        assert_eq!(log.track(StreamKind::Bulk, 0, 16), 16);
        assert_eq!(log.track(StreamKind::Urgent, 100, 1), 17);
        assert_eq!(log.track(StreamKind::Bulk, 16, 8), 25);
        log.on_ack(StreamKind::Bulk.index() as u64, 1);
        assert_eq!(log.unacked_pages(StreamKind::Bulk), 8);
        assert_eq!(log.unacked_pages(StreamKind::Urgent), 1);
        log.on_ack(7, 99); // no such stream: ignored
        log.on_ack(StreamKind::Urgent.index() as u64, 5);
        assert_eq!(log.track(StreamKind::Bulk, 24, 2), 10);
    }
}
