//! Host-side pre-fill of the data memory for hotcold and seqread.
//!
//! Rule: data page `g` (guest page number) is text-like when `mix64(seed ^ g * K) % 8 < 5`
//! (about 62% of pages): space-separated words from a 32-word dictionary, which lz4
//! compresses well. Every other page is 512 xorshift64* words seeded from `(seed, g)`, which
//! it does not. No page is left zero, so migration must move every page.

use super::super::layout::{mix64, PAGE_BYTES};
use super::xorshift_next;

const WORDS: [&[u8]; 32] = [
    b"the",
    b"page",
    b"guest",
    b"memory",
    b"migration",
    b"kernel",
    b"vcpu",
    b"dirty",
    b"fault",
    b"window",
    b"source",
    b"destination",
    b"round",
    b"copy",
    b"hybrid",
    b"working",
    b"set",
    b"network",
    b"latency",
    b"socket",
    b"ring",
    b"frame",
    b"state",
    b"resume",
    b"pause",
    b"digest",
    b"table",
    b"region",
    b"slot",
    b"bitmap",
    b"of",
    b"and",
];

/// Whether data page `g` gets text-like content under `seed`.
pub fn is_text_page(seed: u64, g: u64) -> bool {
    mix64(seed ^ g.wrapping_mul(0x9e37_79b9)) % 8 < 5
}

/// Fills one 4 KiB page (guest page number `g`) per the module rule.
pub fn fill_page(seed: u64, g: u64, page: &mut [u8]) {
    let mut state = mix64(seed.wrapping_add(g).wrapping_mul(0xa076_1d64_78bd_642f)) | 1;
    if is_text_page(seed, g) {
        let mut at = 0;
        while at < page.len() {
            let word = WORDS[(xorshift_next(&mut state) >> 59) as usize];
            for &b in word.iter().chain(std::iter::once(&b' ')) {
                if at == page.len() {
                    break;
                }
                page[at] = b;
                at += 1;
            }
        }
    } else {
        for q in page.chunks_exact_mut(8) {
            q.copy_from_slice(&xorshift_next(&mut state).to_le_bytes());
        }
    }
}

/// Fills `mem`, whose first byte is guest page `first_page`, on up to `threads` threads.
pub fn fill_range(seed: u64, first_page: u64, mem: &mut [u8], threads: usize) {
    let page = PAGE_BYTES as usize;
    let pages = mem.len() / page;
    let per = pages.div_ceil(threads.max(1)).max(1) * page;
    std::thread::scope(|s| {
        for (i, chunk) in mem.chunks_mut(per).enumerate() {
            let first = first_page + (i * per / page) as u64;
            s.spawn(move || {
                for (j, p) in chunk.chunks_exact_mut(page).enumerate() {
                    fill_page(seed, first + j as u64, p);
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_deterministic_mixed_and_nonzero() {
        let mut a = vec![0u8; 64 * 4096];
        let mut b = vec![0u8; 64 * 4096];
        fill_range(9, 512, &mut a, 2);
        fill_range(9, 512, &mut b, 1);
        assert_eq!(a, b);
        let text = (512..576).filter(|&g| is_text_page(9, g)).count();
        assert!(text > 20 && text < 60, "text pages {text}");
        assert!(a.chunks_exact(4096).all(|p| p.iter().any(|&x| x != 0)));
        fill_range(10, 512, &mut b, 2);
        assert_ne!(a, b);
    }
}
