//! The harness of the Noise handshake's inputs, shared by the cargo-fuzz target
//! (`fuzz/fuzz_targets/noise.rs`) and the bounded randomized test (`tests/auth_malformed.rs`):
//! arbitrary bytes as an opening, as an answer, as the Hello's record and as a stream of
//! records, and as edits of a real opening.
//!
//! Panics only when a promise breaks: bytes nobody sealed with the key are taken as a record,
//! or a changed opening is accepted.

use super::{open_handshake, respond, Credential, Psk, RecordReader, SecureConfig};
use crate::wire::StreamKind;

fn config() -> SecureConfig {
    SecureConfig::new(Credential::Psk(Psk::from_bytes([0x5A; 32])))
}

/// Feeds `data` to every reader of handshake input.
pub fn exercise_handshake_input(data: &[u8]) {
    let cfg = config();
    if let Ok((_, _, answer)) = respond(&cfg, data) {
        assert_eq!(answer.len(), 49, "an accepted opening gets a whole answer");
    }
    if let Ok((hs, _)) = open_handshake(&cfg, StreamKind::Urgent) {
        let _ = hs.on_answer(data);
    }
    let Ok((hs, opening)) = open_handshake(&cfg, StreamKind::Bulk) else { return };
    let Ok((mut responder, _, answer)) = respond(&cfg, &opening) else {
        panic!("a real opening must be accepted");
    };
    assert!(responder.open_one(data).is_err(), "a Hello record nobody sealed was opened");
    let Ok(mut initiator) = hs.on_answer(&answer) else {
        panic!("a real answer must be accepted");
    };
    let mut reader = RecordReader::new();
    let chunk = 1 + usize::from(data.first().copied().unwrap_or(0));
    let mut opened = 0usize;
    for part in data.chunks(chunk) {
        if reader.feed(&mut initiator, part, |p| opened += p.len()).is_err() {
            break;
        }
    }
    assert_eq!(opened, 0, "a record nobody sealed was opened");
    edit_opening(&cfg, &opening, data);
}

/// XORs `data` onto a real opening: any change must be refused.
fn edit_opening(cfg: &SecureConfig, opening: &[u8], data: &[u8]) {
    let mut edited = opening.to_vec();
    for (byte, x) in edited.iter_mut().zip(data) {
        *byte ^= x;
    }
    if edited != opening {
        assert!(respond(cfg, &edited).is_err(), "a changed opening was accepted");
    }
}
