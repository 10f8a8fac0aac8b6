//! A bitmap with one bit per guest page over all of guest RAM.
//!
//! Filled from KVM's per-slot dirty logs ([`DirtyBitmap::or_words`]) and from the VMM's own
//! writes; read by the migration engines to decide which pages to (re)send.

/// One bit per guest page; bit `p` is guest page `p` (guest_phys / 4096).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyBitmap {
    words: Vec<u64>,
    pages: u64,
}

impl DirtyBitmap {
    /// An all-clear bitmap for `pages` pages.
    pub fn new(pages: u64) -> DirtyBitmap {
        DirtyBitmap { words: vec![0; pages.div_ceil(64) as usize], pages }
    }

    /// Number of pages covered.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Marks page `page`; pages beyond the end are ignored (returns false).
    pub fn set(&mut self, page: u64) -> bool {
        if page >= self.pages {
            return false;
        }
        self.words[(page / 64) as usize] |= 1 << (page % 64);
        true
    }

    /// Whether page `page` is marked (false beyond the end).
    pub fn get(&self, page: u64) -> bool {
        page < self.pages && self.words[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    /// Number of marked pages.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Clears every bit.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// ORs a KVM-style bitmap whose bit `i` is page `first_page + i`. Bits past the end of this
    /// bitmap are ignored.
    pub fn or_words(&mut self, first_page: u64, words: &[u64]) {
        if first_page % 64 == 0 {
            let start = (first_page / 64) as usize;
            for (dst, src) in self.words.iter_mut().skip(start).zip(words) {
                *dst |= src;
            }
            self.trim_tail();
            return;
        }
        for (i, &w) in words.iter().enumerate() {
            let mut bits = w;
            while bits != 0 {
                let b = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                self.set(first_page + i as u64 * 64 + b);
            }
        }
    }

    /// ORs another bitmap of the same size (pages of a larger one past our end are ignored).
    pub fn or_bitmap(&mut self, other: &DirtyBitmap) {
        self.or_words(0, &other.words);
    }

    /// Marked pages in ascending order.
    pub fn iter_ones(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut bits = w;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                Some(i as u64 * 64 + b)
            })
        })
    }

    /// The raw words (bit `p % 64` of word `p / 64` is page `p`).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    fn trim_tail(&mut self) {
        let rem = self.pages % 64;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << rem) - 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn matches_set_oracle(
            pages in 1u64..700,
            sets in proptest::collection::vec(0u64..800, 0..60),
            first in 0u64..300,
            words in proptest::collection::vec(any::<u64>(), 0..8),
        ) {
            let mut bm = DirtyBitmap::new(pages);
            let mut oracle = BTreeSet::new();
            for p in sets {
                prop_assert_eq!(bm.set(p), p < pages);
                if p < pages { oracle.insert(p); }
            }
            bm.or_words(first, &words);
            for (i, w) in words.iter().enumerate() {
                for b in 0..64 {
                    let p = first + i as u64 * 64 + b;
                    if w >> b & 1 == 1 && p < pages { oracle.insert(p); }
                }
            }
            prop_assert_eq!(bm.count(), oracle.len() as u64);
            prop_assert_eq!(bm.iter_ones().collect::<Vec<_>>(), oracle.iter().copied().collect::<Vec<_>>());
            for p in 0..pages + 70 {
                prop_assert_eq!(bm.get(p), oracle.contains(&p));
            }
            let mut other = DirtyBitmap::new(pages);
            other.or_bitmap(&bm);
            prop_assert_eq!(&other, &bm);
            bm.clear();
            prop_assert_eq!(bm.count(), 0);
        }
    }
}
