//! Detachable ring streams over real loopback TCP: a stream's connection is replaced in the
//! middle of a session and every frame sent afterwards arrives intact and in order; a detach
//! with sends stuck in the kernel reaps every one of them and hands every buffer back.

use hybridmig::ring::Ring;
use hybridmig::session::{SessionIntent, SessionParams};
use hybridmig::transport::ring_streams::{RingStreams, StreamEvent};
use hybridmig::transport::tcp::StreamPair;
use hybridmig::wire::{
    encode_frame, FrameBody, Limits, MigrationMode, StreamKind, VERSION_CURRENT,
};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);
const SEND_BUFS: usize = 4;

/// Two connected sockets on loopback.
fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (client, server)
}

/// One end of a session: a ring and its two streams.
struct End {
    ring: Ring,
    streams: RingStreams,
}

/// Both ends of a session over two fresh TCP connections.
fn session() -> (End, End) {
    let (bulk_a, bulk_b) = tcp_pair();
    let (urgent_a, urgent_b) = tcp_pair();
    let a = StreamPair::new(bulk_a, urgent_a, params());
    let b = StreamPair::new(bulk_b, urgent_b, params());
    (end(&a), end(&b))
}

/// A session's parameters (the streams do not read them).
fn params() -> SessionParams {
    SessionParams {
        version: VERSION_CURRENT,
        session_id: 1,
        mode: MigrationMode::Postcopy,
        intent: SessionIntent::New,
        regions: Vec::new(),
        page_size: 4096,
    }
}

fn end(pair: &StreamPair) -> End {
    let mut ring = Ring::new(64).expect("ring");
    let streams =
        RingStreams::new(&mut ring, pair, SEND_BUFS, 64 << 10, Limits::default()).expect("streams");
    End { ring, streams }
}

/// The payload of frame `n`: its number, then a pattern that depends on it.
fn payload(n: u32, len_bytes: usize) -> Vec<u8> {
    let mut bytes = n.to_le_bytes().to_vec();
    bytes.extend((0..len_bytes).map(|j| (n as usize * 31 + j) as u8));
    bytes
}

impl End {
    /// Sends frames `numbers` on `stream`, one frame per send buffer, waiting for a free
    /// buffer when all are in flight.
    fn send_frames(&mut self, stream: StreamKind, numbers: std::ops::Range<u32>) {
        for n in numbers {
            let mut buf = loop {
                if let Some(buf) = self.streams.take_send_buf(stream) {
                    break buf;
                }
                self.pump(Duration::from_millis(10));
            };
            let body = FrameBody::VmState(&payload(n, 1000 + n as usize % 3000));
            encode_frame(&mut buf, VERSION_CURRENT, &body, &Limits::default()).expect("encode");
            self.streams.send(&mut self.ring, stream, buf).expect("send");
        }
        self.ring.submit().expect("submit");
    }

    /// Waits once and handles what completed; returns the events.
    fn pump(&mut self, wait: Duration) -> Vec<StreamEvent> {
        self.ring.submit_and_wait(1, Some(wait)).expect("wait");
        let mut events = Vec::new();
        while let Some(c) = self.ring.next_completion() {
            match self.streams.on_completion(&mut self.ring, c).expect("stream") {
                Ok(event) => events.push(event),
                Err(other) => panic!("a completion that is not the streams': {}", other.tag),
            }
        }
        events
    }

    /// Takes the frames received on `stream` so far; returns their numbers.
    fn take_frames(&mut self, stream: StreamKind, got: &mut Vec<u32>) {
        while let Some(frame) = self.streams.next_frame(stream).expect("frame") {
            let FrameBody::VmState(bytes) = frame.body else { panic!("not VmState") };
            let n = u32::from_le_bytes(bytes[..4].try_into().expect("number"));
            assert_eq!(bytes, &payload(n, 1000 + n as usize % 3000)[..], "frame {n} intact");
            got.push(n);
        }
    }

    /// Pumps until `stream` reports `Closed`.
    fn wait_closed(&mut self, stream: StreamKind) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.pump(Duration::from_millis(10)).contains(&StreamEvent::Closed(stream)) {
                return;
            }
        }
        panic!("{stream:?} never reported Closed");
    }
}

/// Sends frames `numbers` from `tx` to `rx` on `stream`, pumping both rings (the ring keeps a
/// socket's sends in order by queueing them until the one before completes); returns the
/// numbers `rx` received, once all sends completed.
fn exchange(
    tx: &mut End,
    rx: &mut End,
    stream: StreamKind,
    numbers: std::ops::Range<u32>,
) -> Vec<u32> {
    let mut got = Vec::new();
    for n in numbers.clone() {
        while tx.streams.free_send_bufs(stream) == 0 {
            tx.pump(Duration::from_millis(1));
            rx.pump(Duration::from_millis(1));
            rx.take_frames(stream, &mut got);
        }
        tx.send_frames(stream, n..n + 1);
    }
    let deadline = Instant::now() + WAIT;
    while (got.len() < numbers.len() || tx.streams.in_flight(stream) > 0)
        && Instant::now() < deadline
    {
        tx.pump(Duration::from_millis(1));
        rx.pump(Duration::from_millis(1));
        rx.take_frames(stream, &mut got);
    }
    got
}

#[test]
fn replaced_connection_carries_every_later_frame_in_order() {
    let (mut a, mut b) = session();
    let got = exchange(&mut a, &mut b, StreamKind::Bulk, 0..50);
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    // Mid-way: more frames leave A, then B's bulk connection goes away.
    a.send_frames(StreamKind::Bulk, 50..60);
    let old_b = b.streams.detach(&mut b.ring, StreamKind::Bulk).expect("detach b");
    assert!(!b.streams.is_attached(StreamKind::Bulk));
    assert!(b.streams.send(&mut b.ring, StreamKind::Bulk, Vec::new()).is_err());
    drop(old_b);
    // A sees it as an event and its streams survive it.
    a.wait_closed(StreamKind::Bulk);
    assert!(a.streams.is_closed(StreamKind::Bulk));
    let old_a = a.streams.detach(&mut a.ring, StreamKind::Bulk).expect("detach a");
    assert_eq!(a.streams.in_flight(StreamKind::Bulk), 0);
    assert_eq!(a.streams.free_send_bufs(StreamKind::Bulk), SEND_BUFS);
    drop(old_a);
    let (new_a, new_b) = tcp_pair();
    a.streams.attach(&mut a.ring, StreamKind::Bulk, new_a).expect("attach a");
    b.streams.attach(&mut b.ring, StreamKind::Bulk, new_b).expect("attach b");
    assert!(a.streams.attach(&mut a.ring, StreamKind::Bulk, tcp_pair().0).is_err());
    let got = exchange(&mut a, &mut b, StreamKind::Bulk, 1000..1400);
    assert_eq!(got, (1000..1400).collect::<Vec<_>>());
    // The urgent stream ran on untouched.
    assert_eq!(exchange(&mut b, &mut a, StreamKind::Urgent, 7..9), vec![7, 8]);
    assert_eq!(a.ring.in_flight(), 2, "only the two armed receives are left");
}

#[test]
fn detach_with_sends_stuck_in_the_kernel_reaps_every_buffer() {
    let (mut a, mut b) = session();
    // B never reads: the socket buffers fill and A's sends stay in the kernel.
    for _ in 0..SEND_BUFS {
        let mut buf = a.streams.take_send_buf(StreamKind::Bulk).expect("a free buffer");
        buf.resize(4 << 20, 0x5a);
        a.streams.send(&mut a.ring, StreamKind::Bulk, buf).expect("send");
        a.ring.submit().expect("submit");
    }
    a.pump(Duration::from_millis(50));
    assert!(a.streams.in_flight(StreamKind::Bulk) > 0, "a send is stuck on the full socket");
    // The peer goes away (a zero-copy send's buffer is free only once the kernel has let go
    // of the data, which on loopback means the peer read it or closed).
    drop(b.streams.detach(&mut b.ring, StreamKind::Bulk).expect("detach b"));
    let old = a.streams.detach(&mut a.ring, StreamKind::Bulk).expect("detach");
    assert_eq!(a.streams.in_flight(StreamKind::Bulk), 0);
    assert_eq!(a.streams.free_send_bufs(StreamKind::Bulk), SEND_BUFS, "every buffer back");
    assert_eq!(a.ring.in_flight(), 1, "only the urgent receive is left in the kernel");
    drop(old);
    let (new_a, new_b) = tcp_pair();
    a.streams.attach(&mut a.ring, StreamKind::Bulk, new_a).expect("attach a");
    b.streams.attach(&mut b.ring, StreamKind::Bulk, new_b).expect("attach b");
    let got = exchange(&mut a, &mut b, StreamKind::Bulk, 0..20);
    assert_eq!(got, (0..20).collect::<Vec<_>>());
}
