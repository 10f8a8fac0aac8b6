//! Fuzz target: arbitrary bytes into the Noise handshake's readers (opening, answer, the
//! Hello's record, a stream of records, edits of a real opening); see
//! `hybridmig::secure::fuzzing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hybridmig::secure::fuzzing::exercise_handshake_input(data);
});
