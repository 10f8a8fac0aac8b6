//! `DirtySet`: the pages of one region whose copy on the destination is stale or missing.
//!
//! The source hands [`encode_dirty_set`] a KVM-style dirty bitmap (bit `i` of word `i / 64` is
//! page `i`) and gets whichever of two encodings is smaller: a run-length list (LEB128 gap and
//! length pairs) or a trimmed bitmap. The destination reads the set with
//! [`DirtySetRef::runs`], which first checks it against the region table: no page past the
//! region's end, no more pages than the region has, and the announced count must match.
//!
//! Payload layout: `region u32, format u8, page_count u64, body` where the body is
//! `(gap varint, len varint)*` for `Runs` (gap from the end of the previous run) and
//! `base_page u64, bytes` for `Bitmap` (bit `j` of byte `k` is page `base + 8k + j`).

use super::codec::{get_varint, put_u32, put_u64, put_varint, varint_len, Cur};
use super::header::{begin_frame, finish_frame};
use super::{check_version, FrameType, Limits, Region, WireError};

/// How a dirty set's body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DirtyFormat {
    /// LEB128 (gap, length) pairs.
    Runs = 1,
    /// A base page and a bitmap.
    Bitmap = 2,
}

/// Consecutive pages `first_page .. first_page + count` of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageRun {
    /// First page index within the region.
    pub first_page: u64,
    /// Pages in the run (at least 1).
    pub count: u64,
}

/// What [`encode_dirty_set`] produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirtyStats {
    /// The smaller encoding that was chosen.
    pub format: DirtyFormat,
    /// Dirty pages in the set.
    pub pages: u64,
    /// Bytes appended (header included).
    pub frame_bytes: usize,
}

/// Runs of set bits over a bit source given as 64-bit words.
struct BitRuns<F: Fn(usize) -> u64> {
    word: F,
    nbits: u64,
    pos: u64,
}

impl<F: Fn(usize) -> u64> BitRuns<F> {
    fn find_bit(&self, from: u64, set: bool) -> Option<u64> {
        let mut i = from;
        while i < self.nbits {
            let w = (self.word)((i / 64) as usize);
            let w = if set { w } else { !w } >> (i % 64);
            if w != 0 {
                let p = i + u64::from(w.trailing_zeros());
                return (p < self.nbits).then_some(p);
            }
            i = (i / 64 + 1) * 64;
        }
        None
    }
}

impl<F: Fn(usize) -> u64> Iterator for BitRuns<F> {
    type Item = PageRun;

    fn next(&mut self) -> Option<PageRun> {
        let start = self.find_bit(self.pos, true)?;
        let end = self.find_bit(start, false).unwrap_or(self.nbits);
        self.pos = end;
        Some(PageRun { first_page: start, count: end - start })
    }
}

fn word_runs(bitmap: &[u64]) -> BitRuns<impl Fn(usize) -> u64 + '_> {
    BitRuns {
        word: |i| bitmap.get(i).copied().unwrap_or(0),
        nbits: bitmap.len() as u64 * 64,
        pos: 0,
    }
}

fn byte_word(bytes: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    let start = (i * 8).min(bytes.len());
    let chunk = &bytes[start..(start + 8).min(bytes.len())];
    w[..chunk.len()].copy_from_slice(chunk);
    u64::from_le_bytes(w)
}

fn byte_runs(bytes: &[u8]) -> BitRuns<impl Fn(usize) -> u64 + '_> {
    BitRuns { word: |i| byte_word(bytes, i), nbits: bytes.len() as u64 * 8, pos: 0 }
}

/// Appends one `DirtySet` frame for `region` to `out`, from `bitmap` (KVM layout, bits past
/// `region_pages` must be clear). On error `out` is left as it was.
pub fn encode_dirty_set(
    out: &mut Vec<u8>,
    version: u16,
    region: u32,
    bitmap: &[u64],
    region_pages: u64,
    limits: &Limits,
) -> Result<DirtyStats, WireError> {
    check_version(version)?;
    let mut pages = 0u64;
    let mut runs_bytes = 0usize;
    let mut prev_end = 0u64;
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for run in word_runs(bitmap) {
        let end = run.first_page + run.count;
        if end > region_pages {
            let page = run.first_page.max(region_pages);
            return Err(WireError::DirtyPastRegionEnd { region, page, region_pages });
        }
        pages += run.count;
        runs_bytes += varint_len(run.first_page - prev_end) + varint_len(run.count);
        prev_end = end;
        lo = lo.min(run.first_page);
        hi = end;
    }
    // Bitmap body: base (8 bytes) plus whole bytes from the first to the last dirty page.
    let bitmap_bytes =
        if pages == 0 { usize::MAX } else { 8 + ((hi - 1) / 8 - lo / 8 + 1) as usize };
    let format = if runs_bytes <= bitmap_bytes { DirtyFormat::Runs } else { DirtyFormat::Bitmap };
    let start = begin_frame(out);
    put_u32(out, region);
    out.push(format as u8);
    put_u64(out, pages);
    match format {
        DirtyFormat::Runs => write_runs(out, bitmap),
        DirtyFormat::Bitmap => write_bitmap(out, bitmap, lo / 8, hi.div_ceil(8)),
    }
    let frame_bytes = finish_frame(out, start, version, FrameType::DirtySet, 0, limits)?;
    Ok(DirtyStats { format, pages, frame_bytes })
}

fn write_runs(out: &mut Vec<u8>, bitmap: &[u64]) {
    let mut prev_end = 0;
    for run in word_runs(bitmap) {
        put_varint(out, run.first_page - prev_end);
        put_varint(out, run.count);
        prev_end = run.first_page + run.count;
    }
}

/// Writes bytes `first_byte .. end_byte` of the bitmap (little-endian byte order of the words).
fn write_bitmap(out: &mut Vec<u8>, bitmap: &[u64], first_byte: u64, end_byte: u64) {
    put_u64(out, first_byte * 8);
    for b in first_byte..end_byte {
        let word = bitmap.get((b / 8) as usize).copied().unwrap_or(0);
        out.push(word.to_le_bytes()[(b % 8) as usize]);
    }
}

/// A received `DirtySet`, borrowing its body from the frame buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirtySetRef<'a> {
    /// Region index in the Hello's table.
    pub region: u32,
    /// How the body is encoded.
    pub format: DirtyFormat,
    /// Dirty pages the set announces.
    pub page_count: u64,
    body: &'a [u8],
}

impl<'a> DirtySetRef<'a> {
    /// Builds a set from already-encoded parts (for re-sending or forwarding).
    pub fn from_parts(region: u32, format: DirtyFormat, page_count: u64, body: &'a [u8]) -> Self {
        Self { region, format, page_count, body }
    }

    /// The encoded body.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    pub(crate) fn parse(payload: &'a [u8]) -> Result<Self, WireError> {
        let mut c = Cur::new(payload);
        let region = c.u32("dirty.region")?;
        let format = match c.u8("dirty.format")? {
            1 => DirtyFormat::Runs,
            2 => DirtyFormat::Bitmap,
            got => return Err(WireError::InvalidField { field: "dirty.format", got: got.into() }),
        };
        let page_count = c.u64("dirty.page_count")?;
        let body = c.rest();
        if format == DirtyFormat::Bitmap && body.len() < 8 {
            return Err(WireError::Truncated {
                what: "dirty.bitmap base",
                need: 8,
                have: body.len() as u64,
            });
        }
        Ok(Self { region, format, page_count, body })
    }

    pub(crate) fn write_payload(&self, out: &mut Vec<u8>) {
        put_u32(out, self.region);
        out.push(self.format as u8);
        put_u64(out, self.page_count);
        out.extend_from_slice(self.body);
    }

    /// Checks the set against `regions` and returns its runs, ascending and disjoint.
    pub fn runs(&self, regions: &[Region]) -> Result<DirtyRuns<'a>, WireError> {
        let region = self.region;
        let r = regions
            .get(region as usize)
            .ok_or(WireError::RegionOutOfRange { region, regions: regions.len() })?;
        let region_pages = r.pages();
        if self.page_count > region_pages {
            return Err(WireError::DirtySetLongerThanRegion {
                region,
                pages: self.page_count,
                region_pages,
            });
        }
        let mut counted = 0u64;
        let mut runs = self.iter_unchecked();
        while let Some(run) = runs.next_checked(region, region_pages)? {
            let end = run.first_page.checked_add(run.count).filter(|&e| e <= region_pages);
            if end.is_none() {
                let page = run.first_page.max(region_pages);
                return Err(WireError::DirtyPastRegionEnd { region, page, region_pages });
            }
            counted += run.count;
        }
        if counted != self.page_count {
            return Err(WireError::DirtyCountMismatch {
                region,
                announced: self.page_count,
                counted,
            });
        }
        Ok(self.iter_unchecked())
    }

    fn iter_unchecked(&self) -> DirtyRuns<'a> {
        match self.format {
            DirtyFormat::Runs => {
                DirtyRuns(RunsInner::Runs { body: self.body, pos: 0, prev_end: 0 })
            }
            DirtyFormat::Bitmap => {
                let (base, bytes) = self.body.split_at(8.min(self.body.len()));
                let mut b = [0u8; 8];
                b[..base.len()].copy_from_slice(base);
                DirtyRuns(RunsInner::Bitmap { base: u64::from_be_bytes(b), bytes, pos: 0 })
            }
        }
    }
}

/// Iterator over the runs of a checked [`DirtySetRef`], ascending and disjoint.
#[derive(Clone, Debug)]
pub struct DirtyRuns<'a>(RunsInner<'a>);

#[derive(Clone, Debug)]
enum RunsInner<'a> {
    Runs { body: &'a [u8], pos: usize, prev_end: u64 },
    Bitmap { base: u64, bytes: &'a [u8], pos: u64 },
}

impl DirtyRuns<'_> {
    fn next_checked(
        &mut self,
        region: u32,
        region_pages: u64,
    ) -> Result<Option<PageRun>, WireError> {
        let past_end = WireError::DirtyPastRegionEnd { region, page: u64::MAX, region_pages };
        match &mut self.0 {
            RunsInner::Runs { body, pos, prev_end } => {
                if *pos >= body.len() {
                    return Ok(None);
                }
                let gap = get_varint(body, pos)?;
                let count = get_varint(body, pos)?;
                let first = prev_end.checked_add(gap).ok_or(past_end)?;
                if count == 0 {
                    return Err(WireError::EmptyDirtyRun { region, page: first });
                }
                *prev_end = first.saturating_add(count);
                Ok(Some(PageRun { first_page: first, count }))
            }
            RunsInner::Bitmap { base, bytes, pos } => {
                let mut runs = byte_runs(bytes);
                runs.pos = *pos;
                let Some(run) = runs.next() else { return Ok(None) };
                *pos = runs.pos;
                let first = base.checked_add(run.first_page).ok_or(past_end)?;
                Ok(Some(PageRun { first_page: first, count: run.count }))
            }
        }
    }
}

impl Iterator for DirtyRuns<'_> {
    type Item = PageRun;

    fn next(&mut self) -> Option<PageRun> {
        // Errors were ruled out by `DirtySetRef::runs` before this iterator was handed out.
        self.next_checked(0, u64::MAX).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(bitmap: &[u64], pages: u64) -> DirtyStats {
        encode_dirty_set(&mut Vec::new(), 2, 0, bitmap, pages, &Limits::default()).expect("encode")
    }

    #[test]
    fn long_runs_choose_runs_and_scatter_chooses_bitmap() {
        let mut runs = vec![0u64; 1024];
        runs[10..500].fill(u64::MAX);
        let s = encode(&runs, 1024 * 64);
        assert_eq!((s.format, s.pages), (DirtyFormat::Runs, 490 * 64));
        assert!(s.frame_bytes < 40, "{} bytes for one run", s.frame_bytes);
        let scattered = vec![0x5555_5555_5555_5555u64; 1024];
        let s = encode(&scattered, 1024 * 64);
        assert_eq!(s.format, DirtyFormat::Bitmap);
        assert_eq!(s.frame_bytes, 16 + 13 + 8 + 8 * 1024, "header, fixed part, base, bitmap");
    }

    #[test]
    fn empty_set_is_a_header_only() {
        let s = encode(&[0; 4], 256);
        assert_eq!((s.format, s.pages), (DirtyFormat::Runs, 0));
    }
}
