//! The destination's real [`PageSink`]: pages placed with userfaultfd.
//!
//! The engine decides *what* to place; a [`PageSink`] does it. [`UffdSink`] places pages into
//! userfaultfd-registered guest memory (every mode: a pre-copy that does not converge finishes
//! post-copy, so the guest may be running and blocked on a missing page). The simulator has
//! its own sink over an in-process array.

use super::uffd::{Placed, Uffd, UffdError};
use crate::memory::{Layout, PAGE_SIZE};
use crate::ports::{host_addr_of, DestVm, EmbedError, HostRegion, MigratableVm};
pub use crate::ports::{PageSink, SinkError};

/// Host address of `first`, checked.
fn addr(regions: &[HostRegion], layout: &Layout, first: u64) -> Result<usize, SinkError> {
    host_addr_of(regions, layout, first).ok_or(SinkError::NoSuchPage { page: first })
}

/// Writes pages into memory with a plain copy.
fn write_pages(
    regions: &[HostRegion],
    layout: &Layout,
    first: u64,
    data: &[u8],
) -> Result<(), SinkError> {
    let dst = addr(regions, layout, first)?;
    let count = data.len().div_ceil(PAGE_SIZE) as u64;
    if layout.pages_left_in_region(first) < count {
        return Err(SinkError::NoSuchPage { page: first + count - 1 });
    }
    // SAFETY: `dst..dst+len` lies inside one mapped guest region (checked above against the
    // layout), and nothing else in this process holds a Rust reference to guest memory.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst as *mut u8, data.len()) };
    Ok(())
}

/// madvise(MADV_DONTNEED) over a run of pages.
fn drop_pages(
    regions: &[HostRegion],
    layout: &Layout,
    first: u64,
    count: u64,
) -> Result<(), SinkError> {
    let start = addr(regions, layout, first)?;
    // SAFETY: the range is inside a private anonymous guest mapping owned by this process;
    // DONTNEED only drops its contents (later reads see zero or fault to the userfaultfd).
    let ret = unsafe {
        libc::madvise(start as *mut libc::c_void, count as usize * PAGE_SIZE, libc::MADV_DONTNEED)
    };
    if ret != 0 {
        return Err(SinkError::Discard { first, count, source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// Places pages with `UFFDIO_COPY` / `UFFDIO_ZEROPAGE` into userfaultfd-registered memory.
pub struct UffdSink<'a> {
    uffd: &'a Uffd,
    regions: &'a [HostRegion],
    layout: &'a Layout,
}

impl std::fmt::Debug for UffdSink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UffdSink").field("regions", &self.regions).finish()
    }
}

/// Attempts before an EAGAIN from UFFDIO_COPY becomes an error.
const MAX_EAGAIN_RETRIES: u32 = 1000;

impl<'a> UffdSink<'a> {
    /// A sink over `regions`, which must all be registered with `uffd` (MISSING mode).
    pub fn new(uffd: &'a Uffd, regions: &'a [HostRegion], layout: &'a Layout) -> Self {
        Self { uffd, regions, layout }
    }

    /// Runs `op(offset_bytes)` until the whole run is placed, waking on EEXIST.
    fn place_with(
        &mut self,
        first: u64,
        len_bytes: u64,
        mut op: impl FnMut(u64, u64) -> Result<Placed, UffdError>,
    ) -> Result<(), SinkError> {
        let base = addr(self.regions, self.layout, first)? as u64;
        let count = len_bytes / PAGE_SIZE as u64;
        let mut done = 0u64;
        let mut tries = 0u32;
        while done < len_bytes {
            let placed = op(done, len_bytes - done).map_err(|source| SinkError::Place {
                op: "userfaultfd",
                first,
                count,
                source: Box::new(source),
            })?;
            match placed {
                Placed::Done { len_bytes: n } => done += n,
                Placed::AlreadyPresent => {
                    // Someone placed this page first: never place it twice, but never leave a
                    // waiter asleep either.
                    self.uffd.wake(base + done, PAGE_SIZE as u64).map_err(|source| {
                        SinkError::Place {
                            op: "userfaultfd",
                            first,
                            count,
                            source: Box::new(source),
                        }
                    })?;
                    done += PAGE_SIZE as u64;
                }
                Placed::Retry { done_bytes } => {
                    done += done_bytes;
                    tries += 1;
                    if tries > MAX_EAGAIN_RETRIES {
                        return Err(SinkError::Retries {
                            page: first + done / PAGE_SIZE as u64,
                            tries,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

impl PageSink for UffdSink<'_> {
    fn place(&mut self, first: u64, data: &[u8]) -> Result<(), SinkError> {
        let base = addr(self.regions, self.layout, first)? as u64;
        let uffd = self.uffd;
        self.place_with(first, data.len() as u64, |off, _| {
            uffd.copy_from_slice(base + off, &data[off as usize..], false)
        })
    }

    fn place_zero(&mut self, first: u64, count: u64) -> Result<(), SinkError> {
        let base = addr(self.regions, self.layout, first)? as u64;
        let uffd = self.uffd;
        self.place_with(first, count * PAGE_SIZE as u64, |off, left| {
            uffd.zeropage(base + off, left, false)
        })
    }

    fn overwrite(&mut self, first: u64, data: &[u8]) -> Result<(), SinkError> {
        write_pages(self.regions, self.layout, first, data)
    }

    fn discard(&mut self, first: u64, count: u64) -> Result<(), SinkError> {
        drop_pages(self.regions, self.layout, first, count)
    }

    fn wake(&mut self, first: u64, count: u64) -> Result<(), SinkError> {
        let base = addr(self.regions, self.layout, first)? as u64;
        self.uffd.wake(base, count * PAGE_SIZE as u64).map_err(|source| SinkError::Place {
            op: "userfaultfd",
            first,
            count,
            source: Box::new(source),
        })
    }
}

/// The destination's real [`DestVm`]: pages through userfaultfd, state and resume through the
/// VMM.
pub struct UffdVm<'a> {
    sink: UffdSink<'a>,
    vm: &'a mut dyn MigratableVm,
}

impl<'a> UffdVm<'a> {
    /// The port over `vm`, whose memory `sink` places into.
    pub fn new(sink: UffdSink<'a>, vm: &'a mut dyn MigratableVm) -> Self {
        Self { sink, vm }
    }
}

impl PageSink for UffdVm<'_> {
    fn place(&mut self, first: u64, data: &[u8]) -> Result<(), SinkError> {
        self.sink.place(first, data)
    }
    fn place_zero(&mut self, first: u64, count: u64) -> Result<(), SinkError> {
        self.sink.place_zero(first, count)
    }
    fn overwrite(&mut self, first: u64, data: &[u8]) -> Result<(), SinkError> {
        self.sink.overwrite(first, data)
    }
    fn discard(&mut self, first: u64, count: u64) -> Result<(), SinkError> {
        self.sink.discard(first, count)
    }
    fn wake(&mut self, first: u64, count: u64) -> Result<(), SinkError> {
        self.sink.wake(first, count)
    }
}

impl DestVm for UffdVm<'_> {
    fn restore_state(&mut self, blob: &[u8]) -> Result<(), EmbedError> {
        self.vm.restore_state(blob)
    }
    fn resume(&mut self) -> Result<(), EmbedError> {
        self.vm.resume()
    }
}
