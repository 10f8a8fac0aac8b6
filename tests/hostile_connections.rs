//! A destination that meets hostile or confused connections before the real source never
//! goes down: `hybridmig dest` on a loopback port first gets 100 bytes of garbage, an empty
//! connect-and-close (a port probe) and a half-open connection that sends 6 bytes of a Noise opening and then
//! stays silent through the whole migration; then `hybridmig source` migrates a real 256 MiB
//! KVM guest to it, and the merged reports must say verified. Authentication is on (both
//! hosts hold the same key file): the hostile connections meet the Noise handshake first.

mod cli_common;

use cli_common::{wait_bounded, Killed, BIN};
use hybridmig::host_check::{require_kvm, require_uffd};
use hybridmig::migration::{DestReport, MigrationReport, SourceReport};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Ops per second per vCPU: the guest is mid-run when the migration starts.
const PACE: u64 = 150_000;

fn guest_args() -> Vec<String> {
    let ops = (PACE * 2).to_string();
    ["--workload", "hotcold", "--mem", "256M", "--ops", &ops, "--seed", "21"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn last_json(out: &str, what: &str) -> String {
    out.lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{what}: no JSON report in {out}"))
        .to_string()
}

#[test]
fn hostile_connections_before_the_source_do_not_stop_the_migration() {
    let name = "hostile_connections_before_the_source_do_not_stop_the_migration";
    if !require_kvm(name) || !require_uffd(name) {
        return;
    }
    let expected = cli_common::reference_digest(&guest_args());
    // A long handshake timeout keeps the silent connection in its handshake while the real
    // source connects: the listener must serve the source beside it, not after it.
    let key = cli_common::KeyFile::new("hostile");
    let mut dest = Killed(
        Command::new(BIN)
            .arg("dest")
            .args(key.args())
            .args(guest_args())
            .args(["--listen", "127.0.0.1:0", "--accept-timeout-s", "60"])
            .args(["--handshake-timeout-ms", "30000", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dest"),
    );
    let stdout = dest.0.stdout.take().expect("dest stdout");
    let (tx, rx) = mpsc::channel();
    let dest_out = std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        let _ = tx.send(lines.next().unwrap_or_default());
        lines.collect::<Vec<_>>().join("\n")
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).expect("LISTENING within 30 s");
    let addr = line.trim().strip_prefix("LISTENING ").unwrap_or_else(|| panic!("got `{line}`"));

    let mut garbage = TcpStream::connect(addr).expect("connect");
    garbage.write_all(&[0xA5; 100]).expect("garbage");
    drop(TcpStream::connect(addr).expect("port probe"));
    let mut half_open = TcpStream::connect(addr).expect("connect");
    half_open.write_all(b"HMNS\x01\x01").expect("6 bytes of a Noise opening");

    let source = Killed(
        Command::new(BIN)
            .arg("source")
            .args(key.args())
            .args(guest_args())
            .args(["--pace", &PACE.to_string(), "--connect", addr, "--mode", "hybrid"])
            .args(["--migrate-after-ms", "300", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn source"),
    );
    let (status, src_out, src_err) = wait_bounded(source, Duration::from_secs(120));
    assert!(status.success(), "the source failed: {src_err}");
    let (status, _, dst_err) = wait_bounded(dest, Duration::from_secs(120));
    assert!(status.success(), "the destination failed: {dst_err}");
    drop((garbage, half_open));
    let dst_out = dest_out.join().expect("dest stdout");

    let src: SourceReport =
        serde_json::from_str(&last_json(&src_out, "source")).expect("source report");
    let dst: DestReport =
        serde_json::from_str(&last_json(&dst_out, "destination")).expect("destination report");
    let expected = u64::from_str_radix(&expected, 16).expect("hex digest");
    let report =
        MigrationReport::merge(&src, &dst, expected, [dst.run.sent_bulk, dst.run.sent_urgent]);
    assert!(report.verified, "digest {} vs expected {:#x}", report.digest, expected);
    assert!(report.memory_digest_match, "Done/DoneAck memory digests differ");
    assert!(report.source_stayed_paused, "the source guest ran after the pause");
    assert!(report.dest_resumed_after_state, "the destination ran before its state arrived");

    let warnings: Vec<&str> =
        dst_err.lines().filter(|l| l.contains("dropped a connection")).collect();
    assert_eq!(warnings.len(), 2, "garbage and the probe, one line each: {dst_err}");
    assert!(warnings.iter().any(|l| l.contains("not a hybridmig Noise opening")), "{dst_err}");
    assert!(warnings.iter().any(|l| l.contains("after 0 bytes")), "{dst_err}");
    eprintln!("destination log:\n{dst_err}");
}
