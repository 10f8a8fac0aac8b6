//! The zero scan: blocks of guest memory made ready just before the source first reads them
//! while the guest runs, armed for the dirty log, then asked which of their pages were never
//! touched. A page range enters (`prepare`); never-touched pages leave as known zero in the
//! [`PageLedger`].
//!
//! Why by block, not all of memory when the migration starts: arming every page at once
//! write-protects every page KVM has mapped, and the zero scan walks every page table. Both
//! came before the first page could leave. A block at a time, just ahead of the pages being
//! sent, they take CPU time while the link is busy instead.
//!
//! Why arm before asking: a page written after the arm shows in the next harvest, and a page
//! written before the question is not untouched. Either way a page counted zero is zero, or
//! the log reports it and it loses its zero mark ([`PageLedger::forget_dirty`]).
//!
//! A block is `SourceConfig::prepare_block_pages` pages (2,048 by default, 8 MiB: one
//! `arm_dirty_log` and one pagemap walk each, 128 per GiB).

use super::ledger::PageLedger;
use crate::memory::PageBitmap;
use crate::ports::{Clock, MigratableVm};
use crate::source::{SourceError, SourceStats};

/// Which blocks are ready, and the scratch the VMM answers into (see the module docs).
pub(super) struct ZeroScan {
    /// One bit per block of `block_pages` pages: armed and scanned.
    prepared: PageBitmap,
    /// Scratch for the VMM's answer of which pages were never touched.
    untouched: PageBitmap,
    block_pages: u64,
}

impl ZeroScan {
    /// A scan of `pages` pages in blocks of `block_pages` (at least 1).
    pub(super) fn new(pages: u64, block_pages: u64) -> Self {
        let block_pages = block_pages.max(1);
        Self {
            prepared: PageBitmap::new(pages.div_ceil(block_pages)),
            untouched: PageBitmap::new(pages),
            block_pages,
        }
    }

    /// Makes every block that holds a page of `first..first + count` ready, once per block.
    /// Never-touched pages found there become known zero in `ledger` and leave its pending set;
    /// `stats` counts them and the time taken.
    pub(super) fn prepare(
        &mut self,
        vm: &mut dyn MigratableVm,
        clock: &dyn Clock,
        ledger: &mut PageLedger,
        stats: &mut SourceStats,
        (first, count): (u64, u64),
    ) -> Result<(), SourceError> {
        let total = self.untouched.len();
        if first >= total {
            return Err(SourceError::PageOutOfRange { page: first });
        }
        let last = (first + count.max(1) - 1).min(total - 1) / self.block_pages;
        for block in first / self.block_pages..=last {
            if self.prepared.set(block) {
                let started_ns = clock.now_ns();
                stats.pages_untouched += self.prepare_block(vm, ledger, block)?;
                stats.zero_scan_ms += (clock.now_ns() - started_ns) as f64 / 1e6;
            }
        }
        Ok(())
    }

    fn prepare_block(
        &mut self,
        vm: &mut dyn MigratableVm,
        ledger: &mut PageLedger,
        block: u64,
    ) -> Result<u64, SourceError> {
        let start = block * self.block_pages;
        let end = (start + self.block_pages).min(self.untouched.len());
        vm.arm_dirty_log(start, end - start)?;
        let mut newly_zero = 0;
        if vm.untouched_pages(start, end - start, &mut self.untouched)? {
            let mut page = start;
            while let Some(p) = self.untouched.next_set_before(page, end) {
                if ledger.mark_zero(p) {
                    newly_zero += 1;
                }
                page = p + 1;
            }
        }
        Ok(newly_zero)
    }
}
