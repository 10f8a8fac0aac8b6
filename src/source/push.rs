//! Order of the background push after the switch-over.
//!
//! What is still to be sent is one bitmap (`pending`). The push takes, in this order: pages on
//! the priority list (the stale part of the working set, hottest first, so the pages the guest
//! needs right after its resume arrive at line rate), then runs of pending pages from a cursor
//! that jumps to just past every fault window the source answers, since a guest that faulted at
//! page p is likely to touch p's neighbours next.

use crate::memory::{Layout, PageBitmap};
use std::collections::VecDeque;

/// Picks the next run of pages for the bulk stream.
#[derive(Debug, Clone, Default)]
pub struct PushScheduler {
    priority: VecDeque<u64>,
    cursor: u64,
}

impl PushScheduler {
    /// A scheduler that starts at page 0 with no priority pages.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pages to push first, in the given order (pages already sent are skipped later).
    pub fn set_priority(&mut self, pages: impl IntoIterator<Item = u64>) {
        self.priority = pages.into_iter().collect();
    }

    /// Moves the cursor to `page` (just past a fault window).
    pub fn pivot(&mut self, page: u64) {
        self.cursor = page;
    }

    /// The next run `(first, count)` of pending pages, at most `max_pages` long and never
    /// crossing a region boundary; None when nothing is pending.
    ///
    /// A run may carry pages of `carry` (pages known to be zero) between pending ones: a zero
    /// page inside a window costs 2 bits, a window of its own about 30 bytes. Without this a
    /// guest whose data alternates with zero pages would cross as one-page windows.
    pub fn next_run(
        &mut self,
        pending: &PageBitmap,
        carry: &PageBitmap,
        layout: &Layout,
        max_pages: u32,
    ) -> Option<(u64, u32)> {
        while let Some(page) = self.priority.pop_front() {
            if pending.get(page) {
                return Some(run_from(page, pending, carry, layout, max_pages));
            }
        }
        let first = pending.next_set(self.cursor).or_else(|| pending.next_set(0))?;
        let run = run_from(first, pending, carry, layout, max_pages);
        self.cursor = first + u64::from(run.1);
        Some(run)
    }
}

/// The run that starts at `first` (which is pending) and ends at a pending page, with only
/// pending or `carry` pages in between.
fn run_from(
    first: u64,
    pending: &PageBitmap,
    carry: &PageBitmap,
    layout: &Layout,
    max_pages: u32,
) -> (u64, u32) {
    let limit =
        (first + layout.pages_left_in_region(first).min(u64::from(max_pages))).min(pending.len());
    let mut end = pending.next_unset(first).unwrap_or(pending.len()).min(limit).max(first + 1);
    let mut page = end;
    while page < limit {
        if pending.get(page) {
            end = page + 1;
        } else if !carry.get(page) {
            break;
        }
        page += 1;
    }
    (first, (end - first) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_cursor_runs_within_regions() {
        let layout = Layout::new(&[(0, 8 * 4096), (1 << 20, 8 * 4096)]).unwrap();
        let mut pending = PageBitmap::full(16);
        let none = PageBitmap::new(16);
        let mut push = PushScheduler::new();
        push.set_priority([13, 2]);
        let mut runs = Vec::new();
        while let Some((first, count)) = push.next_run(&pending, &none, &layout, 4) {
            for p in first..first + u64::from(count) {
                assert!(pending.clear(p), "page {p} sent twice");
            }
            runs.push((first, count));
        }
        assert_eq!(runs[0], (13, 3), "priority run stops at the region end");
        assert_eq!(runs[1], (2, 4));
        assert_eq!(pending.count(), 0);
        assert!(runs.iter().all(|&(f, c)| f / 8 == (f + u64::from(c) - 1) / 8));
    }

    #[test]
    fn pivot_moves_the_cursor_and_wraps() {
        let layout = Layout::new(&[(0, 64 * 4096)]).unwrap();
        let pending = PageBitmap::full(64);
        let none = PageBitmap::new(64);
        let mut push = PushScheduler::new();
        push.pivot(60);
        assert_eq!(push.next_run(&pending, &none, &layout, 16), Some((60, 4)));
        let mut only_low = PageBitmap::new(64);
        only_low.set(3);
        assert_eq!(push.next_run(&only_low, &none, &layout, 16), Some((3, 1)));
    }

    #[test]
    fn runs_carry_zero_pages_between_pending_ones_but_end_on_a_pending_page() {
        let layout = Layout::new(&[(0, 32 * 4096), (1 << 20, 8 * 4096)]).unwrap();
        let mut pending = PageBitmap::new(40);
        let mut zero = PageBitmap::new(40);
        for p in (0..12).step_by(2) {
            pending.set(p); // data on even pages 0..10
            zero.set(p + 1); // zero on odd pages 1..11
        }
        pending.set(20); // page 13 is neither: the run stops before it
        let mut push = PushScheduler::new();
        assert_eq!(push.next_run(&pending, &zero, &layout, 64), Some((0, 11)));
        assert_eq!(push.next_run(&pending, &zero, &layout, 4), Some((20, 1)));
        // A cap in the middle of a carried gap ends the run on its last pending page.
        let mut push = PushScheduler::new();
        assert_eq!(push.next_run(&pending, &zero, &layout, 4), Some((0, 3)));
        // Runs never cross a region boundary, carried pages or not.
        let mut edge = PageBitmap::new(40);
        edge.set(31);
        edge.set(32);
        let mut all_zero = PageBitmap::full(40);
        all_zero.clear(31);
        all_zero.clear(32);
        assert_eq!(PushScheduler::new().next_run(&edge, &all_zero, &layout, 64), Some((31, 1)));
    }
}
