//! Working-set estimation from access samples.
//!
//! While the guest runs, the source samples which pages the guest touched over short windows
//! (the built-in VMM reads its page tables' Accessed bits, which see reads as well as writes;
//! a VMM with only a dirty log can feed write samples) and counts, per page, in how many
//! windows the page showed up. Pages seen in at least `min_hits` windows are the working set,
//! ranked by that count, so the most used pages are sent (and later pushed) first.

use crate::memory::PageBitmap;
use crate::ports::{EmbedError, MigratableVm};
use std::time::Duration;

/// The usual length of one sampling window.
pub const SAMPLE_WINDOW: Duration = Duration::from_millis(100);

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

/// Where a [`WorkingSetSampler`] gets its windows from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// The VMM's access sampler ([`MigratableVm::sample_accessed`]): reads and writes.
    Accessed,
    /// The dirty log, for a VMM without an access sampler: writes only.
    DirtyLog,
}

/// Samples a running guest in windows and estimates its working set, for any VMM: with its
/// access sampler when it has one, else from the dirty log. The caller's loop calls
/// [`Self::poll`] often; a window is taken when one is due.
#[derive(Debug, Clone)]
pub struct WorkingSetSampler {
    tracker: WorkingSetTracker,
    window: PageBitmap,
    window_ns: u64,
    sampling: Option<Sampling>,
    last_ns: u64,
    stopped: Duration,
}

impl WorkingSetSampler {
    /// A sampler over `total_pages` pages taking one window every `window`.
    pub fn new(total_pages: u64, window: Duration) -> Self {
        Self {
            tracker: WorkingSetTracker::new(total_pages, 1),
            window: PageBitmap::new(total_pages),
            window_ns: window.as_nanos() as u64,
            sampling: None,
            last_ns: 0,
            stopped: Duration::ZERO,
        }
    }

    /// At `now_ns` (mono ns): the first call starts the sampling (what the VMM logged before
    /// is dropped), later ones record a window when one is due.
    pub fn poll(&mut self, vm: &mut dyn MigratableVm, now_ns: u64) -> Result<(), EmbedError> {
        let Some(sampling) = self.sampling else {
            self.sampling = Some(self.begin(vm)?);
            self.last_ns = now_ns;
            return Ok(());
        };
        if now_ns.saturating_sub(self.last_ns) < self.window_ns {
            return Ok(());
        }
        self.window.clear_all();
        match sampling {
            Sampling::Accessed => {
                self.stopped += vm.sample_accessed(&mut self.window)?.unwrap_or_default();
            }
            Sampling::DirtyLog => vm.harvest_dirty(&mut self.window)?,
        }
        self.tracker.record_window(&self.window);
        self.last_ns = now_ns;
        Ok(())
    }

    /// The first sample, which only clears: accessed bits when the VMM has them, else the
    /// dirty log, turned on with every page armed. Accessed bits see reads too, so one touch
    /// makes a page a candidate; a dirty-log page needs two windows (one-off writes are cold).
    fn begin(&mut self, vm: &mut dyn MigratableVm) -> Result<Sampling, EmbedError> {
        if let Some(stopped) = vm.sample_accessed(&mut self.window)? {
            self.stopped += stopped;
            return Ok(Sampling::Accessed);
        }
        vm.start_dirty_log()?;
        vm.arm_dirty_log(0, self.window.len())?;
        self.tracker.min_hits = 2;
        Ok(Sampling::DirtyLog)
    }

    /// Samples for `period` on the calling thread, a window every window length, asking
    /// `go_on` before each; false when `go_on` stopped it.
    pub fn sample_for(
        &mut self,
        vm: &mut dyn MigratableVm,
        period: Duration,
        mut go_on: impl FnMut() -> bool,
    ) -> Result<bool, EmbedError> {
        let clock = std::time::Instant::now();
        let now_ns = |clock: std::time::Instant| clock.elapsed().as_nanos() as u64;
        self.poll(vm, now_ns(clock))?;
        let period_ns = period.as_nanos() as u64;
        while now_ns(clock) < period_ns {
            if !go_on() {
                return Ok(false);
            }
            let left_ns = period_ns - now_ns(clock);
            let next_ns = self.window_ns.saturating_sub(now_ns(clock) - self.last_ns);
            std::thread::sleep(Duration::from_nanos(left_ns.min(next_ns).max(1_000_000)));
            self.poll(vm, now_ns(clock))?;
        }
        Ok(true)
    }

    /// Where the windows came from (None before the first [`Self::poll`]).
    pub fn sampling(&self) -> Option<Sampling> {
        self.sampling
    }

    /// Windows recorded so far.
    pub fn windows(&self) -> u32 {
        self.tracker.windows()
    }

    /// How long the guest was stopped for samples in all.
    pub fn stopped(&self) -> Duration {
        self.stopped
    }

    /// The estimated working set, most used first, at most `max_pages` pages.
    pub fn estimate(&self, max_pages: u64) -> Vec<u64> {
        self.tracker.estimate(max_pages)
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

    /// A VMM whose windows are scripted: each sample or harvest gives the next one.
    struct Scripted {
        accessed: bool,
        windows: Vec<Vec<u64>>,
        next: usize,
        dirty_log_started: bool,
        armed_pages: u64,
    }

    impl Scripted {
        fn new(accessed: bool, windows: Vec<Vec<u64>>) -> Self {
            Self { accessed, windows, next: 0, dirty_log_started: false, armed_pages: 0 }
        }

        fn give(&mut self, out: &mut PageBitmap) {
            for &page in self.windows.get(self.next).into_iter().flatten() {
                out.set(page);
            }
            self.next += 1;
        }
    }

    impl MigratableVm for Scripted {
        fn regions(&self) -> Vec<crate::ports::HostRegion> {
            Vec::new()
        }
        fn start_dirty_log(&mut self) -> Result<(), EmbedError> {
            self.dirty_log_started = true;
            Ok(())
        }
        fn harvest_dirty(&mut self, out: &mut PageBitmap) -> Result<(), EmbedError> {
            self.give(out);
            Ok(())
        }
        fn arm_dirty_log(&mut self, _first: u64, count: u64) -> Result<(), EmbedError> {
            self.armed_pages += count;
            Ok(())
        }
        fn pause(&mut self) -> Result<Duration, EmbedError> {
            Ok(Duration::ZERO)
        }
        fn save_state(&mut self) -> Result<Vec<u8>, EmbedError> {
            Ok(Vec::new())
        }
        fn restore_state(&mut self, _blob: &[u8]) -> Result<(), EmbedError> {
            Ok(())
        }
        fn resume(&mut self) -> Result<(), EmbedError> {
            Ok(())
        }
        fn sample_accessed(
            &mut self,
            out: &mut PageBitmap,
        ) -> Result<Option<Duration>, EmbedError> {
            if !self.accessed {
                return Ok(None);
            }
            self.give(out);
            Ok(Some(Duration::from_millis(1)))
        }
    }

    /// Windows 100 ms apart: the first call only clears, each later due one is recorded.
    fn sample(vm: &mut Scripted) -> WorkingSetSampler {
        let mut sampler = WorkingSetSampler::new(64, Duration::from_millis(100));
        for at_ms in [0u64, 50, 100, 150, 200, 300, 310] {
            sampler.poll(vm, at_ms * 1_000_000).expect("poll");
        }
        sampler
    }

    #[test]
    fn an_access_sampler_gives_every_touched_page_most_used_first() {
        // The first window is the clearing one: page 63 in it is not counted.
        let windows = vec![vec![63], vec![1, 2], vec![2, 9], vec![2]];
        let mut vm = Scripted::new(true, windows);
        let sampler = sample(&mut vm);
        assert_eq!(sampler.sampling(), Some(Sampling::Accessed));
        assert_eq!(sampler.windows(), 3, "windows at 100, 200 and 300 ms");
        assert_eq!(sampler.estimate(10), vec![2, 1, 9]);
        assert_eq!(sampler.estimate(1), vec![2]);
        assert_eq!(sampler.stopped(), Duration::from_millis(4));
        assert!(!vm.dirty_log_started, "a VMM with a sampler keeps its dirty log off");
    }

    #[test]
    fn without_an_access_sampler_the_dirty_log_gives_the_pages_written_twice() {
        // Turning the log on clears it: the first harvest is already a window.
        let windows = vec![vec![1, 2], vec![2, 7, 8], vec![2, 8]];
        let mut vm = Scripted::new(false, windows);
        let sampler = sample(&mut vm);
        assert_eq!(sampler.sampling(), Some(Sampling::DirtyLog));
        assert!(vm.dirty_log_started, "the dirty log was turned on for the samples");
        assert_eq!(vm.armed_pages, 64, "every page armed");
        assert_eq!(sampler.windows(), 3);
        // Pages 1 and 7, written in one window only, are one-offs.
        assert_eq!(sampler.estimate(10), vec![2, 8]);
        assert_eq!(sampler.stopped(), Duration::ZERO);
    }
}
