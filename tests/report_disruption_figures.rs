//! The report's disruption figures on real migrations (KVM guest, userfaultfd, TCP on
//! loopback): the blocked time of each vCPU, QEMU's fault-latency distribution, and the
//! slowdown scored against the unmigrated reference run that `migrate` makes itself (no
//! `--expected-digest`, so the reference run's timeline is there to score against).

mod cli_common;

use cli_common::{json_of, BIN};
use hybridmig::host_check::{require_kvm, require_uffd};
use serde_json::Value;
use std::process::Command;

/// Runs `hybridmig migrate --json` of a 256 MiB hotcold guest with `extra` arguments.
fn migrate(extra: &[&str], label: &str) -> Value {
    let out = Command::new(BIN)
        .args(["migrate", "--workload", "hotcold", "--mem", "256M", "--seed", "11"])
        .args(["--mode", "postcopy", "--migrate-after-ms", "300", "--timeout-s", "120"])
        .args(extra)
        .arg("--json")
        .output()
        .expect("migrate");
    let report = json_of(out, label);
    assert_eq!(
        report["verified"], true,
        "{label}: digest {} vs expected {}",
        report["digest"], report["digest_expected"]
    );
    assert_eq!(report["schema_version"], 2, "{label}");
    report
}

fn f64_of(report: &Value, key: &str) -> f64 {
    report[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number: {}", report[key]))
}

/// QEMU's distribution has 24 buckets, and every network fault is in one of them.
fn check_latency_dist(report: &Value, label: &str) {
    let dist = report["fault_latency_dist_us"].as_array().expect("fault_latency_dist_us");
    assert_eq!(dist.len(), 24, "{label}: {dist:?}");
    let counted: u64 = dist.iter().map(|c| c.as_u64().expect("a count")).sum();
    assert_eq!(counted, report["network_faults"].as_u64().expect("network_faults"), "{label}");
}

/// Two vCPUs, each with its own slice and hot set, on on-demand paging alone for a second
/// (the push held back): both fault, the wait of each is reported apart, and the parts sum
/// to the whole.
#[test]
fn each_vcpu_has_its_blocked_time_and_faults_fill_qemus_buckets() {
    let name = "each_vcpu_has_its_blocked_time_and_faults_fill_qemus_buckets";
    if !require_kvm(name) || !require_uffd(name) {
        return;
    }
    let label = "postcopy x2 push held";
    let extra = ["--vcpus", "2", "--ops", "480000", "--pace", "150000", "--push-delay-ms", "1000"];
    let report = migrate(&extra, label);
    let per_vcpu: Vec<f64> = report["vcpu_blocked_ms_per_vcpu"]
        .as_array()
        .expect("vcpu_blocked_ms_per_vcpu")
        .iter()
        .map(|v| v.as_f64().expect("ms"))
        .collect();
    let total = f64_of(&report, "vcpu_blocked_ms");
    eprintln!(
        "{label}: vcpu_blocked_ms={total} per vCPU {per_vcpu:?}, network_faults={}, dist {}",
        report["network_faults"], report["fault_latency_dist_us"]
    );
    assert_eq!(per_vcpu.len(), 2, "{label}: one entry per vCPU");
    assert!(per_vcpu.iter().all(|&ms| ms > 0.0), "{label}: a vCPU never waited: {per_vcpu:?}");
    assert_eq!(f64_of(&report, "vcpu_blocked_ms_unattributed"), 0.0, "{label}");
    let sum: f64 = per_vcpu.iter().sum();
    assert!((sum - total).abs() < 0.01, "{label}: {per_vcpu:?} sums to {sum}, not {total}");
    check_latency_dist(&report, label);
    assert!(report["degradation_pct"].is_f64(), "{label}: {}", report["degradation_pct"]);
}

/// An unpaced guest whose vCPU waits on the network for hundreds of ms (the push held back):
/// scored at the same op positions as the reference run, its slowdown shows, where the rate
/// of its warm-up could hide it.
#[test]
fn a_long_vcpu_block_shows_in_degradation() {
    let name = "a_long_vcpu_block_shows_in_degradation";
    if !require_kvm(name) || !require_uffd(name) {
        return;
    }
    let label = "postcopy unpaced push held";
    let report = migrate(&["--ops", "2000000", "--push-delay-ms", "1000"], label);
    let blocked = f64_of(&report, "vcpu_blocked_ms");
    let pct = f64_of(&report, "degradation_pct");
    let basis = &report["degradation_basis"];
    eprintln!(
        "{label}: vcpu_blocked_ms={blocked} degradation_pct={pct} basis {basis} (warm-up \
         fallback {})",
        report["degradation_warmup_pct"]
    );
    assert!(blocked > 100.0, "{label}: the vCPU waited only {blocked} ms, so this proves little");
    assert!(pct > 10.0, "{label}: degradation_pct {pct} with {blocked} ms blocked");
    let migrated_ms = basis["migrated_ms"].as_f64().expect("migrated_ms");
    let reference_ms = basis["reference_ms"].as_f64().expect("reference_ms");
    assert!(migrated_ms > reference_ms + blocked * 0.5, "{label}: {basis}");
    let (from, to) = (basis["ops_from"].as_u64(), basis["ops_to"].as_u64());
    assert!(from < to, "{label}: an empty op span {basis}");
    check_latency_dist(&report, label);
}
