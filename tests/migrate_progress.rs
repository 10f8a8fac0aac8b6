//! `hybridmig migrate` shows every phase as it runs, on stderr: the reference run, the guest
//! before the migration, the migration's phases with bytes sent, bytes left, a rate and an
//! ETA, and the guest finishing on the destination. With stderr not a terminal it prints plain
//! lines; stdout stays the `--json` report alone. The run must end verified.

mod cli_common;

use cli_common::{json_of, BIN};
use hybridmig::host_check::{require_kvm, require_uffd};
use std::process::Command;

#[test]
fn migrate_shows_each_phase_with_bytes_and_an_eta_on_stderr() {
    let test = "migrate_shows_each_phase_with_bytes_and_an_eta_on_stderr";
    if !require_kvm(test) || !require_uffd(test) {
        return;
    }
    let out = Command::new(BIN)
        .args(["migrate", "--workload", "hotcold", "--mem", "256M", "--ops", "1000000"])
        .args(["--pace", "150000", "--mode", "postcopy", "--seed", "12", "--json"])
        .output()
        .expect("migrate");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = json_of(out, "migrate postcopy with progress");
    assert_eq!(report["verified"], true, "{report}");
    let lines: Vec<&str> = stderr.lines().collect();
    let phase = |start: &str| -> Vec<&str> {
        lines.iter().copied().filter(|l| l.starts_with(start)).collect()
    };
    for (start, fields) in [
        ("reference run", &["ops ", " of ", "eta "][..]),
        ("guest runs on the source", &["ops ", "eta "][..]),
        ("push", &["sent ", "remaining ", "rate ", "eta "][..]),
        ("guest finishing on the destination", &["ops ", "received ", "eta "][..]),
    ] {
        let shown = phase(start);
        assert!(!shown.is_empty(), "no `{start}` line on stderr:\n{stderr}");
        for line in &shown {
            for field in fields {
                assert!(line.contains(field), "`{start}` line without `{field}`: {line}");
            }
        }
    }
    // A number and a unit after `sent`: the bytes, not a placeholder.
    let push = phase("push");
    let last_push = push.last().copied().unwrap_or_default();
    let sent = last_push.split("sent ").nth(1).unwrap_or_default();
    assert!(sent.contains("MiB") || sent.contains("KiB"), "{last_push}");
    // Plain lines only: no terminal control sequences in a captured stderr.
    assert!(!stderr.contains('\r') && !stderr.contains('\x1b'), "{stderr}");
}
