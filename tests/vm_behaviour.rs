//! VMM behaviour on real KVM: digests agree with the host, typed errors for bad exits, dirty
//! logging and the hot set, pacing, pause latency, and state checks.

mod vm_common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hybridmig::host_check::require_kvm;
use hybridmig::vm::guest::params::off;
use hybridmig::vm::layout::{params_gpa, CODE_GPA, PAGE_BYTES};
use hybridmig::vm::{
    digest_finish, digest_words, DirtyBitmap, StateError, VcpuFault, Vm, VmError, VmState,
    WorkloadKind,
};
use iced_x86::code_asm::*;
use vm_common::*;

/// The digest each vCPU reports equals the host's hash of its slice and accumulator.
#[test]
fn vm_guest_digest_matches_host() {
    if !require_kvm("vm_guest_digest_matches_host") {
        return;
    }
    for kind in WorkloadKind::ALL {
        let c = cfg(kind, 2, 3, ops_for(kind) / 20);
        let mut vm = Vm::new(&c).unwrap();
        vm.start().unwrap();
        vm.wait_finished(Duration::from_secs(20)).unwrap().expect("finished");
        for (i, s) in vm.layout().slices.clone().iter().enumerate() {
            let i = i as u32;
            let init = vm.read_guest_u64(params_gpa(i) + off::DIGEST_INIT as u64).unwrap();
            let (acc, stored) = vm.guest_result(i).unwrap();
            let r = &vm.regions()[1];
            let start = ((s.first_page * PAGE_BYTES) - r.guest_phys) as usize;
            let len = (s.pages * PAGE_BYTES) as usize;
            // SAFETY: every vCPU finished; nothing writes guest memory any more.
            let mem = unsafe { &r.as_slice()[start..start + len] };
            let host = digest_finish(digest_words(init, mem), acc);
            let reported = vm.control(i).and_then(|c| c.digest).expect("reported");
            assert_eq!(host, reported, "{kind} vCPU {i}");
            assert_eq!(stored, reported, "{kind} vCPU {i}: result slot");
        }
        assert!(vm.serial_output().starts_with(b"A") || vm.serial_output().starts_with(b"B"));
    }
}

fn run_custom(name: &str, build: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>) -> VmError {
    let c = cfg(WorkloadKind::Scan, 1, 1, 1000);
    let mut vm = Vm::new(&c).unwrap();
    let mut a = CodeAssembler::new(64).unwrap();
    build(&mut a).unwrap();
    vm.write_guest(CODE_GPA, &a.assemble(CODE_GPA).unwrap()).unwrap();
    vm.start().unwrap();
    match vm.wait_finished(Duration::from_secs(10)) {
        Err(e) => e,
        other => panic!("{name}: expected a vCPU error, got {other:?}"),
    }
}

/// A guest exception (no IDT, so a triple fault), an unmapped access and an unknown port
/// each end the vCPU with a typed error naming RIP, the address or the port.
#[test]
fn vm_unexpected_exits_are_typed() {
    if !require_kvm("vm_unexpected_exits_are_typed") {
        return;
    }
    let e = run_custom("ud2", |a| {
        a.nop()?;
        a.ud2()
    });
    assert!(
        matches!(e, VmError::Vcpu { vcpu: 0, fault: VcpuFault::Shutdown { rip } } if (CODE_GPA..CODE_GPA + 16).contains(&rip)),
        "{e}"
    );
    let e = run_custom("mmio", |a| {
        a.mov(rax, 0x3000_0000u64)?;
        a.mov(qword_ptr(rax), rcx)
    });
    assert!(
        matches!(
            e,
            VmError::Vcpu { fault: VcpuFault::Mmio { dir: "write", addr: 0x3000_0000, .. }, .. }
        ),
        "{e}"
    );
    let e = run_custom("port", |a| {
        a.mov(dx, 0x80)?;
        a.out(dx, al)
    });
    assert!(e.to_string().contains("0x80"), "{e}");
    assert!(matches!(e, VmError::Vcpu { fault: VcpuFault::Port { .. }, .. }), "{e}");
}

/// With dirty logging on, a hotcold window dirties the write-hot pages and leaves the
/// read-only part of the hot set clean; the VMM's own writes are included.
#[test]
fn vm_dirty_log_and_hot_set() {
    if !require_kvm("vm_dirty_log_and_hot_set") {
        return;
    }
    let c = endless_cfg(WorkloadKind::HotCold, 2, 9);
    let mut vm = Vm::new(&c).unwrap();
    let hot: HashSet<u64> = vm.hot_pages().into_iter().collect();
    let write_hot: HashSet<u64> = vm.write_hot_pages().into_iter().collect();
    assert!(write_hot.is_subset(&hot) && !write_hot.is_empty());
    assert!(write_hot.len() * 3 < hot.len(), "write-hot should be about w = 0.2 of hot");
    assert!(hot.iter().all(|p| vm.workload_pages().contains(p)));
    vm.set_dirty_logging(true).unwrap();
    vm.start().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut bm = DirtyBitmap::new(vm.total_pages());
    if vm.manual_dirty_protect() {
        // Nothing is armed yet: the guest's writes so far are not reported.
        vm.harvest_dirty(&mut bm).unwrap();
        let early = write_hot.iter().filter(|&&p| bm.get(p)).count();
        assert_eq!(early, 0, "writes to pages never armed were reported");
    }
    vm.arm_dirty_log(0, vm.total_pages()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    vm.harvest_dirty(&mut bm).unwrap();
    bm.clear_all();
    std::thread::sleep(Duration::from_millis(200));
    vm.pause().unwrap();
    let own = vm.workload_pages().end - 1;
    vm.write_guest(own * PAGE_BYTES + 100, &[1, 2, 3]).unwrap();
    vm.harvest_dirty(&mut bm).unwrap();
    let dirty: HashSet<u64> = bm.iter_ones().collect();
    assert!(dirty.contains(&own), "VMM write missing from the dirty set");
    let wh_dirty = write_hot.iter().filter(|p| dirty.contains(p)).count();
    assert!(
        wh_dirty * 10 >= write_hot.len() * 9,
        "{wh_dirty} of {} write-hot pages dirty",
        write_hot.len()
    );
    let read_hot_dirty = hot.difference(&write_hot).filter(|p| dirty.contains(p)).count();
    assert_eq!(read_hot_dirty, 0, "read-only hot pages were written");
    let mut again = DirtyBitmap::new(vm.total_pages());
    vm.harvest_dirty(&mut again).unwrap();
    assert_eq!(again.count(), 0, "harvest must clear the log while paused");
}

/// A paced run holds its rate and still gives the unpaced digest.
#[test]
fn vm_pacing_caps_rate_and_keeps_digest() {
    if !require_kvm("vm_pacing_caps_rate_and_keeps_digest") {
        return;
    }
    let ops = 40_000;
    let plain = run_plain(&cfg(WorkloadKind::Random, 1, 4, ops));
    let mut c = cfg(WorkloadKind::Random, 1, 4, ops);
    c.workload.pace_ops_per_sec = Some(100_000);
    let mut vm = Vm::new(&c).unwrap();
    let t0 = Instant::now();
    vm.start().unwrap();
    let d = vm.wait_finished(Duration::from_secs(10)).unwrap().expect("finished");
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(d, plain);
    // At least the paced time; the upper bound is loose because a guest that falls behind
    // (descheduled on a busy host) re-bases instead of bursting.
    assert!((0.38..2.0).contains(&secs), "40k ops at 100k/s took {secs:.3} s");
}

/// Pausing is fast and resumable many times; the run still ends with the reference digest.
#[test]
fn vm_pause_resume_cycles() {
    if !require_kvm("vm_pause_resume_cycles") {
        return;
    }
    // Ten times the usual scan budget (a few seconds here): the 100 cycles must pause a guest
    // that is still running, or they would time pauses of a finished one.
    let c = cfg(WorkloadKind::Scan, 2, 8, 10 * ops_for(WorkloadKind::Scan));
    let reference = run_plain(&c);
    let mut vm = Vm::new(&c).unwrap();
    vm.start().unwrap();
    let stats = hybridmig::vm::measure_pause(&mut vm, 100, Duration::from_micros(500)).unwrap();
    assert_eq!(stats.count, 100);
    assert!(stats.p50_us < 5_000.0, "pause p50 {} us", stats.p50_us);
    vm.pause().unwrap();
    assert!(!vm.is_finished(), "the guest finished before the pause cycles ended");
    let before = vm.ops_done();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(vm.ops_done(), before, "ops advanced while paused");
    assert!(vm.save_state().is_ok());
    vm.resume().unwrap();
    assert!(matches!(vm.save_state(), Err(VmError::WrongRunState { .. })));
    // Each trip is two emulated port I/O exits: the rest of the loop took over 30 s on a slow
    // host day.
    let d = vm.wait_finished(Duration::from_secs(180)).unwrap().expect("finished");
    assert_eq!(d, reference);
}

/// Restore refuses state from a differently shaped VM and a started VM; a real state blob
/// with a flipped byte fails its CRC.
#[test]
fn vm_state_checks() {
    if !require_kvm("vm_state_checks") {
        return;
    }
    let c1 = cfg(WorkloadKind::Scan, 1, 1, 1000);
    let c2 = cfg(WorkloadKind::Scan, 2, 1, 1000);
    let vm1 = Vm::new(&c1).unwrap();
    let s = vm1.save_state().unwrap();
    let mut vm2 = Vm::new_incoming(&c2).unwrap();
    assert!(matches!(
        vm2.restore_state(&s),
        Err(VmError::State(StateError::Mismatch { what: "vcpus", blob: 1, vm: 2 }))
    ));
    let mut blob = s.to_blob();
    blob[100] ^= 1;
    assert!(matches!(VmState::from_blob(&blob), Err(StateError::Crc { .. })));
    let mut vm3 = Vm::new(&c1).unwrap();
    vm3.start().unwrap();
    assert!(matches!(vm3.restore_state(&s), Err(VmError::WrongRunState { .. })));
}

/// Pausing right after port I/O exits (a guest that does nothing but `in` a ticket and `out`
/// a byte) and moving to a fresh VM each time neither drops nor repeats an access: the
/// pending I/O is completed before the state is read. A replayed `in` would return the next
/// ticket, which the guest detects (`ud2`, a typed shutdown error).
#[test]
fn vm_pause_after_io_exits_is_exact() {
    if !require_kvm("vm_pause_after_io_exits_is_exact") {
        return;
    }
    // Enough I/O round trips that 100 short slices land inside the loop even when a slice
    // overruns its 100 us sleep on a loaded host (CI saw about 330 round trips per slice,
    // which ended a 20,000-trip loop after 61).
    const N: u32 = 150_000;
    let mut c = cfg(WorkloadKind::Scan, 1, 1, 1000);
    c.mem_bytes = 2 << 20; // cheap migrations, so many of them fit

    let mut vm = Vm::new(&c).unwrap();
    let code = (|| -> Result<Vec<u8>, IcedError> {
        let mut a = CodeAssembler::new(64)?;
        let mut top = a.create_label();
        let mut done = a.create_label();
        a.xor(ecx, ecx)?;
        a.set_label(&mut top)?;
        let mut ok = a.create_label();
        a.mov(dx, 0x514)?;
        a.in_(eax, dx)?;
        a.cmp(eax, ecx)?;
        a.je(ok)?;
        a.ud2()?;
        a.set_label(&mut ok)?;
        a.mov(eax, ecx)?;
        a.xor(edx, edx)?;
        a.mov(r8d, 26)?;
        a.div(r8d)?;
        a.lea(eax, dword_ptr(rdx + 0x61))?;
        a.mov(dx, 0x3f8)?;
        a.out(dx, al)?;
        a.inc(ecx)?;
        a.cmp(ecx, N as i32)?;
        a.jb(top)?;
        a.mov(eax, ecx)?;
        a.mov(dx, 0x511)?;
        a.out(dx, eax)?;
        a.xor(eax, eax)?;
        a.mov(dx, 0x512)?;
        a.out(dx, eax)?;
        a.set_label(&mut done)?;
        a.mov(dx, 0x513)?;
        a.out(dx, eax)?;
        a.jmp(done)?;
        a.assemble(CODE_GPA)
    })()
    .unwrap();
    vm.write_guest(CODE_GPA, &code).unwrap();
    vm.start().unwrap();
    let mut mid = 0;
    for _ in 0..300 {
        if mid >= 100 {
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
        vm.pause().unwrap();
        let len = vm.serial_output().len();
        if vm.is_finished() {
            break;
        }
        if len > 0 && len < N as usize {
            mid += 1;
        }
        vm = migrate(&vm);
        vm.start().unwrap();
    }
    assert!(mid >= 100, "only {mid} migrations landed inside the I/O loop");
    // Each trip is two emulated port I/O exits: the rest of the loop took over 30 s on a slow
    // host day.
    let d = vm.wait_finished(Duration::from_secs(180)).unwrap().expect("finished");
    let keep = hybridmig::vm::devices::SERIAL_KEEP_BYTES as u32;
    let expected: Vec<u8> = (N - keep..N).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(vm.serial_output(), expected, "serial bytes lost or repeated");
    assert_eq!(vm.control(0).map(|c| c.ticket), Some(N), "tickets lost or repeated");
    assert_eq!(d, hybridmig::vm::combine_digests(&[u64::from(N)]));
}

/// Back-to-back Accessed-bit harvests of a running guest, and one right after a resume, all
/// succeed (a vCPU marked Paused whose resume is under way is not "quiet": the harvest must
/// pause it rather than zap slots under it), and the guest keeps running between them.
#[test]
fn vm_harvest_accessed_back_to_back() {
    if !require_kvm("vm_harvest_accessed_back_to_back") {
        return;
    }
    let c = endless_cfg(WorkloadKind::Scan, 1, 5);
    let mut vm = Vm::new(&c).unwrap();
    vm.start().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut window = DirtyBitmap::new(vm.total_pages());
    let started = Instant::now();
    for round in 0..200 {
        if round % 20 == 0 {
            vm.pause().unwrap();
            vm.resume().unwrap();
        }
        vm.harvest_accessed(&mut window).unwrap_or_else(|e| panic!("harvest {round} failed: {e}"));
        assert!(started.elapsed() < Duration::from_secs(20), "200 harvests took too long");
    }
    assert!(window.count() > 0, "a scanning guest touched no data page");
    let before = vm.ops_done();
    std::thread::sleep(Duration::from_millis(50));
    assert!(vm.ops_done() > before, "the guest stopped running after the harvests");
}

/// Dirty logging armed one block at a time, as the source does while it sends: writes to an
/// armed block are reported, writes to memory not armed yet are not (with KVM's manual
/// protect), and a page reported once is re-armed for its next write.
#[test]
fn vm_dirty_log_reports_writes_to_armed_blocks() {
    if !require_kvm("vm_dirty_log_reports_writes_to_armed_blocks") {
        return;
    }
    let c = endless_cfg(WorkloadKind::Random, 1, 3);
    let mut vm = Vm::new(&c).unwrap();
    let data = vm.workload_pages();
    vm.set_dirty_logging(true).unwrap();
    vm.start().unwrap();
    let block = data.start + 2048..data.start + 4096;
    vm.arm_dirty_log(block.start, block.end - block.start).unwrap();
    let mut bm = DirtyBitmap::new(vm.total_pages());
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(200));
        bm.clear_all();
        vm.harvest_dirty(&mut bm).unwrap();
        let inside = block.clone().filter(|&p| bm.get(p)).count();
        let outside = data.clone().filter(|p| !block.contains(p) && bm.get(*p)).count();
        eprintln!("round {round}: {inside} of 2048 armed pages dirty, {outside} outside");
        assert!(inside * 2 >= 2048, "round {round}: only {inside} of 2048 armed pages reported");
        if vm.manual_dirty_protect() {
            assert_eq!(outside, 0, "round {round}: pages never armed were reported");
        }
    }
    vm.pause().unwrap();
}
