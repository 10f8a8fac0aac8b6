//! Checks for the host facilities that the real (non-simulated) paths need.
//!
//! Tests that need KVM, userfaultfd or root call [`require_device`]. In CI (`CI` set in the
//! environment) a missing device is a failure, never a silent pass; a developer without the
//! device gets a printed reason and the test returns early.

use std::os::unix::fs::PermissionsExt;
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

/// Returns true when the process runs as root (network namespaces, tc and nft need it).
///
/// When not: panics if `CI` is set, otherwise prints why `test` is skipped and returns false.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no arguments, cannot fail and touches no memory of ours.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root, and CI requires it");
    }
    eprintln!("SKIPPED {test}: needs root");
    false
}

/// Returns true when every `(command, debian_package)` in `tools` is on `PATH`.
///
/// When one is missing: panics if `CI` is set (`.ci/run` installs them), otherwise prints
/// which package to install, says `test` is skipped and returns false.
pub fn require_commands(tools: &[(&str, &str)], test: &str) -> bool {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|(cmd, pkg)| format!("`{cmd}` (Debian package {pkg})"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let what = missing.join(", ");
    if std::env::var_os("CI").is_some() {
        panic!("{test}: missing {what}, and CI requires it (.ci/run installs them)");
    }
    eprintln!("SKIPPED {test}: missing {what}");
    false
}

fn on_path(cmd: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else { return false };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(cmd))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}
