//! TCP stream pairs over loopback: pairing in any order, several sessions, typed preamble
//! errors, timeouts, and data on both streams.

use hybridmig::transport::tcp::{self, PairListener, Preamble, TcpError, TcpOptions};
use hybridmig::transport::StreamKind;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

fn listener() -> (PairListener, SocketAddr) {
    let l = tcp::listen("127.0.0.1:0".parse().expect("addr")).expect("listen");
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
        let mut pair = tcp::connect(addr, 0xABCD).expect("connect");
        pair.bulk.write_all(b"bulk bytes").expect("bulk");
        pair.urgent.write_all(b"urgent!").expect("urgent");
        let mut ack = [0u8; 3];
        pair.urgent.read_exact(&mut ack).expect("ack");
        ack
    });
    let mut pair = l.accept_pair(WAIT).expect("accept");
    assert_eq!(pair.session_id, 0xABCD);
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
    let pre = |id, kind| Preamble { session_id: id, kind }.encode();
    // Session 2 urgent, session 1 urgent, session 2 bulk, session 1 bulk.
    let _c = [
        raw_connect(addr, &pre(2, StreamKind::Urgent)),
        raw_connect(addr, &pre(1, StreamKind::Urgent)),
        raw_connect(addr, &pre(2, StreamKind::Bulk)),
        raw_connect(addr, &pre(1, StreamKind::Bulk)),
    ];
    let first = l.accept_pair(WAIT).expect("first pair");
    assert_eq!(first.session_id, 2, "session 2 completes first");
    let second = l.accept_session(1, WAIT).expect("second pair");
    assert_eq!(second.session_id, 1);
}

#[test]
fn bad_preambles_are_typed_errors() {
    let (mut l, addr) = listener();
    let _bad = raw_connect(addr, b"GET / HTTP/1.1\r\n");
    assert!(matches!(l.accept_pair(WAIT), Err(TcpError::BadMagic { .. })));

    let mut unknown = Preamble { session_id: 5, kind: StreamKind::Bulk }.encode();
    unknown[5] = 9;
    let _u = raw_connect(addr, &unknown);
    assert!(matches!(l.accept_pair(WAIT), Err(TcpError::UnknownKind { got: 9, .. })));

    let bulk = Preamble { session_id: 6, kind: StreamKind::Bulk }.encode();
    let _d1 = raw_connect(addr, &bulk);
    let _d2 = raw_connect(addr, &bulk);
    let err = l.accept_pair(WAIT).expect_err("duplicate");
    assert!(
        matches!(err, TcpError::DuplicateStream { session_id: 6, kind: StreamKind::Bulk, .. }),
        "{err}"
    );

    let _o = raw_connect(addr, &Preamble { session_id: 8, kind: StreamKind::Urgent }.encode());
    let err = l.accept_session(7, WAIT).expect_err("other session");
    assert!(matches!(err, TcpError::UnexpectedSession { expected: 7, got: 8, .. }), "{err}");
}

#[test]
fn half_open_session_times_out() {
    let options =
        TcpOptions { preamble_timeout: Duration::from_millis(100), ..TcpOptions::default() };
    let mut l = PairListener::bind("127.0.0.1:0".parse().expect("addr"), options).expect("bind");
    let addr = l.local_addr().expect("addr");
    let _only_bulk =
        raw_connect(addr, &Preamble { session_id: 3, kind: StreamKind::Bulk }.encode());
    let err = l.accept_pair(Duration::from_millis(150)).expect_err("timeout");
    assert!(matches!(err, TcpError::Timeout { half_open: 1, .. }), "{err}");
    // A silent peer: the preamble read times out with a typed error.
    let _silent = TcpStream::connect(addr).expect("connect");
    let err = l.accept_pair(WAIT).expect_err("silent peer");
    assert!(matches!(err, TcpError::ReadPreamble { .. }), "{err}");
}

#[test]
fn connect_to_closed_port_names_the_stream() {
    let (l, addr) = listener();
    drop(l);
    let err = tcp::connect(addr, 1).expect_err("refused");
    assert!(matches!(err, TcpError::Connect { kind: StreamKind::Bulk, .. }), "{err}");
}

#[test]
fn works_over_ipv6_loopback_with_buffer_options() {
    let options = TcpOptions {
        send_buffer_bytes: Some(1 << 20),
        recv_buffer_bytes: Some(1 << 20),
        ..TcpOptions::default()
    };
    let Ok(mut l) = PairListener::bind("[::1]:0".parse().expect("addr"), options.clone()) else {
        eprintln!("SKIPPED works_over_ipv6_loopback_with_buffer_options: no IPv6 loopback");
        return;
    };
    let addr = l.local_addr().expect("addr");
    let client =
        std::thread::spawn(move || tcp::connect_with(addr, 99, &options).expect("connect"));
    let pair = l.accept_pair(WAIT).expect("accept");
    assert_eq!(pair.session_id, 99);
    assert_eq!(client.join().expect("client").session_id, 99);
}

#[test]
fn ring_driven_pair_urgent_is_not_stuck_behind_bulk() {
    use hybridmig::ring::{Buf, Ring};
    use std::os::fd::AsRawFd;
    let (mut l, addr) = listener();
    let sender = std::thread::spawn(move || {
        let pair = tcp::connect(addr, 77).expect("connect");
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
