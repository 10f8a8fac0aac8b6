//! Helpers for tests that drive the `hybridmig` binary.
#![allow(dead_code)]

use serde_json::Value;
use std::io::Read;
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

/// `count` points in `range` from a small seeded generator (splitmix64), so that a test's
/// failing point can be replayed from its seed.
pub fn seeded_points(seed: u64, count: usize, range: std::ops::Range<u64>) -> Vec<u64> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            range.start + (z ^ (z >> 31)) % (range.end - range.start)
        })
        .collect()
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

/// Kills a child process when the test ends early.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child` at most `limit`; its exit status, stdout and stderr.
pub fn wait_bounded(
    mut child: Killed,
    limit: std::time::Duration,
) -> (std::process::ExitStatus, String, String) {
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(started.elapsed() < limit, "the process did not end within {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.0.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.0.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    (status, out, err)
}
