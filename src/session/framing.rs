//! Finding whole handshake frames in a byte stream without taking a byte more, so that a
//! connection goes to the driver after the handshake with nothing buffered on the side.

use super::SessionError;
use crate::wire::{FrameType, Limits, WireError, HEADER_LEN, MAGIC};

/// The total length of the handshake frame whose header is `header`. Only the magic, the type
/// (Hello or HelloAck) and the length are checked here: the version is the handshake's to
/// judge, so that a peer of another version still gets an answer.
pub fn handshake_frame_len(
    header: &[u8; HEADER_LEN],
    limits: &Limits,
) -> Result<usize, SessionError> {
    let word = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let magic = word(0);
    if magic != MAGIC {
        return Err(WireError::BadMagic { got: magic, expected: MAGIC }.into());
    }
    let frame_type = FrameType::from_u8(header[6])?;
    if !matches!(frame_type, FrameType::Hello | FrameType::HelloAck) {
        let expected = FrameType::Hello;
        return Err(WireError::FrameBeforeHello { got: frame_type, expected }.into());
    }
    let payload_len = u64::from(word(8));
    let max = limits.max_payload_for(frame_type);
    if payload_len > max {
        return Err(WireError::PayloadTooLong { frame: frame_type, len: payload_len, max }.into());
    }
    // Fits: bounded by a u32 limit.
    Ok(HEADER_LEN + payload_len as usize)
}

/// Takes the first whole handshake frame off the front of `buf`; `Ok(None)` while more bytes
/// are needed.
pub fn take_handshake_frame(
    buf: &mut Vec<u8>,
    limits: &Limits,
) -> Result<Option<Vec<u8>>, SessionError> {
    let Some(header) = buf.get(..HEADER_LEN) else { return Ok(None) };
    let mut fixed = [0u8; HEADER_LEN];
    fixed.copy_from_slice(header);
    let total = handshake_frame_len(&fixed, limits)?;
    if buf.len() < total {
        return Ok(None);
    }
    let rest = buf.split_off(total);
    Ok(Some(std::mem::replace(buf, rest)))
}
