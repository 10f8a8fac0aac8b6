//! Fuzz target: arbitrary bytes into the session layer's handshake (acceptor and initiator),
//! the frame reader, the post-handshake frame gate, window decode and dirty-set validation
//! (see `hybridmig::wire::fuzzing`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hybridmig::wire::fuzzing::exercise_decoders(data);
});
