//! End-to-end migrations of a real KVM guest between two processes over real TCP on
//! loopback, with real userfaultfd and io_uring. Every run must end with the guest's digest
//! equal to an unmigrated run's (`verified`), the source never running after the pause, and
//! the destination never running before the state arrived.

mod cli_common;

use cli_common::{json_of, BIN};
use hybridmig::host_check::{require_kvm, require_uffd};
use serde_json::Value;
use std::process::Command;

/// Ops per second per vCPU: slow enough that the guest is mid-run when the migration starts.
const PACE: u64 = 150_000;

fn guest_args(workload: &str, vcpus: u32, ops: u64) -> Vec<String> {
    [
        "--workload",
        workload,
        "--mem",
        "256M",
        "--vcpus",
        &vcpus.to_string(),
        "--ops",
        &ops.to_string(),
        "--seed",
        "11",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The digest of an unmigrated, unpaced run.
fn reference_digest(workload: &str, vcpus: u32, ops: u64) -> String {
    cli_common::reference_digest(&guest_args(workload, vcpus, ops))
}

fn migrate(
    mode: &str,
    workload: &str,
    vcpus: u32,
    ops: u64,
    after_ms: u64,
    expected: &str,
) -> Value {
    let out = Command::new(BIN)
        .arg("migrate")
        .args(guest_args(workload, vcpus, ops))
        .args(["--pace", &PACE.to_string(), "--mode"])
        // `mode` may carry mode options after the mode name ("hybrid --live-pass ws").
        .args(mode.split_whitespace())
        .args(["--migrate-after-ms", &after_ms.to_string()])
        .args(["--expected-digest", expected, "--timeout-s", "120", "--json"])
        .output()
        .expect("migrate");
    json_of(out, &format!("migrate {mode} {workload} x{vcpus} @{after_ms}ms"))
}

fn check(report: &Value, label: &str) {
    assert_eq!(
        report["verified"], true,
        "{label}: digest {} vs expected {}",
        report["digest"], report["digest_expected"]
    );
    assert_eq!(report["memory_digest_match"], true, "{label}: Done/DoneAck memory digests differ");
    assert_eq!(
        report["source_stayed_paused"], true,
        "{label}: the source guest ran after the pause"
    );
    assert_eq!(
        report["dest_resumed_after_state"], true,
        "{label}: the destination ran before its state arrived"
    );
    assert_eq!(
        report["unacked_pages_at_end"], 0,
        "{label}: bulk pages sent were never acknowledged"
    );
}

fn matrix(mode: &str) {
    if !require_kvm(&format!("migrate_{mode}")) || !require_uffd(&format!("migrate_{mode}")) {
        return;
    }
    for workload in ["scan", "hotcold", "random"] {
        for vcpus in [1u32, 2] {
            // About 1.6 s of guest time at the pace: migrations at 300 ms and 800 ms both
            // start while the guest runs.
            let ops = PACE * u64::from(vcpus) * 8 / 5;
            let expected = reference_digest(workload, vcpus, ops);
            for after_ms in [300, 800] {
                let label = format!("{mode} {workload} x{vcpus} @{after_ms}ms");
                let report = migrate(mode, workload, vcpus, ops, after_ms, &expected);
                check(&report, &label);
                eprintln!("{label}: {}", summary(&report));
            }
        }
    }
}

fn summary(r: &Value) -> String {
    format!(
        "total_ms={} downtime_ms={} network_faults={} stale_pages={} rounds={}",
        r["total_ms"], r["downtime_ms"], r["network_faults"], r["stale_pages"], r["rounds"]
    )
}

#[test]
fn precopy_is_exact() {
    matrix("precopy");
}

#[test]
fn postcopy_is_exact() {
    matrix("postcopy");
}

#[test]
fn hybrid_is_exact() {
    matrix("hybrid");
}

#[test]
fn hybrid_paper_is_exact() {
    matrix("hybrid-paper");
}

/// Pages sent early and rewritten before the pause must never survive on the destination.
/// Pre-copy with `scan` (it rewrites every page right after a round sends it) and hybrid with
/// `hotcold` (its write-hot pages, part of the working set sent before the pause, are rewritten
/// many times a second) must both see stale pages and still end exact. Hybrid runs with both
/// live passes; the full pass must also have named stale pages to the destination before the
/// pause and had its drain Ping answered.
#[test]
fn stale_pages_never_survive() {
    if !require_kvm("stale_pages_never_survive") || !require_uffd("stale_pages_never_survive") {
        return;
    }
    let ops = PACE * 2;
    let runs = [("precopy", "scan"), ("hybrid", "hotcold"), ("hybrid --live-pass ws", "hotcold")];
    for (mode, workload) in runs {
        let expected = reference_digest(workload, 1, ops);
        let report = migrate(mode, workload, 1, ops, 600, &expected);
        check(&report, mode);
        let stale = report["stale_pages"].as_u64().unwrap_or(0);
        assert!(stale > 0, "{mode}/{workload}: no stale page, so the test proves nothing");
        if mode == "hybrid" {
            let drain_ms = report["drain_ms"].as_f64().unwrap_or(0.0);
            assert!(drain_ms > 0.0, "hybrid: the drain Ping before the pause was never answered");
            let live = report["pages_invalidated_live"].as_u64().unwrap_or(0);
            eprintln!("hybrid: {live} stale pages named before the pause, drain {drain_ms} ms");
        }
        eprintln!("{mode} stale-page run: {}", summary(&report));
    }
}

/// Post-copy with the push held back for 3 s (`--push-delay-ms`): the guest runs on demand
/// paging alone first, every page it touches a network fault, and the push brings the rest
/// later. The memory must end exact, and the hold must show: faults, and a migration that
/// lasted at least the hold.
#[test]
fn postcopy_on_demand_paging_alone_is_exact() {
    let name = "postcopy_on_demand_paging_alone_is_exact";
    if !require_kvm(name) || !require_uffd(name) {
        return;
    }
    let ops = PACE;
    let expected = reference_digest("hotcold", 1, ops);
    let report = migrate("postcopy --push-delay-ms 3000", "hotcold", 1, ops, 300, &expected);
    check(&report, "postcopy, push held");
    let faults = report["network_faults"].as_u64().unwrap_or(0);
    let total_ms = report["total_ms"].as_f64().unwrap_or(0.0);
    assert!(faults > 100, "only {faults} network faults: the push was not held back");
    assert!(total_ms >= 3000.0, "the migration ended after {total_ms} ms, inside the hold");
    eprintln!("postcopy, push held 3 s: {}", summary(&report));
}
