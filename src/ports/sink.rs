//! Where the destination engine puts pages: the [`PageSink`] port.
//!
//! The engine decides *what* to place; a sink does it. The destination's driver places pages
//! with userfaultfd (`dest::sink::UffdSink`); the simulator writes an in-process array. The
//! error type names what failed without tying the port to userfaultfd.

/// Errors from placing pages.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A page index past the guest's memory.
    #[error("page {page} is outside guest memory")]
    NoSuchPage {
        /// The page.
        page: u64,
    },
    /// The sink's placing operation failed (for userfaultfd: UFFDIO_COPY, ZEROPAGE or WAKE).
    #[error("placing pages {first}..{first}+{count} ({op}): {source}")]
    Place {
        /// The operation that failed.
        op: &'static str,
        /// First page.
        first: u64,
        /// Page count.
        count: u64,
        /// The sink's own error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Dropping stale pages (madvise(MADV_DONTNEED) for a real VM) failed.
    #[error("discarding pages {first}..{first}+{count}: {source}")]
    Discard {
        /// First page.
        first: u64,
        /// Page count.
        count: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// The placing operation kept asking to be retried.
    #[error("placing page {page}: the mapping kept changing (EAGAIN {tries} times)")]
    Retries {
        /// The page.
        page: u64,
        /// Attempts made.
        tries: u32,
    },
}

/// Places pages into guest memory. Page indices are global (see [`crate::memory::Layout`]); a
/// run never crosses a region boundary.
pub trait PageSink {
    /// Places `data.len() / 4096` missing pages starting at `first`, waking any waiter.
    fn place(&mut self, first: u64, data: &[u8]) -> Result<(), SinkError>;
    /// Places `count` missing zero pages starting at `first`, waking any waiter.
    fn place_zero(&mut self, first: u64, count: u64) -> Result<(), SinkError>;
    /// Rewrites pages that are already present (only before the guest runs here).
    fn overwrite(&mut self, first: u64, data: &[u8]) -> Result<(), SinkError>;
    /// Drops present pages so that the next touch faults again (stale pre-copy pages).
    fn discard(&mut self, first: u64, count: u64) -> Result<(), SinkError>;
    /// Wakes threads waiting on pages that are already present.
    fn wake(&mut self, first: u64, count: u64) -> Result<(), SinkError>;
}
