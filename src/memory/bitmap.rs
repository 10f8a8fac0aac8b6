//! A fixed-size set of page indices, one bit a page.
//!
//! Used for dirty sets, "sent" sets on the source and residency on the destination. Plain
//! `u64` words: every user owns its bitmap on one thread, so no atomics are needed.

/// u64 words in one 4 KiB page of memory.
const PAGE_WORDS: usize = 4096 / 8;

/// A set of page indices in `0..len`, stored as a bitmap with a cached population count.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PageBitmap {
    words: Vec<u64>,
    len: u64,
    ones: u64,
}

impl std::fmt::Debug for PageBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageBitmap {{ len: {}, ones: {} }}", self.len, self.ones)
    }
}

impl PageBitmap {
    /// An empty set over `len` pages, its memory already faulted in.
    ///
    /// Why fault it in now: a zeroed allocation of this size is mapped lazily, so its first
    /// write takes a page fault for each 4 KiB (32 for a 4 GiB guest's bitmap), and bitmaps
    /// first written in the switch-over would pay those faults inside the downtime.
    pub fn new(len: u64) -> Self {
        let mut words = vec![0u64; len.div_ceil(64) as usize];
        // One store per 4 KiB page; `black_box` keeps the optimizer from dropping stores of a
        // value it knows is already there.
        for word in words.iter_mut().step_by(PAGE_WORDS) {
            *word = std::hint::black_box(0);
        }
        Self { words, len, ones: 0 }
    }

    /// A set with every page in `0..len`.
    pub fn full(len: u64) -> Self {
        let mut bitmap = Self::new(len);
        bitmap.set_range(0, len);
        bitmap
    }

    /// Number of pages the set ranges over.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the set ranges over no page at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pages in the set.
    pub fn count(&self) -> u64 {
        self.ones
    }

    /// True if `page` is in the set. Pages past the end are never in it.
    pub fn get(&self, page: u64) -> bool {
        if page >= self.len {
            return false;
        }
        self.words[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    /// Adds `page`; returns true if it was not there before. Pages past the end are ignored.
    pub fn set(&mut self, page: u64) -> bool {
        if page >= self.len {
            return false;
        }
        let word = &mut self.words[(page / 64) as usize];
        let bit = 1u64 << (page % 64);
        let fresh = *word & bit == 0;
        *word |= bit;
        self.ones += u64::from(fresh);
        fresh
    }

    /// Removes `page`; returns true if it was there.
    pub fn clear(&mut self, page: u64) -> bool {
        if page >= self.len {
            return false;
        }
        let word = &mut self.words[(page / 64) as usize];
        let bit = 1u64 << (page % 64);
        let was = *word & bit != 0;
        *word &= !bit;
        self.ones -= u64::from(was);
        was
    }

    /// Adds every page in `first..first + count` (clipped to the end).
    pub fn set_range(&mut self, first: u64, count: u64) {
        // A word at a time: a post-copy need set is one run of every page (262,144 for 1 GiB),
        // applied on the destination inside the downtime.
        let end = first.saturating_add(count).min(self.len);
        let mut page = first;
        while page < end {
            let in_word = page % 64;
            let take = (64 - in_word).min(end - page);
            let mask = if take == 64 { u64::MAX } else { ((1u64 << take) - 1) << in_word };
            let word = &mut self.words[(page / 64) as usize];
            self.ones += u64::from((mask & !*word).count_ones());
            *word |= mask;
            page += take;
        }
    }

    /// Removes every page.
    pub fn clear_all(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.ones = 0;
    }

    /// ORs a raw bitmap (KVM dirty-log layout: bit i of word j is page `base + 64*j + i`);
    /// bits past the end are ignored.
    pub fn or_words(&mut self, base: u64, words: &[u64]) {
        if base % 64 == 0 {
            // Word-aligned (every KVM slot here): OR whole words, a harvest of 1 GiB is 4096 ORs.
            let start = (base / 64) as usize;
            let last = self.words.len().saturating_sub(1);
            let tail_mask = match self.len % 64 {
                0 => u64::MAX,
                bits => (1u64 << bits) - 1,
            };
            for (i, (dst, &src)) in self.words.iter_mut().skip(start).zip(words).enumerate() {
                let src = if start + i == last { src & tail_mask } else { src };
                self.ones += u64::from((src & !*dst).count_ones());
                *dst |= src;
            }
            return;
        }
        for (j, &word) in words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let bit = u64::from(bits.trailing_zeros());
                self.set(base + 64 * j as u64 + bit);
                bits &= bits - 1;
            }
        }
    }

    /// The 64 bits of pages `first..first + 64` (bit `i` is page `first + i`; pages past the
    /// end read as 0).
    pub fn bits_at(&self, first: u64) -> u64 {
        if first % 64 == 0 {
            return self.words.get((first / 64) as usize).copied().unwrap_or(0);
        }
        (0..64).filter(|&i| self.get(first + i)).fold(0, |w, i| w | 1 << i)
    }

    /// Adds every page of `other` (which must range over the same pages).
    pub fn union_with(&mut self, other: &PageBitmap) {
        debug_assert_eq!(self.len, other.len);
        let mut ones = 0;
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= theirs;
            ones += u64::from(mine.count_ones());
        }
        self.ones = ones;
    }

    /// The pages in neither `a` nor `b` (both over the same pages), computed word by word.
    pub fn in_neither(a: &PageBitmap, b: &PageBitmap) -> PageBitmap {
        let mut out = PageBitmap::new(a.len);
        out.assign_neither(a, b);
        out
    }

    /// Makes this set the pages in neither `a` nor `b` (all three over the same pages), in
    /// place: the switch-over computes the need set this way, without an allocation whose
    /// pages would fault in inside the downtime.
    pub fn assign_neither(&mut self, a: &PageBitmap, b: &PageBitmap) {
        debug_assert!(self.len == a.len && a.len == b.len);
        let last = self.words.len().saturating_sub(1);
        let tail_mask = match a.len % 64 {
            0 => u64::MAX,
            bits => (1u64 << bits) - 1,
        };
        let mut ones = 0;
        for (i, (dst, (x, y))) in
            self.words.iter_mut().zip(a.words.iter().zip(&b.words)).enumerate()
        {
            *dst = !(x | y) & if i == last { tail_mask } else { u64::MAX };
            ones += u64::from(dst.count_ones());
        }
        self.ones = ones;
    }

    /// Number of pages in this set but not in `other` (same length).
    pub fn count_and_not(&self, other: &PageBitmap) -> u64 {
        self.words.iter().zip(&other.words).map(|(x, y)| u64::from((x & !y).count_ones())).sum()
    }

    /// The first page `>= from` that is in the set.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        self.scan(from, self.len, false)
    }

    /// The first page in `from..end` that is in the set. Scans no further than `end`, so a
    /// caller walking many short ranges of a large, mostly empty set stays linear.
    pub fn next_set_before(&self, from: u64, end: u64) -> Option<u64> {
        self.scan(from, end.min(self.len), false)
    }

    /// The first page `>= from` that is not in the set.
    pub fn next_unset(&self, from: u64) -> Option<u64> {
        self.scan(from, self.len, true)
    }

    /// The first page in `from..end` (`end <= len`) whose bit is set (or unset).
    fn scan(&self, from: u64, end: u64, want_unset: bool) -> Option<u64> {
        if from >= end {
            return None;
        }
        let mut index = (from / 64) as usize;
        let flip = if want_unset { u64::MAX } else { 0 };
        let mut word = (self.words[index] ^ flip) & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                let page = index as u64 * 64 + u64::from(word.trailing_zeros());
                return (page < end).then_some(page);
            }
            index += 1;
            if index >= self.words.len() || index as u64 * 64 >= end {
                return None;
            }
            word = self.words[index] ^ flip;
        }
    }

    /// Iterates over the pages in the set, in ascending order.
    pub fn iter_ones(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(j, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                Some(j as u64 * 64 + bit)
            })
        })
    }

    /// The raw words (bit i of word j is page `64*j + i`).
    pub fn words(&self) -> &[u64] {
        &self.words
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Debug, Clone)]
    enum Op {
        Set(u64),
        Clear(u64),
        Range(u64, u64),
    }

    fn op(len: u64) -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..len + 3).prop_map(Op::Set),
            (0..len + 3).prop_map(Op::Clear),
            (0..len + 3, 0u64..80).prop_map(|(a, n)| Op::Range(a, n)),
        ]
    }

    proptest! {
        // The bitmap against a naive oracle: after any sequence of operations, membership,
        // counts, iteration and scans agree.
        #[test]
        fn matches_btreeset_oracle(len in 1u64..300, ops in proptest::collection::vec(op(300), 0..60)) {
            let mut bitmap = PageBitmap::new(len);
            let mut oracle = BTreeSet::new();
            for o in ops {
                match o {
                    Op::Set(p) => { let fresh = bitmap.set(p); prop_assert_eq!(fresh, p < len && oracle.insert(p)); }
                    Op::Clear(p) => { prop_assert_eq!(bitmap.clear(p), oracle.remove(&p)); }
                    Op::Range(a, n) => { bitmap.set_range(a, n); for p in a..(a + n).min(len) { oracle.insert(p); } }
                }
            }
            prop_assert_eq!(bitmap.count(), oracle.len() as u64);
            let mut other = PageBitmap::new(len);
            other.set_range(len / 3, len / 3 + 1);
            let neither = PageBitmap::in_neither(&bitmap, &other);
            // In place, over a set that held other pages before, it is the same set.
            let mut reused = bitmap.clone();
            reused.assign_neither(&bitmap, &other);
            prop_assert_eq!(&reused, &neither);
            let expect: Vec<u64> = (0..len).filter(|p| !oracle.contains(p) && !other.get(*p)).collect();
            prop_assert_eq!(neither.iter_ones().collect::<Vec<_>>(), expect.clone());
            prop_assert_eq!(neither.count(), expect.len() as u64);
            let and_not = oracle.iter().filter(|p| !other.get(**p)).count() as u64;
            prop_assert_eq!(bitmap.count_and_not(&other), and_not);
            prop_assert_eq!(bitmap.iter_ones().collect::<Vec<_>>(), oracle.iter().copied().collect::<Vec<_>>());
            for from in 0..len + 2 {
                prop_assert_eq!(bitmap.next_set(from), oracle.range(from..).next().copied());
                let end = from + len / 3;
                let bounded = oracle.range(from..end.max(from)).next().copied();
                prop_assert_eq!(bitmap.next_set_before(from, end), bounded);
                let unset = (from..len).find(|p| !oracle.contains(p));
                prop_assert_eq!(bitmap.next_unset(from), unset);
            }
        }
    }

    #[test]
    fn set_range_matches_page_by_page_sets() {
        for (first, count) in [(0, 0), (0, 200), (3, 61), (5, 64), (63, 2), (64, 64), (70, 500)] {
            let mut fast = PageBitmap::new(200);
            let mut slow = PageBitmap::new(200);
            fast.set(10);
            slow.set(10);
            fast.set_range(first, count);
            for page in first..(first + count).min(200) {
                slow.set(page);
            }
            assert_eq!(fast, slow, "set_range({first}, {count})");
            assert_eq!(fast.count(), slow.iter_ones().count() as u64);
        }
    }

    #[test]
    fn bits_at_reads_aligned_and_unaligned_spans() {
        let mut b = PageBitmap::new(150);
        for p in [0, 63, 64, 70, 149] {
            b.set(p);
        }
        assert_eq!(b.bits_at(0), 1 | 1 << 63);
        assert_eq!(b.bits_at(64), 1 | 1 << 6);
        assert_eq!(b.bits_at(63), 0b11 | 1 << 7);
        assert_eq!(b.bits_at(128), 1 << 21);
        assert_eq!(b.bits_at(192), 0, "past the end");
    }

    #[test]
    fn or_words_uses_kvm_layout() {
        let mut bitmap = PageBitmap::new(200);
        bitmap.or_words(64, &[0b101, 1 << 63]);
        assert_eq!(bitmap.iter_ones().collect::<Vec<_>>(), vec![64, 66, 191]);
        bitmap.or_words(128, &[0b1, u64::MAX]); // bits past page 199 are dropped
        assert_eq!(bitmap.count(), 4 + 8);
        assert!(bitmap.get(199) && !bitmap.get(200));
        let mut unaligned = PageBitmap::new(200);
        unaligned.or_words(3, &[0b11]);
        assert_eq!(unaligned.iter_ones().collect::<Vec<_>>(), vec![3, 4]);
        let full = PageBitmap::full(130);
        assert_eq!(full.count(), 130);
        assert_eq!(full.next_unset(0), None);
    }
}
