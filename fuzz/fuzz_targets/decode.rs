//! Fuzz target: arbitrary bytes into the frame reader, handshake checker, window decode and
//! dirty-set validation (see `hybridmig::wire::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hybridmig::wire::fuzzing::exercise_decoders(data);
});
