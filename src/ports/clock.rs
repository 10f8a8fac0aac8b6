//! Time as an input: the engines read it through [`Clock`], never from the OS themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A source of monotonic time in nanoseconds.
///
/// The real drivers use [`MonoClock`] (CLOCK_MONOTONIC, one clock for both processes of a
/// local migration, so downtime can be measured across them); the simulator uses a
/// [`VirtualClock`] it advances itself, so a seed determines every timing decision.
pub trait Clock: Send + Sync {
    /// Nanoseconds since an arbitrary fixed instant; never goes backwards.
    fn now_ns(&self) -> u64;
}

/// CLOCK_MONOTONIC.
#[derive(Debug, Clone, Copy, Default)]
pub struct MonoClock;

impl Clock for MonoClock {
    fn now_ns(&self) -> u64 {
        crate::metrics::mono_ns()
    }
}

/// A clock that moves only when its owner says so; clones share one time.
#[derive(Debug, Clone, Default)]
pub struct VirtualClock {
    now_ns: Arc<AtomicU64>,
}

impl VirtualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock to `now_ns`, or leaves it where it is if that is earlier.
    pub fn set_ns(&self, now_ns: u64) {
        self.now_ns.fetch_max(now_ns, Ordering::Relaxed);
    }
}

impl Clock for VirtualClock {
    fn now_ns(&self) -> u64 {
        self.now_ns.load(Ordering::Relaxed)
    }
}

/// The clock the real drivers use, shared.
pub fn mono() -> Arc<dyn Clock> {
    Arc::new(MonoClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_clock_moves_only_forward_and_clones_share_it() {
        let clock = VirtualClock::new();
        let other = clock.clone();
        clock.set_ns(50);
        clock.set_ns(20);
        assert_eq!(other.now_ns(), 50);
    }
}
