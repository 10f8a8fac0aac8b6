//! The outbox: fault answers waiting for the urgent stream.
//!
//! Fault answers wait as small (run, request id) entries and are encoded only when the driver polls the urgent
//! stream, straight into its buffer. Entries go into a queue whose memory is kept, so serving
//! a fault allocates nothing once the queue has reached its largest size.

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

/// Fault answers waiting for the urgent stream (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Outbox {
    /// Fault answers, run by run, in the order served.
    answers: VecDeque<AnswerRun>,
    /// An answer that could not be encoded when polled: reported by the next `poll_bulk`.
    failed: Option<SourceError>,
}

impl Outbox {
    /// Queues one run of a fault answer (the faulting page's run first).
    pub(super) fn queue_answer(&mut self, run: AnswerRun) {
        self.answers.push_back(run);
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
            outbox.queue_answer(r);
        }
        assert_eq!(outbox.next_answer_run(true), Some(run(5, Some(1))));
        assert_eq!(outbox.next_answer_run(false), Some(run(6, None)));
        assert_eq!(outbox.next_answer_run(false), Some(run(9, None)));
        assert_eq!(outbox.next_answer_run(false), None);
        assert_eq!(outbox.next_answer_run(true), Some(run(40, Some(2))));
        assert_eq!(outbox.next_answer_run(true), None);
    }
}
