//! Helpers for tests that drive the `hybridmig` binary.
#![allow(dead_code)]

use serde_json::Value;
use std::process::{Command, Output};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_hybridmig");

/// The last JSON object a successful command printed; panics with its output otherwise.
pub fn json_of(out: Output, what: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{what}: no JSON in {stdout}"));
    serde_json::from_str(line).expect("JSON report")
}

/// The digest of an unmigrated run of the guest that `guest_args` describe (with `--ops`).
pub fn reference_digest<S: AsRef<std::ffi::OsStr>>(guest_args: &[S]) -> String {
    let out = Command::new(BIN).arg("run").args(guest_args).arg("--json").output().expect("run");
    json_of(out, "reference run")["digest"].as_str().expect("digest").to_string()
}

/// The exit code and the last JSON object of a command that may end in a non-zero code on
/// purpose (`migrate` exits 3 when it cancelled); panics with its output when it printed none.
pub fn code_and_json(out: Output, what: &str) -> (Option<i32>, Value) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| {
        panic!(
            "{what} ({}): no JSON in {stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), serde_json::from_str(line).expect("JSON report"))
}
