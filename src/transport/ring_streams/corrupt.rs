//! Fault injection on the send path: corrupting one bulk frame after its CRC was computed.

use crate::wire::{parse_header, FrameType, Limits, HEADER_LEN};

/// A bulk frame the send path corrupted (fault injection, see
/// [`super::RingStreams::corrupt_bulk_frame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptedFrame {
    /// Its number among the bulk frames with a payload this side sent (from 1).
    pub nth: u64,
    /// Its type.
    pub frame_type: FrameType,
    /// When it was corrupted (mono ns).
    pub at_ns: u64,
}

/// Counts bulk frames with a payload as they are sent and flips a byte of the `nth`.
#[derive(Debug)]
pub(super) struct CorruptHook {
    pub(super) nth: u64,
    pub(super) seen: u64,
    pub(super) done: bool,
    pub(super) corrupted: Option<CorruptedFrame>,
}

impl CorruptHook {
    /// Walks the whole frames of a send buffer (the drivers encode only whole frames into
    /// one); a header that does not parse ends the walk, since nothing after it can be found.
    pub(super) fn on_send(&mut self, buf: &mut [u8], limits: &Limits) {
        let mut at = 0;
        while !self.done && at + HEADER_LEN <= buf.len() {
            let Ok(info) = parse_header(&buf[at..], limits) else { return };
            let len = info.payload_len as usize;
            let end = at + HEADER_LEN + len;
            if end > buf.len() {
                return;
            }
            if len > 0 {
                self.seen += 1;
                if self.seen == self.nth {
                    // The CRC in the header was computed over the original byte, so the
                    // receiver's check must fail on this frame.
                    buf[at + HEADER_LEN + len / 2] ^= 0xFF;
                    self.done = true;
                    let at_ns = crate::metrics::mono_ns();
                    let frame_type = info.frame_type;
                    self.corrupted = Some(CorruptedFrame { nth: self.nth, frame_type, at_ns });
                }
            }
            at = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_frame, FrameBody, VERSION_CURRENT};
    use crate::wire::{FrameReader, WireError};

    /// A send buffer of `blobs` VmState frames (an empty blob makes a frame with no payload).
    fn buffer(blobs: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for blob in blobs {
            let body = FrameBody::VmState(blob);
            encode_frame(&mut out, VERSION_CURRENT, &body, &Limits::default()).expect("encode");
        }
        out
    }

    /// The index of the first frame of `bytes` whose CRC check fails, if any.
    fn first_bad_frame(bytes: &[u8]) -> Option<usize> {
        let mut reader = FrameReader::new(Limits::default());
        reader.push_bytes(bytes);
        for i in 0.. {
            match reader.next_frame() {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(WireError::CrcMismatch { .. }) => return Some(i),
                Err(e) => panic!("frame {i}: {e}"),
            }
        }
        None
    }

    #[test]
    fn the_nth_frame_with_a_payload_fails_its_crc_check() {
        let mut hook = CorruptHook { nth: 3, seen: 0, done: false, corrupted: None };
        // Frames with no payload are not counted: the third with one is frame 3 of the second
        // buffer (index 3 there: empty, payload 2, empty, payload 3).
        let mut first = buffer(&[b"one", b""]);
        hook.on_send(&mut first, &Limits::default());
        assert_eq!(first_bad_frame(&first), None);
        assert!(hook.corrupted.is_none());
        let mut second = buffer(&[b"", b"two", b"", b"three", b"four"]);
        hook.on_send(&mut second, &Limits::default());
        assert_eq!(first_bad_frame(&second), Some(3));
        let corrupted = hook.corrupted.take().expect("recorded");
        assert_eq!((corrupted.nth, corrupted.frame_type), (3, FrameType::VmState));
        // Once only.
        let mut third = buffer(&[b"five"]);
        hook.on_send(&mut third, &Limits::default());
        assert_eq!(first_bad_frame(&third), None);
        assert!(hook.corrupted.is_none());
    }
}
