//! The embedding API end to end: a real KVM guest of the built-in VMM, moved between two
//! threads of this process over loopback TCP by the builders alone, real userfaultfd and
//! io_uring, and checked against an unmigrated run of the same guest.

mod vm_common;

use hybridmig::facade::{DestBuilder, Outcome, SourceBuilder, Step};
use hybridmig::host_check::{require_kvm, require_uffd};
use hybridmig::migration::KvmGuest;
use hybridmig::secure::{Credential, Psk};
use hybridmig::source::SourceConfig;
use hybridmig::vm::{Vm, VmConfig, WorkloadKind};
use hybridmig::wire::MigrationMode;
use std::time::Duration;
use vm_common::{cfg, run_plain};

/// Ops of the test guest: about a second of work, so the migration finds it running.
const OPS: u64 = 8_000_000;

fn ready(test: &str) -> bool {
    require_kvm(test) && require_uffd(test)
}

/// A source guest running for 150 ms, an incoming destination VM, and a fresh key.
fn running_pair(c: &VmConfig) -> (Vm, Vm, Psk) {
    let mut src = Vm::new(c).expect("source vm");
    let dst = Vm::new_incoming(c).expect("destination vm");
    src.start().expect("start");
    std::thread::sleep(Duration::from_millis(150));
    (src, dst, Psk::generate().expect("key"))
}

/// A destination listening on a free loopback port, which it sends on `tx`.
fn listening(key: &Psk, tx: std::sync::mpsc::SyncSender<std::net::SocketAddr>) -> DestBuilder {
    DestBuilder::listen("127.0.0.1:0".parse().expect("addr"))
        .credential(Credential::Psk(key.clone()))
        .accept_timeout(Duration::from_secs(30))
        .on_listening(tx)
}

/// Migrates a running guest in `mode` with `run` on both sides (the caller's threads) and
/// returns the guest's digest where it finished.
fn migrate_on_callers_threads(mode: MigrationMode) -> u64 {
    let (mut src, mut dst, key) = running_pair(&cfg(WorkloadKind::HotCold, 1, 3, OPS));
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::scope(|s| {
        let dest = s.spawn(|| listening(&key, tx).run(KvmGuest::new(&mut dst)).result);
        let addr = rx.recv_timeout(Duration::from_secs(10)).expect("the destination listens");
        let source = SourceBuilder::new(SourceConfig::new(mode, 77))
            .connect(addr)
            .credential(Credential::Psk(key.clone()));
        let end = source.run(KvmGuest::new(&mut src));
        assert!(end.handed_over, "{mode}: {:?}", end.result);
        assert_eq!(end.result.expect("source"), Outcome::Completed, "{mode}");
        assert_eq!(dest.join().expect("thread").expect("destination"), Outcome::Completed);
    });
    dst.wait_finished(Duration::from_secs(30)).expect("run").expect("finished in time")
}

#[test]
fn every_mode_through_the_builders_ends_exact() {
    if !ready("every_mode_through_the_builders_ends_exact") {
        return;
    }
    let reference = run_plain(&cfg(WorkloadKind::HotCold, 1, 3, OPS));
    for mode in [
        MigrationMode::Precopy,
        MigrationMode::Postcopy,
        MigrationMode::Hybrid,
        MigrationMode::HybridPaper,
    ] {
        let digest = migrate_on_callers_threads(mode);
        assert_eq!(digest, reference, "{mode}: the migrated guest diverged");
    }
}

/// On threads the library starts: the handle's status, counters and events follow the
/// migration, and a cancel after the hand-over is refused.
#[test]
fn the_handle_reports_events_and_refuses_a_late_cancel() {
    if !ready("the_handle_reports_events_and_refuses_a_late_cancel") {
        return;
    }
    let c = cfg(WorkloadKind::HotCold, 1, 4, OPS);
    let reference = run_plain(&c);
    // Threads the library starts need VMs they own for good: these two live to the end of
    // the test process.
    let src: &'static mut Vm = Box::leak(Box::new(Vm::new(&c).expect("source vm")));
    let dst: &'static mut Vm = Box::leak(Box::new(Vm::new_incoming(&c).expect("dest vm")));
    src.start().expect("start");
    let key = Psk::generate().expect("key");
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let dest = DestBuilder::listen("127.0.0.1:0".parse().expect("addr"))
        .credential(Credential::Psk(key.clone()))
        .on_listening(tx)
        .spawn(KvmGuest::new(dst))
        .expect("spawn destination");
    let addr = rx.recv_timeout(Duration::from_secs(10)).expect("listening");
    let source = SourceBuilder::new(SourceConfig::new(MigrationMode::Postcopy, 78))
        .connect(addr)
        .credential(Credential::Psk(key))
        .spawn(KvmGuest::new(src))
        .expect("spawn source");
    let statuses: Vec<String> = source.events().iter().map(|e| e.status).collect();
    assert_eq!(statuses.last().map(String::as_str), Some("completed"), "{statuses:?}");
    assert!(statuses.iter().any(|s| s == "postcopy-active"), "{statuses:?}");
    let query = source.query();
    assert_eq!(query["status"], "completed", "{query}");
    assert!(query["ram"]["transferred"].as_u64().unwrap_or(0) > 0, "{query}");
    assert!(source.cancel().is_err(), "a cancel after the end must be refused");
    let source_end = source.join().expect("source thread");
    assert!(matches!(source_end.result, Ok(Outcome::Completed)), "{:?}", source_end.result);
    let dest_end = dest.join().expect("destination thread");
    assert!(dest_end.verified(), "{:?}", dest_end.result);
    let dst = dest_end.vm.into_inner();
    let digest = dst.wait_finished(Duration::from_secs(30)).expect("run").expect("finished");
    assert_eq!(digest, reference, "the migrated guest diverged");
}

/// Authentication is on by default: a builder without a credential refuses to dial or listen,
/// and gives the source VM back untouched and running.
#[test]
fn a_builder_without_a_credential_is_refused() {
    if !ready("a_builder_without_a_credential_is_refused") {
        return;
    }
    let c = cfg(WorkloadKind::HotCold, 1, 5, OPS);
    let mut src = Vm::new(&c).expect("source vm");
    src.start().expect("start");
    let cfg = SourceConfig::new(MigrationMode::Postcopy, 79);
    let addr = "127.0.0.1:9".parse().expect("addr");
    let end = SourceBuilder::new(cfg).connect(addr).run(KvmGuest::new(&mut src));
    assert!(!end.handed_over);
    let reason = match end.result {
        Ok(hybridmig::facade::Outcome::Cancelled { reason }) => reason,
        other => panic!("expected a cancel naming the missing credential, got {other:?}"),
    };
    assert!(reason.contains("credential"), "{reason}");
    assert!(!src.is_finished() || src.is_started(), "the guest runs on");
    let dest = DestBuilder::listen("127.0.0.1:0".parse().expect("addr"));
    let mut dst = Vm::new_incoming(&c).expect("destination vm");
    let end = dest.run(KvmGuest::new(&mut dst));
    let error = end.result.expect_err("no credential");
    assert!(error.to_string().contains("credential"), "{error}");
}

/// Steps `migration` from this thread's own poll loop until it ends: poll its descriptor for
/// at most its interval, then one step of at most a few ms. Bounded by `limit`.
macro_rules! step_to_end {
    ($migration:expr, $limit:expr) => {{
        let started = std::time::Instant::now();
        let mut steps = 0u64;
        loop {
            assert!(started.elapsed() < $limit, "no end within {:?}", $limit);
            if let Some(fd) = $migration.poll_fd() {
                let wait_ms = $migration.step_within().as_millis().min(5) as i32;
                let mut pfd = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd on a live local, for a descriptor the migration keeps open.
                unsafe { libc::poll(&mut pfd, 1, wait_ms) };
            }
            steps += 1;
            match $migration.step(Duration::from_millis(3)).expect("step") {
                Step::Pending => {}
                Step::Finished(end) => break (end, steps),
            }
        }
    }};
}

/// Both sides turned by loops of the test's own (one per thread) through the step call, in
/// post-copy and hybrid: the guest ends exact, and the status moves through the same control
/// state a handle reads.
#[test]
fn a_migration_stepped_from_the_callers_loop_ends_exact() {
    if !ready("a_migration_stepped_from_the_callers_loop_ends_exact") {
        return;
    }
    let c = cfg(WorkloadKind::HotCold, 1, 6, OPS);
    let reference = run_plain(&c);
    for (mode, session) in [(MigrationMode::Postcopy, 80), (MigrationMode::Hybrid, 81)] {
        let (mut src, mut dst, key) = running_pair(&c);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::scope(|s| {
            let dest = s.spawn(|| {
                let mut migration = listening(&key, tx).start(KvmGuest::new(&mut dst));
                let (end, _) = step_to_end!(migration, Duration::from_secs(60));
                end.result
            });
            let addr = rx.recv_timeout(Duration::from_secs(10)).expect("the destination listens");
            let mut migration = SourceBuilder::new(SourceConfig::new(mode, session))
                .connect(addr)
                .credential(Credential::Psk(key.clone()))
                .start(KvmGuest::new(&mut src));
            let events = migration.control().subscribe();
            let (end, steps) = step_to_end!(migration, Duration::from_secs(60));
            assert!(steps > 10, "{mode}: {steps} steps: the loop was not turned step by step");
            assert!(end.handed_over, "{mode}: {:?}", end.result);
            assert_eq!(end.result.expect("source"), Outcome::Completed, "{mode}");
            assert!(end.stats.bytes_bulk > 0, "{mode}");
            assert_eq!(migration.status().as_str(), "completed", "{mode}");
            assert!(migration.step(Duration::ZERO).is_err(), "{mode}: stepped past its end");
            let statuses: Vec<String> = events.try_iter().collect();
            assert!(statuses.iter().any(|l| l.contains("completed")), "{mode}: {statuses:?}");
            assert_eq!(dest.join().expect("thread").expect("destination"), Outcome::Completed);
        });
        let digest = dst.wait_finished(Duration::from_secs(30)).expect("run").expect("in time");
        assert_eq!(digest, reference, "{mode}: the migrated guest diverged");
    }
}

/// A cancel from the stepping thread before the hand-over: the next step ends the migration
/// as cancelled, the guest runs on at the source and ends exact, the destination (which never
/// ran it) ends cancelled too, and a second cancel is refused.
#[test]
fn a_cancel_from_the_stepping_thread_leaves_the_guest_on_the_source() {
    if !ready("a_cancel_from_the_stepping_thread_leaves_the_guest_on_the_source") {
        return;
    }
    let c = cfg(WorkloadKind::HotCold, 1, 7, OPS);
    let reference = run_plain(&c);
    let (mut src, mut dst, key) = running_pair(&c);
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::scope(|s| {
        let dest = s.spawn(|| {
            let builder = listening(&key, tx).recover_timeout(None);
            builder.run(KvmGuest::new(&mut dst)).result
        });
        let addr = rx.recv_timeout(Duration::from_secs(10)).expect("the destination listens");
        let mut migration = SourceBuilder::new(SourceConfig::new(MigrationMode::Precopy, 82))
            .connect(addr)
            .credential(Credential::Psk(key.clone()))
            .start(KvmGuest::new(&mut src));
        for _ in 0..3 {
            assert!(matches!(migration.step(Duration::from_millis(2)), Ok(Step::Pending)));
        }
        migration.cancel().expect("a cancel before the hand-over is taken");
        let Ok(Step::Finished(end)) = migration.step(Duration::from_millis(2)) else {
            panic!("the step after the cancel did not end the migration");
        };
        assert!(!end.handed_over);
        assert!(matches!(end.result, Ok(Outcome::Cancelled { .. })), "{:?}", end.result);
        assert_eq!(migration.status().as_str(), "cancelled");
        assert!(migration.cancel().is_err(), "a cancel after the end must be refused");
        let dest_end = dest.join().expect("thread").expect("destination");
        assert!(matches!(dest_end, Outcome::Cancelled { .. }), "{dest_end:?}");
    });
    let digest = src.wait_finished(Duration::from_secs(30)).expect("run").expect("in time");
    assert_eq!(digest, reference, "the guest that stayed on the source diverged");
}
