//! Checks for the host facilities that the real (non-simulated) paths need.
//!
//! Tests that need KVM, userfaultfd or root call [`require_device`]. In CI (`CI` set in the
//! environment) a missing device is a failure, never a silent pass; a developer without the
//! device gets a printed reason and the test returns early.

use std::path::Path;

/// Returns true when `path` (for example `/dev/kvm`) can be opened read-write.
///
/// When it cannot: panics if `CI` is set, otherwise prints why `test` is skipped and returns
/// false.
pub fn require_device(path: &str, test: &str) -> bool {
    let usable = Path::new(path).exists()
        && std::fs::OpenOptions::new().read(true).write(true).open(path).is_ok();
    if usable {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {path} is missing or not accessible, and CI requires it (run as root on a KVM host)");
    }
    eprintln!("SKIPPED {test}: {path} is missing or not accessible (needs root on a KVM host)");
    false
}

/// Shorthand for [`require_device`] on `/dev/kvm`.
pub fn require_kvm(test: &str) -> bool {
    require_device("/dev/kvm", test)
}

/// Shorthand for [`require_device`] on `/dev/userfaultfd`.
pub fn require_uffd(test: &str) -> bool {
    require_device("/dev/userfaultfd", test)
}
