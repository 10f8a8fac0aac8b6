//! The switch-over: the guest pauses, and what must precede the destination's resume is
//! queued as a plan (pages, need set, state, run) that lives only while the switch-over runs.
//! `switch_over` makes the plan; `poll_switch` emits it, one frame per poll, and enters the
//! push once the hand-over is out.
//!
//! The hand-over is its own command (from protocol version 3): the state goes, the
//! destination restores it and answers `Loaded`, and only then does `Run` go. So a state that
//! fails to load, or a connection lost while it loads, leaves the source authoritative: the
//! migration is recovered or cancelled, and the guest never runs on both hosts.

use super::*;

/// What remains to be emitted during the switch-over, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SwitchItem {
    /// Pages in `pending` (pre-copy's last dirty set, hybrid-paper's working set).
    Pages,
    /// The need set, one DirtySet frame per region.
    NeedSet,
    /// The VmState blob.
    State,
    /// The `Run` command, once the destination answered `Loaded`.
    Run,
}

/// The switch-over's plan: up to four items, emitted in order.
#[derive(Debug, Clone, Copy)]
pub(super) struct SwitchPlan {
    items: [SwitchItem; 4],
    len: usize,
    next: usize,
}

impl SwitchPlan {
    /// `items`, then `Run` when the session's version has the separate hand-over.
    fn new(items: &[SwitchItem], version: u16) -> Self {
        let len = items.len().min(3);
        let mut plan = Self { items: [SwitchItem::Run; 4], len, next: 0 };
        plan.items[..len].copy_from_slice(&items[..len]);
        if version >= wire::VERSION_HAND_OVER {
            plan.len += 1;
        }
        plan
    }

    /// The plan again after a lost connection, the guest paused here and not running on the
    /// destination: a converged pre-copy sends what the destination lacks, then every mode
    /// sends the need set and the state. Downtime pages of the hybrid modes were a saving,
    /// not a need, and are left to the push.
    pub(super) fn again(mode: MigrationMode, precopy_fallback: bool, version: u16) -> Self {
        use SwitchItem::{NeedSet, Pages, State};
        match mode {
            MigrationMode::Precopy if !precopy_fallback => {
                Self::new(&[Pages, NeedSet, State], version)
            }
            _ => Self::new(&[NeedSet, State], version),
        }
    }

    /// True when the plan sends pages before the need set.
    pub(super) fn sends_pages(&self) -> bool {
        self.items[..self.len].contains(&SwitchItem::Pages)
    }

    fn front(&self) -> Option<SwitchItem> {
        self.items[..self.len].get(self.next).copied()
    }

    fn pop(&mut self) {
        self.next = (self.next + 1).min(self.len);
    }
}

impl SourceEngine {
    /// Pauses the guest and plans what must precede the destination's resume.
    pub(super) fn switch_over(&mut self, vm: &mut dyn MigratableVm) -> Result<(), SourceError> {
        let latency = vm.pause()?;
        self.stats.pause_ns = self.now_ns();
        tracing::info!(
            rounds = self.rounds.round(),
            pause_latency_us = latency.as_micros() as u64,
            "source: guest paused, switch-over"
        );
        self.stats.pause_latency_ms = latency.as_secs_f64() * 1e3;
        self.harvest(vm)?;
        self.forget_dirty();
        self.phase = Phase::SwitchOver;
        self.ledger.drop_pending();
        use SwitchItem::{NeedSet, Pages, State};
        self.auto_record_switch();
        let items: &[SwitchItem] = match self.method() {
            MigrationMode::Precopy if self.rounds.fallback() => {
                // No convergence: what is still dirty would not fit the downtime, so it goes
                // post-copy (need set, state, then faults and the push), not stop-and-copy.
                &[NeedSet, State]
            }
            MigrationMode::Precopy => {
                // Every page not valid on the destination goes now, in the downtime.
                self.ledger.queue_needed();
                &[Pages, NeedSet, State]
            }
            MigrationMode::HybridPaper => {
                for &page in &self.cfg.working_set {
                    self.ledger.queue(page);
                }
                &[NeedSet, Pages, State]
            }
            MigrationMode::Postcopy => &[NeedSet, State],
            MigrationMode::Hybrid | MigrationMode::Auto => {
                // The hottest stale working-set pages go again in the downtime, as many as a
                // quarter of the downtime target carries at the measured rate: the guest touches
                // them first after the resume, so each one sent now is a network fault saved.
                // The rest are dropped on the destination and pushed first after the resume.
                let budget = self.downtime_page_budget();
                for page in self.stale_working_set().into_iter().take(budget) {
                    self.ledger.queue(page);
                }
                &[Pages, NeedSet, State]
            }
        };
        self.switch = Some(SwitchPlan::new(items, self.version));
        Ok(())
    }

    /// Working-set pages, in rank order, whose copy on the destination is stale or missing.
    fn stale_working_set(&self) -> Vec<u64> {
        let ledger = &self.ledger;
        self.cfg.working_set.iter().copied().filter(|&p| ledger.is_stale(p)).collect()
    }

    /// Pages that a quarter of the downtime target carries at the measured bulk rate (0 before
    /// any rate is known). A quarter, because the rate is measured where the ring hands data to
    /// the kernel, which runs ahead of the wire, and the need set, the state and the resume
    /// take their share of the downtime too.
    pub(super) fn downtime_page_budget(&self) -> usize {
        let bytes = self.compression.bytes_per_ms() * self.cfg.downtime_target_ms / 4.0;
        (bytes / PAGE_SIZE as f64) as usize
    }

    /// Emits the next frame of the plan; false when the plan is done (or none is running).
    pub(super) fn poll_switch(
        &mut self,
        out: &mut Vec<u8>,
        vm: &mut dyn MigratableVm,
    ) -> Result<bool, SourceError> {
        while let Some(item) = self.switch.as_ref().and_then(SwitchPlan::front) {
            match item {
                SwitchItem::Pages => {
                    let before = self.pages_sent();
                    if self.send_next_pending(out)? {
                        self.stats.pages_in_downtime += self.pages_sent() - before;
                        return Ok(true);
                    }
                }
                SwitchItem::NeedSet => {
                    self.encode_need_set(out)?;
                    self.pop_switch_item();
                    return Ok(true);
                }
                SwitchItem::State => {
                    let blob = vm.save_state()?;
                    wire::encode_frame(
                        out,
                        self.version,
                        &wire::FrameBody::VmState(&blob),
                        &self.limits,
                    )?;
                    self.stats.state_sent_ns = self.now_ns();
                    self.dest_loaded = false;
                    self.pop_switch_item();
                    if self.switch.as_ref().and_then(SwitchPlan::front).is_none() {
                        // A version-2 peer resumes on the state itself.
                        self.hand_over();
                    }
                    return Ok(true);
                }
                SwitchItem::Run => {
                    if !self.dest_loaded {
                        return Ok(false); // the destination is still loading the state
                    }
                    let run = wire::Control { kind: wire::ControlKind::Run, seq: 0, value: 0 };
                    let body = wire::FrameBody::Control(run);
                    wire::encode_frame(out, self.version, &body, &self.limits)?;
                    self.pop_switch_item();
                    self.hand_over();
                    return Ok(true);
                }
            }
            self.pop_switch_item();
        }
        Ok(false)
    }

    /// The command that lets the destination run the guest is out: from here on the source
    /// never resumes its copy, and the push begins.
    fn hand_over(&mut self) {
        self.stats.run_sent_ns = self.now_ns();
        self.handed_over = true;
        self.enter_push();
    }

    /// True while the state is out and the destination has not yet answered `Loaded`.
    pub fn awaits_loaded(&self) -> bool {
        self.switch.as_ref().and_then(SwitchPlan::front) == Some(SwitchItem::Run)
            && !self.dest_loaded
    }

    /// The destination answered `Loaded`: it holds the state, and `Run` may go; or it could
    /// not load it, which cancels the migration (the guest never left this host).
    pub(super) fn on_loaded(&mut self, value: u64) -> Result<(), SourceError> {
        if self.switch.as_ref().and_then(SwitchPlan::front) != Some(SwitchItem::Run) {
            return Err(SourceError::UnexpectedFrame {
                stream: StreamKind::Bulk,
                frame: wire::FrameType::Control,
                phase: self.phase,
            });
        }
        if value & wire::LOADED_REFUSED != 0 {
            return Err(SourceError::StateRefused);
        }
        self.dest_loaded = true;
        Ok(())
    }

    fn pop_switch_item(&mut self) {
        if let Some(plan) = self.switch.as_mut() {
            plan.pop();
        }
    }

    /// The need set: pages that are neither valid on the destination nor zero (and, for
    /// hybrid-paper, not about to be sent in the downtime: those are still listed, since the
    /// destination marks them present as they arrive).
    fn encode_need_set(&mut self, out: &mut Vec<u8>) -> Result<(), SourceError> {
        self.ledger.fill_need(&mut self.need_scratch);
        self.stats.need_pages = self.need_scratch.count();
        self.encode_dirty_sets(out, &self.need_scratch, false)
    }

    /// One DirtySet frame per region of `pages` (regions with no page in it are left out when
    /// `skip_empty`; the need set names every region, so the destination knows it is whole).
    pub(super) fn encode_dirty_sets(
        &self,
        out: &mut Vec<u8>,
        pages: &PageBitmap,
        skip_empty: bool,
    ) -> Result<(), SourceError> {
        for (index, span) in self.layout.regions().iter().enumerate() {
            let words = region_words(pages, span.first_page, span.pages());
            if skip_empty && words.iter().all(|&w| w == 0) {
                continue;
            }
            wire::encode_dirty_set(
                out,
                self.version,
                index as u32,
                &words,
                span.pages(),
                &self.limits,
            )?;
        }
        Ok(())
    }
}

/// The words of `bitmap` for pages `first..first+pages`, re-based to 0 (KVM layout).
fn region_words(bitmap: &PageBitmap, first: u64, pages: u64) -> std::borrow::Cow<'_, [u64]> {
    let src = bitmap.words();
    let (at, shift) = ((first / 64) as usize, (first % 64) as u32);
    if shift == 0 && pages % 64 == 0 && at + (pages / 64) as usize <= src.len() {
        // A region on whole words (every KVM slot of a guest built here): the words as they
        // are, with no copy and no fresh allocation inside the downtime.
        return std::borrow::Cow::Borrowed(&src[at..at + (pages / 64) as usize]);
    }
    // Word by word (shifted when the region does not start on a word): the need set of a
    // 4 GiB post-copy holds a million pages, and it is built inside the downtime.
    let word = |j: usize| src.get(j).copied().unwrap_or(0);
    let mut words: Vec<u64> = (0..pages.div_ceil(64) as usize)
        .map(|i| {
            let low = word(at + i) >> shift;
            if shift == 0 {
                low
            } else {
                low | word(at + i + 1) << (64 - shift)
            }
        })
        .collect();
    if pages % 64 != 0 {
        if let Some(last) = words.last_mut() {
            *last &= (1u64 << (pages % 64)) - 1; // bits past the region belong to the next one
        }
    }
    std::borrow::Cow::Owned(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_runs_in_order_once() {
        let items = [SwitchItem::NeedSet, SwitchItem::State];
        let mut plan = SwitchPlan::new(&items, wire::VERSION_HAND_OVER - 1);
        assert_eq!(plan.front(), Some(SwitchItem::NeedSet));
        plan.pop();
        assert_eq!(plan.front(), Some(SwitchItem::State));
        plan.pop();
        plan.pop();
        assert_eq!(plan.front(), None);
    }

    #[test]
    fn from_the_hand_over_version_the_plan_ends_with_run() {
        let mut plan = SwitchPlan::new(&[SwitchItem::State], wire::VERSION_HAND_OVER);
        assert_eq!(plan.front(), Some(SwitchItem::State));
        plan.pop();
        assert_eq!(plan.front(), Some(SwitchItem::Run));
        plan.pop();
        assert_eq!(plan.front(), None);
        let again = SwitchPlan::again(MigrationMode::Postcopy, false, wire::VERSION_CURRENT);
        assert_eq!(
            again.items[..again.len],
            [SwitchItem::NeedSet, SwitchItem::State, SwitchItem::Run]
        );
    }

    #[test]
    fn region_words_rebase() {
        let mut b = PageBitmap::new(200);
        b.set(100);
        b.set(130);
        b.set(199);
        assert_eq!(region_words(&b, 100, 64), vec![1 | 1 << 30]);
        assert_eq!(region_words(&b, 64, 136), vec![1 << 36, 1 << 2, 1 << 7]);
        // A region that ends mid-word does not take the next region's bits.
        assert_eq!(region_words(&b, 90, 20), vec![1 << 10]);
        assert_eq!(region_words(&b, 0, 100), vec![0, 0]);
    }

    #[test]
    fn region_words_match_a_bit_by_bit_copy() {
        let mut b = PageBitmap::new(1000);
        for p in (0..1000).filter(|p| (p * 7919) % 13 < 5) {
            b.set(p);
        }
        // Aligned spans (borrowed as they are) and unaligned ones (copied, shifted).
        for (first, pages) in
            [(0, 1000), (3, 997), (64, 500), (129, 300), (999, 1), (0, 960), (128, 832)]
        {
            let words = region_words(&b, first, pages);
            let aligned = first % 64 == 0 && pages % 64 == 0;
            assert_eq!(matches!(words, std::borrow::Cow::Borrowed(_)), aligned);
            for local in 0..pages {
                let bit = words[(local / 64) as usize] >> (local % 64) & 1 == 1;
                assert_eq!(bit, b.get(first + local), "first {first} page {local}");
            }
        }
    }
}
