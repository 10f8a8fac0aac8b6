//! The decoder harness shared by the cargo-fuzz target (`fuzz/fuzz_targets/decode.rs`) and the
//! long randomized test (`tests/wire_fuzz.rs`), so both exercise exactly the same paths.
//!
//! Bytes enter through [`exercise_decoders`]; nothing leaves but panics, which only fire on a
//! codec bug (an invariant the decoder promises), never on bad input.

use super::{
    decode_frame, encode_frame, FrameBody, FrameReader, Limits, Region, StreamKind, HEADER_LEN,
    PAGE_SIZE,
};
use crate::session::{
    handshake_frame_len, Acceptor, AcceptorConfig, Binding, FrameGate, Initiator, Offer, Role,
    SessionTicket,
};

/// Region table the harness validates windows and dirty sets against.
const FUZZ_REGIONS: [Region; 2] = [
    Region { guest_phys: 0, size_bytes: 64 * PAGE_SIZE as u64 },
    Region { guest_phys: 1 << 30, size_bytes: 4096 * PAGE_SIZE as u64 },
];

/// Feeds `data` to the decoders: the session layer's acceptor and initiator (the first frame
/// as a Hello, as a HelloAck), then a [`FrameReader`] in chunks whose sizes come from the
/// first byte, every frame through the session's post-handshake gate, window decode into a
/// buffer, dirty set validation, and a re-encode that must reproduce the frame's bytes
/// exactly.
///
/// Panics only when the codec breaks a promise: a decoded frame does not re-encode to the
/// same bytes, the streaming and one-shot decoders disagree, a validated dirty set does not
/// add up to its count, or the reader's buffer grows past its bound. (Any panic inside the
/// codec itself is of course also a finding.)
pub fn exercise_decoders(data: &[u8]) {
    let Some((&chunk_seed, stream)) = data.split_first() else { return };
    // Odd first byte: repair every CRC first, so mutations reach the payload parsers instead
    // of all stopping at the checksum.
    let mut repaired;
    let stream = if chunk_seed & 1 == 1 {
        repaired = stream.to_vec();
        fix_crcs(&mut repaired);
        &repaired[..]
    } else {
        stream
    };
    let limits =
        Limits { max_vmstate_bytes: 1 << 16, max_dirtyset_bytes: 1 << 16, ..Limits::default() };
    let chunk_bytes = 1 + usize::from(chunk_seed) * 31;
    exercise_handshake(stream, &limits);
    let mut reader = FrameReader::new(limits);
    let mut gate = FrameGate::new(Role::Acceptor, StreamKind::Bulk, super::VERSION_CURRENT);
    // Grown on demand: a fresh 1 MiB zeroed buffer per input would dominate the exec rate.
    let mut dest = Vec::new();
    let mut consumed = 0usize;
    for chunk in stream.chunks(chunk_bytes) {
        reader.push_bytes(chunk);
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    let _ = gate.check(&frame);
                    check_frame(
                        &frame.body,
                        frame.version,
                        stream,
                        &mut consumed,
                        &mut dest,
                        &limits,
                    );
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        let bound = 2 * (16 + limits.max_payload_bytes as usize) + stream.len();
        assert!(reader.capacity_bytes() <= bound, "reader grew to {}", reader.capacity_bytes());
    }
}

/// The first handshake frame of `stream`, if any, through both ends of the session layer.
/// Neither may panic; an acceptor that answers must answer with a decodable HelloAck.
fn exercise_handshake(stream: &[u8], limits: &Limits) {
    let Some(header) = stream.get(..HEADER_LEN).and_then(|h| <[u8; HEADER_LEN]>::try_from(h).ok())
    else {
        return;
    };
    let Ok(total) = handshake_frame_len(&header, limits) else { return };
    let Some(frame) = stream.get(..total) else { return };
    // Unbound, and bound to a ticket as a new session and as a resumed one, so that fuzzed
    // tokens reach every branch of the binding check.
    let ticket = SessionTicket::from_bytes([0xA5; 32]);
    for binding in [Binding::None, Binding::New(ticket), Binding::Resume(ticket)] {
        let mut acceptor =
            Acceptor::new(AcceptorConfig::new(FUZZ_REGIONS.to_vec())).with_binding(binding);
        let answer = acceptor.on_hello_bytes(None, frame);
        if !answer.reply.is_empty() {
            let (reply, _) = decode_frame(&answer.reply, limits).expect("a reply must decode");
            assert!(matches!(reply.body, FrameBody::HelloAck(_)), "reply is not a HelloAck");
        }
    }
    let offer = Offer::new(7, super::MigrationMode::Hybrid, FUZZ_REGIONS.to_vec());
    for bound in [false, true] {
        let mut initiator = Initiator::new(offer.clone());
        if bound {
            initiator = initiator.bound();
        }
        for stream in StreamKind::ALL {
            if initiator.hello(stream).is_ok() {
                let _ = initiator.on_bytes(stream, frame);
            }
        }
    }
}

/// Rewrites the CRC field of each frame (as framed by its length field) to match its payload.
fn fix_crcs(stream: &mut [u8]) {
    let mut pos = 0usize;
    while pos + HEADER_LEN <= stream.len() {
        let len_bytes = [stream[pos + 8], stream[pos + 9], stream[pos + 10], stream[pos + 11]];
        let end = (pos + HEADER_LEN).saturating_add(u32::from_be_bytes(len_bytes) as usize);
        let end = end.min(stream.len());
        let crc = crc32fast::hash(&stream[pos + HEADER_LEN..end]);
        stream[pos + 12..pos + 16].copy_from_slice(&crc.to_be_bytes());
        pos = end;
    }
}

fn check_frame(
    body: &FrameBody<'_>,
    version: u16,
    stream: &[u8],
    consumed: &mut usize,
    dest: &mut Vec<u8>,
    limits: &Limits,
) {
    let mut again = Vec::new();
    let n = encode_frame(&mut again, version, body, limits).expect("decoded frame must re-encode");
    let original = &stream[*consumed..*consumed + n];
    assert_eq!(again.as_slice(), original, "re-encoded {body:?} differs");
    let (one_shot, used) = decode_frame(original, limits).expect("one-shot decode must agree");
    assert_eq!(used, n);
    assert_eq!(&one_shot.body, body);
    *consumed += n;
    match body {
        FrameBody::PageWindow(w) => {
            let _ = w.validate(&FUZZ_REGIONS);
            let len = w.len_bytes();
            if len <= limits.window_pages() as usize * PAGE_SIZE {
                dest.resize(dest.len().max(len), 0);
                if let Ok(zero) = w.decode_into(&mut dest[..len]) {
                    assert!(zero.count() <= w.page_count);
                }
            }
        }
        FrameBody::DirtySet(d) => {
            if let Ok(runs) = d.runs(&FUZZ_REGIONS) {
                let pages: u64 = runs.map(|r| r.count).sum();
                assert_eq!(pages, d.page_count, "validated dirty set must add up");
            }
        }
        FrameBody::FaultRequest(f) => {
            let _ = f.validate(&FUZZ_REGIONS);
        }
        _ => {}
    }
}
