//! The session handshake on real TCP over loopback: a peer the destination cannot take gets a
//! reject frame that names the reason before the connection closes, the source turns it into
//! an error naming the reason in words, and the destination drops that connection and keeps
//! listening; then the same through the CLI, with two real processes whose guests differ in
//! memory size.

mod cli_common;

use cli_common::{wait_bounded, Killed, BIN};
use hybridmig::host_check::require_kvm;
use hybridmig::session::{AcceptorConfig, Initiator, Offer, SessionError};
use hybridmig::transport::tcp::{self, PairListener, TcpError};
use hybridmig::transport::StreamKind;
use hybridmig::wire::{
    decode_frame, FrameBody, Limits, MigrationMode, Region, RejectReason, Verdict, PAGE_SIZE,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(5);

fn region(pages: u64) -> Vec<Region> {
    vec![Region { guest_phys: 0, size_bytes: pages * PAGE_SIZE as u64 }]
}

/// A listener for a 64-page VM on another thread: it ends with a pair, or with the reason
/// it dropped the first connection it dropped (it would keep listening after that).
fn destination() -> (SocketAddr, JoinHandle<Result<tcp::StreamPair, TcpError>>) {
    let mut l = tcp::listen("127.0.0.1:0".parse().expect("addr"), AcceptorConfig::new(region(64)))
        .expect("listen");
    let addr = l.local_addr().expect("addr");
    let accept = move || {
        let started = Instant::now();
        loop {
            let err = match l.accept_pair(Duration::from_millis(50)) {
                Ok(pair) => return Ok(pair),
                Err(err) => err,
            };
            if let Some(dropped) = l.take_dropped().into_iter().next() {
                return Err(dropped.reason);
            }
            if started.elapsed() > WAIT {
                return Err(err);
            }
        }
    };
    (addr, std::thread::spawn(accept))
}

/// Sends `offer`'s bulk Hello on a raw connection and returns the decoded HelloAck's verdict.
fn raw_verdict(addr: SocketAddr, offer: Offer) -> Verdict {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let hello = Initiator::new(offer).hello(StreamKind::Bulk).expect("hello");
    s.write_all(&hello).expect("send hello");
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).expect("the ack, then the close");
    let (frame, used) = decode_frame(&reply, &Limits::default()).expect("a HelloAck");
    assert_eq!(used, reply.len(), "nothing follows a reject");
    match frame.body {
        FrameBody::HelloAck(ack) => ack.verdict,
        other => panic!("expected a HelloAck, got {other:?}"),
    }
}

fn refused_reason(dest: JoinHandle<Result<tcp::StreamPair, TcpError>>) -> (RejectReason, String) {
    let err = dest.join().expect("listener thread").expect_err("the listener refuses");
    let reason = err.session_error().and_then(SessionError::reject_reason);
    (reason.unwrap_or_else(|| panic!("not a refusal: {err}")), err.to_string())
}

#[test]
fn an_unsupported_version_gets_a_reject_naming_the_version() {
    let mut offer = Offer::new(1, MigrationMode::Hybrid, region(64));
    offer.max_version = 7;
    let (addr, dest) = destination();
    assert_eq!(raw_verdict(addr, offer.clone()), Verdict::Reject(RejectReason::Version));
    let (reason, text) = refused_reason(dest);
    assert_eq!(reason, RejectReason::Version);
    assert!(text.contains("protocol version 7 not supported"), "{text}");

    let (addr, dest) = destination();
    let err = tcp::connect(addr, offer).expect_err("rejected");
    let source_side = err.session_error().expect("a session error");
    assert!(matches!(source_side, SessionError::Rejected { reason: RejectReason::Version, .. }));
    let text = err.to_string();
    assert!(text.contains("the destination refused: protocol version 7 not supported"), "{text}");
    assert_eq!(refused_reason(dest).0, RejectReason::Version);
}

#[test]
fn a_mismatched_layout_gets_a_reject_naming_the_layout() {
    let offer = Offer::new(2, MigrationMode::Postcopy, region(32));
    let (addr, dest) = destination();
    assert_eq!(raw_verdict(addr, offer.clone()), Verdict::Reject(RejectReason::LayoutMismatch));
    let (reason, text) = refused_reason(dest);
    assert_eq!(reason, RejectReason::LayoutMismatch);
    assert!(text.contains("memory layout differs"), "{text}");
    assert!(text.contains("128 KiB") && text.contains("256 KiB"), "both layouts named: {text}");

    let (addr, dest) = destination();
    let err = tcp::connect(addr, offer).expect_err("rejected");
    assert!(err.to_string().contains("the destination refused: memory layout differs"), "{err}");
    assert_eq!(refused_reason(dest).0, RejectReason::LayoutMismatch);
}

#[test]
fn a_matching_peer_opens_both_streams_with_the_same_params() {
    let (addr, dest) = destination();
    let pair = tcp::connect(addr, Offer::new(3, MigrationMode::Precopy, region(64))).expect("ok");
    let theirs = dest.join().expect("listener thread").expect("accepted");
    assert_eq!(pair.session, theirs.session);
    assert_eq!(pair.session.mode, MigrationMode::Precopy);
}

#[test]
fn a_refused_half_does_not_keep_a_slot() {
    let mut l = PairListener::bind(
        "127.0.0.1:0".parse().expect("addr"),
        tcp::TcpOptions { max_half_open_sessions: 1, ..tcp::TcpOptions::default() },
        AcceptorConfig::new(region(64)),
    )
    .expect("bind");
    let addr = l.local_addr().expect("addr");
    // One half-open session fills the listener; a second session is refused as busy.
    let hello = |id| Initiator::new(Offer::new(id, MigrationMode::Hybrid, region(64)));
    let mut first = TcpStream::connect(addr).expect("connect");
    first.write_all(&hello(10).hello(StreamKind::Bulk).expect("hello")).expect("send");
    let err = l.accept_pair(Duration::from_millis(300)).expect_err("half open");
    assert!(matches!(err, TcpError::Timeout { half_open: 1, .. }), "{err}");
    let mut second = TcpStream::connect(addr).expect("connect");
    second.write_all(&hello(11).hello(StreamKind::Bulk).expect("hello")).expect("send");
    let err = l.accept_pair(Duration::from_millis(300)).expect_err("busy: dropped, not paired");
    assert!(matches!(err, TcpError::Timeout { half_open: 1, dropped: 1, .. }), "{err}");
    let dropped = l.take_dropped();
    let err = &dropped[0].reason;
    assert_eq!(err.session_error().and_then(SessionError::reject_reason), Some(RejectReason::Busy));
}

fn guest(mem: &str) -> [&str; 4] {
    ["--workload", "hotcold", "--mem", mem]
}

#[test]
fn cli_source_names_the_layout_mismatch_and_fails_and_the_destination_listens_on() {
    if !require_kvm("cli_source_names_the_layout_mismatch_and_fails_and_the_destination_listens_on")
    {
        return;
    }
    let key = cli_common::KeyFile::new("layout");
    let mut dest = Killed(
        Command::new(BIN)
            .arg("dest")
            .args(key.args())
            .args(guest("256M"))
            .args(["--listen", "127.0.0.1:0", "--accept-timeout-s", "30"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dest"),
    );
    let stdout = dest.0.stdout.take().expect("dest stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).expect("LISTENING within 30 s");
    let addr = line.trim().strip_prefix("LISTENING ").unwrap_or_else(|| panic!("got `{line}`"));
    let source = Killed(
        Command::new(BIN)
            .arg("source")
            .args(key.args())
            .args(guest("128M"))
            .args(["--connect", addr, "--mode", "hybrid", "--migrate-after-ms", "100"])
            // A refused handshake cancels the migration and the guest runs on here to the end
            // of its ops, so it gets a short run.
            .args(["--ops", "20000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn source"),
    );
    let (status, stdout, stderr) = wait_bounded(source, Duration::from_secs(60));
    assert!(!status.success(), "the migration must not succeed: {stderr}");
    let said = format!("{stdout}{stderr}");
    assert!(said.contains("the destination refused: memory layout differs"), "{said}");
    // The destination dropped the refused connection and keeps listening for the real source.
    std::thread::sleep(Duration::from_millis(300));
    assert!(dest.0.try_wait().expect("try_wait").is_none(), "the destination must keep listening");
    dest.0.kill().expect("kill the destination");
    let (_, _, stderr) = wait_bounded(dest, Duration::from_secs(10));
    assert!(stderr.contains("dropped a connection"), "{stderr}");
    assert!(stderr.contains("refused") && stderr.contains("memory layout differs"), "{stderr}");
}
