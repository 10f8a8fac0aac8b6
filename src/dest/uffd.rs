//! Thin userfaultfd wrapper: the kernel ABI, one function per ioctl, no policy.
//!
//! Data enters as a guest-memory range handed to [`Uffd::register`] and as raw bytes read from
//! the userfaultfd (by the io_uring driver or a plain `read`), which [`parse_messages`] turns
//! into [`UffdEvent`]s. Data leaves as pages placed with [`Uffd::copy`] / [`Uffd::zeropage`],
//! whose outcome ([`Placed`]) keeps "already present" and "mapping changing" apart from real
//! failures, because the engine must wake the waiter in the first case and retry in the second.
//!
//! The structs and ioctl numbers are defined here rather than taken from the `userfaultfd`
//! crate: that crate needs libclang at build time and keeps its event parser private. They
//! follow `include/uapi/linux/userfaultfd.h`; the numbers are computed with the `_IOC` formula
//! and tested against the values the C headers give.
//!
//! Kernel documentation: <https://docs.kernel.org/admin-guide/mm/userfaultfd.html>.

use std::fs::OpenOptions;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

/// The ioctl type byte of userfaultfd (`UFFDIO`).
const UFFDIO: u64 = 0xAA;
/// The API version this wrapper speaks (`UFFD_API`).
pub const UFFD_API: u64 = 0xAA;

const IOC_NONE: u64 = 0;
const IOC_READ: u64 = 2;
const IOC_READ_WRITE: u64 = 3;

/// The kernel's `_IOC(dir, type, nr, size)` formula (asm-generic/ioctl.h).
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}

/// `UFFDIO_API`: `_IOWR(UFFDIO, 0x3F, struct uffdio_api)`.
pub const UFFDIO_API_IOCTL: u64 = ioc(IOC_READ_WRITE, UFFDIO, 0x3F, size_of::<UffdioApi>());
/// `UFFDIO_REGISTER`: `_IOWR(UFFDIO, 0x00, struct uffdio_register)`.
pub const UFFDIO_REGISTER_IOCTL: u64 =
    ioc(IOC_READ_WRITE, UFFDIO, 0x00, size_of::<UffdioRegister>());
/// `UFFDIO_UNREGISTER`: `_IOR(UFFDIO, 0x01, struct uffdio_range)`.
pub const UFFDIO_UNREGISTER_IOCTL: u64 = ioc(IOC_READ, UFFDIO, 0x01, size_of::<UffdioRange>());
/// `UFFDIO_WAKE`: `_IOR(UFFDIO, 0x02, struct uffdio_range)`.
pub const UFFDIO_WAKE_IOCTL: u64 = ioc(IOC_READ, UFFDIO, 0x02, size_of::<UffdioRange>());
/// `UFFDIO_COPY`: `_IOWR(UFFDIO, 0x03, struct uffdio_copy)`.
pub const UFFDIO_COPY_IOCTL: u64 = ioc(IOC_READ_WRITE, UFFDIO, 0x03, size_of::<UffdioCopy>());
/// `UFFDIO_ZEROPAGE`: `_IOWR(UFFDIO, 0x04, struct uffdio_zeropage)`.
pub const UFFDIO_ZEROPAGE_IOCTL: u64 =
    ioc(IOC_READ_WRITE, UFFDIO, 0x04, size_of::<UffdioZeropage>());
/// `USERFAULTFD_IOC_NEW`: `_IO(0xAA, 0x00)` on `/dev/userfaultfd`.
pub const USERFAULTFD_IOC_NEW: u64 = ioc(IOC_NONE, UFFDIO, 0x00, 0);

/// `UFFD_FEATURE_THREAD_ID`: fault messages carry the faulting thread id.
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
/// `UFFD_FEATURE_EXACT_ADDRESS`: fault addresses are not rounded down to the page.
pub const UFFD_FEATURE_EXACT_ADDRESS: u64 = 1 << 11;

/// `UFFDIO_REGISTER_MODE_MISSING`: fault on pages that have never been populated.
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
/// `UFFDIO_COPY_MODE_DONTWAKE` (same bit for `UFFDIO_ZEROPAGE_MODE_DONTWAKE`).
const MODE_DONTWAKE: u64 = 1 << 0;

const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_FORK: u8 = 0x13;
const UFFD_EVENT_REMAP: u8 = 0x14;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_EVENT_UNMAP: u8 = 0x16;

/// `UFFD_PAGEFAULT_FLAG_WRITE`.
pub const PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
/// `UFFD_PAGEFAULT_FLAG_WP`.
pub const PAGEFAULT_FLAG_WP: u64 = 1 << 1;
/// `UFFD_PAGEFAULT_FLAG_MINOR`.
pub const PAGEFAULT_FLAG_MINOR: u64 = 1 << 2;

/// `struct uffd_msg`: one message read from the userfaultfd.
///
/// The kernel's union `arg` is kept as three words; [`UffdMsg::event`] decodes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UffdMsg {
    /// `UFFD_EVENT_*`.
    pub event: u8,
    /// Reserved by the kernel.
    pub reserved1: u8,
    /// Reserved by the kernel.
    pub reserved2: u16,
    /// Reserved by the kernel.
    pub reserved3: u32,
    /// The union of per-event arguments, as raw words.
    pub arg: [u64; 3],
}

/// Size of one `struct uffd_msg`, the unit of every read from a userfaultfd.
pub const UFFD_MSG_LEN_BYTES: usize = 32;
const _: () = assert!(size_of::<UffdMsg>() == UFFD_MSG_LEN_BYTES);

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioApi {
    /// Requested API version (`UFFD_API`).
    pub api: u64,
    /// Requested features in, granted features out.
    pub features: u64,
    /// Bit mask of the ioctls available (out).
    pub ioctls: u64,
}
const _: () = assert!(size_of::<UffdioApi>() == 24);

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioRange {
    /// Start address (page aligned).
    pub start: u64,
    /// Length in bytes (page multiple).
    pub len: u64,
}
const _: () = assert!(size_of::<UffdioRange>() == 16);

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioRegister {
    /// The range to register.
    pub range: UffdioRange,
    /// `UFFDIO_REGISTER_MODE_*`.
    pub mode: u64,
    /// Ioctls available on the range (out).
    pub ioctls: u64,
}
const _: () = assert!(size_of::<UffdioRegister>() == 32);

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioCopy {
    /// Destination address in the registered range.
    pub dst: u64,
    /// Source address of the page contents.
    pub src: u64,
    /// Length in bytes.
    pub len: u64,
    /// `UFFDIO_COPY_MODE_*`.
    pub mode: u64,
    /// Bytes copied, or a negated errno (out).
    pub copy: i64,
}
const _: () = assert!(size_of::<UffdioCopy>() == 40);

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UffdioZeropage {
    /// The range to fill with zero pages.
    pub range: UffdioRange,
    /// `UFFDIO_ZEROPAGE_MODE_*`.
    pub mode: u64,
    /// Bytes zeroed, or a negated errno (out).
    pub zeropage: i64,
}
const _: () = assert!(size_of::<UffdioZeropage>() == 32);

/// Errors of the userfaultfd wrapper; each names the call and the range it concerned.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// Both `/dev/userfaultfd` and the `userfaultfd(2)` syscall failed.
    #[error("cannot create a userfaultfd: /dev/userfaultfd: {dev}; userfaultfd(2): {source} (root or vm.unprivileged_userfaultfd=1 needed)")]
    Open {
        /// Why `/dev/userfaultfd` failed.
        dev: io::Error,
        /// Why the syscall failed.
        source: io::Error,
    },
    /// `UFFDIO_API` failed.
    #[error("UFFDIO_API on fd {fd} with features {features:#x} failed: {source}")]
    Api {
        /// The userfaultfd.
        fd: RawFd,
        /// The features requested.
        features: u64,
        /// The OS error.
        source: io::Error,
    },
    /// `UFFDIO_REGISTER` failed.
    #[error("UFFDIO_REGISTER of {addr:#x}+{len_bytes:#x} failed: {source}")]
    Register {
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        len_bytes: u64,
        /// The OS error.
        source: io::Error,
    },
    /// `UFFDIO_UNREGISTER` failed.
    #[error("UFFDIO_UNREGISTER of {addr:#x}+{len_bytes:#x} failed: {source}")]
    Unregister {
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        len_bytes: u64,
        /// The OS error.
        source: io::Error,
    },
    /// `UFFDIO_COPY` failed (other than EEXIST / EAGAIN, which are [`Placed`] outcomes).
    #[error("UFFDIO_COPY to {dst:#x}+{len_bytes:#x} failed: {source}")]
    Copy {
        /// Destination address.
        dst: u64,
        /// Length.
        len_bytes: u64,
        /// The OS error.
        source: io::Error,
    },
    /// `UFFDIO_ZEROPAGE` failed (other than EEXIST / EAGAIN).
    #[error("UFFDIO_ZEROPAGE of {dst:#x}+{len_bytes:#x} failed: {source}")]
    Zeropage {
        /// Destination address.
        dst: u64,
        /// Length.
        len_bytes: u64,
        /// The OS error.
        source: io::Error,
    },
    /// `UFFDIO_WAKE` failed.
    #[error("UFFDIO_WAKE of {addr:#x}+{len_bytes:#x} failed: {source}")]
    Wake {
        /// Start of the range.
        addr: u64,
        /// Length.
        len_bytes: u64,
        /// The OS error.
        source: io::Error,
    },
    /// A plain `read(2)` of the userfaultfd failed.
    #[error("read of userfaultfd {fd} failed: {source}")]
    Read {
        /// The userfaultfd.
        fd: RawFd,
        /// The OS error.
        source: io::Error,
    },
}

/// Outcome of a page placement (`UFFDIO_COPY` / `UFFDIO_ZEROPAGE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// `len_bytes` were placed; waiters were woken unless `dontwake` was asked. Less than the
    /// requested length means a page inside the range was already present: the caller places
    /// the rest separately.
    Done {
        /// Bytes placed.
        len_bytes: u64,
    },
    /// EEXIST: the first page was already present (a fault answer raced a push). The caller
    /// must still wake the waiters ([`Uffd::wake`]); the kernel did not.
    AlreadyPresent,
    /// EAGAIN: the mapping is changing (or a partial copy was interrupted); `done_bytes` were
    /// placed, retry the rest.
    Retry {
        /// Bytes placed before the interruption.
        done_bytes: u64,
    },
}

/// A decoded userfaultfd message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UffdEvent {
    /// A thread (or KVM on behalf of a vCPU) touched a missing page.
    PageFault {
        /// Faulting address (page aligned unless `UFFD_FEATURE_EXACT_ADDRESS`).
        addr: u64,
        /// `PAGEFAULT_FLAG_*` bits.
        flags: u64,
        /// Faulting thread id, when `UFFD_FEATURE_THREAD_ID` was granted (else 0).
        thread_id: u32,
    },
    /// The process forked; `uffd` is the child's new userfaultfd.
    Fork {
        /// The new descriptor.
        uffd: u32,
    },
    /// `mremap` moved a registered range.
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Length.
        len_bytes: u64,
    },
    /// `madvise(DONTNEED/REMOVE)` dropped pages.
    Remove {
        /// Start of the range.
        start: u64,
        /// End of the range (exclusive).
        end: u64,
    },
    /// `munmap` removed a registered range.
    Unmap {
        /// Start of the range.
        start: u64,
        /// End of the range (exclusive).
        end: u64,
    },
    /// An event kind this wrapper does not know; kept so the caller can log it.
    Unknown {
        /// The raw `event` byte.
        event: u8,
    },
}

impl UffdMsg {
    /// Builds a message from exactly [`UFFD_MSG_LEN_BYTES`] bytes in native byte order.
    pub fn from_bytes(bytes: &[u8; UFFD_MSG_LEN_BYTES]) -> UffdMsg {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[8 + 8 * i..16 + 8 * i]);
            u64::from_ne_bytes(w)
        };
        UffdMsg {
            event: bytes[0],
            reserved1: bytes[1],
            reserved2: u16::from_ne_bytes([bytes[2], bytes[3]]),
            reserved3: u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            arg: [word(0), word(1), word(2)],
        }
    }

    /// Decodes the union according to the event kind.
    pub fn event(&self) -> UffdEvent {
        let [a0, a1, a2] = self.arg;
        match self.event {
            // uffd_msg.arg.pagefault: flags, address, feat.ptid (low half of the third word).
            UFFD_EVENT_PAGEFAULT => {
                UffdEvent::PageFault { addr: a1, flags: a0, thread_id: (a2 & 0xFFFF_FFFF) as u32 }
            }
            UFFD_EVENT_FORK => UffdEvent::Fork { uffd: (a0 & 0xFFFF_FFFF) as u32 },
            UFFD_EVENT_REMAP => UffdEvent::Remap { from: a0, to: a1, len_bytes: a2 },
            UFFD_EVENT_REMOVE => UffdEvent::Remove { start: a0, end: a1 },
            UFFD_EVENT_UNMAP => UffdEvent::Unmap { start: a0, end: a1 },
            event => UffdEvent::Unknown { event },
        }
    }
}

/// Decodes every whole message in `bytes` (a read returns a multiple of 32 bytes; a trailing
/// partial message, which the kernel never produces, is ignored).
pub fn parse_messages(bytes: &[u8]) -> impl Iterator<Item = UffdEvent> + '_ {
    bytes.chunks_exact(UFFD_MSG_LEN_BYTES).map(|chunk| {
        let mut msg = [0u8; UFFD_MSG_LEN_BYTES];
        msg.copy_from_slice(chunk);
        UffdMsg::from_bytes(&msg).event()
    })
}

/// Features and ioctls granted by `UFFDIO_API`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiInfo {
    /// Granted `UFFD_FEATURE_*` bits.
    pub features: u64,
    /// Bit mask of available ioctls (bit n = ioctl number n).
    pub ioctls: u64,
}

/// An open userfaultfd (O_CLOEXEC | O_NONBLOCK, kernel-mode faults allowed).
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Converts an ioctl's -1 return into the errno.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Uffd {
    /// Opens a userfaultfd with O_CLOEXEC | O_NONBLOCK, first through `/dev/userfaultfd`
    /// (`USERFAULTFD_IOC_NEW`), then through the `userfaultfd(2)` syscall.
    ///
    /// `UFFD_USER_MODE_ONLY` is deliberately NOT set: KVM touches guest memory from kernel mode,
    /// and a user-mode-only uffd turns those accesses into bogus MMIO exits. The fd is
    /// non-blocking because io_uring reads of a blocking uffd fail with EINTR at once.
    ///
    /// See <https://docs.kernel.org/admin-guide/mm/userfaultfd.html#api>.
    pub fn open() -> Result<Uffd, UffdError> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        let dev = match Self::open_dev(flags) {
            Ok(uffd) => return Ok(uffd),
            Err(e) => e,
        };
        // SAFETY: userfaultfd(2) takes one int flags argument and returns a new fd or -1.
        let ret = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if ret < 0 {
            return Err(UffdError::Open { dev, source: io::Error::last_os_error() });
        }
        // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(ret as RawFd) };
        Ok(Uffd { fd })
    }

    fn open_dev(flags: libc::c_int) -> io::Result<Uffd> {
        let dev = OpenOptions::new().read(true).write(true).open("/dev/userfaultfd")?;
        // SAFETY: USERFAULTFD_IOC_NEW takes the open flags as its integer argument and returns
        // a new descriptor; `dev` is a valid open fd for the duration of the call.
        let ret = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
        let raw = check(ret)?;
        // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Uffd { fd })
    }

    /// A userfaultfd the caller opened and on which it performed the `UFFDIO_API`
    /// handshake (a VMM that opens its own, for example to keep the capability out of this
    /// library's hands); it is closed when the returned value drops.
    pub fn from_owned_fd(fd: std::os::fd::OwnedFd) -> Uffd {
        Uffd { fd }
    }

    /// Opens a userfaultfd and performs the `UFFDIO_API` handshake asking for `wanted`
    /// features, restricted to what the kernel supports (learnt on a throw-away probe fd,
    /// because the handshake can be done only once per fd).
    pub fn open_with_features(wanted: u64) -> Result<(Uffd, ApiInfo), UffdError> {
        let probe = Uffd::open()?;
        let supported = probe.api(0)?.features;
        drop(probe);
        let uffd = Uffd::open()?;
        let info = uffd.api(wanted & supported)?;
        Ok((uffd, info))
    }

    /// `UFFDIO_API`: the handshake, once per fd, before any other ioctl.
    ///
    /// See <https://docs.kernel.org/admin-guide/mm/userfaultfd.html#api>.
    pub fn api(&self, features: u64) -> Result<ApiInfo, UffdError> {
        let mut arg = UffdioApi { api: UFFD_API, features, ioctls: 0 };
        // SAFETY: `arg` is a valid, writable uffdio_api that outlives the call.
        let ret = unsafe { libc::ioctl(self.as_raw_fd(), UFFDIO_API_IOCTL as _, &mut arg) };
        check(ret).map_err(|source| UffdError::Api { fd: self.as_raw_fd(), features, source })?;
        Ok(ApiInfo { features: arg.features, ioctls: arg.ioctls })
    }

    /// `UFFDIO_REGISTER` in MISSING mode: faults on never-populated pages of the range are
    /// reported to this fd. Returns the ioctls available on the range.
    ///
    /// See <https://docs.kernel.org/admin-guide/mm/userfaultfd.html#api>.
    pub fn register(&self, addr: u64, len_bytes: u64) -> Result<u64, UffdError> {
        let mut arg = UffdioRegister {
            range: UffdioRange { start: addr, len: len_bytes },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: `arg` is a valid, writable uffdio_register; the kernel validates the range.
        let ret = unsafe { libc::ioctl(self.as_raw_fd(), UFFDIO_REGISTER_IOCTL as _, &mut arg) };
        check(ret).map_err(|source| UffdError::Register { addr, len_bytes, source })?;
        Ok(arg.ioctls)
    }

    /// `UFFDIO_UNREGISTER`: stop tracking the range (waiters are woken).
    ///
    /// See <https://docs.kernel.org/admin-guide/mm/userfaultfd.html#api>.
    pub fn unregister(&self, addr: u64, len_bytes: u64) -> Result<(), UffdError> {
        let arg = UffdioRange { start: addr, len: len_bytes };
        // SAFETY: `arg` is a valid uffdio_range the kernel only reads.
        let ret = unsafe { libc::ioctl(self.as_raw_fd(), UFFDIO_UNREGISTER_IOCTL as _, &arg) };
        check(ret).map_err(|source| UffdError::Unregister { addr, len_bytes, source })?;
        Ok(())
    }

    /// `UFFDIO_COPY`: atomically fill `[dst, dst+len)` with the bytes at `src` and (unless
    /// `dontwake`) wake the threads waiting on it.
    ///
    /// # Safety
    /// `src` must point to `len_bytes` readable bytes for the duration of the call (the kernel
    /// reads them with copy_from_user, so a bad pointer is an EFAULT, but the caller must not
    /// pass memory it does not own).
    ///
    /// See <https://docs.kernel.org/admin-guide/mm/userfaultfd.html#resolving-userfaults>.
    pub unsafe fn copy(
        &self,
        dst: u64,
        src: *const u8,
        len_bytes: u64,
        dontwake: bool,
    ) -> Result<Placed, UffdError> {
        let mut arg = UffdioCopy {
            dst,
            src: src as u64,
            len: len_bytes,
            mode: if dontwake { MODE_DONTWAKE } else { 0 },
            copy: 0,
        };
        // SAFETY: `arg` is a valid, writable uffdio_copy; the caller vouches for `src`.
        let ret = unsafe { libc::ioctl(self.as_raw_fd(), UFFDIO_COPY_IOCTL as _, &mut arg) };
        placed(ret, arg.copy).map_err(|source| UffdError::Copy { dst, len_bytes, source })
    }

    /// Safe form of [`Uffd::copy`] taking the page contents as a slice.
    pub fn copy_from_slice(
        &self,
        dst: u64,
        src: &[u8],
        dontwake: bool,
    ) -> Result<Placed, UffdError> {
        // SAFETY: `src` is a live slice of exactly `src.len()` bytes.
        unsafe { self.copy(dst, src.as_ptr(), src.len() as u64, dontwake) }
    }

    /// `UFFDIO_ZEROPAGE`: map the zero page over `[dst, dst+len)` and (unless `dontwake`) wake
    /// the waiters.
    ///
    /// See <https://docs.kernel.org/admin-guide/mm/userfaultfd.html#resolving-userfaults>.
    pub fn zeropage(&self, dst: u64, len_bytes: u64, dontwake: bool) -> Result<Placed, UffdError> {
        let mut arg = UffdioZeropage {
            range: UffdioRange { start: dst, len: len_bytes },
            mode: if dontwake { MODE_DONTWAKE } else { 0 },
            zeropage: 0,
        };
        // SAFETY: `arg` is a valid, writable uffdio_zeropage.
        let ret = unsafe { libc::ioctl(self.as_raw_fd(), UFFDIO_ZEROPAGE_IOCTL as _, &mut arg) };
        placed(ret, arg.zeropage).map_err(|source| UffdError::Zeropage { dst, len_bytes, source })
    }

    /// `UFFDIO_WAKE`: wake the threads waiting on `[addr, addr+len)` (after a DONTWAKE copy
    /// or an EEXIST).
    ///
    /// See <https://docs.kernel.org/admin-guide/mm/userfaultfd.html#resolving-userfaults>.
    pub fn wake(&self, addr: u64, len_bytes: u64) -> Result<(), UffdError> {
        let arg = UffdioRange { start: addr, len: len_bytes };
        // SAFETY: `arg` is a valid uffdio_range the kernel only reads.
        let ret = unsafe { libc::ioctl(self.as_raw_fd(), UFFDIO_WAKE_IOCTL as _, &arg) };
        check(ret).map_err(|source| UffdError::Wake { addr, len_bytes, source })?;
        Ok(())
    }

    /// Plain non-blocking `read(2)` of messages into `buf` (for the plain-socket driver and
    /// tests; the event loop reads through io_uring). Returns 0 bytes when no message waits.
    pub fn read_messages(&self, buf: &mut [u8]) -> Result<usize, UffdError> {
        // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes.
        let ret = unsafe { libc::read(self.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if ret >= 0 {
            return Ok(ret as usize);
        }
        let source = io::Error::last_os_error();
        if source.kind() == io::ErrorKind::WouldBlock {
            return Ok(0);
        }
        Err(UffdError::Read { fd: self.as_raw_fd(), source })
    }

    /// Gives up ownership of the descriptor.
    pub fn into_raw_fd(self) -> RawFd {
        self.fd.into_raw_fd()
    }
}

/// Maps a copy/zeropage return (and the kernel's out field) to a [`Placed`] outcome.
fn placed(ret: libc::c_int, out: i64) -> io::Result<Placed> {
    if ret >= 0 {
        return Ok(Placed::Done { len_bytes: out.max(0) as u64 });
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EEXIST) => Ok(Placed::AlreadyPresent),
        Some(libc::EAGAIN) => Ok(Placed::Retry { done_bytes: out.max(0) as u64 }),
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_check::require_uffd;
    use std::time::{Duration, Instant};

    const PAGE: usize = 4096;

    /// An anonymous private mapping, unmapped on drop.
    struct Mapping {
        addr: *mut u8,
        len: usize,
    }
    // SAFETY: the mapping is plain memory; the tests synchronise access through uffd.
    unsafe impl Send for Mapping {}
    // SAFETY: as above.
    unsafe impl Sync for Mapping {}

    impl Mapping {
        fn new(len: usize) -> Mapping {
            // SAFETY: anonymous mapping with no address hint; result checked below.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(addr, libc::MAP_FAILED);
            Mapping { addr: addr.cast(), len }
        }
        fn base(&self) -> u64 {
            self.addr as u64
        }
        fn read_byte(&self, offset: usize) -> u8 {
            assert!(offset < self.len);
            // SAFETY: in bounds of a live mapping; may block on a uffd fault, which is the point.
            unsafe { std::ptr::read_volatile(self.addr.add(offset)) }
        }
    }
    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmapping exactly what `new` mapped.
            unsafe { libc::munmap(self.addr.cast(), self.len) };
        }
    }

    fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        n == 1
    }

    fn read_one_fault(uffd: &Uffd) -> UffdEvent {
        assert!(wait_readable(uffd.as_raw_fd(), Duration::from_secs(5)), "no fault message");
        let mut buf = [0u8; 4 * UFFD_MSG_LEN_BYTES];
        let n = uffd.read_messages(&mut buf).expect("read");
        assert_eq!(n % UFFD_MSG_LEN_BYTES, 0);
        let events: Vec<_> = parse_messages(&buf[..n]).collect();
        assert_eq!(events.len(), 1, "{events:?}");
        events[0]
    }

    #[test]
    fn ioctl_numbers_match_the_c_headers() {
        // Values printed by a C program including <linux/userfaultfd.h> on x86_64.
        assert_eq!(UFFDIO_API_IOCTL, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER_IOCTL, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER_IOCTL, 0x8010_aa01);
        assert_eq!(UFFDIO_WAKE_IOCTL, 0x8010_aa02);
        assert_eq!(UFFDIO_COPY_IOCTL, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE_IOCTL, 0xc020_aa04);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xaa00);
    }

    #[test]
    fn parses_every_event_kind() {
        let mut raw = [0u8; 2 * UFFD_MSG_LEN_BYTES];
        raw[0] = UFFD_EVENT_PAGEFAULT;
        raw[8..16].copy_from_slice(&PAGEFAULT_FLAG_WRITE.to_ne_bytes());
        raw[16..24].copy_from_slice(&0x7000_1000u64.to_ne_bytes());
        raw[24..28].copy_from_slice(&42u32.to_ne_bytes());
        raw[32] = UFFD_EVENT_REMOVE;
        raw[40..48].copy_from_slice(&0x1000u64.to_ne_bytes());
        raw[48..56].copy_from_slice(&0x3000u64.to_ne_bytes());
        let events: Vec<_> = parse_messages(&raw[..raw.len()]).collect();
        assert_eq!(
            events,
            vec![
                UffdEvent::PageFault {
                    addr: 0x7000_1000,
                    flags: PAGEFAULT_FLAG_WRITE,
                    thread_id: 42
                },
                UffdEvent::Remove { start: 0x1000, end: 0x3000 }
            ]
        );
        // A truncated trailing message is ignored, an unknown kind is reported as such.
        raw[0] = 0x77;
        let events: Vec<_> = parse_messages(&raw[..40]).collect();
        assert_eq!(events, vec![UffdEvent::Unknown { event: 0x77 }]);
    }

    #[test]
    fn fault_copy_eexist_and_zeropage() {
        if !require_uffd("fault_copy_eexist_and_zeropage") {
            return;
        }
        let (uffd, info) =
            Uffd::open_with_features(UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_EXACT_ADDRESS)
                .expect("open");
        assert_ne!(info.features & UFFD_FEATURE_THREAD_ID, 0, "thread id feature");
        let map = std::sync::Arc::new(Mapping::new(4 * PAGE));
        let ioctls = uffd.register(map.base(), 4 * PAGE as u64).expect("register");
        assert_ne!(ioctls & (1 << 0x03), 0, "UFFDIO_COPY available on the range");
        // Nothing pending yet: the non-blocking read reports no message.
        let mut empty = [0u8; UFFD_MSG_LEN_BYTES];
        assert_eq!(uffd.read_messages(&mut empty).expect("read"), 0);

        let reader = {
            let map = map.clone();
            std::thread::spawn(move || map.read_byte(PAGE + 123))
        };
        let started = Instant::now();
        let event = read_one_fault(&uffd);
        let UffdEvent::PageFault { addr, flags, thread_id } = event else {
            panic!("expected a page fault, got {event:?}");
        };
        assert_eq!(addr, map.base() + PAGE as u64 + 123, "exact address");
        assert_eq!(flags & PAGEFAULT_FLAG_WRITE, 0, "a read fault");
        assert_ne!(thread_id, 0);
        let page = vec![0x5Au8; PAGE];
        let page_addr = map.base() + PAGE as u64;
        let placed = uffd.copy_from_slice(page_addr, &page, false).expect("copy");
        assert_eq!(placed, Placed::Done { len_bytes: PAGE as u64 });
        assert_eq!(reader.join().expect("reader"), 0x5A);
        assert!(started.elapsed() < Duration::from_secs(5));

        // The same page again: EEXIST surfaces as AlreadyPresent, and wake is harmless.
        let again = uffd.copy_from_slice(page_addr, &page, false).expect("copy again");
        assert_eq!(again, Placed::AlreadyPresent);
        uffd.wake(page_addr, PAGE as u64).expect("wake");

        let zero_addr = map.base() + 2 * PAGE as u64;
        let zeroed = uffd.zeropage(zero_addr, PAGE as u64, false).expect("zeropage");
        assert_eq!(zeroed, Placed::Done { len_bytes: PAGE as u64 });
        assert_eq!(map.read_byte(2 * PAGE + 7), 0);
        assert_eq!(
            uffd.zeropage(zero_addr, PAGE as u64, false).expect("zeropage again"),
            Placed::AlreadyPresent
        );
        uffd.unregister(map.base(), 4 * PAGE as u64).expect("unregister");
        // Unregistered: a fresh page is an ordinary zero-filled anonymous page.
        assert_eq!(map.read_byte(3 * PAGE), 0);
    }

    #[test]
    fn register_rejects_unaligned_range() {
        if !require_uffd("register_rejects_unaligned_range") {
            return;
        }
        let uffd = Uffd::open().expect("open");
        uffd.api(0).expect("api");
        let map = Mapping::new(2 * PAGE);
        let err = uffd.register(map.base() + 1, PAGE as u64).unwrap_err();
        assert!(matches!(err, UffdError::Register { .. }), "{err}");
    }
}
