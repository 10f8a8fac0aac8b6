//! The bulk and urgent streams of one migration, driven through a [`Ring`].
//!
//! Both engines' drivers use this: it keeps one receive armed per stream and turns received
//! bytes into frames (a [`FrameReader`] per stream), and it owns a small set of send buffers
//! per stream so that several sends are in flight at once without allocating per send.
//! Completions whose tag is not one of its own are handed back to the caller.
//!
//! The streams outlive their connections: a closed stream is an event, not the end, and
//! [`RingStreams::detach`] gives a connection back (its operations cancelled and reaped first,
//! so no buffer is freed while the kernel holds it) while [`RingStreams::attach`] lets a new
//! connection join the running session with a clean frame reader. Frames the engine has queued
//! stay with the engine; bytes in flight on the old connection are lost with it.
//!
//! A connection whose handshake made a Noise cipher ([`Framing::Sealed`]) has every send
//! buffer sealed into records just before it goes to the kernel, and received records opened
//! one at a time as [`RingStreams::next_frame`] needs them: the records' size limit is split
//! and joined here, out of the engines' sight. Sealing writes into a spare buffer per stream that then
//! trades places with the plaintext one, so no send allocates and the number of buffers a
//! stream circulates stays the same.

mod corrupt;

use corrupt::CorruptHook;
pub use corrupt::CorruptedFrame;

use super::framing::Framing;
use crate::ring::{Buf, Completion, Ring, RingError};
use crate::secure::{RecordReader, SecureError};
use crate::session::{FrameGate, Role};
use crate::wire::{Frame, FrameReader, Limits, StreamKind, WireError};
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use super::tcp::StreamPair;

/// Tags at or above this value are the caller's; below it, this module's.
pub const FIRST_CALLER_TAG: u64 = 16;

const TAG_RECV: [u64; 2] = [1, 2];
const TAG_SEND: [u64; 2] = [3, 4];

/// Bytes in one receive buffer.
///
/// Small on purpose. A receive armed on the ring copies its data in task work, which the
/// kernel runs inside whatever system call the loop makes next, such as the destination's
/// look for fault answers between two placed pages: a 512 KiB receive could put that much
/// copying ahead of a fault answer. Post-copy fault p99 with 512 against 128 KiB, side by
/// side: 431 against 359 us on loopback (median of 9 runs each), 591 against 399 over 18
/// runs each in a busier hour, and 639 against 531 us on veth (6 runs each). Total time on
/// loopback, where the destination's CPU is the limit, did not grow. In the busier hour the
/// guest also lost less of its speed (degradation 15% with 128 KiB against 30%), so it
/// reached more missing pages: more faults (676 against 406) and more time blocked on them
/// (97 against 72 ms).
const RECV_BUF_BYTES: usize = 128 * 1024;

/// How long [`RingStreams::detach`] waits for the kernel to hand back a stream's buffers.
const DETACH_WAIT: Duration = Duration::from_secs(5);

/// The fd of a stream with no connection.
const NO_FD: RawFd = -1;

/// Errors of the ring-driven streams.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The ring refused an operation.
    #[error("{stream:?} stream: {source}")]
    Ring {
        /// Which stream.
        stream: StreamKind,
        /// The ring's error.
        source: RingError,
    },
    /// A send or receive failed.
    #[error("{op} on the {stream:?} stream: {source}")]
    Io {
        /// `send`, `recv`, `clone` or `shutdown`.
        op: &'static str,
        /// Which stream.
        stream: StreamKind,
        /// The OS error.
        source: io::Error,
    },
    /// The kernel gave up on the connection (ETIMEDOUT): data or keepalive probes went
    /// unacknowledged for the connection's liveness (TCP_USER_TIMEOUT), so the peer or the
    /// path between is gone.
    #[error(
        "the {stream:?} stream timed out ({op}): no acknowledgement from the peer for {}",
        describe_user_timeout(*.user_timeout_ms)
    )]
    TimedOut {
        /// `send` or `recv`.
        op: &'static str,
        /// Which stream.
        stream: StreamKind,
        /// The connection's TCP_USER_TIMEOUT in ms; 0 when it had none (the kernel's own
        /// retransmission limit ended it).
        user_timeout_ms: u64,
    },
    /// The bytes received do not form valid frames.
    #[error("{stream:?} stream: {source}")]
    Wire {
        /// Which stream.
        stream: StreamKind,
        /// The decoder's error.
        source: WireError,
    },
    /// A record did not decrypt, or could not be sealed.
    #[error("{stream:?} stream: {source}")]
    Secure {
        /// Which stream.
        stream: StreamKind,
        /// The secure layer's error.
        source: SecureError,
    },
    /// The pair's framing (its ciphers) was taken by another set of streams already.
    #[error("the stream pair's framing was taken already: each pair is driven once")]
    FramingTaken,
    /// The stream has no connection (it was detached and nothing attached since).
    #[error("the {stream:?} stream has no connection")]
    Detached {
        /// Which stream.
        stream: StreamKind,
    },
    /// A connection is attached already: detach it first.
    #[error("the {stream:?} stream already has a connection")]
    Attached {
        /// Which stream.
        stream: StreamKind,
    },
    /// The kernel did not hand back a detached stream's operations in time; the connection
    /// stays attached (its buffers stay with the ring).
    #[error("detaching the {stream:?} stream: {in_flight} operations still in the kernel")]
    DetachStuck {
        /// Which stream.
        stream: StreamKind,
        /// Operations not reaped.
        in_flight: usize,
    },
}

/// What a completion meant for the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEvent {
    /// Bytes arrived on the stream: call [`RingStreams::next_frame`] until it gives None.
    Received(StreamKind),
    /// A send finished; `bytes` left this host.
    Sent(StreamKind, u64),
    /// The peer closed the stream (or the connection broke). The streams survive it: the
    /// caller may [`RingStreams::detach`] the dead connection and attach a new one.
    Closed(StreamKind),
}

fn index(stream: StreamKind) -> usize {
    stream.index()
}

fn kind(index: usize) -> StreamKind {
    if index == 0 {
        StreamKind::Bulk
    } else {
        StreamKind::Urgent
    }
}

fn describe_user_timeout(user_timeout_ms: u64) -> String {
    match user_timeout_ms {
        0 => "the kernel's retransmission limit (no liveness was set)".to_string(),
        ms => format!("{ms} ms"),
    }
}

/// True for the errors a send or receive gets once the connection is gone.
fn is_connection_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN | libc::ECONNABORTED)
    )
}

/// The two streams of a migration on one ring.
pub struct RingStreams {
    /// Each stream's connection (a duplicate of the caller's socket, so the caller's pair
    /// stays valid and a detached connection can be handed back by value).
    socks: [Option<TcpStream>; 2],
    fds: [RawFd; 2],
    readers: [FrameReader; 2],
    limits: Limits,
    free_send: [Vec<Vec<u8>>; 2],
    in_flight: [usize; 2],
    recv_armed: [bool; 2],
    /// Bytes received per stream.
    pub bytes_received: [u64; 2],
    /// Bytes sent per stream.
    pub bytes_sent: [u64; 2],
    frames_received: u64,
    closed: [bool; 2],
    /// Per-stream order checks after the handshake, once [`RingStreams::guard`] set them.
    gates: Option<[FrameGate; 2]>,
    /// Fault injection only: `None` unless a plan corrupts a bulk frame.
    corrupt: Option<CorruptHook>,
    /// How each stream's frames travel (clear or sealed in records).
    framing: [Framing; 2],
    /// Joins and opens received records; made on the first sealed attach, kept after.
    records: [Option<RecordReader>; 2],
    /// Where a send buffer is sealed; trades places with it.
    spare: [Vec<u8>; 2],
}

impl std::fmt::Debug for RingStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingStreams")
            .field("fds", &self.fds)
            .field("in_flight", &self.in_flight)
            .field("closed", &self.closed)
            .finish()
    }
}

impl RingStreams {
    /// Arms a receive on both streams of `pair` and prepares `send_bufs` send buffers of
    /// `send_buf_bytes` per stream.
    pub fn new(
        ring: &mut Ring,
        pair: &StreamPair,
        send_bufs: usize,
        send_buf_bytes: usize,
        limits: Limits,
    ) -> Result<Self, StreamError> {
        let mut streams = Self {
            socks: [None, None],
            fds: [NO_FD; 2],
            readers: [FrameReader::new(limits), FrameReader::new(limits)],
            limits,
            free_send: [0, 1]
                .map(|_| (0..send_bufs).map(|_| Vec::with_capacity(send_buf_bytes)).collect()),
            in_flight: [0; 2],
            recv_armed: [false; 2],
            bytes_received: [0; 2],
            bytes_sent: [0; 2],
            frames_received: 0,
            closed: [false; 2],
            gates: None,
            corrupt: None,
            framing: [Framing::Clear, Framing::Clear],
            records: [None, None],
            spare: [0, 1].map(|_| Vec::new()),
        };
        let [bulk_framing, urgent_framing] =
            pair.framing.take().ok_or(StreamError::FramingTaken)?;
        let socks = [
            (StreamKind::Bulk, &pair.bulk, bulk_framing),
            (StreamKind::Urgent, &pair.urgent, urgent_framing),
        ];
        for (stream, sock, framing) in socks {
            let own = sock.try_clone().map_err(|source| StreamError::Io {
                op: "clone",
                stream,
                source,
            })?;
            streams.attach_with(ring, stream, own, framing)?;
        }
        Ok(streams)
    }

    /// True when `stream`'s frames are sealed in records.
    pub fn is_sealed(&self, stream: StreamKind) -> bool {
        self.framing[index(stream)].is_sealed()
    }

    /// Seals `frames` for `stream` when its framing says so: the sealed buffer to send, and
    /// the plaintext one becomes the stream's spare. On error `frames` comes back.
    fn seal(&mut self, i: usize, frames: Vec<u8>) -> Result<Vec<u8>, (Vec<u8>, SecureError)> {
        let Framing::Sealed(cipher) = &mut self.framing[i] else { return Ok(frames) };
        let mut sealed = std::mem::take(&mut self.spare[i]);
        sealed.clear();
        if let Err(error) = cipher.seal(&frames, &mut sealed) {
            self.spare[i] = sealed;
            return Err((frames, error));
        }
        self.spare[i] = frames;
        Ok(sealed)
    }

    /// A free, empty send buffer for `stream`, if one is not in flight. Frames are encoded
    /// straight into it, and the ring sends it without another copy.
    pub fn take_send_buf(&mut self, stream: StreamKind) -> Option<Vec<u8>> {
        let mut buf = self.free_send[index(stream)].pop()?;
        buf.clear();
        Some(buf)
    }

    /// Gives back a send buffer that was not used.
    pub fn put_back(&mut self, stream: StreamKind, buf: Vec<u8>) {
        self.free_send[index(stream)].push(buf);
    }

    /// Send buffers of `stream` not in flight.
    pub fn free_send_bufs(&self, stream: StreamKind) -> usize {
        self.free_send[index(stream)].len()
    }

    /// Sends all of `frames` on `stream`; the buffer comes back to the free list when the
    /// kernel is done with it.
    pub fn send(
        &mut self,
        ring: &mut Ring,
        stream: StreamKind,
        mut frames: Vec<u8>,
    ) -> Result<(), StreamError> {
        let i = index(stream);
        if let (Some(hook), StreamKind::Bulk) = (self.corrupt.as_mut(), stream) {
            hook.on_send(&mut frames, &self.limits);
        }
        if self.socks[i].is_none() {
            self.free_send[i].push(frames);
            return Err(StreamError::Detached { stream });
        }
        let frames = self.seal(i, frames).map_err(|(frames, source)| {
            self.free_send[i].push(frames);
            StreamError::Secure { stream, source }
        })?;
        if let Err(rejected) = ring.send(self.fds[i], Buf::from_vec(frames), TAG_SEND[i]) {
            if let Some(vec) = rejected.buf.into_vec() {
                self.free_send[i].push(vec);
            }
            return Err(StreamError::Ring { stream, source: rejected.error });
        }
        self.in_flight[i] += 1;
        Ok(())
    }

    /// Sends in flight on `stream`.
    pub fn in_flight(&self, stream: StreamKind) -> usize {
        self.in_flight[index(stream)]
    }

    /// Bytes moved both ways on both streams plus frames decoded: the event loop's measure
    /// of progress.
    pub fn progress_marker(&self) -> u64 {
        let bytes: u64 = self.bytes_received.iter().chain(&self.bytes_sent).sum();
        bytes.wrapping_add(self.frames_received)
    }

    /// Asks the kernel to acknowledge `stream`'s received data at once (TCP_QUICKACK, which
    /// lapses by itself, so it is set again after each receive). The urgent stream carries
    /// short bursts after idle spells: a delayed ACK there holds the sender at its restarted
    /// congestion window, and the next fault answer waits behind it.
    pub fn quickack(&self, stream: StreamKind) -> io::Result<()> {
        match &self.socks[index(stream)] {
            Some(sock) => socket2::SockRef::from(sock).set_tcp_quickack(true),
            None => Ok(()),
        }
    }

    /// The ring tag of `stream`'s receives (to pick its completions out of the ring first).
    pub fn recv_tag(&self, stream: StreamKind) -> u64 {
        TAG_RECV[index(stream)]
    }

    /// The ring tag of `stream`'s sends (a finished urgent send frees a buffer for the next
    /// urgent frame, so it is picked out of the ring first too).
    pub fn send_tag(&self, stream: StreamKind) -> u64 {
        TAG_SEND[index(stream)]
    }

    /// Fault injection: flip one byte in the payload of the `nth` bulk frame with a payload
    /// sent from now on (counting from 1), after its CRC was computed, so that the
    /// receiver's CRC check fails on it. [`RingStreams::take_corrupted`] says when it happened.
    pub fn corrupt_bulk_frame(&mut self, nth: u64) {
        self.corrupt = Some(CorruptHook { nth, seen: 0, done: false, corrupted: None });
    }

    /// The frame [`RingStreams::corrupt_bulk_frame`] corrupted, once, after it was.
    pub fn take_corrupted(&mut self) -> Option<CorruptedFrame> {
        self.corrupt.as_mut().and_then(|hook| hook.corrupted.take())
    }

    /// Shuts `stream`'s connection down both ways (shutdown(2), fault injection): this side's
    /// receive then ends and the peer sees the connection close, as when a link breaks.
    pub fn shutdown(&self, stream: StreamKind) -> Result<(), StreamError> {
        let sock = self.socks[index(stream)].as_ref().ok_or(StreamError::Detached { stream })?;
        sock.shutdown(std::net::Shutdown::Both).map_err(|source| StreamError::Io {
            op: "shutdown",
            stream,
            source,
        })
    }

    /// True when the peer closed `stream` (until a new connection is attached).
    pub fn is_closed(&self, stream: StreamKind) -> bool {
        self.closed[index(stream)]
    }

    /// True when `stream` has a connection.
    pub fn is_attached(&self, stream: StreamKind) -> bool {
        self.socks[index(stream)].is_some()
    }

    /// Handles a completion if it is one of ours (`Ok(Ok)`), or hands it back (`Ok(Err)`).
    pub fn on_completion(
        &mut self,
        ring: &mut Ring,
        completion: Completion,
    ) -> Result<Result<StreamEvent, Completion>, StreamError> {
        let tag = completion.tag;
        if let Some(i) = TAG_RECV.iter().position(|&t| t == tag) {
            return self.on_recv(ring, i, completion).map(Ok);
        }
        if let Some(i) = TAG_SEND.iter().position(|&t| t == tag) {
            return self.on_sent(i, completion).map(Ok);
        }
        Ok(Err(completion))
    }

    /// A send finished: its buffer goes back to the free list whatever the result.
    fn on_sent(&mut self, i: usize, completion: Completion) -> Result<StreamEvent, StreamError> {
        self.in_flight[i] = self.in_flight[i].saturating_sub(1);
        let stream = kind(i);
        if let Some(vec) = completion.buf.and_then(Buf::into_vec) {
            self.free_send[i].push(vec);
        }
        match completion.result {
            Ok(sent) => {
                self.bytes_sent[i] += sent as u64;
                Ok(StreamEvent::Sent(stream, sent as u64))
            }
            Err(e) if is_connection_gone(&e) => {
                self.closed[i] = true;
                Ok(StreamEvent::Closed(stream))
            }
            Err(source) => Err(self.io_error(i, "send", source)),
        }
    }

    fn on_recv(
        &mut self,
        ring: &mut Ring,
        i: usize,
        completion: Completion,
    ) -> Result<StreamEvent, StreamError> {
        let stream = kind(i);
        self.recv_armed[i] = false;
        let n = match completion.result {
            Ok(n) => n,
            Err(e) if is_connection_gone(&e) => 0,
            Err(source) => return Err(self.io_error(i, "recv", source)),
        };
        let mut buf = completion.buf.unwrap_or_else(|| Buf::with_capacity(RECV_BUF_BYTES));
        if n == 0 {
            self.closed[i] = true;
            return Ok(StreamEvent::Closed(stream));
        }
        self.bytes_received[i] += n as u64;
        self.take_in(i, buf.as_slice())?;
        buf.clear();
        self.arm_recv(ring, i, buf)?;
        Ok(StreamEvent::Received(stream))
    }

    /// Hands received bytes to the frame reader; on a sealed stream they wait as records,
    /// opened one at a time by [`RingStreams::next_frame`] as frames are read.
    fn take_in(&mut self, i: usize, bytes: &[u8]) -> Result<(), StreamError> {
        match (&self.framing[i], &mut self.records[i]) {
            (Framing::Sealed(_), Some(records)) => records.push(bytes),
            _ => self.readers[i].push_bytes(bytes),
        }
        Ok(())
    }

    /// On a sealed stream, opens records until the frame reader holds a whole frame or no
    /// whole record is left: one frame's worth of decryption per call, so a caller that
    /// serves urgent work between frames is never held up by a whole receive's worth.
    fn open_records(&mut self, i: usize) -> Result<(), StreamError> {
        let reader = &mut self.readers[i];
        let (Framing::Sealed(cipher), Some(records)) = (&mut self.framing[i], &mut self.records[i])
        else {
            return Ok(());
        };
        while !reader.has_frame() {
            let opened = records
                .open_next(cipher, |plain| reader.push_bytes(plain))
                .map_err(|source| StreamError::Secure { stream: kind(i), source })?;
            if !opened {
                break;
            }
        }
        Ok(())
    }

    /// The error of a failed send or receive; a timeout names the liveness that expired.
    fn io_error(&self, i: usize, op: &'static str, source: io::Error) -> StreamError {
        let stream = kind(i);
        if source.raw_os_error() != Some(libc::ETIMEDOUT) {
            return StreamError::Io { op, stream, source };
        }
        let user_timeout = self.socks[i]
            .as_ref()
            .and_then(|s| socket2::SockRef::from(s).tcp_user_timeout().ok().flatten());
        let user_timeout_ms = user_timeout.map_or(0, |t| t.as_millis() as u64);
        StreamError::TimedOut { op, stream, user_timeout_ms }
    }

    fn arm_recv(&mut self, ring: &mut Ring, i: usize, buf: Buf) -> Result<(), StreamError> {
        ring.recv(self.fds[i], buf, TAG_RECV[i])
            .map_err(|r| StreamError::Ring { stream: kind(i), source: r.error })?;
        self.recv_armed[i] = true;
        Ok(())
    }

    /// From now on every frame received passes a [`FrameGate`] for `role` and the session's
    /// `version` before [`RingStreams::next_frame`] returns it. A gate outlives a detach, and
    /// an attach reopens it (see [`FrameGate::reopened`]).
    pub fn guard(&mut self, role: Role, version: u16) {
        self.gates = Some(
            [StreamKind::Bulk, StreamKind::Urgent]
                .map(|stream| FrameGate::new(role, stream, version)),
        );
    }

    /// The next complete frame received on `stream`, if any (checked by its gate, if set).
    pub fn next_frame(&mut self, stream: StreamKind) -> Result<Option<Frame<'_>>, StreamError> {
        self.open_records(index(stream))?;
        let frame = self.readers[index(stream)]
            .next_frame()
            .map_err(|source| StreamError::Wire { stream, source })?;
        if let (Some(frame), Some(gates)) = (&frame, &mut self.gates) {
            gates[index(stream)]
                .check(frame)
                .map_err(|source| StreamError::Wire { stream, source })?;
        }
        self.frames_received += u64::from(frame.is_some());
        Ok(frame)
    }

    /// Takes `stream`'s connection off the ring and gives it back. Its receive and sends are
    /// cancelled and every completion is reaped before this returns, so each send buffer is
    /// back on the free list and no buffer is freed while the kernel holds it. Bytes received
    /// but not yet framed are dropped; a send cut by the cancel may leave a partial frame on
    /// the old connection, which is why it is meant for a connection being replaced.
    /// Completions of other operations stay in the ring's ready queue for the caller. A
    /// zero-copy send comes back only once the kernel has let go of its pages (after the
    /// peer acknowledged them, or on loopback read or closed): if that takes longer than a
    /// few seconds the connection stays attached and [`StreamError::DetachStuck`] says so.
    pub fn detach(
        &mut self,
        ring: &mut Ring,
        stream: StreamKind,
    ) -> Result<TcpStream, StreamError> {
        let i = index(stream);
        if self.socks[i].is_none() {
            return Err(StreamError::Detached { stream });
        }
        let fd = self.fds[i];
        ring.cancel_fd(fd).map_err(|source| StreamError::Ring { stream, source })?;
        let deadline = Instant::now() + DETACH_WAIT;
        loop {
            while let Some(c) = ring.take_completion(|t| t == TAG_RECV[i] || t == TAG_SEND[i]) {
                self.reap_detached(i, c);
            }
            let in_flight = self.in_flight[i] + usize::from(self.recv_armed[i]);
            if in_flight == 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(StreamError::DetachStuck { stream, in_flight });
            }
            ring.submit_and_wait(1, Some(Duration::from_millis(10)))
                .map_err(|source| StreamError::Ring { stream, source })?;
        }
        ring.forget_fd(fd);
        self.fds[i] = NO_FD;
        self.readers[i] = FrameReader::new(self.limits);
        self.framing[i] = Framing::Clear;
        if let Some(records) = &mut self.records[i] {
            records.clear();
        }
        self.closed[i] = true;
        self.socks[i].take().ok_or(StreamError::Detached { stream })
    }

    /// Accounts for one completion of a stream being detached; its frames are not read.
    fn reap_detached(&mut self, i: usize, completion: Completion) {
        if completion.tag == TAG_RECV[i] {
            self.recv_armed[i] = false;
            if let Ok(n) = completion.result {
                self.bytes_received[i] += n as u64;
            }
            return;
        }
        self.in_flight[i] = self.in_flight[i].saturating_sub(1);
        if let Ok(n) = completion.result {
            self.bytes_sent[i] += n as u64;
        }
        if let Some(vec) = completion.buf.and_then(Buf::into_vec) {
            self.free_send[i].push(vec);
        }
    }

    /// Joins `sock` to the running session as `stream`'s connection, its frames in the
    /// clear (see [`RingStreams::attach_with`]).
    pub fn attach(
        &mut self,
        ring: &mut Ring,
        stream: StreamKind,
        sock: TcpStream,
    ) -> Result<(), StreamError> {
        self.attach_with(ring, stream, sock, Framing::Clear)
    }

    /// Joins `sock` to the running session as `stream`'s connection, its frames travelling
    /// as `framing` says: a receive is armed on it and its frame reader starts clean. Frames
    /// the engine queued meanwhile go out on it.
    pub fn attach_with(
        &mut self,
        ring: &mut Ring,
        stream: StreamKind,
        sock: TcpStream,
        framing: Framing,
    ) -> Result<(), StreamError> {
        let i = index(stream);
        if self.socks[i].is_some() {
            return Err(StreamError::Attached { stream });
        }
        if framing.is_sealed() {
            let records = self.records[i].get_or_insert_with(RecordReader::new);
            records.clear();
        }
        self.framing[i] = framing;
        self.fds[i] = sock.as_raw_fd();
        self.socks[i] = Some(sock);
        self.readers[i] = FrameReader::new(self.limits);
        self.closed[i] = false;
        if let Some(gates) = &mut self.gates {
            // A resumed session may repeat what the lost connection carried (Done, DoneAck).
            gates[i] = gates[i].reopened();
        }
        self.arm_recv(ring, i, Buf::with_capacity(RECV_BUF_BYTES))
    }
}
