//! A deterministic synthetic guest over a byte array, for the simulator.
//!
//! Each step picks a page (hot pages with probability `hot_frac`), then either writes eight
//! bytes of it (probability `write_frac`) or folds eight bytes into an accumulator. The memory
//! starts with a mix of zero, text-like and random pages so every page encoding is exercised.

use crate::memory::{PageBitmap, PAGE_SIZE};
use crate::ports::{EmbedError, HostRegion, MigratableVm};
use std::time::Duration;

/// Shape of a simulated guest.
#[derive(Debug, Clone)]
pub struct SimGuestSpec {
    /// Pages per region (several regions exercise region boundaries).
    pub region_pages: Vec<u64>,
    /// Hot pages (the first `hot_pages` pages of the last region).
    pub hot_pages: u64,
    /// Fraction of steps that touch a hot page.
    pub hot_frac: f64,
    /// Fraction of steps that write.
    pub write_frac: f64,
    /// Seed of the guest program and its initial memory.
    pub seed: u64,
    /// Dirty logging as KVM's manual protect with initially-set bitmaps: a page's writes are
    /// reported only once the source has armed it (`arm_dirty_log`). An engine that reads a
    /// page before arming it would miss the writes after that read, and the digest would
    /// tell. Off: every page is armed when logging starts.
    pub deferred_protect: bool,
}

impl Default for SimGuestSpec {
    fn default() -> Self {
        Self {
            region_pages: vec![64, 448],
            hot_pages: 48,
            hot_frac: 0.9,
            write_frac: 0.3,
            seed: 7,
            deferred_protect: true,
        }
    }
}

/// The simulated VM: memory, guest registers (PRNG state, step count, accumulator).
#[derive(Debug)]
pub struct SimVm {
    spec: SimGuestSpec,
    memory: Vec<u8>,
    regions: Vec<HostRegion>,
    rng: u64,
    /// Steps executed.
    pub steps: u64,
    acc: u64,
    dirty: PageBitmap,
    /// With `deferred_protect`: pages armed since logging started.
    armed: PageBitmap,
    /// Pages that were zero at the start and never written (they read as zero).
    untouched: PageBitmap,
    logging: bool,
    /// Paused (source after the switch-over).
    pub paused: bool,
    /// Pages present (destination: placed by the engine; source: all).
    pub present: PageBitmap,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const STATE_MAGIC: u64 = 0x5349_4d56_4d31_0001;

impl SimVm {
    /// A VM with its initial memory, ready to run.
    pub fn new(spec: &SimGuestSpec) -> Self {
        let mut vm = Self::new_incoming(spec);
        let mut fill = spec.seed ^ 0xabcd;
        for page in 0..vm.total_pages() {
            let kind = splitmix(&mut fill) % 3;
            let bytes = &mut vm.memory[page as usize * PAGE_SIZE..(page as usize + 1) * PAGE_SIZE];
            match kind {
                0 => {}
                1 => bytes
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b = b"the quick brown fox "[i % 20]),
                _ => bytes
                    .chunks_exact_mut(8)
                    .for_each(|c| c.copy_from_slice(&splitmix(&mut fill).to_le_bytes())),
            }
        }
        vm.present = PageBitmap::full(vm.total_pages());
        for page in 0..vm.total_pages() {
            let start = page as usize * PAGE_SIZE;
            if vm.memory[start..start + PAGE_SIZE].iter().all(|&b| b == 0) {
                vm.untouched.set(page);
            }
        }
        vm
    }

    /// A VM for an incoming migration: zeroed memory, nothing present, not running.
    pub fn new_incoming(spec: &SimGuestSpec) -> Self {
        let total: u64 = spec.region_pages.iter().sum();
        let memory = vec![0u8; total as usize * PAGE_SIZE];
        let base = memory.as_ptr() as usize;
        let mut regions = Vec::new();
        let (mut offset, mut guest_phys) = (0usize, 0u64);
        for &pages in &spec.region_pages {
            let size_bytes = pages * PAGE_SIZE as u64;
            // SAFETY: the region lies inside `memory`, a heap buffer this VM owns and never resizes,
            // so it stays mapped for as long as the VM (and any engine built from it) lives.
            regions.push(unsafe { HostRegion::new(guest_phys, size_bytes, base + offset) });
            offset += size_bytes as usize;
            guest_phys += size_bytes + (1 << 20); // a hole between regions
        }
        Self {
            spec: spec.clone(),
            memory,
            regions,
            rng: spec.seed,
            steps: 0,
            acc: 0,
            dirty: PageBitmap::new(total),
            armed: PageBitmap::new(total),
            untouched: PageBitmap::new(total),
            logging: false,
            paused: false,
            present: PageBitmap::new(total),
        }
    }

    /// Pages of memory.
    pub fn total_pages(&self) -> u64 {
        self.dirty.len()
    }

    /// The true hot set.
    pub fn hot_pages(&self) -> Vec<u64> {
        let last: u64 = self.spec.region_pages.iter().rev().skip(1).sum();
        (last..last + self.spec.hot_pages).collect()
    }

    /// The page the next step will touch (without running it).
    pub fn next_page(&self) -> u64 {
        let mut rng = self.rng;
        self.pick(&mut rng).0
    }

    fn pick(&self, rng: &mut u64) -> (u64, bool, usize) {
        let r = splitmix(rng);
        let hot = (r % 1000) as f64 / 1000.0 < self.spec.hot_frac;
        let hot_set = self.hot_pages();
        let page = if hot {
            hot_set[(splitmix(rng) % hot_set.len() as u64) as usize]
        } else {
            splitmix(rng) % self.total_pages()
        };
        let write = (splitmix(rng) % 1000) as f64 / 1000.0 < self.spec.write_frac;
        let offset = (splitmix(rng) % (PAGE_SIZE as u64 / 8)) as usize * 8;
        (page, write, offset)
    }

    /// Runs `n` steps.
    pub fn run_steps(&mut self, n: u64) {
        for _ in 0..n {
            let mut rng = self.rng;
            let (page, write, offset) = self.pick(&mut rng);
            let at = page as usize * PAGE_SIZE + offset;
            let word = u64::from_le_bytes(self.memory[at..at + 8].try_into().unwrap_or([0; 8]));
            if write {
                let value = word.wrapping_mul(31).wrapping_add(splitmix(&mut rng));
                self.memory[at..at + 8].copy_from_slice(&value.to_le_bytes());
                self.untouched.clear(page);
                if self.logging {
                    self.dirty.set(page);
                }
            } else {
                self.acc = self.acc.rotate_left(7) ^ word;
            }
            self.rng = rng;
            self.steps += 1;
        }
    }

    /// A mutable view of one page.
    pub fn page_mut(&mut self, page: u64) -> Result<&mut [u8], crate::ports::SinkError> {
        let start = page as usize * PAGE_SIZE;
        self.memory
            .get_mut(start..start + PAGE_SIZE)
            .ok_or(crate::ports::SinkError::NoSuchPage { page })
    }

    /// True when memory and guest registers equal `other`'s.
    pub fn same_as(&self, other: &SimVm) -> bool {
        self.memory == other.memory
            && self.rng == other.rng
            && self.steps == other.steps
            && self.acc == other.acc
    }
}

fn blob_error(msg: &str) -> EmbedError {
    EmbedError::Vm { op: "restore_state", source: msg.to_string().into() }
}

impl MigratableVm for SimVm {
    fn regions(&self) -> Vec<HostRegion> {
        self.regions.clone()
    }

    fn start_dirty_log(&mut self) -> Result<(), EmbedError> {
        self.logging = true;
        self.armed.clear_all();
        if self.spec.deferred_protect {
            // Initially set: every page counts as dirty until it is armed.
            self.dirty = PageBitmap::full(self.total_pages());
        } else {
            self.dirty.clear_all();
        }
        Ok(())
    }

    fn harvest_dirty(&mut self, out: &mut PageBitmap) -> Result<(), EmbedError> {
        if !self.spec.deferred_protect {
            out.union_with(&self.dirty);
            self.dirty.clear_all();
            return Ok(());
        }
        for page in self.armed.iter_ones() {
            if self.dirty.clear(page) {
                out.set(page);
            }
        }
        Ok(())
    }

    fn arm_dirty_log(&mut self, first: u64, count: u64) -> Result<(), EmbedError> {
        if !self.spec.deferred_protect || !self.logging {
            return Ok(());
        }
        let end = first.saturating_add(count).min(self.total_pages());
        for page in first..end {
            if self.armed.set(page) {
                self.dirty.clear(page);
            }
        }
        Ok(())
    }

    fn untouched_pages(
        &self,
        first: u64,
        count: u64,
        out: &mut PageBitmap,
    ) -> Result<bool, EmbedError> {
        let end = first.saturating_add(count).min(self.total_pages());
        let mut page = first;
        while let Some(p) = self.untouched.next_set_before(page, end) {
            out.set(p);
            page = p + 1;
        }
        Ok(true)
    }

    fn pause(&mut self) -> Result<Duration, EmbedError> {
        self.paused = true;
        Ok(Duration::ZERO)
    }

    fn save_state(&mut self) -> Result<Vec<u8>, EmbedError> {
        let mut blob = Vec::with_capacity(32);
        for v in [STATE_MAGIC, self.rng, self.steps, self.acc] {
            blob.extend_from_slice(&v.to_le_bytes());
        }
        Ok(blob)
    }

    fn restore_state(&mut self, blob: &[u8]) -> Result<(), EmbedError> {
        if blob.len() != 32 {
            return Err(blob_error("state blob is not 32 bytes"));
        }
        let word =
            |i: usize| u64::from_le_bytes(blob[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        if word(0) != STATE_MAGIC {
            return Err(blob_error("bad state magic"));
        }
        (self.rng, self.steps, self.acc) = (word(1), word(2), word(3));
        Ok(())
    }

    fn resume(&mut self) -> Result<(), EmbedError> {
        self.paused = false;
        Ok(())
    }
}
