//! `hybridmig migrate` shows every phase as it runs, on stderr: the reference run, the guest
//! before the migration, the migration's phases with bytes sent, bytes left, a rate and an
//! ETA, and the guest finishing on the destination. With stderr not a terminal it prints plain
//! lines; stdout stays the `--json` report alone. The run must end verified.

mod cli_common;

use cli_common::{json_of, BIN};
use hybridmig::host_check::{require_kvm, require_uffd};
use serde_json::Value;
use std::process::Command;

/// Runs a short post-copy `migrate --json` with `extra` arguments; its report and its stderr.
fn migrate(extra: &[&str]) -> (Value, String) {
    let out = Command::new(BIN)
        .args(["migrate", "--workload", "hotcold", "--mem", "256M", "--ops", "1000000"])
        .args(["--pace", "150000", "--mode", "postcopy", "--seed", "12", "--json"])
        .args(extra)
        .output()
        .expect("migrate");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = json_of(out, &format!("migrate postcopy {extra:?}"));
    assert_eq!(report["verified"], true, "{report}");
    (report, stderr)
}

/// The lines of `stderr` that start with `start`.
fn phase<'a>(stderr: &'a str, start: &str) -> Vec<&'a str> {
    stderr.lines().filter(|l| l.starts_with(start)).collect()
}

#[test]
fn migrate_shows_each_phase_with_bytes_and_an_eta_on_stderr() {
    let test = "migrate_shows_each_phase_with_bytes_and_an_eta_on_stderr";
    if !require_kvm(test) || !require_uffd(test) {
        return;
    }
    let (report, stderr) = migrate(&[]);
    for (start, fields) in [
        ("reference run", &["ops ", " of ", "eta "][..]),
        ("guest runs on the source", &["ops ", "eta "][..]),
        ("push", &["sent ", "remaining ", "rate ", "eta "][..]),
        ("guest finishing on the destination", &["ops ", "received ", "eta "][..]),
    ] {
        let shown = phase(&stderr, start);
        assert!(!shown.is_empty(), "no `{start}` line on stderr:\n{stderr}");
        for line in &shown {
            for field in fields {
                assert!(line.contains(field), "`{start}` line without `{field}`: {line}");
            }
        }
    }
    // A number and a unit after `sent`: the bytes, not a placeholder.
    let push = phase(&stderr, "push");
    let last_push = push.last().copied().unwrap_or_default();
    let sent = last_push.split("sent ").nth(1).unwrap_or_default();
    assert!(sent.contains("MiB") || sent.contains("KiB"), "{last_push}");
    // Plain lines only: no terminal control sequences in a captured stderr.
    assert!(!stderr.contains('\r') && !stderr.contains('\x1b'), "{stderr}");

    // A lost connection shows as its own phase while it is replaced, and the run ends exact.
    let expected = report["digest_expected"].as_str().expect("digest_expected").to_string();
    let args = ["--inject", "src:disconnect@resume+30", "--expected-digest", &expected];
    let (report, stderr) = migrate(&args);
    assert!(report["recoveries"].as_u64().unwrap_or(0) >= 1, "{report}");
    let recovering = phase(&stderr, "recovering a lost connection");
    assert!(!recovering.is_empty(), "no recovery line:\n{stderr}");
    for line in recovering {
        assert!(line.contains("sent ") && line.contains("eta "), "{line}");
    }
}
