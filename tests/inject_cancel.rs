//! Failures injected on the real path (`--inject`), with a real KVM guest, real userfaultfd and
//! real sockets on loopback. A failure before the hand-over must cancel the migration and
//! never lose the guest: it finishes on the source, exact against an unmigrated run, and
//! `migrate` exits 3 with `outcome: cancelled`. A short stall must not stop a migration.
//!
//! The disconnect points are drawn from a seed (printed; `HM_INJECT_SEED=N` replays one).

mod cli_common;

use cli_common::{code_and_json, reference_digest, seeded_points, BIN};
use hybridmig::host_check::{require_kvm, require_uffd};
use serde_json::Value;
use std::process::Command;

/// Ops per second per vCPU: the guest is mid-run when the migration starts.
const PACE: u64 = 150_000;
/// About 1.3 s of guest time at the pace.
const OPS: u64 = 200_000;
/// `migrate`'s exit code for a cancelled, verified run.
const EXIT_CANCELLED: i32 = 3;
/// Disconnect points fall in this range of ms after the destination's loop starts: inside
/// the first pre-copy round and hybrid's live pass of a 256 MiB hotcold guest at the pace,
/// which last about twice as long on loopback.
const POINT_MS: std::ops::Range<u64> = 10..120;

fn guest_args() -> Vec<String> {
    ["--workload", "hotcold", "--mem", "256M", "--ops", &OPS.to_string(), "--seed", "5"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn migrate(mode: &str, inject: &str, expected: &str) -> (Option<i32>, Value) {
    let mut cmd = Command::new(BIN);
    cmd.arg("migrate").args(guest_args()).args(["--mode", mode, "--migrate-after-ms", "300"]);
    cmd.args(["--pace", &PACE.to_string()]);
    cmd.args(["--inject", inject, "--expected-digest", expected, "--timeout-s", "60", "--json"]);
    code_and_json(cmd.output().expect("migrate"), &format!("migrate {mode} --inject {inject}"))
}

/// Checks a run cancelled before the hand-over: the guest finished on the source, exact.
fn check_cancelled(code: Option<i32>, r: &Value, label: &str) {
    assert_eq!(r["outcome"], "cancelled", "{label}: {r}");
    assert_eq!(r["guest_finished_on"], "source", "{label}");
    assert_eq!(
        r["verified"], true,
        "{label}: the source guest ended at {} but an unmigrated run ends at {}",
        r["digest"], r["digest_expected"]
    );
    assert_eq!(code, Some(EXIT_CANCELLED), "{label}: exit code");
    assert!(r["cancel_reason"].is_string(), "{label}: no cancel_reason");
}

fn ready(test: &str) -> bool {
    require_kvm(test) && require_uffd(test)
}

/// The destination drops both connections at five seeded points during pre-copy's rounds and
/// hybrid's live pass (and refuses to reconnect): every run cancels, the guest finishes on the
/// source and is exact.
#[test]
fn a_destination_disconnect_before_the_hand_over_cancels() {
    if !ready("a_destination_disconnect_before_the_hand_over_cancels") {
        return;
    }
    let seed = std::env::var("HM_INJECT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let expected = reference_digest(&guest_args());
    let points = seeded_points(seed, 5, POINT_MS);
    eprintln!("seed {seed} (HM_INJECT_SEED={seed} replays it): points {points:?} ms");
    // Three points in pre-copy's rounds, two in hybrid's live pass.
    for (i, at_ms) in points.into_iter().enumerate() {
        let (mode, phase) = if i < 3 { ("precopy", "Rounds") } else { ("hybrid", "WorkingSet") };
        let inject = format!("dst:disconnect@start+{at_ms},refuse-reconnect");
        let label = format!("{mode} {inject} (seed {seed})");
        let (code, r) = migrate(mode, &inject, &expected);
        check_cancelled(code, &r, &label);
        let reason = r["cancel_reason"].as_str().unwrap_or("");
        assert!(reason.contains(&format!("source phase {phase}")), "{label}: {reason}");
        let injected = r["injected"].as_array().expect("injected");
        assert_eq!(injected.len(), 1, "{label}: {injected:?}");
        assert_eq!(injected[0]["side"], "destination", "{label}");
        eprintln!("{label}: cancelled at {} ms: {reason}", r["cancelled_at_ms"]);
    }
}

/// The source drops its bulk connection right after pausing the guest, before the state is
/// queued: the paused guest is resumed and finishes on the source, exact.
#[test]
fn a_disconnect_in_the_switch_over_resumes_the_paused_guest() {
    if !ready("a_disconnect_in_the_switch_over_resumes_the_paused_guest") {
        return;
    }
    let expected = reference_digest(&guest_args());
    // Hybrid-paper sends the working set (the 64 MiB hot set here) in the downtime, before the
    // state: many loop turns after the pause, and the point is checked at the top of each.
    let inject = "src:disconnect-bulk@switchover+0,refuse-reconnect";
    let (code, r) = migrate("hybrid-paper", inject, &expected);
    check_cancelled(code, &r, inject);
    assert!(r["pause_at_ms"].as_f64().unwrap_or(0.0) > 0.0, "the guest was never paused: {r}");
    let reason = r["cancel_reason"].as_str().unwrap_or("");
    assert!(reason.contains("source phase SwitchOver"), "{reason}");
}

/// A page window corrupted after its CRC was computed is caught by the destination's CRC
/// check, which names it; before the hand-over, with no reconnect allowed, that cancels.
#[test]
fn a_corrupt_frame_is_caught_by_the_crc_and_cancels() {
    if !ready("a_corrupt_frame_is_caught_by_the_crc_and_cancels") {
        return;
    }
    let expected = reference_digest(&guest_args());
    // Without refuse-reconnect the broken connection would be recovered (tests/recovery.rs).
    let (code, r) = migrate("hybrid", "corrupt@40,refuse-reconnect", &expected);
    check_cancelled(code, &r, "corrupt@40");
    let dest_reason = r["dest_cancel_reason"].as_str().unwrap_or("");
    assert!(dest_reason.contains("CRC mismatch"), "the destination said: {dest_reason}");
    let injected = r["injected"].as_array().expect("injected");
    assert_eq!(injected.len(), 1, "{injected:?}");
    assert_eq!(injected[0]["side"], "source");
    assert!(injected[0]["what"].as_str().unwrap_or("").starts_with("corrupt@40"), "{injected:?}");
}

/// The destination stops reading and writing for 200 ms in the middle of the live pass: the
/// migration waits it out and completes, exact.
#[test]
fn a_short_stall_still_completes() {
    if !ready("a_short_stall_still_completes") {
        return;
    }
    let expected = reference_digest(&guest_args());
    let inject = "dst:stall@start+20:200";
    let (code, r) = migrate("hybrid", inject, &expected);
    assert_eq!(r["outcome"], "completed", "{r}");
    assert_eq!(r["guest_finished_on"], "destination");
    assert_eq!(r["verified"], true, "digest {} vs {}", r["digest"], r["digest_expected"]);
    assert_eq!(code, Some(0));
    let injected = r["injected"].as_array().expect("injected");
    assert_eq!(injected.len(), 1, "{injected:?}");
    assert_eq!(injected[0]["what"], inject.trim_start_matches("dst:"));
    // Checked every loop turn (10 ms tick).
    let at_ms = injected[0]["at_ms"].as_f64().unwrap_or(0.0);
    assert!((20.0..40.0).contains(&at_ms), "the stall began at {at_ms} ms");
}

/// The destination's VMM refuses the state (`fail-load`): the destination answers `Loaded`
/// with its refusal before it ever runs the guest, and the source cancels at once, with no
/// recovery wait; its paused guest resumes and finishes exact. Pre-copy hands over after its
/// rounds, post-copy right after the pause.
#[test]
fn a_state_that_does_not_load_cancels_at_once() {
    if !ready("a_state_that_does_not_load_cancels_at_once") {
        return;
    }
    let expected = reference_digest(&guest_args());
    for mode in ["precopy", "postcopy"] {
        let (code, r) = migrate(mode, "fail-load", &expected);
        check_cancelled(code, &r, mode);
        let reason = r["cancel_reason"].as_str().unwrap_or("");
        assert!(reason.contains("could not load"), "{mode}: {reason}");
        let dest_reason = r["dest_cancel_reason"].as_str().unwrap_or("");
        assert!(dest_reason.contains("fail-load"), "{mode}: the destination said {dest_reason}");
        let paused_ms = r["cancelled_at_ms"].as_f64().unwrap_or(f64::MAX)
            - r["pause_at_ms"].as_f64().unwrap_or(0.0);
        // A recovery would wait seconds for a destination that is gone; the refusal is a
        // round trip.
        assert!(paused_ms < 1000.0, "{mode}: the guest stayed paused {paused_ms} ms");
        eprintln!("{mode}: cancelled {paused_ms:.2} ms after the pause: {reason}");
    }
}
