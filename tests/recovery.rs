//! Recovery on the real path: a real KVM guest, real userfaultfd, io_uring and TCP on
//! loopback. Connections dropped with `--inject` after the destination resumed the guest (the
//! guest's memory then lives on both hosts), during the switch-over, twice in a row, or broken
//! by a corrupted frame: every run must end exact against an unmigrated run, with the
//! recoveries counted.
//!
//! The points are drawn from a seed (printed; `HM_RECOVERY_SEED=N` replays one).

mod cli_common;

use cli_common::{code_and_json, reference_digest, seeded_points, BIN};
use hybridmig::host_check::{require_kvm, require_uffd};
use serde_json::Value;
use std::process::Command;

/// Ops per second per vCPU.
const PACE: u64 = 100_000;
/// About 2 s of guest time at the pace.
const OPS: u64 = 200_000;
/// The push waits this long after the resume, so the post-copy phase lasts long enough to be
/// cut at a point drawn from [`POINT_MS`].
const PUSH_DELAY_MS: u64 = 1_200;
/// Disconnect points after the resume (ms).
const POINT_MS: std::ops::Range<u64> = 20..1_000;

fn guest_args() -> Vec<String> {
    ["--workload", "hotcold", "--mem", "256M", "--ops", &OPS.to_string(), "--seed", "9"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn migrate(mode: &str, inject: &str, expected: &str) -> Value {
    let mut cmd = Command::new(BIN);
    cmd.arg("migrate").args(guest_args()).args(["--mode", mode, "--migrate-after-ms", "300"]);
    cmd.args(["--pace", &PACE.to_string(), "--push-delay-ms", &PUSH_DELAY_MS.to_string()]);
    cmd.args(["--inject", inject, "--expected-digest", expected, "--timeout-s", "60", "--json"]);
    let label = format!("migrate {mode} --inject {inject}");
    let (code, r) = code_and_json(cmd.output().expect("migrate"), &label);
    assert_eq!(code, Some(0), "{label}: exit code, report {r}");
    assert_eq!(r["outcome"], "completed", "{label}: {r}");
    assert_eq!(r["guest_finished_on"], "destination", "{label}");
    assert_eq!(
        r["verified"], true,
        "{label}: the guest ended at {} but an unmigrated run ends at {}",
        r["digest"], r["digest_expected"]
    );
    assert_eq!(r["unacked_pages_at_end"], 0, "{label}: bulk pages never acknowledged");
    r
}

fn seed() -> u64 {
    std::env::var("HM_RECOVERY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(11)
}

fn ready(test: &str) -> bool {
    require_kvm(test) && require_uffd(test)
}

/// Ten seeded cuts after the resume, in post-copy and hybrid, by either side, of both streams
/// or one: each recovers (at least one recovery) and ends exact.
#[test]
fn disconnects_after_the_resume_recover() {
    if !ready("disconnects_after_the_resume_recover") {
        return;
    }
    let seed = seed();
    let expected = reference_digest(&guest_args());
    let points = seeded_points(seed, 10, POINT_MS);
    eprintln!("seed {seed} (HM_RECOVERY_SEED={seed} replays it): points {points:?} ms");
    let sides = ["src", "dst"];
    let kinds = ["disconnect", "disconnect-bulk", "disconnect-urgent"];
    for (i, at_ms) in points.into_iter().enumerate() {
        let mode = if i % 2 == 0 { "postcopy" } else { "hybrid" };
        let inject = format!("{}:{}@resume+{at_ms}", sides[i % 2], kinds[i % 3]);
        let r = migrate(mode, &inject, &expected);
        let recoveries = r["recoveries"].as_u64().unwrap_or(0);
        assert!(recoveries >= 1, "{mode} {inject} (seed {seed}): no recovery counted: {r}");
        eprintln!(
            "{mode} {inject}: recoveries {recoveries}, recovery_ms {}, pages_resent {}, faults {}",
            r["recovery_ms"], r["pages_resent"], r["network_faults"]
        );
    }
}

/// Three cuts during the switch-over (the guest paused on the source, the need set and the
/// state on their way): each recovers or completes, exact.
#[test]
fn disconnects_in_the_switch_over_recover() {
    if !ready("disconnects_in_the_switch_over_recover") {
        return;
    }
    let expected = reference_digest(&guest_args());
    for (mode, inject) in [
        ("hybrid-paper", "src:disconnect@switchover+0"),
        ("hybrid-paper", "src:disconnect-bulk@switchover+1"),
        ("hybrid", "src:disconnect@switchover+0"),
    ] {
        let r = migrate(mode, inject, &expected);
        eprintln!(
            "{mode} {inject}: recoveries {}, downtime_ms {}",
            r["recoveries"], r["downtime_ms"]
        );
    }
}

/// Both sides cut the connection a few milliseconds apart, so the second cut falls while the
/// first is being recovered: the migration still ends exact.
#[test]
fn a_second_failure_during_recovery_still_ends_exact() {
    if !ready("a_second_failure_during_recovery_still_ends_exact") {
        return;
    }
    let expected = reference_digest(&guest_args());
    for inject in ["src:disconnect@resume+300,dst:disconnect@resume+302", "disconnect@resume+150"] {
        let r = migrate("postcopy", inject, &expected);
        let recoveries = r["recoveries"].as_u64().unwrap_or(0);
        assert!(recoveries >= 1, "{inject}: {r}");
        eprintln!("{inject}: recoveries {recoveries}");
    }
}

/// A bulk frame corrupted after its CRC was computed: the destination's CRC check refuses it,
/// the connection counts as broken, and the recovery sends its pages again.
#[test]
fn a_corrupt_frame_is_refused_and_recovered() {
    if !ready("a_corrupt_frame_is_refused_and_recovered") {
        return;
    }
    let expected = reference_digest(&guest_args());
    let r = migrate("postcopy", "corrupt@300", &expected);
    let injected = r["injected"].as_array().expect("injected");
    assert!(injected.iter().any(|i| i["what"].as_str().unwrap_or("").starts_with("corrupt@300")));
    assert!(r["recoveries"].as_u64().unwrap_or(0) >= 1, "{r}");
    assert!(r["pages_resent"].as_u64().unwrap_or(0) >= 1, "the corrupted pages were not resent");
}

/// The destination's memory stays within its guest's RAM plus a stated constant while the
/// source stalls for 2 s after the resume (vCPUs wait on missing pages, nothing arrives):
/// nothing queues without a bound while a peer is silent.
#[test]
fn a_stalled_source_keeps_the_destination_within_its_memory_bound() {
    if !ready("a_stalled_source_keeps_the_destination_within_its_memory_bound") {
        return;
    }
    /// Guest RAM of `guest_args` and the constant the destination may use beyond it (MiB).
    const GUEST_MIB: f64 = 256.0;
    const BOUND_OVER_GUEST_MIB: f64 = 64.0;
    let expected = reference_digest(&guest_args());
    let r = migrate("postcopy", "src:stall@resume+100:2000", &expected);
    let rss_mib = r["dest_peak_rss_mb"].as_f64().expect("dest_peak_rss_mb");
    eprintln!("destination peak RSS under a 2 s source stall: {rss_mib:.1} MiB");
    assert!(rss_mib > 0.0, "no RSS measured: {r}");
    assert!(
        rss_mib <= GUEST_MIB + BOUND_OVER_GUEST_MIB,
        "the destination used {rss_mib:.1} MiB for a {GUEST_MIB} MiB guest"
    );
}

/// The source's memory does not grow with a stall of its destination after the resume: its
/// push stops at the unacknowledged-page cap (or earlier, once the sockets' buffers are
/// full), and nothing else queues while the destination is silent. A 2 s stall leaves the
/// source's peak RSS within a few MiB of a 0.1 s one.
#[test]
fn a_stalled_destination_does_not_grow_the_source() {
    if !ready("a_stalled_destination_does_not_grow_the_source") {
        return;
    }
    /// Guest RAM of `guest_args`, and what a longer stall may add to the source (MiB).
    const GUEST_MIB: f64 = 256.0;
    const BOUND_OVER_GUEST_MIB: f64 = 64.0;
    const STALL_GROWTH_MIB: f64 = 8.0;
    let expected = reference_digest(&guest_args());
    let rss = |stall_ms: u64| {
        let r = migrate("postcopy", &format!("dst:stall@resume+100:{stall_ms}"), &expected);
        let rss_mib = r["source_peak_rss_mb"].as_f64().expect("source_peak_rss_mb");
        eprintln!(
            "source peak RSS under a {stall_ms} ms destination stall: {rss_mib:.1} MiB \
             (unacked_pages_max {}, unacked_cap_stalls {})",
            r["unacked_pages_max"], r["unacked_cap_stalls"]
        );
        assert!(rss_mib > 0.0, "no RSS measured: {r}");
        rss_mib
    };
    let short = rss(100);
    let long = rss(2000);
    assert!(long <= GUEST_MIB + BOUND_OVER_GUEST_MIB, "the source used {long:.1} MiB");
    assert!(
        long <= short + STALL_GROWTH_MIB,
        "the source grew with the stall: {short:.1} MiB for 0.1 s, {long:.1} MiB for 2 s"
    );
}
