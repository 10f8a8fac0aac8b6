//! Page residency on the destination: which pages are *present* (placed here), which are
//! *requested* (a fault request is in flight), and, after the switch-over, the *need set* of
//! missing pages that must come from the source, with how many of them are still
//! *outstanding*.
//!
//! Placements, fault requests and need-set frames enter through the methods below; the
//! engine reads back whether a page is here, needed or waited for, and when nothing is left.

use crate::memory::PageBitmap;

/// Residency of every page (see the module docs).
pub(super) struct Residency {
    present: PageBitmap,
    requested: PageBitmap,
    need: Option<PageBitmap>,
    /// The memory `need` takes when the first need-set frame arrives, allocated (and faulted
    /// in) up front so that the downtime does not pay for it.
    need_spare: PageBitmap,
    /// Needed pages not yet present (counted from the resume on).
    outstanding: u64,
}

impl Residency {
    /// `pages` pages, none present, no need set yet.
    pub(super) fn new(pages: u64) -> Self {
        Self {
            present: PageBitmap::new(pages),
            requested: PageBitmap::new(pages),
            need: None,
            need_spare: PageBitmap::new(pages),
            outstanding: 0,
        }
    }

    /// True when `page` has been placed here.
    pub(super) fn is_present(&self, page: u64) -> bool {
        self.present.get(page)
    }

    /// True while a fault request for any page is in flight.
    pub(super) fn any_requested(&self) -> bool {
        self.requested.count() > 0
    }

    /// True when a fault request is in flight for a page of `first..first + count`.
    pub(super) fn any_requested_in(&self, first: u64, count: u64) -> bool {
        (first..first + count).any(|page| self.requested.get(page))
    }

    /// Whether missing `page` must come from the source; None before the need set arrived.
    pub(super) fn is_needed(&self, page: u64) -> Option<bool> {
        self.need.as_ref().map(|need| need.get(page))
    }

    /// True while a fault request for `page` is in flight.
    pub(super) fn is_requested(&self, page: u64) -> bool {
        self.requested.get(page)
    }

    /// A fault request for `page` goes out; false when one is in flight already.
    pub(super) fn request(&mut self, page: u64) -> bool {
        self.requested.set(page)
    }

    /// Needed pages not yet present.
    pub(super) fn outstanding(&self) -> u64 {
        self.outstanding
    }

    /// `page` was placed (`running`: the guest runs here, so `outstanding` counts). Returns
    /// whether a fault request was waiting for it; false also when it was present already.
    pub(super) fn mark_present(&mut self, page: u64, running: bool) -> bool {
        if !self.present.set(page) {
            return false;
        }
        // Before the state arrives `outstanding` is not counted yet (`start_running` counts it).
        if running && self.need.as_ref().is_some_and(|n| n.get(page)) {
            self.outstanding -= 1;
        }
        self.requested.clear(page)
    }

    /// Missing zero pages `first..first + count` are left missing, known zero: they leave the
    /// need set. False (and nothing changes) when a fault waits on one of them.
    pub(super) fn leave_zero(&mut self, first: u64, count: u64, running: bool) -> bool {
        if self.any_requested_in(first, count) {
            return false;
        }
        for page in first..first + count {
            if self.need.as_mut().is_some_and(|need| need.clear(page)) && running {
                self.outstanding -= 1;
            }
        }
        true
    }

    /// The need set, created (from the spare memory) by the first need-set frame.
    fn need_mut(&mut self) -> &mut PageBitmap {
        let spare = &mut self.need_spare;
        self.need.get_or_insert_with(|| std::mem::take(spare))
    }

    /// A need-set frame arrived: from now on there is a need set, even an empty one.
    pub(super) fn open_need(&mut self) {
        self.need_mut();
    }

    /// Pages `first..first + count` are needed (one run of a need-set frame).
    pub(super) fn add_needed(&mut self, first: u64, count: u64) {
        self.need_mut().set_range(first, count);
    }

    /// The next run `start..end` of present pages from `page`, before `stop`.
    pub(super) fn next_present_run(&self, page: u64, stop: u64) -> Option<(u64, u64)> {
        let start = self.present.next_set_before(page, stop)?;
        let end = self.present.next_unset(start).unwrap_or(u64::MAX).min(stop);
        Some((start, end))
    }

    /// Pages `first..end` were discarded here: missing again.
    pub(super) fn drop_present(&mut self, first: u64, end: u64) {
        for page in first..end {
            self.present.clear(page);
        }
    }

    /// The guest resumes: every needed page not present is outstanding from now on.
    pub(super) fn start_running(&mut self) {
        let (present, spare) = (&self.present, &mut self.need_spare);
        let need = self.need.get_or_insert_with(|| std::mem::take(spare));
        self.outstanding = need.count_and_not(present);
    }

    /// The pages of `first..first + count` not present here, as bitmap words re-based to
    /// page 0 (what a recovery report names).
    pub(super) fn missing_words(&self, first: u64, count: u64) -> Vec<u64> {
        let mut words = vec![0u64; count.div_ceil(64) as usize];
        for i in (0..count).filter(|&i| !self.present.get(first + i)) {
            words[(i / 64) as usize] |= 1 << (i % 64);
        }
        words
    }

    /// Pages with a fault request in flight.
    pub(super) fn requested(&self) -> impl Iterator<Item = u64> + '_ {
        self.requested.iter_ones()
    }
}
