//! The hybridmig command line. Parsing and printing only; the work is in the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hybridmig::vm::{parse_size, run_local, RunReport, VmConfig, WorkloadKind, WorkloadSpec};

#[derive(Parser)]
#[command(name = "hybridmig", version, about = "Live migration of KVM virtual machines")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a guest workload locally and report its op rate.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Workload: scan, hotcold, random, seqread or idle.
    #[arg(long)]
    workload: WorkloadKind,
    /// Workload memory, e.g. 256M, 1G, 4096M.
    #[arg(long, value_parser = parse_size_arg, default_value = "256M")]
    mem: u64,
    /// Number of vCPUs (1-4).
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Ops (over all vCPUs) after which the guest digests its memory and stops.
    #[arg(long)]
    ops: Option<u64>,
    /// Stop after this many seconds (default 10 when --ops is not given).
    #[arg(long)]
    seconds: Option<f64>,
    /// Cap on ops per second, per vCPU.
    #[arg(long)]
    pace: Option<u64>,
    /// Seed of every pseudo-random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Hot set size over the whole VM, MiB (hotcold).
    #[arg(long, default_value_t = 64)]
    hot_mib: u64,
    /// Fraction of ops that go to the hot set (hotcold).
    #[arg(long, default_value_t = 0.95)]
    hot_frac: f64,
    /// Fraction of ops that are writes (hotcold).
    #[arg(long, default_value_t = 0.2)]
    write_frac: f64,
    /// Measure the pause latency over this many pause/resume cycles.
    #[arg(long, default_value_t = 0)]
    measure_pause: usize,
    /// Print one JSON object on stdout at the end.
    #[arg(long)]
    json: bool,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(a) => run(a),
    }
}

fn run(a: RunArgs) -> Result<()> {
    let cfg = VmConfig {
        mem_bytes: a.mem,
        vcpus: a.vcpus,
        workload: WorkloadSpec {
            kind: a.workload,
            seed: a.seed,
            ops: a.ops,
            pace_ops_per_sec: a.pace,
            hot_mib: a.hot_mib,
            hot_frac: a.hot_frac,
            write_frac: a.write_frac,
        },
    };
    let report = run_local(&cfg, a.seconds, a.measure_pause, |p| {
        eprintln!("{:7.1}s {:>14} ops/s {:>16} ops", p.elapsed_s, p.ops_last_sec, p.ops_total);
    })
    .context("run failed")?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &RunReport) {
    println!(
        "{} mem={} MiB vcpus={} ops={} ops/s={:.0} (ops phase {:.3} s, setup {:.3} s)",
        r.workload,
        r.mem_bytes >> 20,
        r.vcpus,
        r.ops,
        r.ops_per_sec,
        r.ops_secs,
        r.setup_secs
    );
    if let Some(d) = &r.digest {
        println!("digest {d}");
    }
    if let Some(p) = &r.pause {
        println!(
            "pause latency over {} pauses: p50 {:.1} us, p99 {:.1} us, max {:.1} us",
            p.count, p.p50_us, p.p99_us, p.max_us
        );
    }
}
