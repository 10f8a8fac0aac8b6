//! Which method the engine follows now, the fixed mode's or auto's current choice
//! ([`crate::source::auto`]), and the window a fault is answered with under it.

use super::*;
use crate::source::auto::{AutoChoice, AutoFigures};

impl SourceEngine {
    /// The method whose structure the engine runs: auto runs hybrid's (a live pass it may
    /// give up, the same switch-over), changing only what its policy decides.
    pub(super) fn method(&self) -> MigrationMode {
        match self.cfg.mode {
            MigrationMode::Auto => MigrationMode::Hybrid,
            mode => mode,
        }
    }

    /// True once auto chose post-copy behaviour for written pages: they wait for the push and
    /// the faults, and no pass is repeated.
    pub(super) fn goes_postcopy(&self) -> bool {
        self.auto.as_ref().is_some_and(|auto| auto.goes_postcopy())
    }

    /// The pages a fault at `page` is answered with. One in post-copy. Also one while the answers already handed to the urgent stream are still
    /// crossing at the measured link rate: a window then queues ahead of the next fault's page
    /// on the same connection, so the neighbours go first on the push instead (it pivots past
    /// every answer). Otherwise the fixed or adaptive window.
    pub(super) fn fault_window(&mut self, page: u64) -> u32 {
        if self.method() == MigrationMode::Postcopy {
            return 1;
        }
        if self.now_ns() < self.urgent_free_at_ns {
            self.stats.fault_windows_held += 1;
            return 1;
        }
        if self.cfg.adaptive_window {
            self.window.on_fault(page)
        } else {
            self.cfg.window_pages.max(1)
        }
    }

    /// `bytes` of fault answers went to the urgent stream now: they keep it busy for as long
    /// as the link takes to carry them, after what is already there.
    pub(super) fn on_urgent_encoded(&mut self, bytes: u64) {
        let bytes_per_ms = self.compression.bytes_per_ms();
        if bytes == 0 || bytes_per_ms <= 0.0 {
            return; // no link rate: the loop is the limit, and an answer crosses at once
        }
        let from_ns = self.urgent_free_at_ns.max(self.now_ns());
        self.urgent_free_at_ns = from_ns + (bytes as f64 / bytes_per_ms * 1e6) as u64;
    }

    /// Whether auto judges at this live-pass check.
    pub(super) fn auto_due(&self) -> bool {
        self.auto.as_ref().is_some_and(|auto| auto.due(self.pages_sent(), self.now_ns()))
    }

    /// Auto's judgement on the dirty pages just harvested (`dirty_scratch`) and the live
    /// pass's stale ratio.
    pub(super) fn auto_judge(&mut self, stale_to_send_ratio: f64) {
        let now_ns = self.now_ns();
        let Some(auto) = self.auto.as_ref() else { return };
        let secs = auto.since_last_ns(now_ns) as f64 / 1e9;
        let dirty = &self.dirty_scratch;
        let ws_written = self.cfg.working_set.iter().filter(|&&p| dirty.get(p)).count() as u64;
        let ws_pages = self.cfg.working_set.len() as u64;
        let rest_written = dirty.count().saturating_sub(ws_written);
        let ratio = self.compression.ratio();
        let figures = AutoFigures {
            ws_dirty_pages_per_s: ws_written as f64 / secs,
            rest_dirty_pages_per_s: rest_written as f64 / secs,
            ws_read_only_share: if ws_pages == 0 {
                0.0
            } else {
                (ws_pages - ws_written) as f64 / ws_pages as f64
            },
            link_guest_mb_per_s: self.compression.link_bytes_per_ms() * ratio / 1e3,
            compression_ratio: ratio,
            stale_to_send_ratio,
        };
        let (start_ns, sent) = (self.stats.start_ns, self.pages_sent());
        let Some(auto) = self.auto.as_mut() else { return };
        if auto.judge(start_ns, now_ns, sent, figures) {
            tracing::info!(?figures, "source: auto leaves written pages to follow the switch-over");
        }
        self.sync_auto_decisions();
    }

    /// Auto records another live pass over the written pages: a pre-copy round.
    pub(super) fn auto_record_round(&mut self) {
        let reason = "the pages written during the last pass shrink and are left to send live";
        self.auto_record(AutoChoice::Rounds, reason);
    }

    /// Auto records the switch-over (after its live passes, or after going post-copy).
    pub(super) fn auto_record_switch(&mut self) {
        let reason = if self.goes_postcopy() {
            "the working-set pass is sent: its pages written since follow the switch-over"
        } else {
            "the live passes are done: the rest follows the guest's faults and the push"
        };
        self.auto_record(AutoChoice::SwitchOver, reason);
    }

    /// Records `choice`, with the figures of auto's last judgement behind it.
    fn auto_record(&mut self, choice: AutoChoice, reason: &str) {
        let (start_ns, now_ns) = (self.stats.start_ns, self.now_ns());
        if let Some(auto) = self.auto.as_mut() {
            let figures = auto.last_figures();
            auto.record(start_ns, now_ns, choice, reason, figures);
            self.sync_auto_decisions();
        }
    }

    /// Copies auto's decisions into the stats (a handful per run).
    pub(super) fn sync_auto_decisions(&mut self) {
        let decisions = self.auto.as_ref().map(|auto| auto.decisions().to_vec());
        self.stats.auto_decisions = decisions.unwrap_or_default();
    }
}
