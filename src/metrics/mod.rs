//! The migration's clock, counters and latency histograms.
//!
//! Both hosts of a local migration run on this machine, so [`mono_ns`] (CLOCK_MONOTONIC) is one
//! clock for both processes: downtime is the destination's resume instant minus the source's
//! pause instant, read from the two processes' reports.

mod histogram;
#[cfg(feature = "cli")]
pub mod plot;
mod timeline;

pub use histogram::{pow2_bucket_ns, pow2_bucket_us, LatencyHistogram, POW2_BUCKETS};
pub use timeline::{
    degradation_pct, score_at_op_positions, BoundedTimeline, OpSpanScore, ProgressTimeline,
    BUCKET_MS,
};

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes on one machine.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Milliseconds between two [`mono_ns`] readings, as a float (0 if `end` is before `start`).
pub fn ms_between(start_ns: u64, end_ns: u64) -> f64 {
    end_ns.saturating_sub(start_ns) as f64 / 1e6
}
