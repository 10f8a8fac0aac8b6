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
    pub fn next_run(
        &mut self,
        pending: &PageBitmap,
        layout: &Layout,
        max_pages: u32,
    ) -> Option<(u64, u32)> {
        while let Some(page) = self.priority.pop_front() {
            if pending.get(page) {
                return Some(run_from(page, pending, layout, max_pages));
            }
        }
        let first = pending.next_set(self.cursor).or_else(|| pending.next_set(0))?;
        let run = run_from(first, pending, layout, max_pages);
        self.cursor = first + u64::from(run.1);
        Some(run)
    }
}

/// The run of pending pages that starts at `first` (which is pending).
fn run_from(first: u64, pending: &PageBitmap, layout: &Layout, max_pages: u32) -> (u64, u32) {
    let limit = layout.pages_left_in_region(first).min(u64::from(max_pages));
    let end = pending.next_unset(first).unwrap_or(pending.len()).min(first + limit);
    (first, (end - first).max(1) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_cursor_runs_within_regions() {
        let layout = Layout::new(&[(0, 8 * 4096), (1 << 20, 8 * 4096)]).unwrap();
        let mut pending = PageBitmap::full(16);
        let mut push = PushScheduler::new();
        push.set_priority([13, 2]);
        let mut runs = Vec::new();
        while let Some((first, count)) = push.next_run(&pending, &layout, 4) {
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
        let mut push = PushScheduler::new();
        push.pivot(60);
        assert_eq!(push.next_run(&pending, &layout, 16), Some((60, 4)));
        let mut only_low = PageBitmap::new(64);
        only_low.set(3);
        assert_eq!(push.next_run(&only_low, &layout, 16), Some((3, 1)));
    }
}
