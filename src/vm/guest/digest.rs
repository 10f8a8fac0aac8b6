//! The memory digest, computed identically by the guest program and on the host.
//!
//! Per vCPU: `h = init; for each 8-byte word q (little-endian, in address order):
//! h = rotl(h ^ q, 23) * M`, then `d = (h ^ acc) * M; d ^= d >> 29`, where `acc` is the
//! workload's read accumulator. The VM digest folds the vCPU digests in vCPU order.

/// Multiplier of the digest hash.
pub const DIGEST_MUL: u64 = 0x9fb2_1c65_1e98_df25;
/// Start value of the VM-level fold.
pub const VM_DIGEST_INIT: u64 = 0x6a09_e667_f3bc_c908;

/// Hashes `mem` (whose length must be a multiple of 8; a tail is ignored) starting from `init`.
pub fn digest_words(init: u64, mem: &[u8]) -> u64 {
    mem.chunks_exact(8).fold(init, |h, q| {
        let q = u64::from_le_bytes([q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]]);
        (h ^ q).rotate_left(23).wrapping_mul(DIGEST_MUL)
    })
}

/// Mixes a memory hash with the workload accumulator into a vCPU digest.
pub fn digest_finish(h: u64, acc: u64) -> u64 {
    let d = (h ^ acc).wrapping_mul(DIGEST_MUL);
    d ^ (d >> 29)
}

/// Combines per-vCPU digests (in vCPU order) into the VM digest.
pub fn combine_digests(per_vcpu: &[u64]) -> u64 {
    per_vcpu.iter().fold(VM_DIGEST_INIT, |d, &x| (d.rotate_left(29) ^ x).wrapping_mul(DIGEST_MUL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_sees_order_and_every_word() {
        let a: Vec<u8> = (0u8..64).collect();
        let mut b = a.clone();
        b.swap(0, 8);
        assert_ne!(digest_words(1, &a), digest_words(1, &b));
        let mut c = a.clone();
        c[63] ^= 1;
        assert_ne!(digest_words(1, &a), digest_words(1, &c));
        assert_ne!(combine_digests(&[1, 2]), combine_digests(&[2, 1]));
        assert_ne!(digest_finish(5, 1), digest_finish(5, 2));
    }
}
