//! The outbox: fault answers waiting for the urgent stream.
//!
//! Fault answers wait as small (run, request id) entries and are encoded only when the driver polls the urgent
//! stream, straight into its buffer. Entries go into a queue whose memory is kept, so serving
//! a fault allocates nothing once the queue has reached its largest size.
//!
//! The queue holds at most [`OUTBOX_RUNS_MAX`] runs, and a page at most once: a fault asked
//! again while its answer still waits here is already answered. An answer that finds no room
//! is left to the push (the engine decides); the urgent stream never waits on anything else.

use crate::source::SourceError;
use crate::wire::Compression;
use std::collections::VecDeque;

/// One run of a fault answer: the faulting page (`request_id` set) or a run of its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AnswerRun {
    pub(super) first: u64,
    pub(super) count: u32,
    /// The request this run answers: set on the faulting page's own frame only.
    pub(super) request_id: Option<u32>,
    /// The compression in force when the fault was served (the answer is encoded later).
    pub(super) compression: Compression,
}

/// Runs the outbox holds at most. A driver takes every waiting answer each time it has an
/// urgent buffer, so only an urgent stream that stopped draining fills it; a whole 16-page
/// answer is at most 9 runs, so this is many more answers than vCPUs can wait on.
pub const OUTBOX_RUNS_MAX: usize = 1024;

/// Fault answers waiting for the urgent stream (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Outbox {
    /// Fault answers, run by run, in the order served.
    answers: VecDeque<AnswerRun>,
    /// An answer that could not be encoded when polled: reported by the next `poll_bulk`.
    failed: Option<SourceError>,
}

impl Outbox {
    /// Whether one more run fits.
    pub(super) fn has_room(&self) -> bool {
        self.answers.len() < OUTBOX_RUNS_MAX
    }

    /// Whether a queued run carries `page`.
    pub(super) fn holds(&self, page: u64) -> bool {
        self.answers.iter().any(|run| run.first <= page && page < run.first + u64::from(run.count))
    }

    /// Queues one run of a fault answer (the faulting page's run first); false, and nothing
    /// queued, when the outbox is full.
    pub(super) fn queue_answer(&mut self, run: AnswerRun) -> bool {
        if !self.has_room() {
            return false;
        }
        self.answers.push_back(run);
        true
    }

    /// The next run of the answer being polled: any run when `first_of_answer`, else only a
    /// run of the same answer (one poll carries one whole answer, as it is served).
    pub(super) fn next_answer_run(&mut self, first_of_answer: bool) -> Option<AnswerRun> {
        let next = self.answers.front()?;
        if !first_of_answer && next.request_id.is_some() {
            return None;
        }
        self.answers.pop_front()
    }

    /// The faulting page's own run of the next answer, if the next run is one.
    pub(super) fn next_faulted_page(&mut self) -> Option<AnswerRun> {
        self.answers.front()?.request_id?;
        self.answers.pop_front()
    }

    /// Keeps an encoding error of a polled answer for the next `poll_bulk` to return.
    pub(super) fn fail(&mut self, error: SourceError) {
        self.failed.get_or_insert(error);
    }

    /// The encoding error kept by `fail`, once.
    pub(super) fn take_failure(&mut self) -> Option<SourceError> {
        self.failed.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(first: u64, request_id: Option<u32>) -> AnswerRun {
        AnswerRun { first, count: 1, request_id, compression: Compression::None }
    }

    #[test]
    fn one_poll_takes_one_whole_answer() {
        let mut outbox = Outbox::default();
        for r in [run(5, Some(1)), run(6, None), run(9, None), run(40, Some(2))] {
            assert!(outbox.queue_answer(r));
        }
        assert_eq!(outbox.next_answer_run(true), Some(run(5, Some(1))));
        assert_eq!(outbox.next_answer_run(false), Some(run(6, None)));
        assert_eq!(outbox.next_answer_run(false), Some(run(9, None)));
        assert_eq!(outbox.next_answer_run(false), None);
        assert_eq!(outbox.next_answer_run(true), Some(run(40, Some(2))));
        assert_eq!(outbox.next_answer_run(true), None);
    }

    #[test]
    fn the_faulted_page_comes_alone_and_its_window_after() {
        let mut outbox = Outbox::default();
        for r in [run(5, Some(1)), run(6, None), run(40, Some(2))] {
            assert!(outbox.queue_answer(r));
        }
        assert_eq!(outbox.next_faulted_page(), Some(run(5, Some(1))));
        assert_eq!(outbox.next_faulted_page(), None, "a window run is not a faulted page");
        assert_eq!(outbox.next_answer_run(true), Some(run(6, None)));
        assert_eq!(outbox.next_answer_run(false), None);
        assert_eq!(outbox.next_faulted_page(), Some(run(40, Some(2))));
    }

    #[test]
    fn the_outbox_is_bounded_and_knows_its_pages() {
        let mut outbox = Outbox::default();
        let window =
            AnswerRun { first: 100, count: 16, request_id: None, compression: Compression::None };
        assert!(outbox.queue_answer(window));
        assert!(outbox.holds(100) && outbox.holds(115));
        assert!(!outbox.holds(99) && !outbox.holds(116));
        for page in 0..OUTBOX_RUNS_MAX as u64 - 1 {
            assert!(outbox.queue_answer(run(1000 + page, None)));
        }
        assert!(!outbox.has_room());
        assert!(!outbox.queue_answer(run(5, Some(1))), "a full outbox takes nothing more");
        assert!(!outbox.holds(5));
        assert_eq!(outbox.next_answer_run(true), Some(window));
        assert!(outbox.has_room(), "a polled run makes room");
    }
}
