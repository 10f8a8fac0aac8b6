//! A migration between two network namespaces joined by a veth pair (`bench-env/netns`), the
//! two-host test bed on one machine. The bed gets names of its own (`hmt-src-<pid>`,
//! `hmt-dst-<pid>`) so it never touches a developer's `hm-src`/`hm-dst`, and a guard takes it
//! down even when an assertion fails.
//!
//! Besides the guest's digest, the test checks that the bytes really crossed the veth (its
//! counters) and, under `lan1g-loss1`, that the link was capped near 1 Gbit/s and dropped
//! packets.

mod cli_common;

use cli_common::{json_of, BIN};
use hybridmig::host_check::{require_commands, require_kvm, require_root, require_uffd};
use serde_json::Value;
use std::process::Command;

const NETNS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench-env/netns");
/// The source veth end `bench-env/netns` creates, and the destination's address.
const SRC_IF: &str = "hm-veth0";
const DST_ADDR: &str = "10.77.0.2";
/// About 2 s of guest time at the pace; the migration starts after 800 ms.
const OPS: u64 = 200_000;
const PACE: u64 = 100_000;

const GUEST: [&str; 8] = ["--workload", "hotcold", "--mem", "256M", "--vcpus", "1", "--seed", "5"];

/// The namespace pair of this test; dropping it deletes both namespaces. The veth ends have
/// fixed names, so one bed exists at a time: the lock serializes the tests of this file even
/// when the harness runs them in parallel.
struct Bed {
    src: String,
    dst: String,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static BED_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Bed {
    fn new() -> Bed {
        let pid = std::process::id();
        // A test that failed while holding the lock poisons it; the bed is still usable.
        let guard = BED_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Bed { src: format!("hmt-src-{pid}"), dst: format!("hmt-dst-{pid}"), _one_at_a_time: guard }
    }

    fn script(&self, args: &[&str]) -> std::process::Output {
        Command::new(NETNS)
            .args(args)
            .env("HM_SRC_NS", &self.src)
            .env("HM_DST_NS", &self.dst)
            .env("HM_BIN", BIN)
            .output()
            .expect("running bench-env/netns")
    }

    fn up(&self, profile: &str) {
        let out = self.script(&["up", profile]);
        assert!(
            out.status.success(),
            "bench-env/netns up {profile}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Bytes sent by the source's veth end so far.
    fn src_tx_bytes(&self) -> u64 {
        let out = Command::new("ip")
            .args(["-n", &self.src, "-j", "-s", "link", "show", "dev", SRC_IF])
            .output()
            .expect("ip link");
        let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        v[0]["stats64"]["tx"]["bytes"].as_u64().expect("tx bytes")
    }

    /// Packets the loss rule dropped in `ns` (from its `counter`).
    fn dropped(&self, ns: &str) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "list", "ruleset"])
            .output()
            .expect("nft list");
        let text = String::from_utf8_lossy(&out.stdout);
        let after = text.split("counter packets ").nth(1).expect("a counter in the loss rule");
        after.split_whitespace().next().and_then(|n| n.parse().ok()).expect("packet count")
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let out = self.script(&["down"]);
        if !out.status.success() {
            eprintln!("bench-env/netns down: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

fn reference_digest() -> String {
    let mut args: Vec<String> = GUEST.iter().map(|s| s.to_string()).collect();
    args.extend(["--ops".to_string(), OPS.to_string()]);
    cli_common::reference_digest(&args)
}

/// Migrates the paced guest across `bed` in `mode`; checks both digests.
fn migrate(bed: &Bed, expected: &str, profile: &str, mode: &str) -> Value {
    let out = Command::new(BIN)
        .arg("migrate")
        .args(GUEST)
        .args(["--ops", &OPS.to_string(), "--pace", &PACE.to_string()])
        .args(["--mode", mode, "--migrate-after-ms", "800"])
        .args(["--src-netns", &bed.src, "--dst-netns", &bed.dst])
        .args(["--listen", &format!("{DST_ADDR}:0")])
        .args(["--expected-digest", expected, "--timeout-s", "40", "--json"])
        .output()
        .expect("migrate");
    let report = json_of(out, &format!("migrate over {profile}"));
    assert_eq!(
        report["verified"], true,
        "{profile}: digest {} vs expected {}",
        report["digest"], report["digest_expected"]
    );
    assert_eq!(report["memory_digest_match"], true, "{profile}: memory digests differ");
    eprintln!(
        "{profile}: total_ms={} downtime_ms={} bytes_wire_total={} network_faults={}",
        report["total_ms"],
        report["downtime_ms"],
        report["bytes_wire_total"],
        report["network_faults"]
    );
    report
}

/// KVM, userfaultfd, root and the bed's tools (each check prints or fails as it should).
fn bed_can_run(test: &str) -> bool {
    let tools =
        [("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables"), ("ethtool", "ethtool")];
    require_kvm(test) && require_uffd(test) && require_root(test) && require_commands(&tools, test)
}

/// Migrates `guest` across `bed` with `mode_args` (unpaced unless they set `--pace`; the
/// reference run is unpaced either way), and checks what every run must show: the digest, a
/// source that stayed paused, and every bulk page acknowledged.
fn migrate_unpaced(bed: &Bed, guest: &[&str], ops: &str, mode_args: &[&str], what: &str) -> Value {
    let expected = cli_common::reference_digest(&[guest, &["--ops", ops]].concat());
    let out = Command::new(BIN)
        .arg("migrate")
        .args(guest)
        .args(["--ops", ops])
        .args(mode_args)
        .args(["--src-netns", &bed.src, "--dst-netns", &bed.dst])
        .args(["--listen", &format!("{DST_ADDR}:0")])
        .args(["--expected-digest", &expected, "--timeout-s", "180", "--json"])
        // Both callers saturate lan100m with the push: its drop-tail queue then drops the pure
        // ACKs of the other direction often enough that TCP_USER_TIMEOUT ends healthy
        // connections, even at 10 s (docs/protocol.md, liveness): the kernel's defaults here.
        .args(["--liveness-ms", "0"])
        .output()
        .expect("migrate");
    let report = json_of(out, what);
    assert_eq!(
        report["verified"], true,
        "{what}: digest {} vs {}",
        report["digest"], report["digest_expected"]
    );
    assert_eq!(
        report["source_stayed_paused"], true,
        "{what}: the source guest ran after the pause"
    );
    assert_eq!(report["unacked_pages_at_end"], 0, "{what}: bulk pages never acknowledged");
    report
}

#[test]
fn hybrid_across_namespaces() {
    let test = "hybrid_across_namespaces";
    if !bed_can_run(test) {
        return;
    }
    let expected = reference_digest();
    let bed = Bed::new();

    bed.up("veth");
    let before = bed.src_tx_bytes();
    let report = migrate(&bed, &expected, "veth", "hybrid");
    let crossed = bed.src_tx_bytes() - before;
    let wire = report["bytes_wire_total"].as_u64().expect("bytes_wire_total");
    // The source sends every page of the 256 MiB guest (some lz4-compressed, as the auto
    // policy decides), and all of the bytes must have left through the veth.
    let pages: u64 = ["pages_raw", "pages_lz4", "pages_zero"]
        .iter()
        .map(|k| report[*k].as_u64().expect("page counts"))
        .sum();
    assert!(pages >= 65_536, "only {pages} pages sent for a 256 MiB guest");
    assert!(wire >= 64 << 20, "only {wire} bytes on the wire for a 256 MiB guest");
    assert!(crossed >= wire * 9 / 10, "the veth carried {crossed} bytes of {wire}");

    bed.up("lan1g-loss1");
    let report = migrate(&bed, &expected, "lan1g-loss1", "hybrid");
    let wire = report["bytes_wire_total"].as_u64().expect("bytes_wire_total") as f64;
    let total_ms = report["total_ms"].as_f64().expect("total_ms");
    let gbit_per_s = wire * 8.0 / (total_ms * 1e6);
    assert!(gbit_per_s < 1.1, "{gbit_per_s:.2} Gbit/s on a link capped at 1 Gbit/s");
    let drops = (bed.dropped(&bed.src), bed.dropped(&bed.dst));
    assert!(drops.0 > 0 && drops.1 > 0, "the 1% loss rule dropped no packets: {drops:?}");
    eprintln!("lan1g-loss1: {gbit_per_s:.2} Gbit/s, dropped (src, dst) = {drops:?}");
}

/// Pre-copy against a guest that rewrites all of its memory faster than the link carries a
/// round (`scan` over 256 MiB on `lan100m` at 10,000 pages/s, lz4 off): the rounds must stop
/// early, once a round leaves about as many dirty pages as the one before it, and the rest
/// must finish post-copy, exact, with no stop-and-copy of the whole guest inside the downtime.
#[test]
fn precopy_that_cannot_converge_ends_post_copy() {
    let test = "precopy_that_cannot_converge_ends_post_copy";
    if !bed_can_run(test) {
        return;
    }
    let guest = ["--workload", "scan", "--mem", "256M", "--vcpus", "1", "--seed", "5"];
    let bed = Bed::new();
    bed.up("lan100m");
    // The guest writes a page per op, 10,000 a second, 3.4 times what 100 Mbit/s carries, so
    // every round leaves all of memory dirty. On `lan1g`, unpaced, this test depended on the
    // host: the first write after the dirty log protects a page costs a fault in KVM's page
    // tables, and on a slow host day (the first sweep ran at 28,000 pages/s, about 35 us a
    // page) the rounds converged (5 and 14 rounds). The pace goes to `migrate` only:
    // the reference run is unpaced. lz4 off: scan's rewritten pages compress so well that with
    // lz4 the rounds would cross faster than the guest writes.
    let mode =
        ["--mode", "precopy", "--migrate-after-ms", "2000", "--compress", "off", "--pace", "10000"];
    // The guest must still be writing when round 2 ends: 2 s, then two rounds of up to 256
    // MiB at 100 Mbit/s (about 22 s each); 600,000 ops last 60 s.
    let report = migrate_unpaced(&bed, &guest, "600000", &mode, "precopy scan over lan100m");
    eprintln!(
        "non-converging precopy: rounds={} total_ms={} downtime_ms={} network_faults={}",
        report["rounds"], report["total_ms"], report["downtime_ms"], report["network_faults"]
    );
    assert_eq!(report["precopy_fallback"], true, "the rounds converged: the test proves nothing");
    let rounds = report["rounds"].as_u64().unwrap_or(u64::MAX);
    assert!(rounds <= 4, "{rounds} rounds: the stall was not detected early");
    // Structural, not timed: stop-and-copy would send the dirty pages (most of the 65,536)
    // inside the downtime; post-copy sends none there.
    let in_downtime = report["pages_in_downtime"].as_u64().unwrap_or(u64::MAX);
    assert_eq!(in_downtime, 0, "{in_downtime} pages sent in the downtime: stop-and-copy");
}

/// Hybrid against a guest that writes its cold memory faster than the link carries it
/// (unpaced `hotcold` on `lan100m` with half of its ops writing cold pages, lz4 off):
/// the live pass must give up its cold part instead of sending pages that are stale by the
/// pause, and the migration must still end exact.
#[test]
fn hybrid_gives_up_a_cold_part_that_goes_stale() {
    let test = "hybrid_gives_up_a_cold_part_that_goes_stale";
    if !bed_can_run(test) {
        return;
    }
    let bed = Bed::new();
    bed.up("lan100m");
    // The pass gives up when the guest would dirty it more than once while the link crosses it
    // once. Half of all ops write cold pages (the default guest writes 1% there, and dirties its
    // cold part at about a quarter of the link's rate: finishing is right for it). With lz4
    // off this guest measured 3.8 to 4.0 times the link's rate on this machine; with lz4 on,
    // 0.75 to 1.0 (lz4 both speeds the link up and takes CPU from the vCPU), too close to the
    // rule's threshold to test it.
    // The link is `lan100m`: on a slow host day this guest dirtied the cold part at only 0.16
    // to 0.31 times the rate of `lan1g` (3.8 to 4.0 on a faster day), and the pass rightly
    // went on; a tenth of the link gives the rule a margin on either day.
    let cold_writer = [&GUEST[..], &["--hot-frac", "0.5", "--write-frac", "1.0"]].concat();
    let mode = ["--mode", "hybrid", "--migrate-after-ms", "1000", "--compress", "off"];
    let report =
        migrate_unpaced(&bed, &cold_writer, "300000000", &mode, "cold-writing hotcold, lan100m");
    eprintln!(
        "hybrid, unpaced over lan100m: total_ms={} downtime_ms={} network_faults={} stale_pages={}",
        report["total_ms"], report["downtime_ms"], report["network_faults"], report["stale_pages"]
    );
    assert_eq!(report["cold_pass_abandoned"], true, "the cold part was sent to the end");
}

/// The delay line (`lan1g-rtt5ms`: TUN devices and `hybridmig delay-line`, 2.5 ms each way):
/// a post-copy migration across it stays exact, every network fault costs at least the
/// round trip, and `down` stops the forwarder it started.
#[test]
fn post_copy_across_the_delay_line() {
    let test = "post_copy_across_the_delay_line";
    if !bed_can_run(test) {
        return;
    }
    let expected = reference_digest();
    let bed = Bed::new();
    bed.up("lan1g-rtt5ms");
    let pid_file = format!("/run/hm-delayline-{}.pid", bed.src);
    let pid = std::fs::read_to_string(&pid_file).expect("the delay line's pid file");
    let stat = format!("/proc/{}/stat", pid.trim());
    // Running: present and not a zombie (the forwarder is an orphan once the script ends).
    let running = || std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z "));
    assert!(running(), "no delay line process {}", pid.trim());

    let report = migrate(&bed, &expected, "lan1g-rtt5ms", "postcopy");
    let faults = report["network_faults"].as_u64().expect("network_faults");
    let p50 = report["fault_us_p50"].as_u64().expect("fault_us_p50");
    eprintln!(
        "lan1g-rtt5ms postcopy: total_ms={} network_faults={faults} fault_us_p50={p50} fault_us_p99={}",
        report["total_ms"], report["fault_us_p99"]
    );
    assert!(faults > 0, "post-copy of a running hotcold guest took no network fault");
    assert!(p50 >= 5_000, "fault p50 {p50} us is under the 5 ms round trip");

    let down = bed.script(&["down"]);
    assert!(down.status.success(), "down: {}", String::from_utf8_lossy(&down.stderr));
    assert!(!running(), "the delay line outlived `down`");
    assert!(!std::path::Path::new(&pid_file).exists(), "`down` left {pid_file}");
}

const RT_THROTTLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench-env/rt-throttle");
const RT_KNOB: &str = "/proc/sys/kernel/sched_rt_runtime_us";

/// Puts the machine's RT throttling back as it was, even when an assertion fails.
struct RtKnobGuard(String);

impl Drop for RtKnobGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(RT_KNOB, &self.0);
    }
}

fn rt_throttle(arg: &str, saved: &std::path::Path) -> String {
    let out = Command::new(RT_THROTTLE)
        .arg(arg)
        .env("HM_RT_SAVED", saved)
        .output()
        .expect("running bench-env/rt-throttle");
    assert!(out.status.success(), "rt-throttle {arg}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `bench-env/rt-throttle off` turns the throttling off and keeps the old value, a second
/// `off` does not overwrite it with -1, and `on` restores it and forgets it.
#[test]
fn rt_throttle_script_turns_off_and_restores() {
    if !require_root("rt_throttle_script_turns_off_and_restores") {
        return;
    }
    let knob = || std::fs::read_to_string(RT_KNOB).expect("reading the RT knob").trim().to_string();
    let original = knob();
    let _guard = RtKnobGuard(original.clone());
    let saved = std::env::temp_dir().join(format!("hm-rt-saved-{}", std::process::id()));
    let _ = std::fs::remove_file(&saved);

    rt_throttle("off", &saved);
    assert_eq!(knob(), "-1");
    rt_throttle("off", &saved);
    assert_eq!(
        std::fs::read_to_string(&saved).unwrap().trim(),
        original,
        "second `off` kept the value"
    );
    assert_eq!(rt_throttle("show", &saved).trim(), "off");
    rt_throttle("on", &saved);
    assert_eq!(knob(), original);
    assert!(!saved.exists(), "`on` left {}", saved.display());
    assert!(rt_throttle("show", &saved).starts_with(if original == "-1" { "off" } else { "on" }));
}

/// A post-copy migration on `lan1g` whose link is cut both ways for `partition_ms`
/// (`bench-env/netns partition`), starting `cut_after_ms` after `migrate` starts (its guest
/// runs 800 ms before the migration, and the push waits 4 s after the resume, so the cut falls
/// in the post-copy phase). Returns the output of `migrate`.
fn migrate_across_a_partition(
    bed: &Bed,
    expected: &str,
    cut_after_resume_ms: u64,
    partition_ms: u64,
    recover_timeout_s: u64,
) -> std::process::Output {
    let mut child = Command::new(BIN)
        .arg("migrate")
        .args(GUEST)
        .args(["--ops", &OPS.to_string(), "--pace", &PACE.to_string()])
        .args(["--mode", "postcopy", "--migrate-after-ms", "800", "--push-delay-ms", "4000"])
        .args(["--src-netns", &bed.src, "--dst-netns", &bed.dst])
        .args(["--listen", &format!("{DST_ADDR}:0")])
        .args(["--recover-timeout-s", &recover_timeout_s.to_string()])
        .args(["--expected-digest", expected, "--timeout-s", "60", "--json"])
        // The destination's resume is logged at info: the cut is timed from it, not from the
        // start, which a loaded machine may delay by seconds.
        .env("RUST_LOG", "hybridmig=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("migrate");
    let stderr = child.stderr.take().expect("stderr");
    let (resumed_tx, resumed_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if line.contains("hand-over, resuming the guest") {
                let _ = resumed_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let resumed = resumed_rx.recv_timeout(std::time::Duration::from_secs(60));
    assert!(resumed.is_ok(), "the destination never resumed the guest");
    std::thread::sleep(std::time::Duration::from_millis(cut_after_resume_ms));
    let cut = bed.script(&["partition", &partition_ms.to_string()]);
    assert!(cut.status.success(), "partition: {}", String::from_utf8_lossy(&cut.stderr));
    let mut out = child.wait_with_output().expect("migrate output");
    out.stderr = reader.join().expect("stderr reader").into_bytes();
    out
}

/// A 5 s partition during post-copy: both sides see it within the liveness time (2 s), keep
/// their halves, and the source's redial gets through soon after the heal; the migration ends
/// exact, with a recovery counted.
#[test]
fn a_partition_during_post_copy_is_recovered() {
    let test = "a_partition_during_post_copy_is_recovered";
    if !bed_can_run(test) {
        return;
    }
    let bed = Bed::new();
    bed.up("lan1g");
    let expected = reference_digest();
    let out = migrate_across_a_partition(&bed, &expected, 300, 5_000, 60);
    let report = json_of(out, "migrate across a 5 s partition");
    assert_eq!(report["verified"], true, "{report}");
    assert!(report["recoveries"].as_u64().unwrap_or(0) >= 1, "no recovery counted: {report}");
    let recovery_ms = report["recovery_ms"].as_f64().unwrap_or(0.0);
    eprintln!(
        "5 s partition: recoveries={} recovery_ms={recovery_ms:.0} pages_resent={} total_ms={}",
        report["recoveries"], report["pages_resent"], report["total_ms"]
    );
    // Detected within the liveness (2 s) and redialled within about a second of the heal.
    assert!(recovery_ms < 5_000.0 + 2_500.0, "recovery took {recovery_ms} ms");
}

/// A partition longer than `--recover-timeout-s`: both sides give up with an error naming
/// what each still holds (the source its whole memory and the guest paused, the destination
/// its pages), and nothing is dropped silently.
#[test]
fn a_partition_longer_than_the_recover_timeout_names_what_each_side_holds() {
    let test = "a_partition_longer_than_the_recover_timeout_names_what_each_side_holds";
    if !bed_can_run(test) {
        return;
    }
    let bed = Bed::new();
    bed.up("lan1g");
    let expected = reference_digest();
    let out = migrate_across_a_partition(&bed, &expected, 300, 9_000, 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a migration cut for longer than it may recover succeeded");
    assert!(stderr.contains("no new connection within"), "{stderr}");
    assert!(stderr.contains("this side holds: the guest paused here"), "{stderr}");
    assert!(stderr.contains("this side holds: phase Running"), "{stderr}");
}

/// Every mode on `lan1g-loss1` and `lan1g-loss5` (1% and 5% of packets dropped each way), three
/// runs each: loss costs time, never a page. A loss that stalls a stream past the liveness
/// time is a lost connection, which the migration recovers.
#[test]
fn every_mode_stays_exact_under_loss() {
    let test = "every_mode_stays_exact_under_loss";
    if !bed_can_run(test) {
        return;
    }
    let expected = reference_digest();
    for profile in ["lan1g-loss1", "lan1g-loss5"] {
        let bed = Bed::new();
        bed.up(profile);
        for mode in ["precopy", "postcopy", "hybrid", "hybrid-paper"] {
            for run in 1..=3 {
                let report = migrate(&bed, &expected, profile, mode);
                eprintln!(
                    "{profile} {mode} run {run}: fault_us_p99={} fault_us_max={} \
                     fault_retries={} recoveries={}",
                    report["fault_us_p99"],
                    report["fault_us_max"],
                    report["fault_retries"],
                    report["recoveries"]
                );
                if profile == "lan1g-loss1" && mode == "postcopy" {
                    // A lost fault request or answer is asked again on the other connection,
                    // well before TCP's 200 ms retransmission timeout.
                    let max_us = report["fault_us_max"].as_u64().unwrap_or(u64::MAX);
                    assert!(max_us < 100_000, "{profile} {mode}: a fault waited {max_us} us");
                }
            }
        }
    }
}

/// `--mode auto` on `lan1g` (lz4 off, so the link's guest rate is its wire rate): a guest that
/// rewrites its whole hot set unpaced is judged write-heavy and its written pages follow the
/// switch-over as in post-copy; a paced guest keeps the live pass and never goes post-copy.
/// Both end exact, and each decision carries the figures it was taken on.
#[test]
fn auto_chooses_post_copy_for_a_write_heavy_guest_and_keeps_the_live_pass_when_paced() {
    let test = "auto_chooses_post_copy_for_a_write_heavy_guest_and_keeps_the_live_pass_when_paced";
    if !bed_can_run(test) {
        return;
    }
    let bed = Bed::new();
    bed.up("lan1g");
    let choices = |report: &Value| -> Vec<String> {
        let decisions = report["auto_decisions"].as_array().expect("auto_decisions");
        decisions.iter().map(|d| d["choice"].as_str().unwrap_or("?").to_string()).collect()
    };
    let heavy = ["--workload", "hotcold", "--mem", "256M", "--seed", "5", "--hot-frac", "1"];
    let heavy = [&heavy[..], &["--write-frac", "1"]].concat();
    let mode = ["--mode", "auto", "--compress", "off", "--migrate-after-ms", "800"];
    let report = migrate_unpaced(&bed, &heavy, "3000000", &mode, "auto, write-heavy, lan1g");
    assert_eq!(report["mode"], "auto");
    let chosen = choices(&report);
    eprintln!("auto, write-heavy: {chosen:?} {}", report["auto_decisions"]);
    assert!(chosen.iter().any(|c| c == "postcopy"), "write-heavy guest, no post-copy: {chosen:?}");
    let decisions = report["auto_decisions"].as_array().expect("decisions");
    let postcopy = decisions.iter().find(|d| d["choice"] == "postcopy").expect("postcopy");
    let figures = &postcopy["figures"];
    let ws_mb_per_s = figures["ws_dirty_pages_per_s"].as_f64().unwrap_or(0.0) * 4096.0 / 1e6;
    let link = figures["link_guest_mb_per_s"].as_f64().unwrap_or(0.0);
    assert!(link > 0.0, "no link rate behind the decision: {figures}");
    assert!(ws_mb_per_s >= link, "written {ws_mb_per_s:.0} MB/s under the link's {link:.0}");

    let paced = ["--workload", "hotcold", "--mem", "256M", "--seed", "5", "--pace", "20000"];
    let report = migrate_unpaced(&bed, &paced, "60000", &mode, "auto, paced, lan1g");
    let chosen = choices(&report);
    eprintln!("auto, paced: {chosen:?}");
    assert_eq!(chosen.first().map(String::as_str), Some("live-pass"), "{chosen:?}");
    assert!(!chosen.iter().any(|c| c == "postcopy"), "a paced guest went post-copy: {chosen:?}");
    assert_eq!(chosen.last().map(String::as_str), Some("switch-over"), "{chosen:?}");
}
