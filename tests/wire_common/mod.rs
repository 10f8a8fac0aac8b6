//! Page generators shared by the wire tests: deterministic from a seed, so a proptest failure
//! replays exactly.

#![allow(dead_code)]

use hybridmig::wire::PAGE_SIZE;

/// What a generated page looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    /// All zero.
    Zero,
    /// Uniform random bytes (incompressible).
    Random,
    /// ASCII words and spaces (compresses about 2-4x with lz4).
    Text,
    /// Mostly zero with a few scattered bytes (compresses very well, is not zero).
    Sparse,
}

/// splitmix64: small, fast, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

const WORDS: &[&str] = &[
    "the",
    "migration",
    "page",
    "window",
    "guest",
    "memory",
    "fault",
    "vcpu",
    "dirty",
    "round",
    "kernel",
    "userfaultfd",
    "source",
    "destination",
    "hybrid",
    "copy",
    "state",
    "working",
    "set",
];

/// Fills `page` (4096 bytes) with content of `kind`.
pub fn fill_page(page: &mut [u8], kind: PageKind, rng: &mut Rng) {
    match kind {
        PageKind::Zero => page.fill(0),
        PageKind::Random => {
            for chunk in page.chunks_mut(8) {
                let v = rng.next_u64().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }
        PageKind::Text => {
            let mut pos = 0;
            while pos < page.len() {
                let w = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize].as_bytes();
                for &b in w.iter().chain(b" ") {
                    if pos < page.len() {
                        page[pos] = b;
                        pos += 1;
                    }
                }
            }
        }
        PageKind::Sparse => {
            page.fill(0);
            for _ in 0..4 {
                let at = (rng.next_u64() % PAGE_SIZE as u64) as usize;
                page[at] = (rng.next_u64() as u8) | 1;
            }
        }
    }
}

/// A buffer of pages of the given kinds.
pub fn make_pages(kinds: &[PageKind], seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = vec![0u8; kinds.len() * PAGE_SIZE];
    for (page, &kind) in out.chunks_exact_mut(PAGE_SIZE).zip(kinds) {
        fill_page(page, kind, &mut rng);
    }
    out
}
