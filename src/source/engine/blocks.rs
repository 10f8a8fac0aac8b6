//! Sending while the guest runs: each block of memory is made ready by the zero scan
//! ([`ZeroScan`]) just before its first page is sent, and hybrid's working set is armed for
//! the dirty log when the migration starts.

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
        let clock = &*self.clock;
        self.zero_scan.prepare(vm, clock, &mut self.ledger, &mut self.stats, (first, count))
    }

    /// Hybrid: the working set is armed when the migration starts, so that the dirty log sees
    /// its writes from then on (the live pass sends the working-set pages written during the
    /// cold part last). The rest of memory is armed block by block as the cold part reaches
    /// it: KVM's work grows with the pages armed, so arming all of memory here would delay the
    /// first page.
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
        let Some((first, count)) = self.next_pending_run() else {
            return Ok(false);
        };
        self.prepare_blocks(vm, first, u64::from(count))?;
        self.send_bulk_run(out, first, count)?;
        Ok(true)
    }
}
