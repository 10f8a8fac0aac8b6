//! Ring construction, opcode probing, and the driver's error type.
//!
//! Set-up is where io_uring most often fails on locked-down hosts, so every failure here names
//! the likely cause: the `kernel.io_uring_disabled` sysctl, a seccomp filter, the memlock limit,
//! or a kernel too old for an opcode we need.

use io_uring::{opcode, IoUring, Probe};
use std::io;
use std::os::fd::RawFd;

/// Errors of the io_uring driver.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// `io_uring_setup` failed.
    #[error("io_uring_setup({entries} entries) failed: {source}; likely cause: {cause}")]
    Setup {
        /// Requested SQ entries.
        entries: u32,
        /// The OS error.
        source: io::Error,
        /// Our best guess at why.
        cause: String,
    },
    /// IORING_REGISTER_PROBE failed.
    #[error("IORING_REGISTER_PROBE failed: {source} (kernel older than 5.6, or seccomp)")]
    Probe {
        /// The OS error.
        source: io::Error,
    },
    /// The kernel lacks an opcode the driver needs.
    #[error("io_uring opcode {name} is not supported by this kernel (IORING_REGISTER_PROBE)")]
    MissingOpcode {
        /// The opcode's name.
        name: &'static str,
    },
    /// `io_uring_enter` failed.
    #[error("io_uring_enter failed: {source}")]
    Enter {
        /// The OS error.
        source: io::Error,
    },
    /// The submission queue stayed full after repeated flushes.
    #[error("io_uring submission queue stayed full after repeated flushes")]
    SubmissionQueueStuck,
    /// All completion records are in use; reap completions first.
    #[error("all {capacity} completion records are in flight (tag {tag})")]
    Full {
        /// Records in the slab.
        capacity: usize,
        /// The tag of the refused operation.
        tag: u64,
    },
    /// An operation's length does not fit the SQE's 32-bit length.
    #[error("operation on fd {fd} of {len_bytes} bytes exceeds the 32-bit SQE length")]
    TooLong {
        /// The fd.
        fd: RawFd,
        /// The requested length.
        len_bytes: usize,
    },
    /// A registered buffer was used on a ring that has no pool (or a different one).
    #[error("buffer slot {index} is not registered with this ring")]
    NotRegistered {
        /// The slot index.
        index: u16,
    },
    /// Registering the buffer pool failed.
    #[error("IORING_REGISTER_BUFFERS of {slot_count} x {slot_len_bytes} bytes failed: {source} (RLIMIT_MEMLOCK?)")]
    RegisterBuffers {
        /// Slots requested.
        slot_count: u16,
        /// Bytes per slot.
        slot_len_bytes: usize,
        /// The OS error.
        source: io::Error,
    },
    /// A second pool was requested; the ring has one buffer table.
    #[error("this ring already has a registered buffer pool")]
    PoolExists,
    /// Creating the waker's eventfd failed.
    #[error("eventfd for the ring waker failed: {source}")]
    Eventfd {
        /// The OS error.
        source: io::Error,
    },
}

/// Which optional opcodes the kernel has.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Opcodes {
    pub(crate) send_zc: bool,
}

/// Guesses why `io_uring_setup` failed, from the errno and the sysctl.
fn setup_cause(err: &io::Error) -> String {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unreadable".to_string());
    match err.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel lacks io_uring (CONFIG_IO_URING=n) or a seccomp filter \
            returns ENOSYS (containers often do)"
            .to_string(),
        Some(libc::EPERM) => format!(
            "kernel.io_uring_disabled={sysctl} (2 disables it, 1 allows only \
             kernel.io_uring_group), or a seccomp filter denies io_uring_setup"
        ),
        Some(libc::ENOMEM) => {
            "RLIMIT_MEMLOCK too low for the rings (raise `ulimit -l`)".to_string()
        }
        Some(libc::EINVAL) => "entries out of range or unsupported setup flags".to_string(),
        _ => format!("unexpected error (kernel.io_uring_disabled={sysctl})"),
    }
}

/// Builds the ring: CQ twice the in-flight bound (SEND_ZC posts two CQEs). No
/// IORING_SETUP_COOP_TASKRUN: it holds a uffd READ's completion back until the loop next
/// enters the kernel, which multiplied the fault latency (docs/kernel-facts.md).
pub(crate) fn build(entries: u32, max_in_flight: u32) -> Result<IoUring, RingError> {
    let cq_entries = max_in_flight.saturating_mul(2).max(entries.saturating_mul(2));
    let tuned = IoUring::builder().setup_cqsize(cq_entries).build(entries);
    match tuned {
        Ok(ring) => Ok(ring),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_cqsize(cq_entries)
            .build(entries)
            .map_err(|source| RingError::Setup { entries, cause: setup_cause(&source), source }),
        Err(source) => Err(RingError::Setup { entries, cause: setup_cause(&source), source }),
    }
}

/// Checks the opcodes the driver needs and notes the optional ones.
pub(crate) fn probe(ring: &IoUring) -> Result<Opcodes, RingError> {
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|source| RingError::Probe { source })?;
    let required: [(u8, &'static str); 6] = [
        (opcode::Send::CODE, "IORING_OP_SEND"),
        (opcode::Recv::CODE, "IORING_OP_RECV"),
        (opcode::Read::CODE, "IORING_OP_READ"),
        (opcode::ReadFixed::CODE, "IORING_OP_READ_FIXED"),
        (opcode::Timeout::CODE, "IORING_OP_TIMEOUT"),
        (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
    ];
    if let Some((_, name)) = required.iter().find(|(code, _)| !probe.is_supported(*code)) {
        return Err(RingError::MissingOpcode { name });
    }
    Ok(Opcodes { send_zc: probe.is_supported(opcode::SendZc::CODE) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_failures_name_the_likely_cause() {
        let eperm = setup_cause(&io::Error::from_raw_os_error(libc::EPERM));
        assert!(eperm.contains("kernel.io_uring_disabled") && eperm.contains("seccomp"), "{eperm}");
        let enosys = setup_cause(&io::Error::from_raw_os_error(libc::ENOSYS));
        assert!(enosys.contains("seccomp"), "{enosys}");
        let enomem = setup_cause(&io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(enomem.contains("MEMLOCK"), "{enomem}");
    }
}
