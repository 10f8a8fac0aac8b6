//! The memory digest both ends compute and compare in Done/DoneAck.

use crate::memory::PAGE_SIZE;

/// CRC32 of a 4 KiB zero page.
pub fn zero_page_crc() -> u32 {
    crc32fast::hash(&[0u8; PAGE_SIZE])
}

/// Folds per-page CRCs into one 64-bit memory digest that does not depend on the order pages
/// arrived in: the sum over pages of a mix of the page index and its CRC.
pub fn memory_digest(page_crc: &[u32]) -> u64 {
    page_crc.iter().enumerate().fold(0u64, |acc, (page, &crc)| {
        let mut x = (page as u64) << 32 | u64::from(crc);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        acc.wrapping_add(x)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_index_and_content_not_order() {
        let a = memory_digest(&[1, 2, 3]);
        assert_ne!(a, memory_digest(&[2, 1, 3]));
        assert_ne!(a, memory_digest(&[1, 2, 4]));
        assert_eq!(a, memory_digest(&[1, 2, 3]));
    }
}
