//! The destination side of a migration.
//!
//! For now this holds the thin userfaultfd wrapper ([`uffd`]): the destination registers guest
//! memory with a userfaultfd in MISSING mode, reads fault messages (through the io_uring driver
//! in [`crate::ring`]) and places pages with `UFFDIO_COPY` / `UFFDIO_ZEROPAGE`. The receiver
//! state machine that decides *what* to place lands here later.

pub mod sink;
pub mod uffd;
