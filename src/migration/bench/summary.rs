//! `report.md` and the plots of a benchmark, from its [`BenchResults`].
//!
//! Runs are grouped into cells (profile, workload, memory, mode); a group is a cell without
//! its mode. Statistics use the finished runs of a cell, verified or not (the table says how
//! many were verified). Plots show the first group only, one representative run per mode: the
//! run whose `total_ms` is the cell's median.

use super::{BenchError, BenchResults, BenchRun};
use crate::metrics::plot::{bars_svg, cdf_svg, throughput_svg, BarPanel, ThroughputSeries};
use crate::migration::MigrationReport;
use std::fmt::Write as _;
use std::path::Path;

/// Reads one figure out of a report.
pub type MetricFn = fn(&MigrationReport) -> f64;

/// The metrics of the tables: name and how to read it from a report (NaN: the run has no
/// such figure, and it is left out of the cell's spread).
pub const METRICS: [(&str, MetricFn); 7] = [
    ("total_ms", |r| r.total_ms),
    ("downtime_ms", |r| r.downtime_ms),
    ("network_faults", |r| r.network_faults as f64),
    ("fault_us_p99", |r| r.fault_us_p99 as f64),
    ("bytes_wire_total", |r| r.bytes_wire_total as f64),
    ("vcpu_blocked_ms", |r| r.vcpu_blocked_ms),
    ("degradation_pct", |r| r.degradation_pct.unwrap_or(f64::NAN)),
];

/// Median, min and max of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// `None` for an empty sample.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let (first, last) = (*v.first()?, *v.last()?);
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Spread { median, min: first, max: last })
    }
}

/// A cell's key without its mode.
type GroupKey = (String, String, u64);

fn group_key(r: &BenchRun) -> GroupKey {
    (r.profile.clone(), r.workload.clone(), r.mem_bytes)
}

/// Groups in first-run order, each with its modes in first-run order.
fn groups(results: &BenchResults) -> Vec<(GroupKey, Vec<String>)> {
    let mut out: Vec<(GroupKey, Vec<String>)> = Vec::new();
    for r in &results.runs {
        let key = group_key(r);
        let idx = match out.iter().position(|g| g.0 == key) {
            Some(i) => i,
            None => {
                out.push((key, Vec::new()));
                out.len() - 1
            }
        };
        if !out[idx].1.contains(&r.mode) {
            out[idx].1.push(r.mode.clone());
        }
    }
    out
}

fn cell_runs<'a>(
    results: &'a BenchResults,
    key: &GroupKey,
    mode: &str,
) -> impl Iterator<Item = &'a BenchRun> {
    let key = key.clone();
    let mode = mode.to_string();
    results.runs.iter().filter(move |r| group_key(r) == key && r.mode == mode)
}

fn cell_spread(
    results: &BenchResults,
    key: &GroupKey,
    mode: &str,
    metric: usize,
) -> Option<Spread> {
    let get = METRICS[metric].1;
    let values: Vec<f64> =
        cell_runs(results, key, mode).filter_map(|r| r.report.as_ref()).map(get).collect();
    Spread::of(&values)
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The whole `report.md` text.
pub fn render_markdown(results: &BenchResults) -> String {
    let mut md = String::new();
    let m = &results.machine;
    let _ = writeln!(md, "# hybridmig bench\n\nCommand:\n\n```sh\n{}\n```\n", results.command);
    let _ = writeln!(
        md,
        "Machine: {} CPUs ({}), {} MiB memory, {}; RT throttling {}\n",
        m.nproc,
        m.cpu_model,
        m.mem_total_mib,
        m.kernel,
        match m.rt_runtime_us {
            Some(us) if us >= 0 => format!("on ({us} us a second)"),
            Some(_) => "off".to_string(),
            None => "unknown".to_string(),
        }
    );
    let s = &results.spec;
    let pace = s.pace.map_or("unpaced".to_string(), |p| format!("pace {p} ops/s per vCPU"));
    let _ = writeln!(
        md,
        "Guest: {} ops, {pace}, {} vCPU(s), seed {}; migration after {} ms; window {} pages; compression {}; {} rep(s) per cell.\n",
        s.ops, s.vcpus, s.seed, s.migrate_after_ms, s.window_pages, s.compression, s.reps
    );
    let verified = results.runs.iter().filter(|r| r.verified).count();
    let _ = writeln!(md, "Runs: {} of {} verified.\n", verified, results.runs.len());
    for (key, modes) in groups(results) {
        group_tables(&mut md, results, &key, &modes);
    }
    failures(&mut md, results);
    md
}

fn group_tables(md: &mut String, results: &BenchResults, key: &GroupKey, modes: &[String]) {
    let _ = writeln!(md, "## {} / {} / {} MiB\n", key.0, key.1, key.2 >> 20);
    let _ = writeln!(md, "Median [min-max] per cell.\n");
    let names: Vec<&str> = METRICS.iter().map(|m| m.0).collect();
    let _ = writeln!(md, "| mode | verified | {} |", names.join(" | "));
    let _ = writeln!(md, "|---|---|{}", "---|".repeat(names.len()));
    for mode in modes {
        let runs: Vec<&BenchRun> = cell_runs(results, key, mode).collect();
        let ok = runs.iter().filter(|r| r.verified).count();
        let cols: Vec<String> = (0..METRICS.len())
            .map(|i| match cell_spread(results, key, mode, i) {
                Some(s) => {
                    format!("{} [{}-{}]", fmt_value(s.median), fmt_value(s.min), fmt_value(s.max))
                }
                None => "n/a".into(),
            })
            .collect();
        let _ = writeln!(md, "| {mode} | {ok}/{} | {} |", runs.len(), cols.join(" | "));
    }
    let _ = writeln!(md);
    latency_dist_table(md, results, key, modes);
    if !modes.iter().any(|m| m == "hybrid") {
        return;
    }
    let _ = writeln!(md, "Ratios of the medians:\n");
    let _ = writeln!(md, "| ratio | {} |", names.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(names.len()));
    for base in ["postcopy", "precopy"] {
        if !modes.iter().any(|m| m == base) {
            continue;
        }
        let cols: Vec<String> = (0..METRICS.len())
            .map(|i| {
                let h = cell_spread(results, key, "hybrid", i).map(|s| s.median);
                let b = cell_spread(results, key, base, i).map(|s| s.median);
                match (h, b) {
                    (Some(h), Some(b)) if b != 0.0 => format!("{:.2}", h / b),
                    _ => "n/a".into(),
                }
            })
            .collect();
        let _ = writeln!(md, "| hybrid/{base} | {} |", cols.join(" | "));
    }
    let _ = writeln!(md);
}

/// The label of QEMU's latency bucket `i`: [2^i, 2^(i+1)) us, bucket 0 from 0, the last
/// one open.
fn pow2_label(i: usize) -> String {
    let low = if i == 0 { 0 } else { 1u64 << i };
    if i + 1 == crate::metrics::POW2_BUCKETS {
        return format!(">={low} us");
    }
    format!("{low}-{} us", 1u64 << (i + 1))
}

/// Fault latencies in QEMU's `postcopy-latency-dist` buckets, summed over each cell's runs;
/// only the buckets some cell of the group uses.
fn latency_dist_table(md: &mut String, results: &BenchResults, key: &GroupKey, modes: &[String]) {
    let sums: Vec<Vec<u64>> = modes
        .iter()
        .map(|mode| {
            let mut sum = vec![0u64; crate::metrics::POW2_BUCKETS];
            for r in cell_runs(results, key, mode).filter_map(|r| r.report.as_ref()) {
                for (total, count) in sum.iter_mut().zip(&r.fault_latency_dist_us) {
                    *total += count;
                }
            }
            sum
        })
        .collect();
    let used: Vec<usize> =
        (0..crate::metrics::POW2_BUCKETS).filter(|&i| sums.iter().any(|sum| sum[i] > 0)).collect();
    if used.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "Fault latency (QEMU's `postcopy-latency-dist`), faults summed over the runs:\n"
    );
    let labels: Vec<String> = used.iter().map(|&i| pow2_label(i)).collect();
    let _ = writeln!(md, "| mode | {} |", labels.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(used.len()));
    for (mode, sum) in modes.iter().zip(&sums) {
        let cols: Vec<String> = used.iter().map(|&i| sum[i].to_string()).collect();
        let _ = writeln!(md, "| {mode} | {} |", cols.join(" | "));
    }
    let _ = writeln!(md);
}

fn failures(md: &mut String, results: &BenchResults) {
    let bad: Vec<&BenchRun> = results.runs.iter().filter(|r| !r.verified).collect();
    if bad.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Runs not verified\n");
    for r in bad {
        let why = match (&r.error, &r.report) {
            (Some(e), _) => e.clone(),
            (None, Some(rep)) => format!("digest {} expected {}", rep.digest, rep.digest_expected),
            (None, None) => "no report".into(),
        };
        let _ = writeln!(
            md,
            "- {} {} {} MiB {} rep {}: {why}",
            r.profile,
            r.workload,
            r.mem_bytes >> 20,
            r.mode,
            r.rep
        );
    }
    let _ = writeln!(md);
}

/// Writes `report.md`.
pub fn write_markdown(out_dir: &Path, results: &BenchResults) -> Result<(), BenchError> {
    let path = out_dir.join("report.md");
    std::fs::write(&path, render_markdown(results)).map_err(|source| BenchError::Io {
        what: "writing",
        path,
        source,
    })
}

/// The run of a cell whose `total_ms` is nearest the cell's median.
fn representative<'a>(
    results: &'a BenchResults,
    key: &GroupKey,
    mode: &str,
) -> Option<&'a MigrationReport> {
    let median = cell_spread(results, key, mode, 0)?.median;
    cell_runs(results, key, mode)
        .filter_map(|r| r.report.as_ref())
        .min_by(|a, b| (a.total_ms - median).abs().total_cmp(&(b.total_ms - median).abs()))
}

/// Writes `throughput.svg`, `fault_cdf.svg` and `bars.svg` for the first group.
pub fn write_plots(out_dir: &Path, results: &BenchResults) -> Result<(), BenchError> {
    let Some((key, modes)) = groups(results).into_iter().next() else { return Ok(()) };
    let mut through = Vec::new();
    let mut cdfs = Vec::new();
    for mode in &modes {
        let Some(r) = representative(results, &key, mode) else { continue };
        through.push(ThroughputSeries {
            label: mode.clone(),
            buckets: r.progress_buckets.clone(),
            pause_ms: r.pause_at_ms,
            resume_ms: r.resume_at_ms,
            done_ms: r.done_at_ms,
        });
        cdfs.push((mode.clone(), r.fault_cdf.iter().map(|&(us, f)| (us as f64, f)).collect()));
    }
    // The guest runs on for seconds after the migration; show the migration and some after.
    let done_max_ms = through.iter().map(|t| t.done_ms).fold(0.0, f64::max);
    let window_ms = done_max_ms * 3.0 + 200.0;
    for t in &mut through {
        t.buckets.retain(|b| b.0 <= window_ms);
    }
    throughput_svg(&out_dir.join("throughput.svg"), &through)?;
    cdf_svg(&out_dir.join("fault_cdf.svg"), &cdfs)?;
    let panels: Vec<BarPanel> = [
        (0, "total_ms (median)"),
        (1, "downtime_ms (median)"),
        (2, "network_faults (median)"),
        (4, "bytes on the wire (median)"),
    ]
    .into_iter()
    .map(|(metric, title)| BarPanel {
        title: title.to_string(),
        bars: modes
            .iter()
            .map(|m| (m.clone(), cell_spread(results, &key, m, metric).map_or(0.0, |s| s.median)))
            .collect(),
    })
    .collect();
    bars_svg(&out_dir.join("bars.svg"), &panels)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{BenchSpec, MachineInfo};
    use super::*;

    fn run(mode: &str, total_ms: f64, faults: u64, verified: bool) -> BenchRun {
        let report = MigrationReport {
            mode: mode.into(),
            total_ms,
            network_faults: faults,
            verified,
            fault_cdf: vec![(100, 0.5), (400, 1.0)],
            fault_latency_dist_us: (0..24).map(|i| u64::from(i == 6) * faults).collect(),
            progress_buckets: vec![(0.0, 10.0), (10.0, 12.0)],
            ..MigrationReport::default()
        };
        BenchRun {
            profile: "loopback".into(),
            workload: "hotcold".into(),
            mem_bytes: 256 << 20,
            mode: mode.into(),
            rep: 0,
            verified,
            error: None,
            report: Some(report),
        }
    }

    fn results() -> BenchResults {
        BenchResults {
            command: "hybridmig bench --quick".into(),
            machine: MachineInfo::default(),
            spec: BenchSpec::quick(),
            runs: vec![
                run("postcopy", 400.0, 100, true),
                run("hybrid", 300.0, 20, true),
                run("postcopy", 600.0, 140, true),
                run("hybrid", 500.0, 30, false),
            ],
        }
    }

    #[test]
    fn spread_of_samples() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).expect("non-empty");
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[4.0, 1.0]).map(|s| s.median), Some(2.5));
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn markdown_has_cells_ratios_and_failures() {
        let md = render_markdown(&results());
        assert!(md.contains("| postcopy | 2/2 | 500 [400-600]"), "{md}");
        assert!(md.contains("| hybrid | 1/2 | 400 [300-500]"), "{md}");
        // total 400/500 = 0.80, faults 25/120 = 0.21.
        assert!(md.contains("| hybrid/postcopy | 0.80 | "), "{md}");
        assert!(md.contains("| 0.21 |"), "{md}");
        assert!(!md.contains("hybrid/precopy"), "{md}");
        assert!(md.contains("## Runs not verified"), "{md}");
        assert!(md.contains("Runs: 3 of 4 verified."), "{md}");
        // Faults of 64-128 us, summed over each cell's runs; no degradation without reference.
        assert!(md.contains("| 64-128 us |"), "{md}");
        assert!(md.contains("| postcopy | 240 |"), "{md}");
        assert!(md.contains("| hybrid | 50 |"), "{md}");
        assert_eq!((pow2_label(0), pow2_label(10)), ("0-2 us".into(), "1024-2048 us".into()));
        assert_eq!(pow2_label(23), ">=8388608 us");
    }

    #[test]
    fn plots_are_written() {
        let dir = std::env::temp_dir().join(format!("hm-bench-sum-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        write_plots(&dir, &results()).expect("plots");
        for f in ["throughput.svg", "fault_cdf.svg", "bars.svg"] {
            let text = std::fs::read_to_string(dir.join(f)).expect("written");
            assert!(text.contains("postcopy") && text.contains("hybrid"), "{f}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
