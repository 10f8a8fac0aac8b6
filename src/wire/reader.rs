//! [`FrameReader`]: turns a byte stream into frames without copying them.
//!
//! A driver (io_uring, plain socket, simulator) asks for [`FrameReader::spare_capacity`],
//! receives into it, reports the count with [`FrameReader::commit`], then calls
//! [`FrameReader::next_frame`] until it returns `Ok(None)`. Frames borrow the receive buffer,
//! so one must be dropped before the next call. Consumed bytes are only moved to the front
//! when the spare room is too small (not per frame).
//!
//! A header is checked (magic, version, type, flags, length against [`Limits`]) as soon as its
//! 16 bytes are in, so a hostile length is rejected before the buffer grows for it. Errors are
//! sticky: a failed frame is not consumed, and the stream cannot resynchronise, so the driver
//! should drop the connection.

use super::frame::decode_payload;
use super::header::{parse_header, HEADER_LEN};
use super::{Frame, Limits, WireError};

/// Receive buffer size a reader starts with: a few default windows.
const INITIAL_CAPACITY_BYTES: usize = 256 * 1024;

/// Streaming frame decoder over a growable receive buffer.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// First unconsumed byte.
    start: usize,
    /// End of received bytes.
    end: usize,
    /// Total size of a frame whose header is in but whose payload is not yet (0 when none).
    pending_total: usize,
    /// Times unconsumed bytes were moved to the front (kept rare by design; tests check it).
    compactions: u64,
    limits: Limits,
}

impl FrameReader {
    /// A reader enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self { buf: Vec::new(), start: 0, end: 0, pending_total: 0, compactions: 0, limits }
    }

    /// The limits this reader enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.end - self.start
    }

    /// Bytes the receive buffer currently holds (received or not).
    pub fn capacity_bytes(&self) -> usize {
        self.buf.len()
    }

    fn max_frame_bytes(&self) -> usize {
        HEADER_LEN + self.limits.max_payload_bytes as usize
    }

    /// A slice to receive into, at least `min` bytes long (capped at the largest legal frame),
    /// and large enough for the rest of a frame whose header has arrived.
    pub fn spare_capacity(&mut self, min: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let rest_of_pending = self.pending_total.saturating_sub(self.buffered_bytes());
        let want = min.min(self.max_frame_bytes()).max(rest_of_pending).max(1);
        if self.buf.len() - self.end < want {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                self.compactions += 1;
            }
            if self.buf.len() - self.end < want {
                let grown =
                    (self.end + want).max(INITIAL_CAPACITY_BYTES.min(self.max_frame_bytes()));
                self.buf.resize(grown, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were received into the slice from [`Self::spare_capacity`].
    pub fn commit(&mut self, n: usize) -> Result<(), WireError> {
        let spare = self.buf.len() - self.end;
        if n > spare {
            return Err(WireError::CommitOverflow { n, spare });
        }
        self.end += n;
        Ok(())
    }

    /// Convenience for tests and simple drivers: copies `bytes` in (spare + commit).
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let spare = self.spare_capacity(rest.len());
            let n = spare.len().min(rest.len());
            spare[..n].copy_from_slice(&rest[..n]);
            self.end += n;
            rest = &rest[n..];
        }
    }

    /// True when [`FrameReader::next_frame`] will not say "more bytes needed": a whole frame
    /// is buffered, or a header that does not parse (the error comes from `next_frame`).
    pub fn has_frame(&self) -> bool {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER_LEN {
            return false;
        }
        match parse_header(avail, &self.limits) {
            Ok(header) => avail.len() >= HEADER_LEN + header.payload_len as usize,
            Err(_) => true,
        }
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, WireError> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = parse_header(avail, &self.limits)?;
        let total = HEADER_LEN + header.payload_len as usize;
        if avail.len() < total {
            self.pending_total = total;
            return Ok(None);
        }
        let frame_start = self.start;
        // Borrow only `buf` so that `start` can move while the frame borrows the buffer.
        let payload = &self.buf[frame_start + HEADER_LEN..frame_start + total];
        let frame = decode_payload(&header, payload, &self.limits)?;
        self.pending_total = 0;
        self.start = frame_start + total;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_frame, Control, ControlKind, FrameBody, FrameType};

    fn control_frame(seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let body = FrameBody::Control(Control { kind: ControlKind::Ack, seq, value: 0 });
        encode_frame(&mut out, 2, &body, &Limits::default()).expect("encode");
        out
    }

    #[test]
    fn compacts_rarely_not_per_frame() {
        let mut r = FrameReader::new(Limits::default());
        // Each frame arrives in two pieces, so there is always a partial frame to keep.
        for seq in 0..10_000u64 {
            let f = control_frame(seq);
            let (a, b) = f.split_at(10);
            for piece in [a, b] {
                let spare = r.spare_capacity(4096);
                spare[..piece.len()].copy_from_slice(piece);
                r.commit(piece.len()).expect("commit");
            }
            let frame = r.next_frame().expect("decode").expect("complete");
            assert_eq!(frame.frame_type(), FrameType::Control);
        }
        assert!(r.compactions < 20, "{} compactions for 10000 frames", r.compactions);
        assert!(r.capacity_bytes() <= INITIAL_CAPACITY_BYTES);
    }

    #[test]
    fn header_first_then_room_for_the_whole_frame() {
        let mut out = Vec::new();
        let blob = vec![9u8; 600_000];
        encode_frame(&mut out, 2, &FrameBody::VmState(&blob), &Limits::default()).expect("encode");
        let mut r = FrameReader::new(Limits::default());
        r.push_bytes(&out[..HEADER_LEN]);
        assert!(r.next_frame().expect("header ok").is_none());
        // The reader now knows the frame's size and offers room for all of it at once.
        assert!(r.spare_capacity(1).len() >= blob.len());
        r.push_bytes(&out[HEADER_LEN..]);
        let frame = r.next_frame().expect("decode").expect("complete");
        assert_eq!(frame.body, FrameBody::VmState(&blob));
    }
}
