//! The page ledger: what the destination holds of each page and what must still go to it.
//!
//! Pages enter as the dirty log's harvests (a sent page goes stale), as the zero scan's
//! findings and as each phase's set to send; they leave as runs marked sent and as the
//! invalidations named to the destination. The ledger also keeps each page's CRC as last sent,
//! from which the memory digest of `Done` is made.

use crate::memory::{PageBitmap, PAGE_SIZE};
use crate::ports::{memory_digest, zero_page_crc};

/// The source's view of every page (see the module docs).
pub(super) struct PageLedger {
    /// Pages whose current content the destination holds (or will, once in flight lands).
    valid: PageBitmap,
    /// What the current phase still has to send.
    pending: PageBitmap,
    /// Pages that were zero when scanned and not written since.
    zero: PageBitmap,
    /// Pages the destination holds a stale copy of and has not been told about yet (hybrid's
    /// live pass tells it before the pause, so the discards stay out of the downtime).
    invalidate: PageBitmap,
    /// CRC32 of each page's content as last sent (zero pages: the zero CRC).
    page_crc: Vec<u32>,
    /// Pages sent so far, a page sent twice counted twice.
    pages_sent: u64,
}

impl PageLedger {
    /// A ledger of `pages` pages, none sent, none pending.
    pub(super) fn new(pages: u64) -> Self {
        Self {
            valid: PageBitmap::new(pages),
            pending: PageBitmap::new(pages),
            zero: PageBitmap::new(pages),
            invalidate: PageBitmap::new(pages),
            page_crc: vec![zero_page_crc(); pages as usize],
            pages_sent: 0,
        }
    }

    /// What the current phase still has to send.
    pub(super) fn pending(&self) -> &PageBitmap {
        &self.pending
    }

    /// Pages known zero.
    pub(super) fn zero(&self) -> &PageBitmap {
        &self.zero
    }

    /// True when `page` is still to be sent in this phase.
    pub(super) fn is_pending(&self, page: u64) -> bool {
        self.pending.get(page)
    }

    /// [`PageBitmap::is_empty`] of the pending set: true only for a guest without memory
    /// (it does not look at which pages are pending). The engine's round ends have always
    /// asked this, so a round that sent nothing still reports progress; kept as it is.
    pub(super) fn pending_spans_nothing(&self) -> bool {
        self.pending.is_empty()
    }

    /// Pages still to be sent in this phase.
    pub(super) fn pending_count(&self) -> u64 {
        self.pending.count()
    }

    /// Pages whose copy on the destination is current.
    pub(super) fn valid_count(&self) -> u64 {
        self.valid.count()
    }

    /// True when the destination's copy of `page` is stale or missing and it is not zero.
    pub(super) fn is_stale(&self, page: u64) -> bool {
        !self.valid.get(page) && !self.zero.get(page)
    }

    /// Pages sent so far (a page sent twice counts twice).
    pub(super) fn pages_sent(&self) -> u64 {
        self.pages_sent
    }

    /// Queues `page` for this phase.
    pub(super) fn queue(&mut self, page: u64) {
        self.pending.set(page);
    }

    /// Queues every page (pre-copy's first round).
    pub(super) fn queue_all(&mut self) {
        self.pending = PageBitmap::full(self.pending.len());
    }

    /// Queues every page the destination lacks that is not known zero (in place).
    pub(super) fn queue_needed(&mut self) {
        self.pending.assign_neither(&self.valid, &self.zero);
    }

    /// Queues every page of `dirty` (a pre-copy round).
    pub(super) fn queue_dirty(&mut self, dirty: &PageBitmap) {
        self.pending.union_with(dirty);
    }

    /// Queues what the destination lacks, except `skip` (hybrid's cold part, which leaves
    /// the working set for later).
    pub(super) fn queue_needed_except(&mut self, skip: &[u64]) {
        self.pending = self.needed();
        for &page in skip {
            self.pending.clear(page);
        }
    }

    /// Drops everything still to be sent in this phase.
    pub(super) fn drop_pending(&mut self) {
        self.pending.clear_all();
    }

    /// Pages the destination does not hold and that are not known zero.
    pub(super) fn needed(&self) -> PageBitmap {
        PageBitmap::in_neither(&self.valid, &self.zero)
    }

    /// Writes the need set (pages neither valid nor zero) into `need`, reusing its memory.
    pub(super) fn fill_need(&self, need: &mut PageBitmap) {
        need.assign_neither(&self.valid, &self.zero);
    }

    /// The zero scan found `page` never touched: it is zero and need not be sent. True when
    /// it was not known zero before.
    pub(super) fn mark_zero(&mut self, page: u64) -> bool {
        let newly = self.zero.set(page);
        self.pending.clear(page);
        newly
    }

    /// Pages `first..` (as many as `bytes` holds) went to the destination with this content.
    pub(super) fn mark_sent(&mut self, first: u64, bytes: &[u8]) {
        let mut page = first;
        for content in bytes.chunks_exact(PAGE_SIZE) {
            self.page_crc[page as usize] = crc32fast::hash(content);
            self.pending.clear(page);
            self.valid.set(page);
            // Fresh again on the destination: a later invalidation must not drop this copy.
            self.invalidate.clear(page);
            page += 1;
        }
        self.pages_sent += page - first;
    }

    /// The guest wrote the pages of `dirty`: their copies on the destination are stale (to be
    /// named to it) and they are no longer known zero. Returns how many copies went stale.
    pub(super) fn forget_dirty(&mut self, dirty: &PageBitmap) -> u64 {
        let mut went_stale = 0;
        for page in dirty.iter_ones() {
            if self.valid.clear(page) {
                went_stale += 1;
                self.invalidate.set(page);
            }
            self.zero.clear(page);
        }
        went_stale
    }

    /// Stale copies on the destination not yet named to it.
    pub(super) fn invalidations(&self) -> &PageBitmap {
        &self.invalidate
    }

    /// The invalidations were named to the destination.
    pub(super) fn clear_invalidations(&mut self) {
        self.invalidate.clear_all();
    }

    /// After a lost connection: every page believed delivered that `missing` names (the
    /// destination lacks it) is no longer valid there and is queued again. Returns how many.
    pub(super) fn reconcile(&mut self, missing: &PageBitmap) -> u64 {
        let mut lost = 0;
        for page in missing.iter_ones() {
            if self.valid.clear(page) {
                self.pending.set(page);
                lost += 1;
            }
        }
        lost
    }

    /// Pages `first..first + count` went in a window that may not have arrived: the
    /// destination's copy is in doubt, so they go again. Returns how many were valid.
    pub(super) fn doubt(&mut self, first: u64, count: u64) -> u64 {
        let mut doubted = 0;
        for page in first..(first + count).min(self.valid.len()) {
            if self.valid.clear(page) {
                self.pending.set(page);
                doubted += 1;
            }
        }
        doubted
    }

    /// The digest of every page as last sent (for `Done`).
    pub(super) fn digest(&self) -> u64 {
        memory_digest(&self.page_crc)
    }
}
