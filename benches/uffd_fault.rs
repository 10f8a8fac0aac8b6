//! userfaultfd fault-to-placed latency with a local page: a thread touches a missing page of
//! a 64 MiB MISSING-registered anonymous region; a handler thread polls the uffd, reads the
//! message and answers with `UFFDIO_COPY` from a local buffer; the touch returns.
//!
//! Run: `cargo bench --bench uffd_fault` (needs /dev/userfaultfd, about 15 s).
//!
//! - `uffd_fault/copy_1_page`: each answer places the faulting 4 KiB page.
//! - `uffd_fault/copy_16_pages`: each answer places a 64 KiB window starting at the faulting
//!   page (the engine's default fault window); the toucher then moves past the window, so
//!   every measured touch is a fresh fault.
//!
//! Each runs three ways: `unpinned` (the scheduler places both threads, as in a migration),
//! `same_cpu` (both threads pinned to one CPU: the wake-up is a local context switch) and
//! `cross_cpu` (pinned to two CPUs: the wake-up is a cross-CPU IPI, which this nested-KVM host
//! makes expensive). `unpinned` lands on either and is bimodal from one run to the next.
//!
//! The figure is the toucher's time per fault (clock around the touch only). No network, no
//! codec: this is the floor the destination's fault path adds to a page's round trip.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use hybridmig::dest::uffd::{parse_messages, Placed, Uffd, UffdError, UffdEvent};

const PAGE_BYTES: usize = 4096;
const REGION_BYTES: usize = 64 << 20;
/// Longest the handler thread lives, whatever happens to the bench thread.
const HANDLER_MAX_LIFE: Duration = Duration::from_secs(300);
/// Poll timeout of the handler: how soon it notices the stop flag.
const POLL_TIMEOUT_MS: i32 = 50;
/// Attempts at one placement that the kernel asks to retry (EAGAIN).
const PLACE_ATTEMPTS: usize = 8;
/// Marker byte of the answered pages, checked by the toucher.
const FILL: u8 = 0xA5;

/// An anonymous private mapping (MAP_NORESERVE), unmapped on drop.
struct Region {
    addr: *mut u8,
    len_bytes: usize,
}

impl Region {
    fn map(len_bytes: usize) -> Region {
        // SAFETY: anonymous mapping with no address hint; the result is checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap {len_bytes} bytes");
        Region { addr: addr.cast(), len_bytes }
    }

    fn base(&self) -> u64 {
        self.addr as u64
    }

    fn pages(&self) -> usize {
        self.len_bytes / PAGE_BYTES
    }

    /// Reads the first byte of `page`; blocks in the kernel while the page is missing.
    fn touch(&self, page: usize) -> u8 {
        assert!(page < self.pages());
        // SAFETY: in bounds of a live mapping; a missing page blocks until the handler
        // places it (or unregisters the range on its way out).
        unsafe { std::ptr::read_volatile(self.addr.add(page * PAGE_BYTES)) }
    }

    /// Drops every page so that the next touches fault again (no uffd event: the REMOVE
    /// feature is not asked for).
    fn drop_pages(&self) {
        // SAFETY: the whole live mapping; it stays mapped, its pages become missing again.
        let ret = unsafe { libc::madvise(self.addr.cast(), self.len_bytes, libc::MADV_DONTNEED) };
        assert_eq!(ret, 0, "madvise(DONTNEED): {}", std::io::Error::last_os_error());
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped; the handler has exited by now.
        unsafe { libc::munmap(self.addr.cast(), self.len_bytes) };
    }
}

fn wait_readable(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, POLL_TIMEOUT_MS) };
    n == 1 && pfd.revents & libc::POLLIN != 0
}

/// Places `src` at `dst` (clipped to the region by the caller), waking the toucher.
fn place(uffd: &Uffd, dst: u64, src: &[u8]) -> Result<(), UffdError> {
    let mut done = 0usize;
    for _ in 0..PLACE_ATTEMPTS {
        match uffd.copy_from_slice(dst + done as u64, &src[done..], false)? {
            Placed::Done { .. } => return Ok(()),
            Placed::Retry { done_bytes } => done += done_bytes as usize,
            // A page of the window was present: the faulting one was placed or is; wake.
            Placed::AlreadyPresent => break,
        }
        if done >= src.len() {
            return Ok(());
        }
    }
    uffd.wake(dst, PAGE_BYTES as u64)
}

/// The handler thread's loop: answer every fault with `window_pages` local pages.
fn serve(
    uffd: &Uffd,
    base: u64,
    len_bytes: u64,
    window_pages: usize,
    stop: &AtomicBool,
) -> Result<u64, UffdError> {
    let src = vec![FILL; window_pages * PAGE_BYTES];
    let mut buf = [0u8; 64 * 32];
    let (started, mut faults) = (Instant::now(), 0u64);
    while !stop.load(Ordering::Acquire) && started.elapsed() < HANDLER_MAX_LIFE {
        if !wait_readable(uffd.as_raw_fd()) {
            continue;
        }
        let n = uffd.read_messages(&mut buf)?;
        for event in parse_messages(&buf[..n]) {
            let UffdEvent::PageFault { addr, .. } = event else { continue };
            let page = addr & !(PAGE_BYTES as u64 - 1);
            let len = (window_pages * PAGE_BYTES).min((base + len_bytes - page) as usize);
            place(uffd, page, &src[..len])?;
            faults += 1;
        }
    }
    Ok(faults)
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain bits; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed.
    let ret = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(ret, 0, "sched_getaffinity: {}", std::io::Error::last_os_error());
    // SAFETY: CPU_ISSET reads one bit of a valid set; `cpu` is below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
}

/// Restricts the calling thread to `cpus`.
fn pin_current(cpus: &[usize]) {
    // SAFETY: as in `allowed_cpus`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: sets one bit of a valid set; `cpu` came from `allowed_cpus`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 is the calling thread.
    let ret = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(ret, 0, "sched_setaffinity {cpus:?}: {}", std::io::Error::last_os_error());
}

/// Where the toucher (the bench thread) and the handler thread run.
#[derive(Clone, Copy)]
enum Placement {
    Unpinned,
    SameCpu,
    CrossCpu,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Unpinned => "unpinned",
            Placement::SameCpu => "same_cpu",
            Placement::CrossCpu => "cross_cpu",
        }
    }

    /// (toucher CPUs, handler CPUs) out of `allowed`; None when `allowed` is too small.
    fn cpus(self, allowed: &[usize]) -> Option<(Vec<usize>, Vec<usize>)> {
        match (self, allowed) {
            (Placement::Unpinned, _) => Some((allowed.to_vec(), allowed.to_vec())),
            (Placement::SameCpu, [first, ..]) => Some((vec![*first], vec![*first])),
            (Placement::CrossCpu, [first, second, ..]) => Some((vec![*first], vec![*second])),
            _ => None,
        }
    }
}

/// A registered region and its handler thread; stops and joins the thread on drop.
struct Harness {
    region: Region,
    window_pages: usize,
    next_page: usize,
    stop: Arc<AtomicBool>,
    handler: Option<JoinHandle<Result<u64, UffdError>>>,
}

impl Harness {
    fn new(window_pages: usize, handler_cpus: Vec<usize>) -> Harness {
        let region = Region::map(REGION_BYTES);
        let (uffd, _) = Uffd::open_with_features(0).expect("userfaultfd");
        let (base, len) = (region.base(), REGION_BYTES as u64);
        uffd.register(base, len).expect("UFFDIO_REGISTER");
        let stop = Arc::new(AtomicBool::new(false));
        let handler = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("uffd-handler".into())
                .spawn(move || {
                    pin_current(&handler_cpus);
                    let served = serve(&uffd, base, len, window_pages, &stop);
                    // Whatever happened, release a toucher still blocked on the range.
                    let _ = uffd.unregister(base, len);
                    served
                })
                .expect("spawn handler")
        };
        Harness { region, window_pages, next_page: 0, stop, handler: Some(handler) }
    }

    /// Times `iters` first touches of missing pages (the clock runs around the touch only).
    fn run(&mut self, iters: u64) -> Duration {
        let mut spent = Duration::ZERO;
        for _ in 0..iters {
            if self.next_page + self.window_pages > self.region.pages() {
                self.region.drop_pages();
                self.next_page = 0;
            }
            let t0 = Instant::now();
            let byte = self.region.touch(self.next_page);
            spent += t0.elapsed();
            assert_eq!(byte, FILL, "page {} not answered by the handler", self.next_page);
            self.next_page += self.window_pages;
        }
        assert!(self.handler.as_ref().is_some_and(|h| !h.is_finished()), "handler exited");
        spent
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handler.take() {
            match h.join() {
                Ok(Ok(faults)) => eprintln!("handler ({}p): {faults} faults", self.window_pages),
                Ok(Err(e)) => eprintln!("handler ({}p) failed: {e}", self.window_pages),
                Err(_) => eprintln!("handler ({}p) panicked", self.window_pages),
            }
        }
    }
}

fn bench_faults(c: &mut Criterion) {
    let allowed = allowed_cpus();
    let mut g = c.benchmark_group("uffd_fault");
    g.throughput(Throughput::Elements(1));
    for (name, window_pages) in [("copy_1_page", 1), ("copy_16_pages", 16)] {
        for placement in [Placement::Unpinned, Placement::SameCpu, Placement::CrossCpu] {
            let Some((toucher_cpus, handler_cpus)) = placement.cpus(&allowed) else {
                eprintln!("{name}/{}: skipped, only {} CPU", placement.name(), allowed.len());
                continue;
            };
            pin_current(&toucher_cpus);
            let mut harness = Harness::new(window_pages, handler_cpus);
            g.bench_function(format!("{name}/{}", placement.name()), |b| {
                b.iter_custom(|iters| harness.run(iters))
            });
            drop(harness);
            pin_current(&allowed);
        }
    }
    g.finish();
}

fn main() {
    if !hybridmig::host_check::require_uffd("uffd_fault bench") {
        return;
    }
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_faults(&mut c);
    c.final_summary();
}
