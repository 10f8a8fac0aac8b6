//! Blocks of guest memory made ready just before the source first reads them while the guest
//! runs: armed for the dirty log, then asked which of their pages were never touched.
//!
//! Why by block, not all of memory when the migration starts: arming every page at once
//! write-protects every page KVM has mapped (about 8 ms for a 1 GiB guest with half its memory
//! touched), and the zero scan walks every page table (5 to 10 ms per GiB). Both came before
//! the first page could leave, about 0.4% of a 1 GiB transfer at 1 Gbit/s. A block at a time,
//! just ahead of the pages being sent, they take CPU time while the link is busy instead.
//!
//! Why arm before asking: a page written after the arm shows in the next harvest, and a page
//! written before the question is not untouched. Either way a page counted zero is zero, or
//! the log reports it and it loses its zero mark (`forget_dirty`).
//!
//! A block is `SourceConfig::prepare_block_pages` pages (2,048 by default, 8 MiB: one
//! `arm_dirty_log` and one pagemap walk each, 128 per GiB).

use super::*;

impl SourceEngine {
    /// Makes every block that holds a page of `first..first + count` ready, once per block.
    /// Never-touched pages found there become known zero and leave `pending`.
    pub(super) fn prepare_blocks(
        &mut self,
        vm: &mut dyn MigratableVm,
        first: u64,
        count: u64,
    ) -> Result<(), SourceError> {
        let total = self.layout.total_pages();
        if first >= total {
            return Err(SourceError::PageOutOfRange { page: first });
        }
        let block_pages = self.block_pages();
        let last = (first + count.max(1) - 1).min(total - 1) / block_pages;
        for block in first / block_pages..=last {
            if self.prepared.set(block) {
                self.prepare_block(vm, block)?;
            }
        }
        Ok(())
    }

    fn prepare_block(&mut self, vm: &mut dyn MigratableVm, block: u64) -> Result<(), SourceError> {
        let started_ns = self.now_ns();
        let start = block * self.block_pages();
        let end = (start + self.block_pages()).min(self.layout.total_pages());
        vm.arm_dirty_log(start, end - start)?;
        if vm.untouched_pages(start, end - start, &mut self.untouched)? {
            let mut page = start;
            while let Some(p) = self.untouched.next_set_before(page, end) {
                if self.zero.set(p) {
                    self.stats.pages_untouched += 1;
                }
                self.pending.clear(p);
                page = p + 1;
            }
        }
        self.stats.zero_scan_ms += (self.now_ns() - started_ns) as f64 / 1e6;
        Ok(())
    }

    pub(super) fn block_pages(&self) -> u64 {
        self.cfg.prepare_block_pages.max(1)
    }

    /// Hybrid: the working set is armed when the migration starts, so that the dirty log sees
    /// its writes from then on (the live pass sends the working-set pages written during the
    /// cold part last). The rest of memory is armed block by block as the cold part reaches
    /// it. KVM's work grows with the pages armed: arming all of a 1 GiB guest here took about
    /// 4 ms before the first page, a working set of 16,384 pages a quarter of that.
    pub(super) fn arm_working_set(&mut self, vm: &mut dyn MigratableVm) -> Result<(), SourceError> {
        let started_ns = self.now_ns();
        let mut pages = PageBitmap::new(self.layout.total_pages());
        for &page in &self.cfg.working_set {
            if page < pages.len() {
                pages.set(page);
            }
        }
        vm.arm_dirty_log_pages(&pages)?;
        self.stats.zero_scan_ms += (self.now_ns() - started_ns) as f64 / 1e6;
        Ok(())
    }

    /// Hybrid: the working set's blocks are scanned before it is queued, so that its
    /// known-zero pages stay out of it (blocks holding nothing but working-set pages are not
    /// reached by the cold part).
    pub(super) fn prepare_working_set(
        &mut self,
        vm: &mut dyn MigratableVm,
    ) -> Result<(), SourceError> {
        let working_set = std::mem::take(&mut self.cfg.working_set);
        let result = working_set.iter().try_for_each(|&page| self.prepare_blocks(vm, page, 1));
        self.cfg.working_set = working_set;
        result
    }

    /// The next run of `pending` pages while the guest runs, its blocks made ready first.
    ///
    /// Pages of this run that the block's scan finds untouched still go, as zero entries of 2
    /// bits each: only the first run of each block can hold them.
    pub(super) fn send_next_live(
        &mut self,
        out: &mut Vec<u8>,
        vm: &mut dyn MigratableVm,
    ) -> Result<bool, SourceError> {
        let Some((first, count)) =
            self.push.next_run(&self.pending, &self.zero, &self.layout, self.cfg.push_pages)
        else {
            return Ok(false);
        };
        self.prepare_blocks(vm, first, u64::from(count))?;
        self.send_run(out, first, count, RunKind::Bulk)?;
        self.track(StreamKind::Bulk, first, count);
        Ok(true)
    }
}
