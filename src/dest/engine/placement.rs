//! Placement: the pages of a decoded window go into guest memory through the [`PageSink`],
//! run by run, and into the residency and the digest's CRCs.
//!
//! A window enters decoded (`on_window`, or `start_placing` for a background window placed
//! chunk by chunk between faults); pages leave as placements, overwrites (before the
//! switch-over) or, for missing zero pages nobody waits for, as nothing at all (left zero).

use super::*;

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// A decoded background window of which pages `next..count` are still to be placed.
pub(super) struct Placing {
    first: u64,
    count: u32,
    next: u32,
    zeros: wire::PageMask,
    decoded: Vec<u8>,
}

impl DestEngine {
    /// Places the pages of a window that are not here yet; rewrites present ones before the
    /// switch-over (a pre-copy round re-sending a dirtied page), drops them after.
    pub(super) fn on_window(
        &mut self,
        window: &wire::PageWindowRef<'_>,
        sink: &mut dyn PageSink,
    ) -> Result<(), DestError> {
        let count = window.page_count;
        let first = self.layout.global(window.region, window.first_page, u64::from(count))?;
        let len = count as usize * PAGE_SIZE;
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = window
            .decode_into(&mut scratch[..len])
            .map_err(DestError::from)
            .and_then(|zeros| self.place_range(first, 0..count, &zeros, &scratch[..len], sink));
        self.scratch = scratch;
        result
    }

    /// Places pages `range` (window-relative) of a decoded window starting at page `first`.
    fn place_range(
        &mut self,
        first: u64,
        range: std::ops::Range<u32>,
        zeros: &wire::PageMask,
        decoded: &[u8],
        sink: &mut dyn PageSink,
    ) -> Result<(), DestError> {
        let mut i = range.start;
        while i < range.end {
            let page = first + u64::from(i);
            let is_zero = zeros.contains(i);
            // Extend a run of pages with the same (present, zero) shape.
            let present = self.residency.is_present(page);
            let mut j = i + 1;
            while j < range.end
                && self.residency.is_present(first + u64::from(j)) == present
                && zeros.contains(j) == is_zero
            {
                j += 1;
            }
            let bytes = &decoded[i as usize * PAGE_SIZE..j as usize * PAGE_SIZE];
            self.place_run(first + u64::from(i), bytes, present, is_zero, sink)?;
            i = j;
        }
        Ok(())
    }

    /// Sets how many pages of a background window are placed per [`DestEngine::place_more`]
    /// call once the guest runs (0, the default: whole windows in `on_frame`).
    ///
    /// Placing 64 pages with UFFDIO_COPY takes about 0.7 ms on a nested host. A driver that
    /// serves faults between the chunks keeps a fault answer from waiting behind the rest of
    /// a background window. Pages of the window that a fault answer places meanwhile are
    /// skipped when their chunk comes.
    pub fn set_place_chunk(&mut self, pages: u32) {
        self.place_chunk_pages = pages;
    }

    /// Whether a background window is decoded but not all placed; call
    /// [`DestEngine::place_more`] until false.
    pub fn placing(&self) -> bool {
        self.placing.is_some()
    }

    /// Places the next chunk of the window in progress. When the window is finished it is
    /// counted, and the migration may complete.
    pub fn place_more(&mut self, sink: &mut dyn PageSink) -> Result<Option<DestEvent>, DestError> {
        // While a vCPU waits on a fault answer, a page at a time: the driver looks for the
        // answer between chunks, and a chunk of 8 takes 30 to 80 us to place here.
        let chunk = if self.residency.any_requested() { 1 } else { self.place_chunk_pages.max(1) };
        Ok(if self.advance_placing(chunk, sink)? { self.check_complete() } else { None })
    }

    /// Places up to `pages` more pages of the window in progress; true when that finished it.
    fn advance_placing(&mut self, pages: u32, sink: &mut dyn PageSink) -> Result<bool, DestError> {
        let Some(mut job) = self.placing.take() else {
            return Ok(false);
        };
        let end = job.next.saturating_add(pages).min(job.count);
        let result = self.place_range(job.first, job.next..end, &job.zeros, &job.decoded, sink);
        result?;
        job.next = end;
        if end < job.count {
            self.placing = Some(job);
            return Ok(false);
        }
        self.spare_decoded = job.decoded;
        self.count_window(StreamKind::Bulk)?;
        Ok(true)
    }

    /// Decodes a background window and places its first chunk (see `set_place_chunk`).
    pub(super) fn start_placing(
        &mut self,
        window: &wire::PageWindowRef<'_>,
        sink: &mut dyn PageSink,
    ) -> Result<Option<DestEvent>, DestError> {
        let count = window.page_count;
        let first = self.layout.global(window.region, window.first_page, u64::from(count))?;
        let mut decoded = std::mem::take(&mut self.spare_decoded);
        decoded.resize(count as usize * PAGE_SIZE, 0);
        // A window that does not decode ends the migration, so its buffer need not be kept.
        let zeros = window.decode_into(&mut decoded)?;
        self.placing = Some(Placing { first, count, next: 0, zeros, decoded });
        self.place_more(sink)
    }

    /// Finishes a window in progress before a later bulk frame is handled (bulk frames are
    /// applied in order). Completion is checked by the handler of that later frame.
    pub(super) fn finish_placing(&mut self, sink: &mut dyn PageSink) -> Result<(), DestError> {
        self.advance_placing(u32::MAX, sink)?;
        Ok(())
    }

    /// Places one run of pages of the same shape (all present or all missing, all zero or
    /// none).
    fn place_run(
        &mut self,
        first: u64,
        bytes: &[u8],
        present: bool,
        is_zero: bool,
        sink: &mut dyn PageSink,
    ) -> Result<(), DestError> {
        let count = (bytes.len() / PAGE_SIZE) as u32;
        if present && !matches!(self.phase, DestPhase::PreSwitch | DestPhase::Loaded) {
            self.stats.pages_duplicate += u64::from(count);
            return Ok(());
        }
        if is_zero && !present && self.leave_zero(first, u64::from(count)) {
            return Ok(());
        }
        match (present, is_zero) {
            (false, false) => sink.place(first, bytes)?,
            (false, true) => sink.place_zero(first, u64::from(count))?,
            (true, false) => sink.overwrite(first, bytes)?,
            (true, true) => {
                for k in 0..u64::from(count) {
                    sink.overwrite(first + k, &ZERO_PAGE)?;
                }
            }
        }
        // A fault's latency ends when its page is in (the placement above woke its waiter).
        let now_ns = self.clock.now_ns();
        for k in 0..count {
            let page = first + u64::from(k);
            self.page_crc[page as usize] = if is_zero {
                zero_page_crc()
            } else {
                crc32fast::hash(&bytes[k as usize * PAGE_SIZE..(k as usize + 1) * PAGE_SIZE])
            };
            self.mark_present(page, now_ns);
        }
        self.stats.pages_placed += u64::from(count);
        Ok(())
    }

    /// A zero page that is missing here need not be placed: it stays missing, known zero,
    /// and a vCPU that touches it gets a local zero page (`on_fault`, outside the need set).
    /// That saves one UFFDIO_ZEROPAGE per run; on a guest whose data alternates with zero
    /// pages it is half of all placements. Not when a fault waits on a page of the run: the
    /// fault's answer must wake it.
    fn leave_zero(&mut self, first: u64, count: u64) -> bool {
        let running = self.phase == DestPhase::Running;
        if !self.residency.leave_zero(first, count, running) {
            return false;
        }
        for page in first..first + count {
            self.page_crc[page as usize] = zero_page_crc();
        }
        self.stats.pages_left_zero += count;
        true
    }

    /// `page` is placed; a fault that waited for it ends its latency now.
    pub(super) fn mark_present(&mut self, page: u64, now_ns: u64) {
        if self.residency.mark_present(page, self.phase == DestPhase::Running) {
            if let Some(FaultWait { started_ns: start, vcpu }) = self.fault_waits.remove(&page) {
                let latency_us = now_ns.saturating_sub(start) / 1000;
                self.retries.answered(page, now_ns.saturating_sub(start));
                self.stats.fault_us_max = self.stats.fault_us_max.max(latency_us);
                tracing::trace!(
                    page,
                    latency_us,
                    at_ns = now_ns,
                    since_resume_us = start.saturating_sub(self.stats.state_received_ns) / 1000,
                    "destination: fault served"
                );
                self.fault_hist.record(latency_us);
                self.charge_blocked(vcpu, latency_us);
            }
        }
    }
}
