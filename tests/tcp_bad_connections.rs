//! The destination's listener against hostile or confused connections, on loopback and
//! without KVM: garbage, an empty connect-and-close (a port probe), half a Hello and then
//! silence, a Hello of another version, a Hello of another layout, a close in the middle of a
//! Hello, and more connections in their handshake than the listener keeps. Each is dropped
//! with a typed reason while the listener goes on, and the real source still pairs at once.
//! Also the connector's side: a HelloAck that never comes is a typed timeout.

use hybridmig::session::{AcceptorConfig, Initiator, Offer, SessionError};
use hybridmig::transport::tcp::{self, PairListener, TcpError, TcpOptions};
use hybridmig::transport::StreamKind;
use hybridmig::wire::{
    decode_frame, FrameBody, Limits, MigrationMode, Region, RejectReason, Verdict, WireError,
    PAGE_SIZE,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(5);

fn regions(pages: u64) -> Vec<Region> {
    vec![Region { guest_phys: 0, size_bytes: pages * PAGE_SIZE as u64 }]
}

fn offer(session_id: u64) -> Offer {
    Offer::new(session_id, MigrationMode::Hybrid, regions(64))
}

fn listener(options: TcpOptions) -> (PairListener, SocketAddr) {
    let l = PairListener::bind(
        "127.0.0.1:0".parse().expect("addr"),
        options,
        AcceptorConfig::new(regions(64)),
    )
    .expect("bind");
    let addr = l.local_addr().expect("addr");
    (l, addr)
}

fn raw_connect(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(bytes).expect("write");
    s
}

/// The bytes of a bulk Hello of `offer`.
fn hello_of(offer: Offer) -> Vec<u8> {
    Initiator::new(offer).hello(StreamKind::Bulk).expect("hello")
}

/// Reads the HelloAck a refused connection gets before its close.
fn verdict(mut s: TcpStream) -> Verdict {
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).expect("the ack, then the close");
    let (frame, _) = decode_frame(&reply, &Limits::default()).expect("a HelloAck");
    match frame.body {
        FrameBody::HelloAck(ack) => ack.verdict,
        other => panic!("expected a HelloAck, got {other:?}"),
    }
}

/// Takes the reason the listener dropped `client` for.
fn reason_for(l: &mut PairListener, client: SocketAddr) -> TcpError {
    let mut dropped = l.take_dropped();
    let at = dropped.iter().position(|d| d.peer == client);
    dropped
        .swap_remove(at.unwrap_or_else(|| panic!("{client} was not dropped: {dropped:?}")))
        .reason
}

fn local(s: &TcpStream) -> SocketAddr {
    s.local_addr().expect("local addr")
}

fn reject_reason(e: &TcpError) -> Option<RejectReason> {
    e.session_error().and_then(SessionError::reject_reason)
}

#[test]
fn every_kind_of_bad_connection_is_dropped_and_the_real_source_pairs_at_once() {
    let (mut l, addr) = listener(TcpOptions::default());
    let garbage = raw_connect(addr, &[0xA5; 100]);
    let probe = TcpStream::connect(addr).expect("connect");
    let probe_addr = local(&probe);
    drop(probe);
    let half = raw_connect(addr, &hello_of(offer(1))[..6]);
    let mut old = offer(2);
    old.max_version = 7;
    let version = raw_connect(addr, &hello_of(old));
    let layout = raw_connect(addr, &hello_of(Offer::new(3, MigrationMode::Hybrid, regions(32))));
    let (version_addr, layout_addr) = (local(&version), local(&layout));

    // The real source comes while the half-open connection is still in its 2 s handshake.
    let started = Instant::now();
    let source = std::thread::spawn(move || tcp::connect(addr, offer(4)).expect("connect"));
    let pair = l.accept_pair(WAIT).expect("the real source pairs");
    let waited = started.elapsed();
    assert_eq!(pair.session_id(), 4);
    assert_eq!(source.join().expect("source").session, pair.session);
    assert!(waited < Duration::from_secs(1), "a silent connection held up the source: {waited:?}");
    // Refused connections still get their reject frame.
    assert_eq!(verdict(version), Verdict::Reject(RejectReason::Version));
    assert_eq!(verdict(layout), Verdict::Reject(RejectReason::LayoutMismatch));

    let dropped = l.take_dropped();
    let find = |peer| &dropped.iter().find(|d| d.peer == peer).expect("dropped").reason;
    let e = find(local(&garbage));
    let bad_magic =
        matches!(e.session_error(), Some(SessionError::Wire(WireError::BadMagic { .. })));
    assert!(bad_magic, "{e}");
    let e = find(probe_addr);
    assert!(matches!(e, TcpError::HandshakeClosed { received_bytes: 0, .. }), "{e}");
    assert_eq!(reject_reason(find(version_addr)), Some(RejectReason::Version));
    let e = find(layout_addr);
    assert_eq!(reject_reason(e), Some(RejectReason::LayoutMismatch), "{e}");
    assert!(e.to_string().contains("memory layout differs"), "{e}");
    assert_eq!(dropped.len(), 4, "the half-open one is still in its handshake: {dropped:?}");

    // The half-open connection is dropped on its own deadline, with a typed timeout.
    let err = l.accept_pair(Duration::from_millis(2500)).expect_err("nothing else pairs");
    assert!(matches!(err, TcpError::Timeout { dropped: 5, half_open: 0, .. }), "{err}");
    let e = reason_for(&mut l, local(&half));
    assert!(
        matches!(e, TcpError::HandshakeTimeout { timeout_ms: 2000, received_bytes: 6, .. }),
        "{e}"
    );
    let text = e.to_string();
    assert!(text.contains("2000 ms") && !text.contains("temporarily unavailable"), "{text}");
}

#[test]
fn a_close_in_the_middle_of_a_hello_is_dropped_as_closed() {
    let (mut l, addr) = listener(TcpOptions::default());
    let hello = hello_of(offer(5));
    let cut = raw_connect(addr, &hello[..hello.len() - 3]);
    let cut_addr = local(&cut);
    cut.shutdown(std::net::Shutdown::Write).expect("half close");
    let err = l.accept_pair(Duration::from_millis(300)).expect_err("nothing pairs");
    assert!(matches!(err, TcpError::Timeout { dropped: 1, .. }), "{err}");
    let e = reason_for(&mut l, cut_addr);
    let received = hello.len() - 3;
    assert!(
        matches!(e, TcpError::HandshakeClosed { received_bytes, .. } if received_bytes == received),
        "{e}"
    );
}

#[test]
fn a_short_handshake_timeout_drops_a_silent_peer_on_time() {
    let options =
        TcpOptions { handshake_timeout: Duration::from_millis(200), ..TcpOptions::default() };
    let (mut l, addr) = listener(options);
    let silent = TcpStream::connect(addr).expect("connect");
    let started = Instant::now();
    let err = l.accept_pair(Duration::from_millis(600)).expect_err("nothing pairs");
    assert!(matches!(err, TcpError::Timeout { dropped: 1, .. }), "{err}");
    let e = reason_for(&mut l, local(&silent));
    assert!(matches!(e, TcpError::HandshakeTimeout { timeout_ms: 200, .. }), "{e}");
    assert!(started.elapsed() >= Duration::from_millis(600), "the accept timeout still holds");
}

#[test]
fn too_many_connections_in_their_handshake_drop_the_oldest() {
    let options = TcpOptions { max_handshakes: 2, ..TcpOptions::default() };
    let (mut l, addr) = listener(options);
    let first = TcpStream::connect(addr).expect("connect");
    let err = l.accept_pair(Duration::from_millis(100)).expect_err("nothing pairs");
    assert!(matches!(err, TcpError::Timeout { dropped: 0, .. }), "{err}");
    let _second = TcpStream::connect(addr).expect("connect");
    let _third = TcpStream::connect(addr).expect("connect");
    let err = l.accept_pair(Duration::from_millis(100)).expect_err("nothing pairs");
    assert!(matches!(err, TcpError::Timeout { dropped: 1, .. }), "{err}");
    let e = reason_for(&mut l, local(&first));
    assert!(matches!(e, TcpError::TooManyHandshakes { limit: 2, .. }), "{e}");
    // And a real source still gets through.
    let source = std::thread::spawn(move || tcp::connect(addr, offer(6)).expect("connect"));
    assert_eq!(l.accept_pair(WAIT).expect("pairs").session_id(), 6);
    source.join().expect("source");
}

#[test]
fn a_helloack_that_never_comes_is_a_typed_timeout() {
    let mute = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = mute.local_addr().expect("addr");
    let options =
        TcpOptions { handshake_timeout: Duration::from_millis(200), ..TcpOptions::default() };
    let err = tcp::connect_with(addr, Initiator::new(offer(7)), &options).expect_err("no ack");
    assert!(
        matches!(err, TcpError::HandshakeTimeout { timeout_ms: 200, received_bytes: 0, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("HelloAck") && !text.contains("temporarily unavailable"), "{text}");
    drop(mute);
}
