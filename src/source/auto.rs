//! `--mode auto`: the source's choice of method, made and revised from what it measures.
//!
//! Auto runs hybrid's structure (a live pass over all memory, cold part first, then the
//! working set with its written pages last; the switch-over; faults answered with windows
//! while the urgent stream is idle) and judges, every few thousand pages sent, what to do
//! with the pages the guest writes:
//! - while it writes them slower than the link carries guest bytes, the written pages go live
//!   again, pass after pass, as pre-copy's rounds would (recorded as `rounds`), until the
//!   passes stop shrinking or fit the downtime;
//! - once it writes its working set (or memory already sent) faster than that, another pass
//!   would only chase them: after the one pass that sends them last, just before the pause,
//!   the written pages follow the switch-over, first in the push and on demand, as in
//!   post-copy (`postcopy`). The first pass stays: sent last, most of them are still valid
//!   when the guest resumes, which is what keeps hybrid's disruption under post-copy's.
//!
//! The policy is pure: the engine hands it the figures ([`AutoFigures`]) and the time, and
//! keeps its decisions for the report (`auto_decisions`).

use serde::{Deserialize, Serialize};

/// Pages sent between two judgements while the guest runs (the first comes after this many,
/// a small share of any guest, so a write-heavy guest is found early).
pub const AUTO_CHECK_PAGES: u64 = 2_048;

/// Least time between two judgements (ns): on a fast path pages cross quickly, and each
/// judgement harvests the dirty log, which costs the guest write faults.
pub const AUTO_CHECK_MIN_NS: u64 = 20_000_000;

/// Decisions kept for the report; later ones replace the last (a run makes a handful).
pub const AUTO_DECISIONS_MAX: usize = 32;

/// What auto chose at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AutoChoice {
    /// Hybrid's live pass: memory crosses while the guest runs.
    LivePass,
    /// Another pass over what the guest wrote during the last one, as a pre-copy round.
    Rounds,
    /// Post-copy behaviour for written pages: after the working-set pass they follow the
    /// switch-over (first in the push, and on demand); no working-set pass repeats.
    Postcopy,
    /// The live passes are done: switch over as hybrid, faults answered with windows.
    SwitchOver,
}

/// The measured figures behind a decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AutoFigures {
    /// Working-set pages written per second since the last judgement.
    pub ws_dirty_pages_per_s: f64,
    /// Other pages written per second (of those the dirty log watches: sent or armed).
    pub rest_dirty_pages_per_s: f64,
    /// Share of the working set not written since the last judgement (read, or idle).
    pub ws_read_only_share: f64,
    /// Guest bytes the link carries per second (its measured rate times the compression
    /// ratio); 0 while unknown (the loop, not the link, is the limit).
    pub link_guest_mb_per_s: f64,
    /// Guest bytes per wire byte of compressed pages (1 when lz4 is off).
    pub compression_ratio: f64,
    /// Copies gone stale per page sent since the last judgement.
    pub stale_to_send_ratio: f64,
}

impl AutoFigures {
    /// Guest bytes written per second, working set and rest together.
    fn written_mb_per_s(&self) -> f64 {
        (self.ws_dirty_pages_per_s + self.rest_dirty_pages_per_s) * 4096.0 / 1e6
    }
}

/// One decision, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoDecision {
    /// When, from the start of the migration (ms).
    pub at_ms: f64,
    /// What was chosen.
    pub choice: AutoChoice,
    /// Why, in a sentence.
    pub reason: String,
    /// The figures it was chosen from.
    pub figures: AutoFigures,
}

/// The policy's state: whether it went post-copy, when it last judged, what it decided.
#[derive(Debug, Clone, Default)]
pub struct AutoPolicy {
    postcopy: bool,
    /// The figures of the last judgement, which later decisions were taken on.
    last: AutoFigures,
    judged: bool,
    last_check_ns: u64,
    last_check_pages: u64,
    decisions: Vec<AutoDecision>,
}

impl AutoPolicy {
    /// A policy that starts with hybrid's live pass at `now_ns` (`start_ns` is the
    /// migration's start, for the report's times).
    pub fn start(start_ns: u64, now_ns: u64) -> Self {
        let mut policy = Self { last_check_ns: now_ns, ..Self::default() };
        let reason =
            "nothing measured yet: memory crosses while the guest runs and the source measures";
        policy.record(start_ns, now_ns, AutoChoice::LivePass, reason, AutoFigures::default());
        policy
    }

    /// True once it chose post-copy behaviour.
    pub fn goes_postcopy(&self) -> bool {
        self.postcopy
    }

    /// Whether a judgement is due at `now_ns` with `pages_sent` sent by then.
    pub fn due(&self, pages_sent: u64, now_ns: u64) -> bool {
        !self.postcopy
            && pages_sent >= self.last_check_pages + AUTO_CHECK_PAGES
            && now_ns >= self.last_check_ns + AUTO_CHECK_MIN_NS
    }

    /// Nanoseconds since the last judgement, which the next one's rates are over.
    pub fn since_last_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.last_check_ns).max(1)
    }

    /// Judges the figures measured up to `now_ns`; true when it goes post-copy now. A stale
    /// ratio above 1 means the live pass itself is given up (the engine's own rule).
    pub fn judge(&mut self, start_ns: u64, now_ns: u64, pages_sent: u64, f: AutoFigures) -> bool {
        self.last_check_ns = now_ns;
        self.last_check_pages = pages_sent;
        let link = f.link_guest_mb_per_s;
        let ws_mb_per_s = f.ws_dirty_pages_per_s * 4096.0 / 1e6;
        let reason = if link > 0.0 && ws_mb_per_s >= link {
            "the working set is written faster than the link carries it: its written pages follow the switch-over"
        } else if link > 0.0 && f.written_mb_per_s() >= link {
            "memory is written faster than the link carries it"
        } else if f.stale_to_send_ratio > 1.0 {
            "pages go stale faster than they cross"
        } else {
            if !self.judged {
                let reason = "the guest writes slower than the link carries: the live pass goes on";
                self.record(start_ns, now_ns, AutoChoice::LivePass, reason, f);
            }
            (self.judged, self.last) = (true, f);
            return false;
        };
        (self.judged, self.last) = (true, f);
        self.postcopy = true;
        self.record(start_ns, now_ns, AutoChoice::Postcopy, reason, f);
        true
    }

    /// Records a decision the engine took on its own rules (another round, the switch-over).
    pub fn record(
        &mut self,
        start_ns: u64,
        now_ns: u64,
        choice: AutoChoice,
        reason: &str,
        figures: AutoFigures,
    ) {
        let at_ms = now_ns.saturating_sub(start_ns) as f64 / 1e6;
        let decision = AutoDecision { at_ms, choice, reason: reason.to_string(), figures };
        if self.decisions.len() == AUTO_DECISIONS_MAX {
            self.decisions.pop();
        }
        self.decisions.push(decision);
    }

    /// The figures of the last judgement (zero before the first).
    pub fn last_figures(&self) -> AutoFigures {
        self.last
    }

    /// The decisions so far, oldest first.
    pub fn decisions(&self) -> &[AutoDecision] {
        &self.decisions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(ws_pages_per_s: f64, link_mb_per_s: f64) -> AutoFigures {
        AutoFigures {
            ws_dirty_pages_per_s: ws_pages_per_s,
            link_guest_mb_per_s: link_mb_per_s,
            compression_ratio: 1.0,
            ..AutoFigures::default()
        }
    }

    #[test]
    fn a_working_set_written_faster_than_the_link_goes_postcopy() {
        let mut auto = AutoPolicy::start(0, 0);
        assert!(!auto.due(AUTO_CHECK_PAGES, 1), "too soon");
        assert!(auto.due(AUTO_CHECK_PAGES, AUTO_CHECK_MIN_NS));
        // 40,000 pages/s is 164 MB/s, over a 125 MB/s link.
        assert!(auto.judge(0, 100_000_000, AUTO_CHECK_PAGES, figures(40_000.0, 125.0)));
        assert!(auto.goes_postcopy());
        assert!(!auto.due(10 * AUTO_CHECK_PAGES, u64::MAX / 2), "none after going post-copy");
        let last = auto.decisions().last().expect("decision");
        assert_eq!(last.choice, AutoChoice::Postcopy);
        assert_eq!(last.at_ms, 100.0);
    }

    #[test]
    fn a_paced_guest_keeps_the_live_pass() {
        let mut auto = AutoPolicy::start(0, 0);
        // 5,000 pages/s is 20 MB/s: the pass crosses faster than it goes stale.
        assert!(!auto.judge(0, 1, AUTO_CHECK_PAGES, figures(5_000.0, 125.0)));
        assert!(!auto.goes_postcopy());
        assert_eq!(auto.decisions().len(), 2, "the start and the first judgement");
        assert_eq!(auto.decisions()[1].choice, AutoChoice::LivePass);
        assert!(!auto.judge(0, 2, 2 * AUTO_CHECK_PAGES, figures(5_000.0, 125.0)));
        assert_eq!(auto.decisions().len(), 2, "a judgement that changes nothing is not kept");
        assert!(!auto.due(AUTO_CHECK_PAGES + 1, u64::MAX / 2), "the next waits for more pages");
    }

    #[test]
    fn without_a_link_rate_only_the_stale_ratio_decides() {
        let mut auto = AutoPolicy::start(0, 0);
        assert!(!auto.judge(0, 1, AUTO_CHECK_PAGES, figures(1e9, 0.0)));
        let stale = AutoFigures { stale_to_send_ratio: 1.5, ..AutoFigures::default() };
        assert!(auto.judge(0, 2, 2 * AUTO_CHECK_PAGES, stale));
    }

    #[test]
    fn decisions_are_bounded() {
        let mut auto = AutoPolicy::start(0, 0);
        for i in 0..100 {
            auto.record(0, i, AutoChoice::Rounds, "round", AutoFigures::default());
        }
        assert_eq!(auto.decisions().len(), AUTO_DECISIONS_MAX);
        assert_eq!(auto.decisions().last().map(|d| d.at_ms), Some(99.0 / 1e6));
    }
}
