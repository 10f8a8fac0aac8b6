//! Serving a fault allocates nothing on either side: the engines are driven through their
//! sans-IO API (no simulator loop, no driver) under a global allocator that counts, and the
//! allocations made while serving many faults must not grow with their number.
//!
//! One test in this binary, so that no other test allocates on the counted thread meanwhile.

use hybridmig::dest::DestEngine;
use hybridmig::ports::{DestVm, EmbedError, MigratableVm, PageSink, SinkError};
use hybridmig::session::{SessionIntent, SessionParams};
use hybridmig::sim::{SimGuestSpec, SimVm};
use hybridmig::source::{SourceConfig, SourceEngine};
use hybridmig::wire::{self, MigrationMode, StreamKind};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts allocations (and reallocations) made on a thread while its flag is on.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNT_HERE: Cell<bool> = const { Cell::new(false) };
}

fn note_allocation() {
    if COUNT_HERE.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator, whose contract is the
// same; counting touches only an atomic and a const-initialised thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which System shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: `ptr` came from `System` through this allocator with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNT_HERE.with(|on| on.set(true));
    f();
    COUNT_HERE.with(|on| on.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

/// A sink that places nothing (the engines' own work is what is counted).
struct NullSink;

impl PageSink for NullSink {
    fn place(&mut self, _first: u64, _data: &[u8]) -> Result<(), SinkError> {
        Ok(())
    }
    fn place_zero(&mut self, _first: u64, _count: u64) -> Result<(), SinkError> {
        Ok(())
    }
    fn overwrite(&mut self, _first: u64, _data: &[u8]) -> Result<(), SinkError> {
        Ok(())
    }
    fn discard(&mut self, _first: u64, _count: u64) -> Result<(), SinkError> {
        Ok(())
    }
    fn wake(&mut self, _first: u64, _count: u64) -> Result<(), SinkError> {
        Ok(())
    }
}

impl DestVm for NullSink {
    fn restore_state(&mut self, _blob: &[u8]) -> Result<(), EmbedError> {
        Ok(())
    }
    fn resume(&mut self) -> Result<(), EmbedError> {
        Ok(())
    }
}

/// Both engines, their guest and reusable buffers.
struct Pair {
    vm: SimVm,
    source: SourceEngine,
    dest: DestEngine,
    buf: Vec<u8>,
}

impl Pair {
    /// A post-copy migration of the default simulated guest, resumed on the destination,
    /// with the push held back so that only fault answers move.
    fn resumed() -> Self {
        let mut vm = SimVm::new(&SimGuestSpec::default());
        let session = SessionParams {
            version: wire::VERSION_CURRENT,
            session_id: 11,
            mode: MigrationMode::Postcopy,
            intent: SessionIntent::New,
            regions: vm
                .regions()
                .iter()
                .map(|r| wire::Region { guest_phys: r.guest_phys, size_bytes: r.size_bytes })
                .collect(),
            page_size: wire::PAGE_SIZE as u32,
        };
        let mut cfg = SourceConfig::new(MigrationMode::Postcopy, 11);
        cfg.push_delay_ms = 3_600_000;
        let mut source = SourceEngine::new(cfg, &session, &vm).expect("source");
        let dest = DestEngine::new(source.layout().clone(), &session);
        source.start(&mut vm).expect("start");
        let mut pair = Self { vm, source, dest, buf: Vec::with_capacity(1 << 20) };
        pair.exchange();
        pair
    }

    /// Moves frames both ways until neither side has anything to send.
    fn exchange(&mut self) {
        loop {
            let mut moved = false;
            for stream in StreamKind::ALL {
                self.buf.clear();
                let produced = match stream {
                    StreamKind::Bulk => {
                        self.source.poll_bulk(&mut self.buf, &mut self.vm).expect("poll_bulk")
                    }
                    StreamKind::Urgent => self.source.poll_urgent(&mut self.buf),
                };
                moved |= produced;
                self.deliver_to_dest(stream);
                self.buf.clear();
                let produced = match stream {
                    StreamKind::Bulk => self.dest.poll_bulk(&mut self.buf),
                    StreamKind::Urgent => self.dest.poll_urgent(&mut self.buf),
                };
                moved |= produced;
                self.deliver_to_source(stream);
            }
            if !moved {
                return;
            }
        }
    }

    fn deliver_to_dest(&mut self, stream: StreamKind) {
        let limits = wire::Limits::default();
        let mut at = 0;
        while at < self.buf.len() {
            let (frame, used) = wire::decode_frame(&self.buf[at..], &limits).expect("frame");
            self.dest.on_frame(stream, frame, &mut NullSink).expect("dest on_frame");
            at += used;
        }
    }

    fn deliver_to_source(&mut self, stream: StreamKind) {
        let limits = wire::Limits::default();
        let mut at = 0;
        while at < self.buf.len() {
            let (frame, used) = wire::decode_frame(&self.buf[at..], &limits).expect("frame");
            self.source.on_frame(stream, frame, &mut self.vm).expect("source on_frame");
            at += used;
        }
    }

    /// Faults on each page of `pages` in turn and exchanges frames until it is answered.
    fn fault_on(&mut self, pages: std::ops::Range<u64>) {
        for page in pages {
            self.dest.on_fault(page, 0, &mut NullSink).expect("fault");
            self.exchange();
            assert!(self.dest.is_present(page), "page {page} answered");
        }
    }
}

#[test]
fn serving_faults_allocates_nothing_per_fault() {
    let mut pair = Pair::resumed();
    let pages = pair.source.layout().total_pages();
    // Warm-up: queues and maps reach their working size.
    pair.fault_on(0..40);
    let few = allocations_in(|| pair.fault_on(40..80));
    let many = allocations_in(|| pair.fault_on(80..pages));
    let served = pair.dest.stats().network_faults;
    assert_eq!(served, pages, "every page came by a network fault");
    assert!(
        many <= few,
        "allocations grow with the faults served: {few} for 40 faults, {many} for {}",
        pages - 80
    );
    assert_eq!(many, 0, "serving {} faults allocated {many} times", pages - 80);
}
