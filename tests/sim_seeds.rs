//! `hybridmig sim`: thousands of seeded simulated migrations pass, a seed replays its run
//! (same trace hash), and a planted fault is caught, named, and replays from its seed.

use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hybridmig"))
        .arg("sim")
        .args(args)
        .output()
        .expect("running hybridmig sim")
}

fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn two_thousand_seeds_pass() {
    let started = std::time::Instant::now();
    let out = sim(&["--seeds", "2000", "--from", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hybridmig sim failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert_eq!(last, "2000 passed, 0 failed", "last line of:\n{stdout}");
    eprintln!("2000 seeds in {:.1} s", started.elapsed().as_secs_f64());
}

/// Lost connections are in the mix, and they recover: 2,000 seeds see hundreds of recoveries,
/// some runs more than one (a failure during a recovery), and every run still ends exact.
#[test]
fn disconnects_recover_and_double_failures_too() {
    let report = json(&sim(&["--seeds", "2000", "--from", "20001", "--json"]));
    assert_eq!(report["failed"], 0, "{report}");
    let recoveries = report["recoveries"].as_u64().expect("recoveries");
    let multi = report["multi_recovery_runs"].as_u64().expect("multi_recovery_runs");
    assert!(recoveries >= 200, "too few recoveries to mean anything: {report}");
    assert!(multi >= 20, "too few runs with a second failure: {report}");
    assert!(report["corruption_caught"].as_u64().unwrap_or(0) > 0, "{report}");
    // Loss as a retransmission delay holds up fault answers: some are asked again on bulk.
    assert!(report["fault_retries"].as_u64().unwrap_or(0) > 0, "{report}");
}

#[test]
fn a_seed_replays_the_same_trace() {
    for seed in ["5", "1292", "4242"] {
        let a = json(&sim(&["--from", seed, "--seeds", "1", "--json"]));
        let b = json(&sim(&["--from", seed, "--seeds", "1", "--json"]));
        assert_eq!(a["passed"], 1, "seed {seed}: {a}");
        let hash = a["trace_hash"].as_str().expect("trace_hash for one seed");
        assert_ne!(hash, format!("{:#018x}", 0), "seed {seed}: empty trace");
        assert_eq!(a["trace_hash"], b["trace_hash"], "seed {seed} did not replay");
    }
    let (a, b) = (
        json(&sim(&["--from", "5", "--seeds", "1", "--json"])),
        json(&sim(&["--from", "6", "--seeds", "1", "--json"])),
    );
    assert_ne!(a["trace_hash"], b["trace_hash"], "two seeds gave one trace");
}

#[test]
fn a_dropped_page_window_is_caught_named_and_replays() {
    let out = sim(&["--from", "77", "--seeds", "1", "--drop-window", "3"]);
    assert!(!out.status.success(), "a dropped page window went unnoticed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("seed 77") && stderr.contains("digest mismatch"), "{stderr}");
    let replay = stdout
        .lines()
        .find_map(|l| l.strip_prefix("FAILED seed 77: replay with: "))
        .unwrap_or_else(|| panic!("no replay command in:\n{stdout}"));
    assert_eq!(replay, "hybridmig sim --from 77 --seeds 1 --drop-window 3");
    // The printed command replays the same failure, event for event.
    let args: Vec<&str> = replay.split_whitespace().skip(2).collect();
    let first = json(&sim(&[&args[..], &["--json"]].concat()));
    let again = json(&sim(&[&args[..], &["--json"]].concat()));
    assert_eq!(first["failed"], 1, "{first}");
    let error = first["failures"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("digest mismatch"), "{error}");
    assert_eq!(first["trace_hash"], again["trace_hash"]);
    assert_eq!(first["failures"], again["failures"]);
}

#[test]
fn a_dropped_window_is_caught_in_every_mode() {
    // Seeds until each mode has been seen with a planted drop: none may pass.
    let out = json(&sim(&["--from", "100", "--seeds", "24", "--drop-window", "2", "--json"]));
    // The only runs that may pass are those a corrupted frame stopped before the drop.
    assert_eq!(out["passed"], out["corruption_caught"], "a dropped window passed: {out}");
    for failure in out["failures"].as_array().into_iter().flatten() {
        let error = failure["error"].as_str().unwrap_or_default();
        let named = ["digest mismatch", "never acknowledged", "no progress"];
        assert!(named.iter().any(|n| error.contains(n)), "unexpected failure: {failure}");
    }
    let modes: std::collections::BTreeSet<&str> = out["failures"]
        .as_array()
        .map(|f| f.iter().filter_map(|x| x["mode"].as_str()).collect())
        .unwrap_or_default();
    let all = hybridmig::wire::MigrationMode::ALL.len();
    assert_eq!(modes.len(), all, "not every mode was planted: {modes:?}");
}
