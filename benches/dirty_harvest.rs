//! Dirty-log and Accessed-bit harvests of a 1 GiB guest (1 vCPU, `scan` workload).
//!
//! Run: `cargo bench --bench dirty_harvest` (needs /dev/kvm, about 35 s).
//!
//! Criterion groups, all on the same VM:
//! - `harvest_dirty_1g/paused`: the engine's harvest step (`clear_all` of its scratch bitmap,
//!   then `harvest_dirty` through [`KvmGuest`], as `SourceEngine::harvest` does) with the guest
//!   paused after `start_dirty_log`, so the log is empty: the fixed cost of one
//!   `KVM_GET_DIRTY_LOG` per slot and the bitmap OR.
//! - `harvest_dirty_1g/running_scan`: the same while the guest scans (writes one byte in every
//!   page, over and over), harvests back to back: each log holds what the guest dirtied since
//!   the previous harvest.
//! - `harvest_accessed_1g/paused` and `/running_scan`: the working-set sampler's step as
//!   `run_source_host` takes it (`clear_all` of its window, then `Vm::harvest_accessed`: the
//!   page-table walk over 1 GiB clearing Accessed bits, data slots re-added); on a running
//!   guest this includes the pause and resume that `harvest_accessed` does itself.
//!
//! After criterion, fixed-interval harvests (the running guest is left alone for 10 ms or
//! 100 ms between them, as between pre-copy rounds or tracker windows) print p50/p99 and the
//! dirty or accessed pages per harvest.

use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use hybridmig::embed::MigratableVm;
use hybridmig::memory::PageBitmap;
use hybridmig::migration::KvmGuest;
use hybridmig::vm::{Vm, VmConfig, WorkloadKind, WorkloadSpec};

const MEM_BYTES: u64 = 1 << 30;
/// Guest run time before the first measurement (populates its memory).
const WARM_RUN: Duration = Duration::from_millis(500);

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

/// Per-harvest page counts of one benchmark: (pages summed, harvests).
type PageTally = (u64, u64);

fn report_tally(name: &str, what: &str, t: PageTally) {
    eprintln!(
        "{name}: {:.0} {what} pages per harvest on average ({} harvests)",
        t.0 as f64 / t.1.max(1) as f64,
        t.1
    );
}

/// The engine's harvest step (`SourceEngine::harvest`).
fn harvest_dirty(guest: &mut KvmGuest<'_>, scratch: &mut PageBitmap) {
    scratch.clear_all();
    guest.harvest_dirty(scratch).expect("harvest_dirty");
}

fn bench_dirty(c: &mut Criterion, vm: &mut Vm, label: &str) {
    let mut scratch = PageBitmap::new(vm.total_pages());
    let mut guest = KvmGuest::new(vm);
    let mut g = c.benchmark_group("harvest_dirty_1g");
    g.sampling_mode(SamplingMode::Flat);
    let mut pages: PageTally = (0, 0);
    g.bench_function(label, |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                harvest_dirty(&mut guest, &mut scratch);
                spent += t0.elapsed();
                pages.0 += scratch.count();
                pages.1 += 1;
            }
            spent
        })
    });
    g.finish();
    report_tally(&format!("harvest_dirty_1g/{label}"), "dirty", pages);
}

fn bench_accessed(c: &mut Criterion, vm: &mut Vm, label: &str) {
    let mut window = PageBitmap::new(vm.total_pages());
    let mut g = c.benchmark_group("harvest_accessed_1g");
    g.sampling_mode(SamplingMode::Flat);
    let mut pages: PageTally = (0, 0);
    g.bench_function(label, |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                window.clear_all();
                vm.harvest_accessed(&mut window).expect("harvest_accessed");
                spent += t0.elapsed();
                pages.0 += window.count();
                pages.1 += 1;
            }
            spent
        })
    });
    g.finish();
    report_tally(&format!("harvest_accessed_1g/{label}"), "accessed", pages);
}

fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// `count` harvests of a running guest, `interval` of undisturbed run before each one.
fn interval_run(name: &str, interval: Duration, count: usize, mut harvest: impl FnMut() -> u64) {
    let mut times = Vec::with_capacity(count);
    let mut pages = 0u64;
    harvest(); // start from an empty log / cleared bits
    for _ in 0..count {
        std::thread::sleep(interval);
        let t0 = Instant::now();
        let n = harvest();
        times.push(t0.elapsed());
        pages += n;
    }
    times.sort();
    let mean_pages = pages as f64 / count.max(1) as f64;
    println!(
        "{name} every {}ms: n={count} p50={:.1}us p99={:.1}us max={:.1}us pages/harvest={mean_pages:.0}",
        interval.as_millis(),
        percentile_us(&times, 0.5),
        percentile_us(&times, 0.99),
        percentile_us(&times, 1.0),
    );
}

fn interval_runs(vm: &mut Vm) {
    let mut window = PageBitmap::new(vm.total_pages());
    interval_run("harvest_accessed_1g/running_scan", Duration::from_millis(100), 20, || {
        window.clear_all();
        vm.harvest_accessed(&mut window).expect("harvest_accessed");
        window.count()
    });
    let mut scratch = PageBitmap::new(vm.total_pages());
    let mut guest = KvmGuest::new(vm);
    for (interval, count) in [(Duration::from_millis(10), 100), (Duration::from_millis(100), 20)] {
        interval_run("harvest_dirty_1g/running_scan", interval, count, || {
            harvest_dirty(&mut guest, &mut scratch);
            scratch.count()
        });
    }
}

fn main() {
    if !hybridmig::host_check::require_kvm("dirty_harvest bench") {
        return;
    }
    let mut c = config().configure_from_args();
    let cfg = VmConfig {
        mem_bytes: MEM_BYTES,
        vcpus: 1,
        workload: WorkloadSpec::new(WorkloadKind::Scan, 1),
    };
    let mut vm = Vm::new(&cfg).expect("1 GiB scan VM");
    println!("guest: 1 GiB, 1 vCPU, scan; {} pages in the dirty bitmap", vm.total_pages());
    vm.start().expect("start");
    std::thread::sleep(WARM_RUN);

    // As the source engine begins a migration: dirty logging on, earlier writes dropped; then
    // every page armed, as the engine has done once each block was sent (with KVM's manual
    // protect, a page's writes are reported only after that).
    let mut guest = KvmGuest::new(&mut vm);
    guest.start_dirty_log().expect("start_dirty_log");
    let armed_started = std::time::Instant::now();
    guest.arm_dirty_log(0, u64::MAX / 2).expect("arm_dirty_log");
    println!("arm_dirty_log of 1 GiB, guest running: {:?}", armed_started.elapsed());
    vm.pause().expect("pause");
    // Clear the Accessed bits the warm run set, so the paused figures see an idle guest.
    let mut discard = PageBitmap::new(vm.total_pages());
    vm.harvest_accessed(&mut discard).expect("harvest_accessed");
    bench_dirty(&mut c, &mut vm, "paused");
    bench_accessed(&mut c, &mut vm, "paused");

    vm.resume().expect("resume");
    std::thread::sleep(Duration::from_millis(200));
    bench_dirty(&mut c, &mut vm, "running_scan");
    bench_accessed(&mut c, &mut vm, "running_scan");
    interval_runs(&mut vm);
    println!("guest ops done: {}", vm.ops_done());
    c.final_summary();
}
