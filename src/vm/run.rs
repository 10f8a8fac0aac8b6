//! Running a guest locally: the `hybridmig run` command and the pause-latency measurement.
//!
//! [`run_local`] builds a [`Vm`], runs it until its op budget is spent or the time is up,
//! calls back once a second with the op rate, and returns a [`RunReport`].

use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::VmConfig;
use super::error::VmError;
use super::guest::asm::phase;
use super::vmm::Vm;

/// How often progress counters are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(2);
/// Run time when neither ops nor seconds bound the run.
pub const DEFAULT_SECONDS: f64 = 10.0;

/// One progress sample handed to the callback (once per second).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Progress {
    /// Seconds since the vCPUs started.
    pub elapsed_s: f64,
    /// Ops done in the last second.
    pub ops_last_sec: u64,
    /// Ops done in total.
    pub ops_total: u64,
}

/// Pause latency statistics.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct PauseStats {
    /// Pauses measured.
    pub count: usize,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Largest latency, microseconds.
    pub max_us: f64,
}

/// The result of [`run_local`].
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Workload name.
    pub workload: String,
    /// Workload memory, bytes.
    pub mem_bytes: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Ops done (all vCPUs).
    pub ops: u64,
    /// Ops per vCPU.
    pub ops_per_vcpu: Vec<u64>,
    /// Ops per second over the ops phase (from all vCPUs entering it to the last op or the
    /// end of the run).
    pub ops_per_sec: f64,
    /// Length of the ops phase, seconds.
    pub ops_secs: f64,
    /// Seconds from start to the end of the run (including fill and digest).
    pub total_secs: f64,
    /// Seconds spent in `Vm::new` (memory set-up and pre-fill).
    pub setup_secs: f64,
    /// VM digest as 16 hex digits, when the guest finished.
    pub digest: Option<String>,
    /// Pause latency, when measured.
    pub pause: Option<PauseStats>,
}

/// Pauses and resumes a running VM `count` times, `gap` apart; returns latency statistics.
pub fn measure_pause(vm: &mut Vm, count: usize, gap: Duration) -> Result<PauseStats, VmError> {
    let mut us = Vec::with_capacity(count);
    for _ in 0..count {
        std::thread::sleep(gap);
        us.push(vm.pause()?.as_secs_f64() * 1e6);
        vm.resume()?;
    }
    Ok(stats(&mut us))
}

fn stats(us: &mut [f64]) -> PauseStats {
    us.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        if us.is_empty() {
            return 0.0;
        }
        us[((us.len() - 1) as f64 * q).round() as usize]
    };
    PauseStats { count: us.len(), p50_us: pick(0.5), p99_us: pick(0.99), max_us: pick(1.0) }
}

/// Runs a guest locally until its op budget is done or `seconds` passed (default
/// [`DEFAULT_SECONDS`] when the config has no op budget). `measure_pauses` pause/resume
/// cycles (1 ms apart) are done first, once the ops started. `progress` is called once a second.
pub fn run_local(
    cfg: &VmConfig,
    seconds: Option<f64>,
    measure_pauses: usize,
    mut progress: impl FnMut(Progress),
) -> Result<RunReport, VmError> {
    let t_setup = Instant::now();
    let mut vm = Vm::new(cfg)?;
    let setup_secs = t_setup.elapsed().as_secs_f64();
    let limit = seconds
        .or(if cfg.workload.ops.is_none() { Some(DEFAULT_SECONDS) } else { None })
        .map(Duration::from_secs_f64);
    let t0 = Instant::now();
    vm.start()?;
    let mut pause = None;
    let mut ops_start: Option<(Instant, u64)> = None;
    let mut ops_end: Option<(Instant, u64)> = None;
    let target = cfg.workload.ops.unwrap_or(u64::MAX);
    let (mut last_tick, mut last_ops) = (t0, 0);
    let digest = loop {
        if let Some(d) = vm.wait_finished(SAMPLE_EVERY)? {
            break Some(d);
        }
        let now = Instant::now();
        let ops = vm.ops_done();
        if ops_start.is_none() && in_ops_phase(&vm) {
            ops_start = Some((now, ops));
            if measure_pauses > 0 {
                pause = Some(measure_pause(&mut vm, measure_pauses, Duration::from_millis(1))?);
            }
        }
        if ops_end.is_none() && ops >= target {
            ops_end = Some((now, ops));
        }
        if now - last_tick >= Duration::from_secs(1) {
            progress(Progress {
                elapsed_s: (now - t0).as_secs_f64(),
                ops_last_sec: ops - last_ops,
                ops_total: ops,
            });
            (last_tick, last_ops) = (now, ops);
        }
        if limit.is_some_and(|l| now - t0 >= l) {
            vm.pause()?;
            break None;
        }
    };
    let end = Instant::now();
    let ops = vm.ops_done();
    let (s_at, s_ops) = ops_start.unwrap_or((t0, 0));
    let (e_at, e_ops) = ops_end.unwrap_or((end, ops));
    let ops_secs = (e_at - s_at).as_secs_f64().max(1e-9);
    Ok(RunReport {
        workload: cfg.workload.kind.to_string(),
        mem_bytes: cfg.mem_bytes,
        vcpus: cfg.vcpus,
        ops,
        ops_per_vcpu: vm.ops_per_vcpu(),
        ops_per_sec: (e_ops - s_ops) as f64 / ops_secs,
        ops_secs,
        total_secs: (end - t0).as_secs_f64(),
        setup_secs,
        digest: digest.map(|d| format!("{d:016x}")),
        pause,
    })
}

fn in_ops_phase(vm: &Vm) -> bool {
    (0..vm.config().vcpus).all(|i| vm.control(i).is_some_and(|c| c.phase >= phase::OPS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = stats(&mut v);
        assert_eq!((s.count, s.p50_us, s.p99_us, s.max_us), (100, 51.0, 99.0, 100.0));
        assert_eq!(stats(&mut []).count, 0);
    }
}
