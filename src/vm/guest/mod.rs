//! The guest side: parameter blocks, generated workload code, host pre-fill and the digest.
//!
//! The VMM writes one parameter page per vCPU ([`params`]) and one program for the workload
//! kind ([`asm`]) into the system region; for hotcold and seqread it also pre-fills the data
//! ([`fill`]). The guest reports progress through its parameter page and its digest through
//! port I/O; [`digest`] computes the same hash on the host.

pub mod asm;
pub mod digest;
pub mod fill;
pub mod params;

/// Multiplier of the guest's xorshift64* generator.
pub const XORSHIFT_MUL: u64 = 0x2545_f491_4f6c_dd1d;

/// One step of xorshift64* as the guest runs it: advances `state` and returns the output.
pub fn xorshift_next(state: &mut u64) -> u64 {
    let mut s = *state;
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    *state = s;
    s.wrapping_mul(XORSHIFT_MUL)
}
