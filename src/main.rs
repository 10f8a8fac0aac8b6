//! The hybridmig command line. Parsing and printing only; the work is in the library.

#[path = "cli/control.rs"]
mod control_cli;
#[path = "cli/print.rs"]
mod print;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use control_cli::control_server;
use hybridmig::driver::inject::{InjectPlan, Side};
use hybridmig::migration::bench::{run_bench, BenchSpec};
use hybridmig::migration::delayline::{run_delay_line, DelayLineConfig};
use hybridmig::migration::{
    migrate_local, run_dest_host, run_source_host, DestHostOptions, LocalMigration, Outcome,
    SourceHostOptions, EXIT_CANCELLED,
};
use hybridmig::secure::{Credential, SecureConfig};
use hybridmig::source::{CompressionPolicy, LivePass};
use hybridmig::vm::{parse_size, run_local, RunReport, VmConfig, WorkloadKind, WorkloadSpec};
use hybridmig::wire::MigrationMode;
use std::io::{IsTerminal, Write};
use std::time::Duration;

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
    /// Migrate a running guest between two local processes and report (the main job).
    Migrate(MigrateArgs),
    /// Source host: run a guest and migrate it to a listening destination.
    Source(SourceArgs),
    /// Destination host: receive a guest and run it to the end of its ops.
    Dest(DestArgs),
    /// Run a matrix of migrations and write report.json, report.md and SVG plots.
    Bench(BenchArgs),
    /// Forward packets between two TUN devices, each held for a fixed delay (bench-env/netns
    /// starts it for the lan1g-rtt* profiles; the kernel has no netem).
    DelayLine(DelayLineArgs),
    /// Write a new pre-shared migration key (mode 0600) for `source` and `dest --key-file`.
    Keygen(KeygenArgs),
    /// Run seeded simulated migrations (both engines, a synthetic guest, a faulty link) and
    /// check each against an unmigrated run; a failure prints the command that replays it.
    Sim(SimArgs),
    /// Send one command to a host's control socket (`--control PATH`) and print the answer;
    /// exits 1 on an error answer (docs/control.md).
    #[command(alias = "ctl")]
    Control(control_cli::ControlArgs),
    /// Resume a migration over a new address: `migrate-recover` on a control socket (send it
    /// to the destination first, so it listens there, then to the source).
    Recover(control_cli::RecoverArgs),
}

#[derive(clap::Args)]
struct KeygenArgs {
    /// The key file to write (one line of hex, mode 0600).
    #[arg(long)]
    out: std::path::PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
struct SimArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Plant a fault the checks must catch: the link silently drops the Nth page window the
    /// source sends on bulk (0-based).
    #[arg(long, value_name = "N")]
    drop_window: Option<u64>,
    /// Print one JSON object (seeds, passed, failed, failures, and trace_hash for one seed).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct DelayLineArgs {
    /// Namespace of one end.
    #[arg(long)]
    a_netns: String,
    /// TUN device (already created) in that namespace.
    #[arg(long)]
    a_if: String,
    /// Namespace of the other end.
    #[arg(long)]
    b_netns: String,
    /// TUN device in it.
    #[arg(long)]
    b_if: String,
    /// Delay added to every packet, each way, in microseconds.
    #[arg(long)]
    delay_us: u64,
    /// Bytes held per direction at most; packets beyond are dropped.
    #[arg(long, default_value_t = 16 << 20)]
    limit_bytes: usize,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Modes, comma-separated (precopy, postcopy, hybrid, hybrid-paper, auto).
    #[arg(long, value_delimiter = ',')]
    modes: Option<Vec<String>>,
    /// Workloads, comma-separated.
    #[arg(long, value_delimiter = ',')]
    workloads: Option<Vec<String>>,
    /// Workload memory sizes, comma-separated (256M, 1G).
    #[arg(long, value_delimiter = ',')]
    mems: Option<Vec<String>>,
    /// Link profiles, comma-separated: loopback or a bench-env/netns profile (veth, lan1g, ...).
    #[arg(long, value_delimiter = ',')]
    profiles: Option<Vec<String>>,
    /// Runs per cell.
    #[arg(long)]
    reps: Option<u32>,
    /// Guest ops per run.
    #[arg(long)]
    ops: Option<u64>,
    /// Pace cap, ops/s per vCPU (0: unpaced).
    #[arg(long)]
    pace: Option<u64>,
    /// Guest run time before each migration.
    #[arg(long)]
    migrate_after_ms: Option<u64>,
    /// Start from the quick matrix (about a minute) instead of the default one.
    #[arg(long)]
    quick: bool,
    /// JSON object whose fields replace the matrix's (same names as report.json's `spec`).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Output directory.
    #[arg(long)]
    out: std::path::PathBuf,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    guest: GuestArgs,
    /// Stop after this many seconds (default 10 when --ops is not given).
    #[arg(long)]
    seconds: Option<f64>,
    /// Measure the pause latency over this many pause/resume cycles.
    #[arg(long, default_value_t = 0)]
    measure_pause: usize,
    /// Print one JSON object on stdout at the end.
    #[arg(long)]
    json: bool,
}

/// Options shared by every command that builds a guest.
#[derive(clap::Args, Clone)]
struct GuestArgs {
    /// Workload: scan, hotcold, random, seqread or idle.
    #[arg(long)]
    workload: WorkloadKind,
    /// Workload memory, e.g. 256M, 1G, 4096M.
    #[arg(long, value_parser = parse_size_arg, default_value = "256M")]
    mem: u64,
    /// Number of vCPUs (1-4).
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Ops (over all vCPUs) after which the guest digests its memory and stops [default for
    /// migrate: a few seconds of work (hotcold 20,000,000); run and source/dest without it: no
    /// end]
    #[arg(long)]
    ops: Option<u64>,
    /// Cap on ops per second, per vCPU [default: unpaced].
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
}

impl GuestArgs {
    fn config(&self) -> VmConfig {
        VmConfig {
            mem_bytes: self.mem,
            vcpus: self.vcpus,
            workload: WorkloadSpec {
                kind: self.workload,
                seed: self.seed,
                ops: self.ops,
                pace_ops_per_sec: self.pace,
                hot_mib: self.hot_mib,
                hot_frac: self.hot_frac,
                write_frac: self.write_frac,
            },
        }
    }
}

/// Authentication and encryption, shared by `source` and `dest`.
#[derive(clap::Args, Clone)]
struct SecurityArgs {
    /// The migration's pre-shared key (made by `hybridmig keygen`), the same file on both
    /// hosts, mode 0600. Required: every connection is authenticated.
    #[arg(long, value_name = "FILE")]
    key_file: Option<std::path::PathBuf>,
    /// Keep the authentication but send frames in the clear after the handshake (trusted
    /// links only: anyone on the path can read and change the guest's pages). Both hosts must
    /// agree.
    #[arg(long)]
    no_encrypt: bool,
}

impl SecurityArgs {
    fn config(&self) -> Result<SecureConfig> {
        let path = self.key_file.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "no --key-file: every connection is authenticated with a pre-shared key; make \
                 one with `hybridmig keygen --out FILE`, copy it to both hosts, and pass \
                 --key-file FILE to `source` and `dest`"
            )
        })?;
        let credential = Credential::from_key_file(path)?;
        Ok(SecureConfig::new(credential).encrypting(!self.no_encrypt))
    }
}

/// Options of the migration itself.
#[derive(clap::Args, Clone)]
struct MigrationArgs {
    /// auto, precopy, postcopy, hybrid or hybrid-paper. Auto starts with hybrid's live pass
    /// and goes post-copy when the guest writes memory faster than the link carries it.
    #[arg(long, default_value = "auto")]
    mode: MigrationMode,
    /// Let the guest run this long before the migration starts.
    #[arg(long, default_value_t = 1000)]
    migrate_after_ms: u64,
    /// Pages in a fault answer (hybrid modes).
    #[arg(long, default_value_t = 16)]
    window: u32,
    /// Grow the fault window while faults are sequential, shrink it when they are random
    /// (from 4 to 256 pages, starting at --window).
    #[arg(long)]
    adaptive_window: bool,
    /// lz4 compression: auto (from measured rates), on or off.
    #[arg(long, default_value = "auto", value_parser = parse_compression)]
    compress: CompressionPolicy,
    /// Hybrid: what crosses while the guest still runs: `all` (one pass over every non-zero
    /// page, working set last) or `ws` (the working set only).
    #[arg(long, default_value = "all")]
    live_pass: LivePass,
    /// Post-copy and hybrid: hold the background push this long after the state is sent; a
    /// delay longer than the guest's run leaves it on demand paging alone (the fault path's
    /// floor).
    #[arg(long, default_value_t = 0)]
    push_delay_ms: u64,
}

/// Options about time on the link and without progress, shared by `migrate`, `source` and
/// `dest`.
#[derive(clap::Args, Clone)]
struct TimeArgs {
    /// A stream whose peer leaves data or keepalive probes unacknowledged this long fails
    /// with a timeout (TCP_USER_TIMEOUT plus keepalive on both streams); 0 keeps the kernel's
    /// defaults.
    #[arg(long, default_value_t = 2000)]
    liveness_ms: u64,
    /// Fail after this many seconds without progress (no byte moved, no frame; after the
    /// migration, the destination's guest ops standing still). There is no limit on total
    /// time. `--timeout-s` is an older name for it.
    #[arg(long, alias = "timeout-s", default_value_t = 600)]
    progress_timeout_s: u64,
    /// After a lost connection, the source dials again and the destination waits for it, for
    /// at most this many seconds (each side keeps its half meanwhile); 0 gives up at once.
    #[arg(long, default_value_t = 60)]
    recover_timeout_s: u64,
}

impl TimeArgs {
    fn liveness(&self) -> Option<Duration> {
        (self.liveness_ms > 0).then(|| Duration::from_millis(self.liveness_ms))
    }

    fn progress_timeout(&self) -> Duration {
        Duration::from_secs(self.progress_timeout_s.max(1))
    }

    fn recover_timeout(&self) -> Option<Duration> {
        (self.recover_timeout_s > 0).then(|| Duration::from_secs(self.recover_timeout_s))
    }
}

#[derive(clap::Args)]
struct MigrateArgs {
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    migration: MigrationArgs,
    /// Run the source process in this network namespace.
    #[arg(long)]
    src_netns: Option<String>,
    /// Run the destination process in this network namespace.
    #[arg(long)]
    dst_netns: Option<String>,
    /// Address the destination listens on [default: 127.0.0.1:0, or with --dst-netns the
    /// first global IPv4 address in that namespace, port 0].
    #[arg(long)]
    listen: Option<String>,
    /// Digest of an unmigrated run, if known (skips the reference run, so the report has no
    /// `degradation_pct`).
    #[arg(long, value_parser = parse_hex)]
    expected_digest: Option<u64>,
    #[command(flatten)]
    time: TimeArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Inject faults (tests and drills): SPEC[,SPEC...], each optionally prefixed `src:` or
    /// `dst:` to pick the host, e.g. `dst:disconnect@start+40,refuse-reconnect` (docs/cli.md).
    #[arg(long, value_name = "SPECS", value_parser = parse_inject)]
    inject: Option<InjectPlan>,
    /// Keep the authentication (an ephemeral key made for this run) but send frames in the
    /// clear after the handshake.
    #[arg(long)]
    no_encrypt: bool,
}

#[derive(clap::Args)]
struct SourceArgs {
    #[command(flatten)]
    guest: GuestArgs,
    #[command(flatten)]
    migration: MigrationArgs,
    /// Destination address (host:port).
    #[arg(long)]
    connect: std::net::SocketAddr,
    /// Session id of the two connections (random when absent).
    #[arg(long)]
    session: Option<u64>,
    #[command(flatten)]
    time: TimeArgs,
    #[command(flatten)]
    security: SecurityArgs,
    /// Print PROGRESS lines on stderr (for a parent's progress bar and liveness watch).
    #[arg(long)]
    progress_lines: bool,
    /// Serve a control socket here (query-migrate, migrate-cancel, migrate-recover, events;
    /// docs/control.md); removed at exit.
    #[arg(long, value_name = "PATH")]
    control: Option<std::path::PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Inject faults (tests and drills): SPEC[,SPEC...], e.g. `disconnect@start+40`,
    /// `stall@switchover+0:50`, `corrupt@20`, `refuse-reconnect` (docs/cli.md).
    #[arg(long, value_name = "SPECS", value_parser = parse_inject)]
    inject: Option<InjectPlan>,
}

#[derive(clap::Args)]
struct DestArgs {
    #[command(flatten)]
    guest: GuestArgs,
    /// Address to listen on (host:port; port 0 picks one).
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Seconds to wait for the source. Connections that cannot join a session (garbage, a
    /// port probe, a silent or refused peer) are dropped with a warning meanwhile.
    #[arg(long, default_value_t = 120)]
    accept_timeout_s: u64,
    /// Time each connection has to send its whole Hello, ms.
    #[arg(long, default_value_t = 2000)]
    handshake_timeout_ms: u64,
    #[command(flatten)]
    time: TimeArgs,
    #[command(flatten)]
    security: SecurityArgs,
    /// Print PROGRESS lines on stderr (for a parent's liveness watch).
    #[arg(long)]
    progress_lines: bool,
    /// Serve a control socket here (query-migrate, migrate-cancel, migrate-recover, events;
    /// docs/control.md); removed at exit.
    #[arg(long, value_name = "PATH")]
    control: Option<std::path::PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Inject faults (tests and drills): SPEC[,SPEC...], e.g. `disconnect@start+40`,
    /// `stall@switchover+0:50`, `corrupt@20`, `refuse-reconnect` (docs/cli.md).
    #[arg(long, value_name = "SPECS", value_parser = parse_inject)]
    inject: Option<InjectPlan>,
}

fn parse_compression(s: &str) -> Result<CompressionPolicy, String> {
    match s {
        "auto" => Ok(CompressionPolicy::Auto),
        "on" => Ok(CompressionPolicy::On),
        "off" => Ok(CompressionPolicy::Off),
        _ => Err(format!("unknown compression `{s}` (auto, on, off)")),
    }
}

fn parse_inject(s: &str) -> Result<InjectPlan, String> {
    InjectPlan::parse(s).map_err(|e| e.to_string())
}

fn parse_hex(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| e.to_string())
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn main() -> Result<()> {
    // Warnings show by default: a dropped connection says who and why.
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(tracing_subscriber::filter::LevelFilter::WARN.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Run(a) => run(a),
        Cmd::Migrate(a) => migrate(a),
        Cmd::Source(a) => source(a),
        Cmd::Dest(a) => dest(a),
        Cmd::Bench(a) => bench(a),
        Cmd::DelayLine(a) => delay_line(a),
        Cmd::Sim(a) => print::sim(&a),
        Cmd::Control(a) => control_cli::control(a),
        Cmd::Recover(a) => control_cli::recover(a),
        Cmd::Keygen(a) => keygen(a),
    }
}

fn keygen(a: KeygenArgs) -> Result<()> {
    let key = hybridmig::secure::Psk::generate()?;
    hybridmig::secure::write_key_file(&a.out, &key, a.force)?;
    println!("wrote a new key to {} (mode 0600); give both hosts the same file", a.out.display());
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let mut spec = if a.quick { BenchSpec::quick() } else { BenchSpec::default() };
    if let Some(path) = &a.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        spec = spec.overlay_json(&text).with_context(|| format!("in {}", path.display()))?;
    }
    let lists = [
        (a.modes, &mut spec.modes),
        (a.workloads, &mut spec.workloads),
        (a.mems, &mut spec.mems),
        (a.profiles, &mut spec.profiles),
    ];
    for (given, field) in lists {
        if let Some(v) = given {
            *field = v;
        }
    }
    spec.reps = a.reps.unwrap_or(spec.reps);
    spec.ops = a.ops.unwrap_or(spec.ops);
    if let Some(p) = a.pace {
        spec.pace = (p > 0).then_some(p);
    }
    spec.migrate_after_ms = a.migrate_after_ms.unwrap_or(spec.migrate_after_ms);
    let command: Vec<String> = std::env::args().collect();
    let results = run_bench(&spec, &command.join(" "), &a.out, std::io::stderr().is_terminal())
        .context("bench failed")?;
    let bad = results.runs.iter().filter(|r| !r.verified).count();
    println!(
        "{} runs, {} verified; wrote {}/report.json, report.md, throughput.svg, fault_cdf.svg, bars.svg",
        results.runs.len(),
        results.runs.len() - bad,
        a.out.display()
    );
    if bad > 0 {
        anyhow::bail!("{bad} run(s) not verified (see report.md)");
    }
    Ok(())
}

fn migrate(a: MigrateArgs) -> Result<()> {
    let mut cfg = a.guest.config();
    if cfg.workload.ops.is_none() {
        // The guest must finish for its digest to be checked: a few seconds of work, so the
        // migration (after --migrate-after-ms) finds it running.
        let ops = cfg.workload.kind.default_migration_ops();
        eprintln!("no --ops given: the guest runs {ops} ops (a few seconds of work) and stops");
        cfg.workload.ops = Some(ops);
    }
    let m = LocalMigration {
        cfg,
        mode: a.migration.mode,
        migrate_after_ms: a.migration.migrate_after_ms,
        window_pages: a.migration.window,
        adaptive_window: a.migration.adaptive_window,
        compression: a.migration.compress,
        live_pass: a.migration.live_pass,
        push_delay_ms: a.migration.push_delay_ms,
        src_netns: a.src_netns,
        dst_netns: a.dst_netns,
        listen: a.listen,
        expected_digest: a.expected_digest,
        reference_timeline: None,
        progress: if std::io::stderr().is_terminal() {
            hybridmig::migration::phases::ProgressOutput::Terminal
        } else {
            hybridmig::migration::phases::ProgressOutput::Lines
        },
        progress_timeout: a.time.progress_timeout(),
        recover_timeout: a.time.recover_timeout(),
        liveness: a.time.liveness(),
        inject: a.inject,
        encrypt: !a.no_encrypt,
    };
    let report = migrate_local(&m).context("migration failed")?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print::print_migration(&report);
    }
    if report.verified {
        // Cancelled, the guest safe and exact on the source: neither success nor failure.
        exit_if_cancelled(report.outcome)?;
    }
    if !report.verified {
        anyhow::bail!(
            "digest mismatch: the migrated guest ended at {} but an unmigrated run ends at {}",
            report.digest,
            report.digest_expected
        );
    }
    Ok(())
}

fn source(a: SourceArgs) -> Result<()> {
    let (control, server) = control_server(a.control.as_deref(), hybridmig::control::Side::Source)?;
    let opts = SourceHostOptions {
        cfg: a.guest.config(),
        connect: a.connect,
        mode: a.migration.mode,
        migrate_after_ms: a.migration.migrate_after_ms,
        window_pages: a.migration.window,
        adaptive_window: a.migration.adaptive_window,
        compression: a.migration.compress,
        live_pass: a.migration.live_pass,
        push_delay_ms: a.migration.push_delay_ms,
        session_id: a
            .session
            .unwrap_or_else(|| hybridmig::metrics::mono_ns() ^ u64::from(std::process::id())),
        progress_lines: a.progress_lines,
        liveness: a.time.liveness(),
        progress_timeout: a.time.progress_timeout(),
        recover_timeout: a.time.recover_timeout(),
        inject: a.inject.map(|p| p.only_for(Side::Source)).transpose()?,
        control,
        security: Some(a.security.config()?),
    };
    let report = run_source_host(&opts).context("source failed")?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else if report.outcome == Outcome::Cancelled {
        println!(
            "source cancelled, the guest finished here: digest={} reason: {}",
            report.guest_digest.map(|g| format!("{g:016x}")).unwrap_or_default(),
            report.cancel_reason.as_deref().unwrap_or("?")
        );
    } else {
        let s = &report.stats;
        println!("source done: mode={} rounds={} pages_zero={} pages_raw={} pages_lz4={} bytes_bulk={} bytes_urgent={} faults_served={}", report.mode, s.rounds, s.pages_zero, s.pages_raw, s.pages_lz4, s.bytes_bulk, s.bytes_urgent, s.faults_served);
    }
    drop(server); // removes the socket before an exit that skips destructors
    exit_if_cancelled(report.outcome)
}

/// A host whose migration was cancelled has printed its report; its exit status says so.
fn exit_if_cancelled(outcome: Outcome) -> Result<()> {
    if outcome == Outcome::Cancelled {
        std::io::stdout().flush()?;
        std::process::exit(EXIT_CANCELLED);
    }
    Ok(())
}

fn dest(a: DestArgs) -> Result<()> {
    let (control, server) =
        control_server(a.control.as_deref(), hybridmig::control::Side::Destination)?;
    let opts = DestHostOptions {
        cfg: a.guest.config(),
        listen: a.listen,
        accept_timeout: Duration::from_secs(a.accept_timeout_s),
        handshake_timeout: Duration::from_millis(a.handshake_timeout_ms.max(1)),
        liveness: a.time.liveness(),
        progress_timeout: a.time.progress_timeout(),
        recover_timeout: a.time.recover_timeout(),
        progress_lines: a.progress_lines,
        inject: a.inject.map(|p| p.only_for(Side::Dest)).transpose()?,
        control,
        security: Some(a.security.config()?),
    };
    let report = run_dest_host(&opts, |addr| {
        println!("LISTENING {addr}");
        let _ = std::io::stdout().flush();
    })
    .context("destination failed")?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else if report.outcome == Outcome::Cancelled {
        println!("destination cancelled: {}", report.cancel_reason.as_deref().unwrap_or("?"));
    } else {
        let d = &report.run;
        println!(
            "destination done: network_faults={} fault_us_p50={} fault_us_p99={} digest={}",
            d.stats.network_faults,
            d.fault_us_p50,
            d.fault_us_p99,
            report.guest_digest.map(|g| format!("{g:016x}")).unwrap_or_default()
        );
    }
    drop(server); // removes the socket before an exit that skips destructors
    exit_if_cancelled(report.outcome)
}

fn delay_line(a: DelayLineArgs) -> Result<()> {
    let cfg = DelayLineConfig {
        a: (a.a_netns, a.a_if),
        b: (a.b_netns, a.b_if),
        delay: Duration::from_micros(a.delay_us),
        limit_bytes: a.limit_bytes,
    };
    eprintln!(
        "delay-line: {}/{} <-> {}/{}, {} us each way (runs until killed or a device goes)",
        cfg.a.0, cfg.a.1, cfg.b.0, cfg.b.1, a.delay_us
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let [ab, ba] = run_delay_line(&cfg, stop).context("delay line failed")?;
    for (dir, s) in [("a->b", ab), ("b->a", ba)] {
        use std::sync::atomic::Ordering::Relaxed;
        eprintln!(
            "delay-line {dir}: {} packets, {} bytes, {} dropped (queue full)",
            s.packets.load(Relaxed),
            s.bytes.load(Relaxed),
            s.dropped.load(Relaxed)
        );
    }
    Ok(())
}

fn run(a: RunArgs) -> Result<()> {
    let cfg = a.guest.config();
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
