//! Which pages of this process's private anonymous memory were never touched, from
//! `/proc/self/pagemap`.
//!
//! Such a page is neither present nor swapped, and it reads as zero, so the source can skip
//! it without reading it (a first read would fault in the zero page). Linux 6.7 added the
//! `PAGEMAP_SCAN` ioctl, which returns runs of pages by category instead of one 8-byte entry
//! per page, and is faster than reading the entries (docs/kernel-facts.md). Older kernels
//! answer ENOTTY or EINVAL and get the entries read instead. `Documentation/admin-guide/mm/pagemap.rst` describes both.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use super::layout::PAGE_BYTES;

/// `PAGE_IS_PRESENT` and `PAGE_IS_SWAPPED` categories of `PAGEMAP_SCAN` (uapi linux/fs.h).
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;

/// `struct page_region` of uapi linux/fs.h: pages `[start, end)` sharing `categories`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct pm_scan_arg` of uapi linux/fs.h (Linux 6.7).
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

const _: () = assert!(std::mem::size_of::<PageRegion>() == 24);
const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);

// The macro makes a public function it gives no doc comment.
#[allow(missing_docs)]
mod request {
    use super::PmScanArg;
    vmm_sys_util::ioctl_iowr_nr!(PAGEMAP_SCAN, b'f' as u32, 16, PmScanArg);
}
use request::PAGEMAP_SCAN;

/// Runs returned per `PAGEMAP_SCAN` call; the walk resumes where a full vector stopped.
const SCAN_VEC_RUNS: usize = 512;
/// Pagemap entries read per `pread` on kernels without `PAGEMAP_SCAN`.
const ENTRY_CHUNK_PAGES: u64 = 32 * 1024;
const ENTRY_BYTES: u64 = 8;
/// Bits of a pagemap entry (Documentation/admin-guide/mm/pagemap.rst).
const ENTRY_PRESENT: u64 = 1 << 63;
const ENTRY_SWAPPED: u64 = 1 << 62;
const ENTRY_FILE_OR_SHARED: u64 = 1 << 61;

/// `/proc/self/pagemap`, opened once.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
    /// Cleared for good once the kernel refuses `PAGEMAP_SCAN`.
    scan_ioctl: AtomicBool,
}

impl Pagemap {
    /// Opens `/proc/self/pagemap`.
    pub fn open() -> std::io::Result<Pagemap> {
        let file = File::open("/proc/self/pagemap")?;
        Ok(Pagemap { file, scan_ioctl: AtomicBool::new(true) })
    }

    /// Calls `mark(i)` for every page `i` in `0..pages` of the range at host address `addr`
    /// (page-aligned, private anonymous memory) that was never touched.
    pub fn untouched(&self, addr: usize, pages: u64, mark: impl FnMut(u64)) -> std::io::Result<()> {
        self.untouched_with(addr, pages, self.scan_ioctl.load(Ordering::Relaxed), mark)
    }

    fn untouched_with(
        &self,
        addr: usize,
        pages: u64,
        use_scan: bool,
        mut mark: impl FnMut(u64),
    ) -> std::io::Result<()> {
        if use_scan {
            match self.scan_touched(addr, pages, &mut mark) {
                Ok(()) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
                    self.scan_ioctl.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        self.read_entries(addr, pages, mark)
    }

    /// `PAGEMAP_SCAN` for the touched runs; marks the gaps between them.
    fn scan_touched(
        &self,
        addr: usize,
        pages: u64,
        mark: &mut impl FnMut(u64),
    ) -> std::io::Result<()> {
        let (start, end) = (addr as u64, addr as u64 + pages * PAGE_BYTES);
        let mut runs = [PageRegion::default(); SCAN_VEC_RUNS];
        let (mut at, mut next_untouched) = (start, start);
        while at < end {
            let arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                start: at,
                end,
                vec: runs.as_mut_ptr() as u64,
                vec_len: SCAN_VEC_RUNS as u64,
                category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                ..PmScanArg::default()
            };
            // SAFETY: `arg` is a valid pm_scan_arg whose output vector `runs` holds `vec_len`
            // entries and outlives the call; the kernel writes at most that many runs and
            // `walk_end`, and reads nothing else from this process's memory.
            let n = unsafe {
                libc::ioctl(self.file.as_raw_fd(), PAGEMAP_SCAN(), &arg as *const PmScanArg)
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for run in &runs[..n as usize] {
                let (run_start, run_end) = (run.start.max(start), run.end.min(end));
                mark_span(next_untouched, run_start, start, mark);
                next_untouched = next_untouched.max(run_end);
            }
            // A walk that stops short (full vector) resumes at walk_end.
            if arg.walk_end <= at {
                return Err(std::io::Error::other("PAGEMAP_SCAN made no progress"));
            }
            at = arg.walk_end;
        }
        mark_span(next_untouched, end, start, mark);
        Ok(())
    }

    /// One 8-byte entry per page (kernels before 6.7).
    fn read_entries(
        &self,
        addr: usize,
        pages: u64,
        mut mark: impl FnMut(u64),
    ) -> std::io::Result<()> {
        let vpn_first = addr as u64 / PAGE_BYTES;
        let mut entries = vec![0u8; (ENTRY_CHUNK_PAGES.min(pages) * ENTRY_BYTES) as usize];
        let mut done = 0u64;
        while done < pages {
            let n = (pages - done).min(ENTRY_CHUNK_PAGES);
            let buf = &mut entries[..(n * ENTRY_BYTES) as usize];
            self.file.read_exact_at(buf, (vpn_first + done) * ENTRY_BYTES)?;
            for (i, entry) in buf.chunks_exact(ENTRY_BYTES as usize).enumerate() {
                let bits = u64::from_ne_bytes(entry.try_into().unwrap_or([0xff; 8]));
                if bits & (ENTRY_PRESENT | ENTRY_SWAPPED | ENTRY_FILE_OR_SHARED) == 0 {
                    mark(done + i as u64);
                }
            }
            done += n;
        }
        Ok(())
    }
}

/// Marks the pages of `[from, to)` (host addresses) as page indices from `base`.
fn mark_span(from: u64, to: u64, base: u64, mark: &mut impl FnMut(u64)) {
    let mut at = from;
    while at < to {
        mark((at - base) / PAGE_BYTES);
        at += PAGE_BYTES;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest region of `pages` pages, without huge pages (one touch would make 512 present).
    fn region(pages: u64) -> crate::vm::GuestRegion {
        let slot = crate::vm::layout::SlotLayout {
            slot: 0,
            guest_phys: 0,
            size_bytes: pages * PAGE_BYTES,
        };
        let region = crate::vm::GuestRegion::map(&slot).expect("mmap");
        // SAFETY: the range is the region's own mapping; advice changes no contents.
        unsafe { libc::madvise(region.as_ptr().cast(), region.len(), libc::MADV_NOHUGEPAGE) };
        region
    }

    fn collect(pm: &Pagemap, addr: usize, pages: u64, scan: bool) -> Vec<u64> {
        let mut out = Vec::new();
        pm.untouched_with(addr, pages, scan, |p| out.push(p)).expect("pagemap");
        out
    }

    #[test]
    fn scan_and_entries_agree_with_what_was_touched() {
        const PAGES: usize = 3000; // more touched runs than one scan vector holds
        let mem = region(PAGES as u64);
        let mut expected = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for p in 0..PAGES {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // SAFETY: page p is inside the mapping; nothing else uses it.
            unsafe {
                match x % 3 {
                    0 => mem.as_ptr().add(p * PAGE_BYTES as usize + 5).write_volatile(1),
                    // A read maps the shared zero page: present, so not untouched.
                    1 => drop(mem.as_ptr().add(p * PAGE_BYTES as usize).read_volatile()),
                    _ => expected.push(p as u64),
                }
            }
        }
        let pm = Pagemap::open().expect("open pagemap");
        let addr = mem.as_ptr() as usize;
        assert_eq!(collect(&pm, addr, PAGES as u64, false), expected, "entries");
        if pm.scan_ioctl.load(Ordering::Relaxed) {
            assert_eq!(collect(&pm, addr, PAGES as u64, true), expected, "PAGEMAP_SCAN");
        }
        // A sub-range: indices are relative to its start.
        let (from, count) = (1000u64, 700u64);
        let sub: Vec<u64> =
            expected.iter().filter(|&&p| p >= from && p < from + count).map(|p| p - from).collect();
        let sub_addr = addr + (from * PAGE_BYTES) as usize;
        assert_eq!(collect(&pm, sub_addr, count, true), sub, "sub-range");
    }
}
