//! Guest RAM: one anonymous mapping per KVM slot.
//!
//! Regions are created from the [`super::layout::Layout`] and handed to KVM by the VM. The
//! migration engines read and fill them through [`GuestRegion::as_ptr`] (or the slice helpers
//! while the vCPUs are paused).

use std::ptr::NonNull;

use super::layout::{SlotLayout, PAGE_BYTES};

/// Errors of guest memory set-up and access.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of a region failed.
    #[error("mmap of {size_bytes} bytes for slot {slot} failed: {source}")]
    Mmap {
        /// KVM slot.
        slot: u32,
        /// Requested length.
        size_bytes: u64,
        /// OS error.
        source: std::io::Error,
    },
    /// A guest physical range is not inside one region.
    #[error("guest range {gpa:#x}+{len_bytes} is not inside guest RAM")]
    OutOfRange {
        /// First guest physical address.
        gpa: u64,
        /// Length, bytes.
        len_bytes: u64,
    },
}

/// One KVM memory slot and its host mapping.
#[derive(Debug)]
pub struct GuestRegion {
    /// KVM slot number.
    pub slot: u32,
    /// First guest physical address.
    pub guest_phys: u64,
    /// Length, bytes (a multiple of 4 KiB).
    pub size_bytes: u64,
    host: NonNull<u8>,
}

// SAFETY: the mapping is plain memory owned by this value; concurrent access is governed by the
// documented rules of the accessors (raw pointer users synchronise themselves).
unsafe impl Send for GuestRegion {}
// SAFETY: as above; shared access only hands out raw pointers or requires paused vCPUs.
unsafe impl Sync for GuestRegion {}

impl GuestRegion {
    /// Maps `MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE` memory for `slot`.
    pub(crate) fn map(slot: &SlotLayout) -> Result<GuestRegion, MemoryError> {
        let len = usize::try_from(slot.size_bytes).map_err(|_| MemoryError::Mmap {
            slot: slot.slot,
            size_bytes: slot.size_bytes,
            source: std::io::Error::from_raw_os_error(libc::EOVERFLOW),
        })?;
        // SAFETY: anonymous mapping with no address hint; the result is checked below and owned
        // by the returned value, which unmaps it on drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(MemoryError::Mmap {
                slot: slot.slot,
                size_bytes: slot.size_bytes,
                source: std::io::Error::last_os_error(),
            });
        }
        let host = NonNull::new(p.cast::<u8>()).ok_or_else(|| MemoryError::Mmap {
            slot: slot.slot,
            size_bytes: slot.size_bytes,
            source: std::io::Error::from_raw_os_error(libc::EFAULT),
        })?;
        Ok(GuestRegion {
            slot: slot.slot,
            guest_phys: slot.guest_phys,
            size_bytes: slot.size_bytes,
            host,
        })
    }

    /// Host address of the first byte. Valid while the `Vm` lives; the guest may write it
    /// concurrently while vCPUs run.
    pub fn as_ptr(&self) -> *mut u8 {
        self.host.as_ptr()
    }

    /// Length, bytes, as `usize`.
    pub fn len(&self) -> usize {
        // Checked to fit in `map`.
        self.size_bytes as usize
    }

    /// Always false: regions are never empty.
    pub fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }

    /// First guest page number (guest_phys / 4096).
    pub fn first_page(&self) -> u64 {
        self.guest_phys / PAGE_BYTES
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> u64 {
        self.size_bytes / PAGE_BYTES
    }

    /// Whether guest physical address `gpa` is inside this region.
    pub fn contains(&self, gpa: u64) -> bool {
        gpa >= self.guest_phys && gpa - self.guest_phys < self.size_bytes
    }

    /// The region's bytes.
    ///
    /// # Safety
    /// No vCPU may run and nothing else may write the region while the slice lives (pause the
    /// VM first). On an incoming VM registered with userfaultfd, reading a missing page blocks
    /// until the page is placed.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes long and lives as long as `self`; the caller
        // guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(self.host.as_ptr(), self.len()) }
    }

    /// The region's bytes, writable.
    ///
    /// # Safety
    /// As [`GuestRegion::as_slice`], and no other reference to the region may exist. Writes made
    /// through it after `Vm::new` are not in the VMM dirty set; use `Vm::write_guest` for that.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: as above, and the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.host.as_ptr(), self.len()) }
    }

    /// Calls `mark(i)` for every page `i` of this region that this process has never touched: neither present nor swapped in `/proc/self/pagemap`.
    ///
    /// The mapping is private and anonymous, so such a page reads as zero. Knowing this lets
    /// the source skip reading untouched memory, whose first read would fault in the zero page
    /// (about 90 ms per GiB). A page may be written right after it was reported, so the caller
    /// must have dirty logging on before calling, as the source does.
    pub fn untouched_pages(&self, mut mark: impl FnMut(u64)) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let pagemap = std::fs::File::open("/proc/self/pagemap")?;
        let vpn_first = self.host.as_ptr() as u64 / PAGE_BYTES;
        let mut entries = vec![0u8; PAGEMAP_CHUNK_PAGES * PAGEMAP_ENTRY_BYTES];
        let mut done = 0u64;
        while done < self.pages() {
            let n = (self.pages() - done).min(PAGEMAP_CHUNK_PAGES as u64) as usize;
            let buf = &mut entries[..n * PAGEMAP_ENTRY_BYTES];
            pagemap.read_exact_at(buf, (vpn_first + done) * PAGEMAP_ENTRY_BYTES as u64)?;
            for (i, entry) in buf.chunks_exact(PAGEMAP_ENTRY_BYTES).enumerate() {
                let bits = u64::from_ne_bytes(entry.try_into().unwrap_or([0xff; 8]));
                if bits & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED | PAGEMAP_FILE_OR_SHARED) == 0 {
                    mark(done + i as u64);
                }
            }
            done += n as u64;
        }
        Ok(())
    }
}

/// Pagemap entries read per `pread` (2 MiB of entries covers 1 GiB of guest).
const PAGEMAP_CHUNK_PAGES: usize = 32 * 1024;
const PAGEMAP_ENTRY_BYTES: usize = 8;
/// Bits of a pagemap entry (Documentation/admin-guide/mm/pagemap.rst).
const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_SWAPPED: u64 = 1 << 62;
const PAGEMAP_FILE_OR_SHARED: u64 = 1 << 61;

impl Drop for GuestRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `map` with this length and is not used after drop.
        unsafe {
            libc::munmap(self.host.as_ptr().cast(), self.len());
        }
    }
}

/// Finds the region holding `[gpa, gpa + len_bytes)` and the offset into it.
pub(crate) fn locate(
    regions: &[GuestRegion],
    gpa: u64,
    len_bytes: u64,
) -> Result<(&GuestRegion, usize), MemoryError> {
    regions
        .iter()
        .find(|r| r.contains(gpa) && gpa - r.guest_phys + len_bytes <= r.size_bytes)
        .map(|r| (r, (gpa - r.guest_phys) as usize))
        .ok_or(MemoryError::OutOfRange { gpa, len_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn untouched(region: &GuestRegion) -> Vec<u64> {
        let mut pages = Vec::new();
        region.untouched_pages(|p| pages.push(p)).expect("pagemap");
        pages
    }

    #[test]
    fn untouched_pages_are_exactly_those_never_read_or_written() {
        let layout = SlotLayout { slot: 0, guest_phys: 0, size_bytes: 64 * PAGE_BYTES };
        let region = GuestRegion::map(&layout).expect("mmap");
        assert_eq!(untouched(&region), (0..64).collect::<Vec<_>>());
        // SAFETY: the region is 64 pages long and nothing else uses it.
        unsafe {
            region.as_ptr().add(3 * PAGE_BYTES as usize).write_volatile(1);
            region.as_ptr().add(40 * PAGE_BYTES as usize + 17).write_volatile(2);
            // A read maps the shared zero page: the page is then present, so it is scanned.
            let _ = region.as_ptr().add(9 * PAGE_BYTES as usize).read_volatile();
        }
        let expected: Vec<u64> = (0..64).filter(|p| ![3, 9, 40].contains(p)).collect();
        assert_eq!(untouched(&region), expected);
    }
}
