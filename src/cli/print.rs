//! What the command prints: the simulator's verdicts and a migration's report.

use anyhow::Result;
use hybridmig::migration::{MigrationReport, Outcome};

pub(crate) fn sim(a: &super::SimArgs) -> Result<()> {
    use hybridmig::sim::seeds::{replay_command, run_seeds, SeedVerdict};
    let plant = a.drop_window.map(|nth| hybridmig::sim::Plant::DropPageWindow { nth });
    let report = run_seeds(a.from, a.seeds, plant, |r| {
        if let SeedVerdict::Failed(why) = &r.verdict {
            eprintln!("seed {} ({}): {why}", r.seed, r.mode);
        }
    });
    let failed = report.failures.len();
    if a.json {
        let failures: Vec<_> = report
            .failures
            .iter()
            .map(|f| {
                let why = match &f.verdict {
                    SeedVerdict::Failed(why) => why.clone(),
                    other => format!("{other:?}"),
                };
                serde_json::json!({
                    "seed": f.seed,
                    "mode": f.mode.name(),
                    "error": why,
                    "replay": replay_command(f.seed, plant),
                })
            })
            .collect();
        let mut out = serde_json::json!({
            "seeds": report.seeds,
            "passed": report.passed,
            "failed": failed,
            "corruption_caught": report.corruption_caught,
            "recoveries": report.recoveries,
            "multi_recovery_runs": report.multi_recovery_runs,
            "fault_retries": report.fault_retries,
            "cap_stall_runs": report.cap_stall_runs,
            "failures": failures,
        });
        if let Some(hash) = report.trace_hash {
            out["trace_hash"] = serde_json::json!(format!("{hash:#018x}"));
        }
        println!("{out}");
    } else {
        for f in &report.failures {
            println!("FAILED seed {}: replay with: {}", f.seed, replay_command(f.seed, plant));
        }
        if let Some(hash) = report.trace_hash {
            println!("trace_hash {hash:#018x}");
        }
        println!(
            "{} recoveries ({} runs with two or more), {} runs caught a corrupted frame",
            report.recoveries, report.multi_recovery_runs, report.corruption_caught
        );
        println!("{} passed, {} failed", report.passed, failed);
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

pub(crate) fn print_migration(r: &MigrationReport) {
    if r.outcome == Outcome::Cancelled {
        println!(
            "cancelled before the hand-over, the guest finished on the source: {}",
            r.cancel_reason.as_deref().unwrap_or("?")
        );
        if let Some(why) = &r.dest_cancel_reason {
            println!("destination: {why}");
        }
    }
    println!("{}", r.summary_line());
    print_glance(r);
    println!(
        "digest {} expected {} -> {}",
        r.digest,
        r.digest_expected,
        if r.verified { "verified" } else { "MISMATCH" }
    );
}

/// `vcpu_blocked_ms`, with each vCPU's part when there are several.
fn blocked_line(r: &MigrationReport) -> String {
    let total = format!("{:.1} ms", r.vcpu_blocked_ms);
    if r.vcpu_blocked_ms_per_vcpu.len() < 2 {
        return total;
    }
    let parts: Vec<String> =
        r.vcpu_blocked_ms_per_vcpu.iter().map(|ms| format!("{ms:.1}")).collect();
    format!("{total} ({} ms by vCPU)", parts.join(" / "))
}

/// The few figures a person reads first, on aligned lines (the line above has them all).
fn print_glance(r: &MigrationReport) {
    let rows = [
        ("mode", r.mode.clone()),
        ("total", format!("{:.1} ms", r.total_ms)),
        ("downtime", format!("{:.2} ms", r.downtime_ms)),
        (
            "faults",
            format!("{} (p50 {} us, p99 {} us)", r.network_faults, r.fault_us_p50, r.fault_us_p99),
        ),
        ("vCPU blocked", blocked_line(r)),
        (
            "slowdown",
            r.degradation_pct
                .map_or("no reference run".to_string(), |p| format!("{p:.1}% (vs unmigrated run)")),
        ),
        ("on the wire", format!("{:.1} MiB", r.bytes_wire_total as f64 / (1 << 20) as f64)),
        ("recoveries", r.recoveries.to_string()),
        ("encrypted", if r.encrypted { "yes" } else { "no" }.to_string()),
    ];
    for (name, value) in rows {
        println!("  {name:<13}{value}");
    }
}
