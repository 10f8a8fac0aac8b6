//! Pre-copy's rounds: which round runs, how many pages the last one left dirty, and the
//! decision, at the end of each round, to stop and whether what is left goes post-copy.
//!
//! The engine reports each round's end with its dirty count (`end_round`); the decision is kept
//! here (`fallback`) and copied into the report's counters by the engine.

use crate::memory::PAGE_SIZE;

/// The limits a round's end is judged against.
#[derive(Debug, Clone, Copy)]
pub(super) struct RoundLimits {
    /// The measured bulk rate (bytes per ms).
    pub(super) rate_bytes_per_ms: f64,
    /// The downtime target (ms).
    pub(super) downtime_target_ms: f64,
    /// Most rounds.
    pub(super) max_rounds: u32,
}

/// Pre-copy's round state (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Rounds {
    /// The round being sent (1 for the first; 0 before pre-copy starts).
    round: u32,
    /// Dirty pages found at the end of the previous round.
    prev_dirty: u64,
    /// The last round's end found the dirty pages too many for the downtime target: what is
    /// left goes post-copy.
    fallback: bool,
}

impl Rounds {
    /// The first round starts; returns its number.
    pub(super) fn start(&mut self) -> u32 {
        self.round = 1;
        self.round
    }

    /// The next round starts; returns its number.
    pub(super) fn next(&mut self) -> u32 {
        self.round += 1;
        self.round
    }

    /// The round being sent.
    pub(super) fn round(&self) -> u32 {
        self.round
    }

    /// True when the rest goes post-copy (the dirty pages did not fit the downtime target).
    pub(super) fn fallback(&self) -> bool {
        self.fallback
    }

    /// Pre-copy's stop rule, called once at the end of each round with its `dirty` pages. It
    /// stops when they fit the downtime target (converged), when a round left at least 90% as
    /// many as the one before it (the guest dirties as fast as the link carries: more rounds
    /// only resend), or at `max_rounds`. Without convergence the switch-over goes post-copy.
    pub(super) fn should_stop(&mut self, dirty: u64, limits: RoundLimits) -> bool {
        let dirty_bytes = dirty as f64 * PAGE_SIZE as f64;
        let rate = limits.rate_bytes_per_ms.max(1.0);
        let fits = dirty_bytes / rate <= limits.downtime_target_ms;
        let stalled = self.round >= 2 && dirty * 10 >= self.prev_dirty * 9;
        tracing::debug!(
            round = self.round,
            dirty_pages = dirty,
            prev_dirty_pages = self.prev_dirty,
            rate_bytes_per_ms = rate,
            fits,
            stalled,
            "source: pre-copy round ended"
        );
        self.prev_dirty = dirty;
        self.fallback = !fits;
        let last = self.round >= limits.max_rounds;
        if !fits && (stalled || last) {
            tracing::info!(
                rounds = self.round,
                dirty_pages = dirty,
                stalled,
                "source: pre-copy does not converge; the rest goes post-copy"
            );
        }
        fits || stalled || last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RoundLimits =
        RoundLimits { rate_bytes_per_ms: 4096.0, downtime_target_ms: 10.0, max_rounds: 5 };

    #[test]
    fn converges_stalls_or_runs_out_of_rounds() {
        let mut rounds = Rounds::default();
        rounds.start();
        assert!(rounds.should_stop(10, LIMITS), "10 pages fit 10 ms at a page per ms");
        assert!(!rounds.fallback());
        let mut rounds = Rounds::default();
        rounds.start();
        assert!(!rounds.should_stop(1000, LIMITS));
        assert!(rounds.fallback());
        rounds.next();
        assert!(rounds.should_stop(950, LIMITS), "95% of the last round: stalled");
        assert!(rounds.fallback());
        let mut rounds = Rounds::default();
        rounds.start();
        for _ in 0..4 {
            assert!(!rounds.should_stop(1000 * u64::from(10 - rounds.round()), LIMITS));
            rounds.next();
        }
        assert!(rounds.should_stop(100, LIMITS), "round 5 of 5");
        assert_eq!(rounds.round(), 5);
    }
}
