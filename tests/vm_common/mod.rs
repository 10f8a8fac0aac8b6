//! Helpers shared by the VM integration tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use hybridmig::vm::guest::asm::phase;
use hybridmig::vm::{Vm, VmConfig, VmState, WorkloadKind, WorkloadSpec};

/// Test guest size: small enough that set-up and the digest take milliseconds.
pub const TEST_MEM_BYTES: u64 = 32 << 20;

/// Ops that take roughly half a second on this machine (2 cores, PVM) for each workload.
pub fn ops_for(kind: WorkloadKind) -> u64 {
    match kind {
        WorkloadKind::Scan => 12_000_000,
        WorkloadKind::HotCold => 8_000_000,
        WorkloadKind::Random => 8_000_000,
        WorkloadKind::SeqRead => 2_500_000,
        WorkloadKind::Idle => 1_000_000_000,
    }
}

pub fn cfg(kind: WorkloadKind, vcpus: u32, seed: u64, ops: u64) -> VmConfig {
    let mut workload = WorkloadSpec::new(kind, seed);
    workload.ops = Some(ops);
    workload.hot_mib = 8;
    VmConfig { mem_bytes: TEST_MEM_BYTES, vcpus, workload }
}

/// A guest with no op budget: it runs until stopped (for tests that watch it work).
pub fn endless_cfg(kind: WorkloadKind, vcpus: u32, seed: u64) -> VmConfig {
    let mut c = cfg(kind, vcpus, seed, 1);
    c.workload.ops = None;
    c
}

/// Runs to completion without interruption; returns the VM digest.
pub fn run_plain(cfg: &VmConfig) -> u64 {
    let mut vm = Vm::new(cfg).expect("vm");
    vm.start().expect("start");
    vm.wait_finished(Duration::from_secs(30)).expect("run").expect("finished in time")
}

/// Moves a paused VM into a fresh one: state through a blob, memory by copy.
pub fn migrate(src: &Vm) -> Vm {
    let blob = src.save_state().expect("save").to_blob();
    let state = VmState::from_blob(&blob).expect("parse blob");
    let mut dst = Vm::new_incoming(src.config()).expect("incoming vm");
    for (s, d) in src.regions().iter().zip(dst.regions()) {
        assert_eq!((s.guest_phys, s.size_bytes), (d.guest_phys, d.size_bytes));
        // SAFETY: the source is paused and the destination has not started.
        unsafe { d.as_mut_slice().copy_from_slice(s.as_slice()) };
    }
    dst.restore_state(&state).expect("restore");
    dst
}

/// Waits until `pred(vm)` or the deadline; returns whether it held.
pub fn wait_until(vm: &Vm, timeout: Duration, pred: impl Fn(&Vm) -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if pred(vm) {
            return true;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    false
}

/// True when some vCPU is inside its digest loop (phase DIGEST, not yet reported).
pub fn some_vcpu_digesting(vm: &Vm) -> bool {
    (0..vm.config().vcpus)
        .any(|i| vm.control(i).is_some_and(|c| c.phase == phase::DIGEST && c.digest.is_none()))
}

/// Gives the calling (observer) thread real-time priority, so that on a 2-core host with two
/// busy vCPU threads its short sleeps end on time instead of after a scheduler slice. Best
/// effort: without the privilege the thread keeps its normal priority.
pub fn boost_this_thread() {
    let param = libc::sched_param { sched_priority: 1 };
    // SCHED_RESET_ON_FORK: the vCPU threads this thread spawns must not inherit the priority.
    let policy = libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK;
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid, initialised param.
    let _ = unsafe { libc::sched_setscheduler(0, policy, &param) };
}
