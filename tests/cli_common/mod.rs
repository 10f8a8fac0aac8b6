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

/// A fresh key file made by `hybridmig keygen` (mode 0600), for tests that start `source` and
/// `dest` by hand; removed when dropped.
pub struct KeyFile(pub std::path::PathBuf);

impl KeyFile {
    /// Makes a new key in the temporary directory under a name of `tag` and this process.
    pub fn new(tag: &str) -> KeyFile {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir()
            .join(format!("hm-test-{tag}-{}-{nanos:x}.key", std::process::id()));
        let out =
            Command::new(BIN).args(["keygen", "--out"]).arg(&path).output().expect("run keygen");
        assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
        KeyFile(path)
    }

    /// `--key-file PATH`, for a host's command line.
    pub fn args(&self) -> [std::ffi::OsString; 2] {
        ["--key-file".into(), self.0.clone().into_os_string()]
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
