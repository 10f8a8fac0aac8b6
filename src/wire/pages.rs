//! Page-level helpers: the zero-page scan and the [`PageMask`] a window decode returns.
//!
//! The scan runs on every page before compression: a zero page costs two bits on the wire and
//! is placed with UFFDIO_ZEROPAGE on the destination, never copied.

use super::PAGE_SIZE;

/// Most pages a single window can carry, whatever [`super::Limits`] says (the size of
/// [`PageMask`]).
pub const WINDOW_PAGES_CAP: u32 = 1024;

const MASK_WORDS: usize = WINDOW_PAGES_CAP as usize / 64;

/// Bytes OR-ed together before each early-exit test: large enough for the compiler to keep
/// several vector registers busy, small enough to stop soon on a non-zero page.
const ZERO_SCAN_BLOCK_BYTES: usize = 256;

fn load_u128(word: &[u8]) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(word);
    u128::from_ne_bytes(a)
}

/// True when every byte of `bytes` is zero. Compares 16-byte words, leaving at the first
/// non-zero block.
pub fn is_zero(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(ZERO_SCAN_BLOCK_BYTES);
    for block in &mut blocks {
        let acc = block.chunks_exact(16).fold(0u128, |acc, w| acc | load_u128(w));
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// A set of window-relative page indices (which pages of a window were zero), fixed size, no
/// allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PageMask {
    words: [u64; MASK_WORDS],
    len: u32,
}

impl std::fmt::Debug for PageMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageMask").field("len", &self.len).field("set", &self.count()).finish()
    }
}

impl PageMask {
    /// An empty mask over `len` pages (clamped to [`WINDOW_PAGES_CAP`]).
    pub fn new(len: u32) -> Self {
        Self { words: [0; MASK_WORDS], len: len.min(WINDOW_PAGES_CAP) }
    }

    /// A mask over `len` pages with all of them set.
    pub fn full(len: u32) -> Self {
        let mut m = Self::new(len);
        for i in 0..m.len {
            m.insert(i);
        }
        m
    }

    /// Pages the mask covers.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when the mask covers no pages.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets page `i`; indices past `len` are ignored.
    pub fn insert(&mut self, i: u32) {
        if i < self.len {
            self.words[(i / 64) as usize] |= 1 << (i % 64);
        }
    }

    /// True when page `i` is set.
    pub fn contains(&self, i: u32) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Number of pages set.
    pub fn count(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    /// The set page indices, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(move |&i| self.contains(i))
    }

    /// Writes zeros over the set pages of `dest` (a window's destination buffer), for callers
    /// that copy the whole buffer instead of placing zero pages separately.
    pub fn fill_zero_pages(&self, dest: &mut [u8]) {
        for i in self.iter() {
            let start = i as usize * PAGE_SIZE;
            if let Some(page) = dest.get_mut(start..start + PAGE_SIZE) {
                page.fill(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_scan_finds_a_single_bit_anywhere() {
        let mut page = vec![0u8; PAGE_SIZE + 7];
        assert!(is_zero(&page));
        for pos in [0, 1, 15, 16, 255, 256, 4095, 4096, 4102] {
            page[pos] = 0x10;
            assert!(!is_zero(&page), "bit at {pos} missed");
            page[pos] = 0;
        }
        assert!(is_zero(&[]));
    }

    #[test]
    fn mask_set_and_count() {
        let mut m = PageMask::new(130);
        m.insert(0);
        m.insert(64);
        m.insert(129);
        m.insert(130); // out of range, ignored
        assert_eq!(m.count(), 3);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![0, 64, 129]);
        assert!(!m.contains(130));
        assert_eq!(PageMask::full(70).count(), 70);
    }
}
