//! `hybridmig bench` end to end on a tiny matrix (2 modes, 256 MiB, 1 rep, loopback): the
//! files it promises exist, `report.json` parses, and every run is verified.

use hybridmig::host_check::{require_kvm, require_uffd};
use serde_json::Value;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_hybridmig");

#[test]
fn bench_writes_reports_and_plots() {
    if !require_kvm("bench_writes_reports_and_plots")
        || !require_uffd("bench_writes_reports_and_plots")
    {
        return;
    }
    let out_dir = std::env::temp_dir().join(format!("hm-bench-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = Command::new(BIN)
        .args([
            "bench",
            "--modes",
            "postcopy,hybrid",
            "--workloads",
            "hotcold",
            "--mems",
            "256M",
            "--profiles",
            "loopback",
            "--reps",
            "1",
            "--ops",
            "150000",
            "--pace",
            "100000",
            "--migrate-after-ms",
            "500",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .expect("spawn hybridmig bench");
    assert!(
        out.status.success(),
        "bench failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["report.json", "report.md", "throughput.svg", "fault_cdf.svg", "bars.svg"] {
        let len = std::fs::metadata(out_dir.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{f} missing or empty");
    }
    let text = std::fs::read_to_string(out_dir.join("report.json")).expect("report.json");
    let json: Value = serde_json::from_str(&text).expect("report.json parses");
    let runs = json["runs"].as_array().expect("runs array");
    assert_eq!(runs.len(), 2);
    let modes: Vec<&str> = runs.iter().filter_map(|r| r["mode"].as_str()).collect();
    assert_eq!(modes, ["postcopy", "hybrid"]);
    for r in runs {
        assert_eq!(r["verified"], Value::Bool(true), "{r}");
        assert_eq!(r["report"]["verified"], Value::Bool(true));
        assert!(r["report"]["total_ms"].as_f64().unwrap_or(0.0) > 0.0);
    }
    let md = std::fs::read_to_string(out_dir.join("report.md")).expect("report.md");
    assert!(md.contains("| hybrid/postcopy |"), "{md}");
    assert!(md.contains("Runs: 2 of 2 verified."), "{md}");
    let svg = std::fs::read_to_string(out_dir.join("throughput.svg")).expect("svg");
    assert!(svg.starts_with("<svg") && svg.contains("hybrid"));
    let _ = std::fs::remove_dir_all(&out_dir);
}
