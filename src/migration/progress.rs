//! Limits on time without progress, never on total time: a migration or a guest that keeps
//! moving may take as long as it needs; one that stops moving for the progress timeout is an
//! error that says what stalled.

use super::MigrationError;
use crate::metrics::mono_ns;
use std::time::Duration;

/// The default of every progress timeout (`--progress-timeout-s`).
pub const DEFAULT_PROGRESS_TIMEOUT: Duration = Duration::from_secs(600);

/// Watches a counter that should keep moving. Time is an input, so the rule is testable
/// without waiting.
#[derive(Debug, Clone)]
pub struct ProgressWatch {
    limit_ns: u64,
    last_value: u64,
    last_change_ns: u64,
}

/// The counter did not move for longer than the watch's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalled {
    /// The counter's value all that time.
    pub value: u64,
    /// How long it has not moved, in ms.
    pub idle_ms: u64,
}

impl ProgressWatch {
    /// A watch that starts at `value` at `now_ns` and allows `limit` without a change.
    pub fn new(limit: Duration, now_ns: u64, value: u64) -> Self {
        Self { limit_ns: limit.as_nanos() as u64, last_value: value, last_change_ns: now_ns }
    }

    /// Records `value` seen at `now_ns`; the stall once it has not changed for longer than the
    /// limit.
    pub fn observe(&mut self, now_ns: u64, value: u64) -> Result<(), Stalled> {
        if value != self.last_value {
            (self.last_value, self.last_change_ns) = (value, now_ns);
            return Ok(());
        }
        let idle_ns = now_ns.saturating_sub(self.last_change_ns);
        if idle_ns > self.limit_ns {
            return Err(Stalled { value, idle_ms: idle_ns / 1_000_000 });
        }
        Ok(())
    }
}

/// A guest whose end the destination waits for.
pub trait FinishingGuest {
    /// Waits at most `wait` for the guest's digest; `None` if it has not finished.
    fn wait_finished(&mut self, wait: Duration) -> Result<Option<u64>, MigrationError>;
    /// The guest's ops so far (over all vCPUs).
    fn ops_done(&self) -> u64;
}

/// Waits for `guest` to finish as long as its ops counter moves: it fails only after
/// `progress_timeout` in which the counter stood still. `on_sample` sees the time and the ops
/// after every `sample`. The guest's digest is returned.
pub fn wait_guest_finished(
    guest: &mut dyn FinishingGuest,
    progress_timeout: Duration,
    sample: Duration,
    on_sample: &mut dyn FnMut(u64, u64),
) -> Result<u64, MigrationError> {
    let mut watch = ProgressWatch::new(progress_timeout, mono_ns(), guest.ops_done());
    loop {
        if let Some(digest) = guest.wait_finished(sample)? {
            return Ok(digest);
        }
        let (now, ops) = (mono_ns(), guest.ops_done());
        on_sample(now, ops);
        watch.observe(now, ops).map_err(|s| MigrationError::GuestNoProgress {
            ops_done: s.value,
            idle_ms: s.idle_ms,
        })?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_moving_counter_never_stalls() {
        let mut w = ProgressWatch::new(Duration::from_millis(100), 0, 0);
        for step in 1..10_000u64 {
            assert_eq!(w.observe(step * 50 * MS, step), Ok(()), "step {step}");
        }
    }

    #[test]
    fn a_still_counter_stalls_after_the_limit_only() {
        let mut w = ProgressWatch::new(Duration::from_millis(100), 0, 7);
        assert_eq!(w.observe(60 * MS, 8), Ok(()));
        assert_eq!(w.observe(160 * MS, 8), Ok(()), "exactly the limit is still fine");
        assert_eq!(w.observe(161 * MS, 8), Err(Stalled { value: 8, idle_ms: 101 }));
    }

    /// A guest that adds one op per look and finishes after `finish_after` looks, or never
    /// moves when `stuck`.
    struct FakeGuest {
        looks: u64,
        finish_after: u64,
        stuck: bool,
    }

    impl FinishingGuest for FakeGuest {
        fn wait_finished(&mut self, wait: Duration) -> Result<Option<u64>, MigrationError> {
            std::thread::sleep(wait);
            self.looks += 1;
            Ok((self.looks >= self.finish_after).then_some(0xD1_6E57))
        }

        fn ops_done(&self) -> u64 {
            if self.stuck {
                0
            } else {
                self.looks
            }
        }
    }

    #[test]
    fn a_slow_but_moving_guest_is_waited_for_past_the_progress_timeout() {
        // 40 looks of 5 ms: eight times the 25 ms progress timeout, moving all along.
        let mut guest = FakeGuest { looks: 0, finish_after: 40, stuck: false };
        let started = mono_ns();
        let mut samples = 0;
        let digest = wait_guest_finished(
            &mut guest,
            Duration::from_millis(25),
            Duration::from_millis(5),
            &mut |_, _| samples += 1,
        )
        .expect("a moving guest is never dropped");
        assert_eq!(digest, 0xD1_6E57);
        assert_eq!(samples, 39);
        assert!(mono_ns() - started > 100 * MS);
    }

    #[test]
    fn a_stuck_guest_fails_naming_the_stall() {
        let mut guest = FakeGuest { looks: 0, finish_after: u64::MAX, stuck: true };
        let err = wait_guest_finished(
            &mut guest,
            Duration::from_millis(30),
            Duration::from_millis(5),
            &mut |_, _| {},
        )
        .expect_err("stuck");
        let MigrationError::GuestNoProgress { ops_done: 0, idle_ms } = err else { panic!("{err}") };
        assert!((30..1000).contains(&idle_ms), "{idle_ms}");
        assert!(err.to_string().contains("made no progress"), "{err}");
    }
}
