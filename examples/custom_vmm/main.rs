//! custom_vmm: a VMM of its own, migrated by hybridmig's library.
//!
//! Nothing of hybridmig's built-in VMM is used: guest memory is rust-vmm's `GuestMemoryMmap`,
//! the VM and its vCPU are kvm-ioctls, and the guest is a few dozen bytes of code written
//! here ([`guest`]). The program runs the guest once without migrating (the reference), then
//! again on a source thread, migrates it mid-run over loopback TCP to a destination thread in
//! the mode asked for, lets it finish there, and compares the digests of guest memory.
//!
//! ```text
//! cargo run --release --example custom_vmm -- [--mode precopy|postcopy|hybrid|hybrid-paper]
//!     [--mem 64M] [--passes 32] [--pass-ms 40] [--migrate-after-ms 200] [--refuse-state]
//! ```
//!
//! `--passes` sweeps over the data; the VMM holds each pass to at least `--pass-ms`, so the
//! guest still runs when the migration starts `--migrate-after-ms` after it, on a fast host
//! too. `--refuse-state` drills a cancel: the destination refuses the state, and the guest must
//! finish on the source, exact. Prints one line containing `verified` and exits 0 when the migrated guest's memory
//! equals the reference's; exits 1 with the reason otherwise. docs/embedding.md walks through
//! it.

mod guest;
mod machine;
mod migrate;
mod state;
mod vcpu;
mod vm_port;

use guest::{GuestError, GuestSpec, DATA_GPA, PAGE_BYTES};
use hybridmig::dest::driver::DestRun;
use hybridmig::secure::{Credential, KeyError, Psk};
use hybridmig::source::SourceStats;
use hybridmig::wire::MigrationMode;
use machine::{Machine, MachineError};
use migrate::{migrate_dest, migrate_source, MigrateError};
use state::ProgressDevice;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Errors of the program, each naming what was wrong.
#[derive(Debug, Error)]
enum AppError {
    #[error("unknown argument `{0}` (see the usage in examples/custom_vmm/main.rs)")]
    UnknownArg(String),
    #[error("{flag} needs a value")]
    MissingValue { flag: &'static str },
    #[error("{flag} {value}: {why}")]
    BadValue { flag: &'static str, value: String, why: &'static str },
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("source: {source}; destination: {dest}")]
    BothSides { source: Box<AppError>, dest: Box<AppError> },
    #[error("the migration was cancelled, yet the destination completed it")]
    UnexpectedCancel,
    #[error("the destination never said where it listens")]
    NoListener,
    #[error("making the migration's key: {0}")]
    Key(KeyError),
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
    #[error("the guest finished (pass {passes}) before the migration paused it; raise --passes or lower --migrate-after-ms")]
    FinishedEarly { passes: u32 },
    #[error("{what}: the guest ended at pass {passes} (done: {done}), expected pass {expected} and done")]
    Unfinished { what: &'static str, passes: u32, done: bool, expected: u32 },
    #[error("the reference run's data page {page} holds {got:#010x} at offset {offset}, the program should have written {expected:#010x}")]
    Program { page: u32, offset: u64, got: u32, expected: u32 },
    #[error("memory digest of the migrated run {migrated:#018x} differs from the unmigrated run's {reference:#018x}")]
    Mismatch { reference: u64, migrated: u64 },
}

struct Args {
    mode: MigrationMode,
    mem_bytes: u64,
    passes: u32,
    pass_ms: u64,
    migrate_after_ms: u64,
    /// The destination refuses the state: the migration must cancel, and the guest finish on
    /// the source.
    refuse_state: bool,
}

fn main() -> ExitCode {
    match run() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("custom_vmm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<String, AppError> {
    let args = parse_args(std::env::args().skip(1))?;
    let spec = GuestSpec {
        min_pass: Duration::from_millis(args.pass_ms),
        ..GuestSpec::new(args.mem_bytes, args.passes)?
    };
    let started = Instant::now();
    let reference = reference_run(spec)?;
    let reference_ms = started.elapsed().as_millis();
    eprintln!("custom_vmm: reference run (not migrated) took {reference_ms} ms");
    let migrated = match migrated_run(spec, &args)? {
        RunEnd::Migrated(migrated) => migrated,
        RunEnd::CancelledHere { digest } if digest == reference => {
            return Ok(format!(
                "custom_vmm: mode {} mem {} MiB: the destination refused the state, the \
                 migration was cancelled before the hand-over and the guest finished on the \
                 source; reference run {reference_ms} ms; digest {digest:#018x} verified",
                args.mode.name(),
                args.mem_bytes >> 20,
            ));
        }
        RunEnd::CancelledHere { digest } => {
            return Err(AppError::Mismatch { reference, migrated: digest });
        }
    };
    if migrated.digest != reference {
        return Err(AppError::Mismatch { reference, migrated: migrated.digest });
    }
    let downtime_ms = migrated.dest.resume_ns.saturating_sub(migrated.source.pause_ns) as f64 / 1e6;
    Ok(format!(
        "custom_vmm: mode {} mem {} MiB: paused on the source after {} of {} passes, finished \
         on the destination; downtime {downtime_ms:.2} ms, network faults {}, pages placed {}, \
         working set {} pages; reference run {reference_ms} ms; digest {:#018x} verified",
        args.mode.name(),
        args.mem_bytes >> 20,
        migrated.paused_at_pass,
        args.passes,
        migrated.dest.stats.network_faults,
        migrated.dest.stats.pages_placed,
        migrated.source.ws_pages,
        migrated.digest,
    ))
}

/// Longest run of the guest on one side.
const FINISH_LIMIT: Duration = Duration::from_secs(120);

/// Runs the guest to its end without migrating; returns its memory digest.
fn reference_run(spec: GuestSpec) -> Result<u64, AppError> {
    let mut vm = Machine::new(spec)?;
    vm.load_program()?;
    vm.start_or_resume()?;
    let device = vm.wait_finished(FINISH_LIMIT)?;
    check_finished("reference run", device, spec.passes)?;
    check_program(&vm, spec)?;
    Ok(vm.digest())
}

/// Checks that the program computed what [`guest::word_of`] says, on a few pages of the last
/// pass, so a wrong program is caught here rather than passing as "verified" twice over.
fn check_program(vm: &Machine, spec: GuestSpec) -> Result<(), AppError> {
    let last = spec.data_pages() - 1;
    for page in [0, last / 2, last] {
        let (expected, offset) = guest::word_of(spec.passes, page);
        let got = vm.read_u32(DATA_GPA + u64::from(page) * PAGE_BYTES + offset);
        if got != Some(expected) {
            return Err(AppError::Program { page, offset, got: got.unwrap_or(0), expected });
        }
    }
    Ok(())
}

fn check_finished(what: &'static str, device: ProgressDevice, passes: u32) -> Result<(), AppError> {
    if device.passes == passes && device.done {
        return Ok(());
    }
    Err(AppError::Unfinished { what, passes: device.passes, done: device.done, expected: passes })
}

/// What the migrated run ended with.
struct Migrated {
    source: SourceStats,
    dest: DestRun,
    /// The last pass the guest finished on the source.
    paused_at_pass: u32,
    /// The destination's guest memory once the guest finished there.
    digest: u64,
}

/// How a migrated run ended.
enum RunEnd {
    /// The guest moved and finished on the destination.
    Migrated(Box<Migrated>),
    /// `--refuse-state`: the migration was cancelled and the guest finished on the source,
    /// whose memory digest this is.
    CancelledHere { digest: u64 },
}

/// Starts the guest on a source thread, migrates it to a destination thread, and lets it
/// finish there (or, when the destination refuses the state, on the source).
fn migrated_run(spec: GuestSpec, args: &Args) -> Result<RunEnd, AppError> {
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    // Both sides hold the migration's pre-shared key; here they share the process.
    let key = Credential::Psk(Psk::generate().map_err(AppError::Key)?);
    let source_key = key.clone();
    let (mode, after, refuse) =
        (args.mode, Duration::from_millis(args.migrate_after_ms), args.refuse_state);
    std::thread::scope(|scope| {
        let dest = scope.spawn(move || -> Result<(DestRun, u64), AppError> {
            let mut vm = Machine::new(spec)?;
            if refuse {
                vm.refuse_states();
            }
            let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
            let run = migrate_dest(&mut vm, any_port, key, |addr| {
                // The source gives up on its own if this end is gone.
                let _ = tx.send(addr);
            })?;
            check_finished("destination", vm.wait_finished(FINISH_LIMIT)?, spec.passes)?;
            Ok((run, vm.digest()))
        });
        let source =
            scope.spawn(move || run_source_side(spec, &rx, after, mode, refuse, source_key));
        let dest = dest.join().map_err(|_| AppError::Panicked("destination"))?;
        let source = source.join().map_err(|_| AppError::Panicked("source"))?;
        match (source, dest) {
            (Ok(SourceEnd::Migrated(source, paused_at_pass)), Ok((dest, digest))) => {
                Ok(RunEnd::Migrated(Box::new(Migrated {
                    source: *source,
                    dest,
                    paused_at_pass,
                    digest,
                })))
            }
            // The drill's destination fails by design: it refused the state.
            (Ok(SourceEnd::Cancelled { digest }), Err(_)) if refuse => {
                Ok(RunEnd::CancelledHere { digest })
            }
            (Ok(SourceEnd::Cancelled { .. }), Ok(_)) => Err(AppError::UnexpectedCancel),
            (Ok(_), Err(e)) => Err(e),
            (Err(source), Err(dest)) => {
                Err(AppError::BothSides { source: Box::new(source), dest: Box::new(dest) })
            }
            (Err(e), Ok(_)) => Err(e),
        }
    })
}

/// How the source side ended.
enum SourceEnd {
    /// Handed over: its stats, and the last pass the guest finished here.
    Migrated(Box<SourceStats>, u32),
    /// Cancelled before the hand-over; the guest finished here with this memory digest.
    Cancelled { digest: u64 },
}

/// The source thread: starts the guest, migrates it `after` later to the address `rx` gives.
/// With `refuse` (the drill), a cancel is the expected end: the guest then finishes here.
fn run_source_side(
    spec: GuestSpec,
    rx: &std::sync::mpsc::Receiver<SocketAddr>,
    after: Duration,
    mode: MigrationMode,
    refuse: bool,
    key: Credential,
) -> Result<SourceEnd, AppError> {
    let addr = rx.recv_timeout(Duration::from_secs(10)).map_err(|_| AppError::NoListener)?;
    let mut vm = Machine::new(spec)?;
    vm.load_program()?;
    vm.start_or_resume()?;
    std::thread::sleep(after);
    let before = vm.progress();
    if before.done {
        return Err(AppError::FinishedEarly { passes: before.passes });
    }
    let stats = match migrate_source(&mut vm, addr, mode, session_id(), key) {
        Ok(stats) => stats,
        Err(MigrateError::Cancelled(error)) if refuse => {
            eprintln!("custom_vmm: source: {error}");
            check_finished(
                "source after the cancel",
                vm.wait_finished(FINISH_LIMIT)?,
                spec.passes,
            )?;
            return Ok(SourceEnd::Cancelled { digest: vm.digest() });
        }
        Err(e) => return Err(e.into()),
    };
    let at_pause = vm.progress();
    if at_pause.done {
        // Migrated, but not while running: not the case this program is here to show.
        return Err(AppError::FinishedEarly { passes: at_pause.passes });
    }
    Ok(SourceEnd::Migrated(Box::new(stats), at_pause.passes))
}

/// A session id unlikely to repeat between runs on one host.
fn session_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()) << 32
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, AppError> {
    let mut args = Args {
        mode: MigrationMode::Hybrid,
        mem_bytes: 64 << 20,
        passes: 32,
        pass_ms: 40,
        migrate_after_ms: 200,
        refuse_state: false,
    };
    while let Some(arg) = it.next() {
        if arg == "--refuse-state" {
            args.refuse_state = true;
            continue;
        }
        let flag: &'static str = match arg.as_str() {
            "--mode" => "--mode",
            "--mem" => "--mem",
            "--passes" => "--passes",
            "--pass-ms" => "--pass-ms",
            "--migrate-after-ms" => "--migrate-after-ms",
            _ => return Err(AppError::UnknownArg(arg)),
        };
        let value = it.next().ok_or(AppError::MissingValue { flag })?;
        let bad = |why| AppError::BadValue { flag, value: value.clone(), why };
        match flag {
            "--mode" => {
                args.mode = MigrationMode::ALL
                    .into_iter()
                    .find(|m| m.name() == value)
                    .ok_or_else(|| bad("not one of precopy, postcopy, hybrid, hybrid-paper"))?;
            }
            "--mem" => {
                args.mem_bytes = parse_size(&value).ok_or_else(|| bad("not a size like 64M"))?
            }
            "--passes" => args.passes = value.parse().map_err(|_| bad("not a whole number"))?,
            "--pass-ms" => args.pass_ms = value.parse().map_err(|_| bad("not a whole number"))?,
            _ => args.migrate_after_ms = value.parse().map_err(|_| bad("not a whole number"))?,
        }
    }
    Ok(args)
}

/// `64M`, `1G`, `4096K` or bytes.
fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}
