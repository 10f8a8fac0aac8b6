//! Determinism and exactness across save/restore into a fresh VM, for every workload.

mod vm_common;

use std::time::Duration;

use hybridmig::host_check::require_kvm;
use hybridmig::vm::{Vm, WorkloadKind};
use vm_common::*;

/// Guest size of the save/restore exactness runs.
const EXACT_MEM_BYTES: u64 = 192 << 20;

/// Two uninterrupted runs agree; another seed disagrees.
fn determinism(kind: WorkloadKind, name: &str) {
    if !require_kvm(name) {
        return;
    }
    for vcpus in [1, 2] {
        let ops = ops_for(kind) / 8;
        let a = run_plain(&cfg(kind, vcpus, 11, ops));
        let b = run_plain(&cfg(kind, vcpus, 11, ops));
        let c = run_plain(&cfg(kind, vcpus, 12, ops));
        assert_eq!(a, b, "{kind} x{vcpus}: same seed, different digests");
        assert_ne!(a, c, "{kind} x{vcpus}: different seeds, same digest");
    }
}

/// Run to K with migrations into fresh VMs at two times inside the ops loop and once inside
/// the digest loop; the digest equals the uninterrupted run's.
fn exact(kind: WorkloadKind, name: &str) {
    if !require_kvm(name) {
        return;
    }
    for vcpus in [1, 2] {
        let k = ops_for(kind);
        // A larger guest than the other tests: its digest loop lasts several ms per vCPU, so a
        // pause can land inside it even when the host is busy.
        let mut c = cfg(kind, vcpus, 5, k);
        c.mem_bytes = EXACT_MEM_BYTES;
        let reference = run_plain(&c);
        // The digest loop lasts a few ms; on a loaded host the poller can miss it, so a run
        // that missed it is repeated (at most 3 times) rather than passed.
        let caught = (0..3).any(|_| chain_of_migrations(&c, k, reference));
        assert!(caught, "{kind} x{vcpus}: never paused inside the digest loop");
    }
}

/// Returns false when the digest loop was missed (the run is then not checked further).
fn chain_of_migrations(c: &hybridmig::vm::VmConfig, k: u64, reference: u64) -> bool {
    let kind = c.workload.kind;
    let vcpus = c.vcpus;
    boost_this_thread();
    let mut vm = Vm::new(c).expect("vm");
    vm.start().expect("start");
    let mut mid_ops = 0;
    // Pause points by progress, not by time: a fast guest (hotcold with 2 vCPUs) would
    // otherwise be nearly done at the second one and race through its digest unobserved.
    for pause_at in [k * 3 / 10, k * 6 / 10] {
        wait_until(&vm, Duration::from_secs(20), |vm| vm.ops_done() >= pause_at);
        vm.pause().expect("pause");
        let ops = vm.ops_done();
        if ops > 0 && ops < k {
            mid_ops += 1;
        }
        vm = migrate(&vm);
        vm.start().expect("start after restore");
    }
    assert!(mid_ops >= 1, "{kind} x{vcpus}: no pause landed inside the ops loop");
    let digesting = wait_until(&vm, Duration::from_secs(20), some_vcpu_digesting);
    vm.pause().expect("pause in digest");
    let in_loop = digesting && some_vcpu_digesting(&vm);
    vm = migrate(&vm);
    vm.start().expect("start after digest-phase restore");
    let d = vm.wait_finished(Duration::from_secs(30)).expect("run").expect("finished");
    assert_eq!(d, reference, "{kind} x{vcpus}: digest differs after save/restore");
    assert_eq!(vm.ops_done(), k);
    in_loop
}

#[test]
fn vm_determinism_scan() {
    determinism(WorkloadKind::Scan, "vm_determinism_scan");
}
#[test]
fn vm_determinism_hotcold() {
    determinism(WorkloadKind::HotCold, "vm_determinism_hotcold");
}
#[test]
fn vm_determinism_random() {
    determinism(WorkloadKind::Random, "vm_determinism_random");
}
#[test]
fn vm_determinism_seqread() {
    determinism(WorkloadKind::SeqRead, "vm_determinism_seqread");
}
#[test]
fn vm_determinism_idle() {
    determinism(WorkloadKind::Idle, "vm_determinism_idle");
}
#[test]
fn vm_exact_scan() {
    exact(WorkloadKind::Scan, "vm_exact_scan");
}
#[test]
fn vm_exact_hotcold() {
    exact(WorkloadKind::HotCold, "vm_exact_hotcold");
}
#[test]
fn vm_exact_random() {
    exact(WorkloadKind::Random, "vm_exact_random");
}
#[test]
fn vm_exact_seqread() {
    exact(WorkloadKind::SeqRead, "vm_exact_seqread");
}
#[test]
fn vm_exact_idle() {
    exact(WorkloadKind::Idle, "vm_exact_idle");
}
