//! TCP stream pairs over loopback: pairing in any order, several sessions, typed handshake
//! errors, timeouts, and data on both streams.

use hybridmig::session::{AcceptorConfig, Initiator, Offer, SessionError};
use hybridmig::transport::tcp::{self, PairListener, TcpError, TcpOptions};
use hybridmig::transport::StreamKind;
use hybridmig::wire::{MigrationMode, Region, WireError, HEADER_LEN, PAGE_SIZE};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

fn regions() -> Vec<Region> {
    vec![Region { guest_phys: 0, size_bytes: 16 * PAGE_SIZE as u64 }]
}

fn offer(session_id: u64) -> Offer {
    Offer::new(session_id, MigrationMode::Postcopy, regions())
}

fn accept() -> AcceptorConfig {
    AcceptorConfig::new(regions())
}

/// The Hello a source of `session_id` sends on `kind`.
fn hello(session_id: u64, kind: StreamKind) -> Vec<u8> {
    Initiator::new(offer(session_id)).hello(kind).expect("hello")
}

fn listener() -> (PairListener, SocketAddr) {
    let l = tcp::listen("127.0.0.1:0".parse().expect("addr"), accept()).expect("listen");
    let addr = l.local_addr().expect("local addr");
    (l, addr)
}

fn raw_connect(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(bytes).expect("write");
    s
}

#[test]
fn pair_carries_data_on_both_streams() {
    let (mut l, addr) = listener();
    let client = std::thread::spawn(move || {
        let mut pair = tcp::connect(addr, offer(0xABCD)).expect("connect");
        pair.bulk.write_all(b"bulk bytes").expect("bulk");
        pair.urgent.write_all(b"urgent!").expect("urgent");
        let mut ack = [0u8; 3];
        pair.urgent.read_exact(&mut ack).expect("ack");
        ack
    });
    let mut pair = l.accept_pair(WAIT).expect("accept");
    assert_eq!(pair.session_id(), 0xABCD);
    let mut b = [0u8; 10];
    pair.bulk.read_exact(&mut b).expect("read bulk");
    assert_eq!(&b, b"bulk bytes");
    let mut u = [0u8; 7];
    pair.urgent.read_exact(&mut u).expect("read urgent");
    assert_eq!(&u, b"urgent!");
    assert!(pair.stream(StreamKind::Urgent).nodelay().expect("nodelay"));
    pair.urgent.write_all(b"ack").expect("ack");
    assert_eq!(&client.join().expect("client"), b"ack");
}

#[test]
fn pairs_in_any_order_and_interleaved_sessions() {
    let (mut l, addr) = listener();
    let pre = hello;
    // Session 2 urgent, session 1 urgent, session 2 bulk, session 1 bulk.
    let _c = [
        raw_connect(addr, &pre(2, StreamKind::Urgent)),
        raw_connect(addr, &pre(1, StreamKind::Urgent)),
        raw_connect(addr, &pre(2, StreamKind::Bulk)),
        raw_connect(addr, &pre(1, StreamKind::Bulk)),
    ];
    let first = l.accept_pair(WAIT).expect("first pair");
    assert_eq!(first.session_id(), 2, "session 2 completes first");
    let second = l.accept_session(1, WAIT).expect("second pair");
    assert_eq!(second.session_id(), 1);
}

/// The reason the listener gave for dropping the connection from `client`'s address.
fn dropped_reason(l: &mut PairListener, client: &TcpStream) -> TcpError {
    let me = client.local_addr().expect("client addr");
    let mut dropped = l.take_dropped();
    let at = dropped.iter().position(|d| d.peer == me);
    dropped.swap_remove(at.unwrap_or_else(|| panic!("{me} was not dropped: {dropped:?}"))).reason
}

/// Accepts until `n` connections have been dropped (or the wait ends); none may pair.
fn accept_until_dropped(l: &mut PairListener, n: u64) {
    let started = std::time::Instant::now();
    while l.dropped_total() < n && started.elapsed() < WAIT {
        match l.accept_pair(Duration::from_millis(50)) {
            Err(TcpError::Timeout { .. }) => {}
            other => panic!("expected nothing to pair, got {other:?}"),
        }
    }
    assert_eq!(l.dropped_total(), n, "dropped connections");
}

#[test]
fn bad_hellos_are_dropped_with_typed_reasons() {
    let (mut l, addr) = listener();
    let bad = raw_connect(addr, b"GET / HTTP/1.1\r\n");
    accept_until_dropped(&mut l, 1);
    let err = dropped_reason(&mut l, &bad);
    assert!(
        matches!(err.session_error(), Some(SessionError::Wire(WireError::BadMagic { .. }))),
        "{err}"
    );

    let mut unknown = hello(5, StreamKind::Bulk);
    unknown[HEADER_LEN + 10] = 9; // the stream byte
    let crc = crc32fast::hash(&unknown[HEADER_LEN..]);
    unknown[12..16].copy_from_slice(&crc.to_be_bytes());
    let u = raw_connect(addr, &unknown);
    accept_until_dropped(&mut l, 2);
    let err = dropped_reason(&mut l, &u);
    assert!(
        matches!(
            err.session_error(),
            Some(SessionError::Wire(WireError::InvalidField { field: "hello.stream", got: 9 }))
        ),
        "{err}"
    );

    let bulk = hello(6, StreamKind::Bulk);
    let _d1 = raw_connect(addr, &bulk);
    let err = l.accept_pair(Duration::from_millis(200)).expect_err("half open");
    assert!(matches!(err, TcpError::Timeout { half_open: 1, dropped: 2, .. }), "{err}");
    let d2 = raw_connect(addr, &bulk);
    accept_until_dropped(&mut l, 3);
    let err = dropped_reason(&mut l, &d2);
    assert!(
        matches!(err, TcpError::DuplicateStream { session_id: 6, kind: StreamKind::Bulk, .. }),
        "{err}"
    );

    let o = raw_connect(addr, &hello(8, StreamKind::Urgent));
    let err = l.accept_session(7, Duration::from_millis(300)).expect_err("other session");
    assert!(matches!(err, TcpError::Timeout { dropped: 4, .. }), "{err}");
    let err = dropped_reason(&mut l, &o);
    assert!(matches!(err, TcpError::UnexpectedSession { expected: 7, got: 8, .. }), "{err}");
}

#[test]
fn half_open_session_times_out_and_a_silent_peer_is_dropped() {
    let options =
        TcpOptions { handshake_timeout: Duration::from_millis(100), ..TcpOptions::default() };
    let mut l =
        PairListener::bind("127.0.0.1:0".parse().expect("addr"), options, accept()).expect("bind");
    let addr = l.local_addr().expect("addr");
    let _only_bulk = raw_connect(addr, &hello(3, StreamKind::Bulk));
    let err = l.accept_pair(Duration::from_millis(150)).expect_err("timeout");
    assert!(matches!(err, TcpError::Timeout { half_open: 1, dropped: 0, .. }), "{err}");
    // A silent peer: dropped on its own handshake deadline, with a typed timeout.
    let silent = TcpStream::connect(addr).expect("connect");
    let err = l.accept_pair(Duration::from_millis(400)).expect_err("nothing pairs");
    assert!(matches!(err, TcpError::Timeout { half_open: 1, dropped: 1, .. }), "{err}");
    let reason = dropped_reason(&mut l, &silent);
    assert!(
        matches!(reason, TcpError::HandshakeTimeout { timeout_ms: 100, received_bytes: 0, .. }),
        "{reason}"
    );
}

#[test]
fn connect_to_closed_port_names_the_stream() {
    let (l, addr) = listener();
    drop(l);
    let err = tcp::connect(addr, offer(1)).expect_err("refused");
    assert!(matches!(err, TcpError::Connect { kind: StreamKind::Bulk, .. }), "{err}");
}

#[test]
fn works_over_ipv6_loopback_with_buffer_options() {
    let options = TcpOptions {
        send_buffer_bytes: Some(1 << 20),
        recv_buffer_bytes: Some(1 << 20),
        ..TcpOptions::default()
    };
    let Ok(mut l) = PairListener::bind("[::1]:0".parse().expect("addr"), options.clone(), accept())
    else {
        eprintln!("SKIPPED works_over_ipv6_loopback_with_buffer_options: no IPv6 loopback");
        return;
    };
    let addr = l.local_addr().expect("addr");
    let client = std::thread::spawn(move || {
        tcp::connect_with(addr, Initiator::new(offer(99)), &options).expect("connect")
    });
    let pair = l.accept_pair(WAIT).expect("accept");
    assert_eq!(pair.session_id(), 99);
    assert_eq!(client.join().expect("client").session_id(), 99);
}

#[test]
fn ring_driven_pair_urgent_is_not_stuck_behind_bulk() {
    use hybridmig::ring::{Buf, Ring};
    use std::os::fd::AsRawFd;
    let (mut l, addr) = listener();
    let sender = std::thread::spawn(move || {
        let pair = tcp::connect(addr, offer(77)).expect("connect");
        let mut ring = Ring::new(32).expect("ring");
        // 8 MiB of bulk, far more than the socket buffers hold while nobody reads.
        for i in 0..8u64 {
            let buf = Buf::from_vec(vec![i as u8; 1 << 20]);
            ring.send(pair.bulk.as_raw_fd(), buf, i).expect("bulk send");
        }
        ring.send(pair.urgent.as_raw_fd(), Buf::from_vec(b"fault 42".to_vec()), 100)
            .expect("urgent send");
        let mut done = 0;
        let deadline = std::time::Instant::now() + WAIT;
        while done < 9 && std::time::Instant::now() < deadline {
            ring.submit_and_wait(1, Some(Duration::from_millis(100))).expect("wait");
            for c in ring.completions() {
                c.result.expect("send");
                done += 1;
            }
        }
        assert_eq!(done, 9);
        pair
    });
    let mut pair = l.accept_pair(WAIT).expect("accept");
    pair.urgent.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut urgent = [0u8; 8];
    pair.urgent.read_exact(&mut urgent).expect("urgent arrives while bulk is blocked");
    assert_eq!(&urgent, b"fault 42");
    let mut bulk = vec![0u8; 8 << 20];
    pair.bulk.read_exact(&mut bulk).expect("bulk");
    assert!(bulk.chunks(1 << 20).enumerate().all(|(i, c)| c.iter().all(|b| *b == i as u8)));
    drop(sender.join().expect("sender"));
}
