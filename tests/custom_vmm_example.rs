//! examples/custom_vmm, a VMM that shares nothing with the built-in one, migrated through the
//! library in every mode: each run must end with the guest's memory equal to an unmigrated
//! run's (the example prints `verified` and exits 0 only then).

use hybridmig::host_check::{require_kvm, require_uffd};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

/// Builds the example once (a no-op when `cargo test --release` already built it: the test
/// binary's build lock is not held while tests run) and returns its path, as cargo reports it.
fn example() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let out = cargo()
            .args(["build", "--release", "--offline", "--example", "custom_vmm"])
            .args(["--message-format", "json"])
            .output()
            .expect("cargo build --example custom_vmm");
        assert!(
            out.status.success(),
            "building the example failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|msg| msg["target"]["name"] == "custom_vmm")
            .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no executable for the custom_vmm example")
    })
}

fn run_example(args: &[&str]) -> Output {
    Command::new(example()).args(args).output().expect("run the custom_vmm example")
}

fn migrates_verified(mode: &str) {
    ends_verified(mode, &[]);
}

/// Runs the example in `mode` with `extra` arguments; asserts its `verified` line.
fn ends_verified(mode: &str, extra: &[&str]) -> String {
    let test = format!("custom_vmm_{mode}");
    if !require_kvm(&test) || !require_uffd(&test) {
        return String::new();
    }
    let mut args = vec!["--mode", mode];
    args.extend_from_slice(extra);
    let out = run_example(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "custom_vmm --mode {mode} failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.lines().any(|l| l.contains("verified") && l.contains(&format!("mode {mode} "))),
        "no verified line for {mode}:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
    stdout.into_owned()
}

#[test]
fn custom_vmm_precopy_is_verified() {
    migrates_verified("precopy");
}

#[test]
fn custom_vmm_postcopy_is_verified() {
    migrates_verified("postcopy");
}

/// The example's VMM has no access sampler: hybrid's working set comes from the library's
/// dirty-log fallback, and must not be empty for a guest that writes its memory on every pass.
#[test]
fn custom_vmm_hybrid_is_verified_with_a_working_set_from_the_dirty_log() {
    let stdout = ends_verified("hybrid", &[]);
    if stdout.is_empty() {
        return;
    }
    let ws_pages = stdout
        .split("working set ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("the verified line names the working set's pages");
    assert!(ws_pages > 0, "hybrid migrated with an empty working set:\n{stdout}");
}

#[test]
fn custom_vmm_hybrid_paper_is_verified() {
    migrates_verified("hybrid-paper");
}

/// A refused state cancels before the hand-over: the source's `resume` restarts the paused
/// guest, which must finish there exactly as the unmigrated run did.
#[test]
fn custom_vmm_refused_state_cancels_and_the_guest_finishes_on_the_source() {
    let stdout = ends_verified("hybrid", &["--refuse-state"]);
    assert!(
        stdout.is_empty() || stdout.contains("finished on the source"),
        "the guest did not finish on the source:\n{stdout}"
    );
}

#[test]
fn custom_vmm_refuses_an_unknown_mode_by_name() {
    let out = run_example(&["--mode", "sideways"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unknown mode was accepted");
    assert!(stderr.contains("--mode sideways"), "the error does not name the value:\n{stderr}");
}
