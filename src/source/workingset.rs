//! Working-set estimation from access samples.
//!
//! While the guest runs, the source samples which pages the guest touched over short windows
//! (the built-in VMM reads its page tables' Accessed bits, which see reads as well as writes;
//! a VMM with only a dirty log can feed write samples) and counts, per page, in how many
//! windows the page showed up. Pages seen in at least `min_hits` windows are the working set,
//! ranked by that count, so the most used pages are sent (and later pushed) first.

use crate::memory::PageBitmap;

/// Counts, per page, the sampling windows in which the page was dirty.
#[derive(Debug, Clone)]
pub struct WorkingSetTracker {
    hits: Vec<u8>,
    windows: u32,
    min_hits: u8,
}

impl WorkingSetTracker {
    /// A tracker over `total_pages` pages, with no samples yet; a page needs `min_hits`
    /// windows to count as hot (2 filters one-off writes out of dirty-log samples; 1 suits
    /// access samples of a slowly paced guest).
    pub fn new(total_pages: u64, min_hits: u8) -> Self {
        Self { hits: vec![0; total_pages as usize], windows: 0, min_hits: min_hits.max(1) }
    }

    /// Adds one window's dirty set.
    pub fn record_window(&mut self, dirty: &PageBitmap) {
        for page in dirty.iter_ones() {
            if let Some(hit) = self.hits.get_mut(page as usize) {
                *hit = hit.saturating_add(1);
            }
        }
        self.windows += 1;
    }

    /// Windows recorded so far.
    pub fn windows(&self) -> u32 {
        self.windows
    }

    /// Number of windows a page must appear in to count as hot (never more than the windows
    /// recorded).
    pub fn min_hits(&self) -> u8 {
        self.min_hits.min(self.windows.clamp(1, 255) as u8)
    }

    /// The estimated working set, most frequently written first (ties by page index), at most
    /// `max_pages` pages.
    pub fn estimate(&self, max_pages: u64) -> Vec<u64> {
        let min_hits = self.min_hits();
        let mut pages: Vec<u64> =
            (0..self.hits.len() as u64).filter(|&p| self.hits[p as usize] >= min_hits).collect();
        pages.sort_by_key(|&p| (std::cmp::Reverse(self.hits[p as usize]), p));
        pages.truncate(max_pages as usize);
        pages
    }
}

/// Fraction of `truth` that `estimate` contains (1.0 when `truth` is empty).
pub fn recall(estimate: &[u64], truth: &[u64]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    let found: std::collections::HashSet<u64> = estimate.iter().copied().collect();
    truth.iter().filter(|p| found.contains(p)).count() as f64 / truth.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_repeated_pages_and_drops_one_offs() {
        let mut tracker = WorkingSetTracker::new(100, 2);
        for window in 0..6u64 {
            let mut dirty = PageBitmap::new(100);
            dirty.set(10);
            if window % 2 == 0 {
                dirty.set(20);
            }
            dirty.set(50 + window); // a cold page written once
            tracker.record_window(&dirty);
        }
        assert_eq!(tracker.estimate(10), vec![10, 20]);
        assert_eq!(tracker.estimate(1), vec![10]);
        assert_eq!(recall(&[10, 20], &[10, 20, 30, 40]), 0.5);
    }
}
