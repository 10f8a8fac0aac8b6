//! Pause latency of running guests: 1,000 pause/resume cycles per configuration, p50/p99.
//!
//! `cargo bench --bench vm_pause` (needs /dev/kvm). Latency is from the pause request to the
//! last vCPU's acknowledgement (signal + immediate_exit, pending I/O completed).

use std::time::Duration;

use hybridmig::vm::{measure_pause, Vm, VmConfig, WorkloadKind, WorkloadSpec};

fn main() {
    if !hybridmig::host_check::require_kvm("vm_pause bench") {
        return;
    }
    let pauses = std::env::var("PAUSES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    for (kind, vcpus) in [
        (WorkloadKind::Scan, 1),
        (WorkloadKind::Scan, 2),
        (WorkloadKind::HotCold, 2),
        (WorkloadKind::Idle, 4),
    ] {
        let cfg = VmConfig { mem_bytes: 256 << 20, vcpus, workload: WorkloadSpec::new(kind, 1) };
        let mut vm = match Vm::new(&cfg) {
            Ok(vm) => vm,
            Err(e) => {
                eprintln!("{kind} x{vcpus}: {e}");
                continue;
            }
        };
        let run = vm.start().and_then(|()| {
            std::thread::sleep(Duration::from_millis(300));
            measure_pause(&mut vm, pauses, Duration::from_millis(1))
        });
        match run {
            Ok(s) => println!(
                "pause {kind:8} vcpus={vcpus} mem=256MiB n={} p50={:.1}us p99={:.1}us max={:.1}us",
                s.count, s.p50_us, s.p99_us, s.max_us
            ),
            Err(e) => eprintln!("{kind} x{vcpus}: {e}"),
        }
    }
}
