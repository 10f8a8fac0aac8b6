//! Cross-thread wake-ups: an eventfd that other threads write and the ring keeps a READ on.
//!
//! [`Waker`] is the Send + Clone handle other threads hold; [`Armed`] is the ring's side: the
//! eventfd, the 8-byte buffer the kernel reads the counter into, and the record's `user_data`.

use io_uring::{opcode, squeue, types};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

/// Wakes a ring from another thread: each [`Waker::wake`] makes a completion with the tag given
/// to [`crate::ring::Ring::waker`] appear (several wakes before the ring looks may merge).
#[derive(Clone, Debug)]
pub struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    /// Adds 1 to the eventfd counter.
    pub fn wake(&self) -> io::Result<()> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local array to an eventfd this handle keeps open.
        let ret = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if ret == 8 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        // A saturated counter already guarantees a wake-up.
        if err.kind() == io::ErrorKind::WouldBlock {
            return Ok(());
        }
        Err(err)
    }
}

/// The ring's side of the waker.
#[derive(Debug)]
pub(crate) struct Armed {
    fd: Arc<OwnedFd>,
    /// Heap-allocated so its address is stable while the kernel writes into it.
    counter: Box<[u8; 8]>,
    user_data: u64,
    active: bool,
}

impl Armed {
    /// Creates the eventfd (non-blocking, so io_uring polls it instead of blocking a worker).
    pub(crate) fn new() -> io::Result<Armed> {
        // SAFETY: eventfd(2) with constant flags; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: eventfd returned a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Armed { fd: Arc::new(fd), counter: Box::new([0; 8]), user_data: 0, active: false })
    }

    pub(crate) fn handle(&self) -> Waker {
        Waker { fd: self.fd.clone() }
    }

    pub(crate) fn activate(&mut self, user_data: u64) {
        self.user_data = user_data;
        self.active = true;
    }

    pub(crate) fn disarm(&mut self) {
        self.active = false;
    }

    pub(crate) fn is_active(&self) -> bool {
        self.active
    }

    /// The READ SQE on the eventfd into the counter buffer.
    pub(crate) fn read_entry(&mut self) -> squeue::Entry {
        opcode::Read::new(
            types::Fd(self.fd.as_raw_fd()),
            self.counter.as_mut_ptr(),
            self.counter.len() as u32,
        )
        .offset(u64::MAX)
        .build()
        .user_data(self.user_data)
    }
}
