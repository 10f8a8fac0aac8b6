//! Seeded simulation of whole migrations: both engines, a synthetic guest and a faulty link.
//! Every run ends by comparing the destination with an unmigrated run, byte for byte. A failure
//! prints `SIM SEED=...`; replay it with `HYBRIDMIG_SIM_SEED=<seed>`.

use hybridmig::sim::{self, SimGuestSpec, SimRun, SimRunError};
use hybridmig::source::LivePass;
use hybridmig::transport::sim::{run_seeded, SimFaults};
use hybridmig::wire::MigrationMode;

fn spec(mode: MigrationMode, seed: u64, faults: SimFaults) -> SimRun {
    SimRun {
        mode,
        guest: SimGuestSpec { seed: seed ^ 0x55, ..SimGuestSpec::default() },
        steps_before: 3_000,
        steps_total: 20_000,
        faults,
        seed,
        live_pass: LivePass::All,
        place_chunk_pages: 0,
        ..SimRun::default()
    }
}

fn lossy() -> SimFaults {
    SimFaults {
        delay_us: (20, 400),
        loss_probability: 0.02,
        retransmit_delay_us: 3_000,
        reorder_probability: 0.1,
        reorder_extra_us: 500,
        ..SimFaults::default()
    }
}

#[test]
fn every_mode_is_exact_on_a_perfect_link() {
    run_seeded("every_mode_is_exact_on_a_perfect_link", |seed| {
        for mode in MigrationMode::ALL {
            for k in 0..3 {
                let out = sim::run(&spec(mode, seed.wrapping_add(k), SimFaults::default()))
                    .unwrap_or_else(|e| panic!("{mode}: {e}"));
                assert!(out.exact, "{mode}: destination differs from the unmigrated run");
                assert_eq!(out.unacked_pages, 0, "{mode}: bulk pages never acknowledged");
            }
        }
    });
}

#[test]
fn every_mode_is_exact_with_loss_delay_and_reordering() {
    run_seeded("every_mode_is_exact_with_loss_delay_and_reordering", |seed| {
        for mode in MigrationMode::ALL {
            for k in 0..3 {
                let out = sim::run(&spec(mode, seed.wrapping_add(k), lossy()))
                    .unwrap_or_else(|e| panic!("{mode}: {e}"));
                assert!(out.exact, "{mode}: destination differs from the unmigrated run");
            }
        }
    });
}

#[test]
fn hybrid_faults_less_than_postcopy() {
    // Summed over several seeds: a single small run can tie when the push wins the race.
    run_seeded("hybrid_faults_less_than_postcopy", |seed| {
        // A read-mostly hot set: the working set sent before the pause stays valid, which is
        // where hybrid wins (a write-hot set is stale after the pause in every mode).
        let read_mostly = |mode, k: u64| {
            let mut s = spec(mode, seed.wrapping_add(k), lossy());
            s.guest.write_frac = 0.02;
            s
        };
        let (mut post, mut hybrid) = (0, 0);
        for k in 0..8 {
            let p = sim::run(&read_mostly(MigrationMode::Postcopy, k)).expect("postcopy");
            let h = sim::run(&read_mostly(MigrationMode::Hybrid, k)).expect("hybrid");
            assert!(p.exact && h.exact);
            post += p.network_faults;
            hybrid += h.network_faults;
        }
        eprintln!("network faults over 8 seeds: hybrid {hybrid}, postcopy {post}");
        assert!(hybrid < post, "hybrid {hybrid} vs postcopy {post} network faults over 8 seeds");
    });
}

#[test]
fn hybrid_live_pass_variants_are_exact_and_the_full_pass_faults_least() {
    // The full live pass sends the cold part too, so first touches of cold pages after the
    // resume find them present; the working-set-only pass leaves them to faults.
    run_seeded("hybrid_live_pass_variants", |seed| {
        let (mut all, mut ws) = (0, 0);
        for k in 0..6 {
            let mut s = spec(MigrationMode::Hybrid, seed.wrapping_add(k), lossy());
            s.guest.write_frac = 0.02;
            let a = sim::run(&s).expect("hybrid, full live pass");
            s.live_pass = LivePass::WorkingSet;
            let w = sim::run(&s).expect("hybrid, working-set live pass");
            assert!(a.exact && w.exact, "a live-pass variant is not exact");
            assert_eq!(a.unacked_pages + w.unacked_pages, 0);
            all += a.network_faults;
            ws += w.network_faults;
        }
        eprintln!("network faults over 6 seeds: full pass {all}, working set only {ws}");
        assert!(all < ws, "full live pass {all} vs working-set pass {ws} network faults");
    });
}

#[test]
fn hybrid_resends_cold_pages_that_went_stale_and_stays_exact() {
    // A guest that writes a third of its steps to cold pages: the cold part leaves stale pages
    // behind it, which the live re-passes send again before the pause.
    run_seeded("hybrid_resends_cold_pages_that_went_stale", |seed| {
        let mut resent = 0;
        for k in 0..6 {
            let faults = if k % 2 == 0 { SimFaults::default() } else { lossy() };
            let mut s = spec(MigrationMode::Hybrid, seed.wrapping_add(k), faults);
            s.guest.hot_frac = 0.67;
            s.guest.write_frac = 0.5;
            let out = sim::run(&s).expect("hybrid, cold writer");
            assert!(out.exact, "seed {k}: destination differs from the unmigrated run");
            assert_eq!(out.unacked_pages, 0);
            resent += out.stale_repass_pages;
        }
        eprintln!("stale pages re-sent over 6 seeds: {resent}");
        assert!(resent > 0, "no stale page outside the working set was re-sent");
    });
}

#[test]
fn corruption_is_a_typed_error_never_silent() {
    run_seeded("corruption_is_a_typed_error_never_silent", |seed| {
        // A frame the reader's CRC refuses breaks the connection and the run recovers; one
        // refused by an engine's own decoder ends the run with a typed error. Never silent.
        let faults = SimFaults { corrupt_byte_probability: 1e-5, ..SimFaults::default() };
        let mut refused = 0;
        for mode in MigrationMode::ALL {
            match sim::run(&spec(mode, seed, faults.clone())) {
                Ok(out) => {
                    assert!(out.exact, "{mode}: corruption passed silently");
                    refused += out.frames_refused;
                }
                Err(SimRunError::Source(_) | SimRunError::Dest(_)) => refused += 1,
                Err(other) => panic!("{mode}: expected recovery or a typed error, got {other}"),
            }
        }
        assert!(refused > 0, "no corrupted frame was caught");
    });
}

#[test]
fn a_dropped_link_is_recovered_in_every_mode() {
    run_seeded("a_dropped_link_is_recovered_in_every_mode", |seed| {
        for mode in MigrationMode::ALL {
            for at_us in [2_000, 20_000, 60_000] {
                let faults = SimFaults { disconnect_at_us: Some(at_us), ..SimFaults::default() };
                let out = sim::run(&spec(mode, seed, faults))
                    .unwrap_or_else(|e| panic!("{mode}, drop at {at_us} us: {e}"));
                assert!(out.exact, "{mode}, drop at {at_us} us: differs from the unmigrated run");
                assert_eq!(out.placed_twice.0, 0, "{mode}: a page placed twice");
                assert_eq!(out.unacked_pages, 0, "{mode}: bulk pages never acknowledged");
            }
        }
    });
}

#[test]
fn windows_placed_chunk_by_chunk_between_faults_stay_exact() {
    // The destination places each background window one page per turn, so fault answers,
    // guest steps and later frames land in the middle of a window, as with the io_uring
    // driver's chunked placement.
    run_seeded("windows_placed_chunk_by_chunk_between_faults_stay_exact", |seed| {
        for mode in [MigrationMode::Postcopy, MigrationMode::Hybrid, MigrationMode::Precopy] {
            for k in 0..3 {
                let mut s = spec(mode, seed.wrapping_add(k), lossy());
                s.place_chunk_pages = 1;
                let out = sim::run(&s).unwrap_or_else(|e| panic!("{mode}: {e}"));
                assert!(out.exact, "{mode}: destination differs from the unmigrated run");
                assert_eq!(out.unacked_pages, 0, "{mode}: bulk pages never acknowledged");
            }
        }
    });
}
