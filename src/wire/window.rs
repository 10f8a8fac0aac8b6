//! `PageWindow`: a run of consecutive pages of one region, the unit in which memory moves.
//!
//! Encoding: [`encode_page_window`] takes the guest's pages as one byte slice, scans each for
//! zero, optionally compresses, and appends a complete frame to the caller's `Vec<u8>`.
//! Decoding: [`PageWindowRef`] borrows the payload from a received frame;
//! [`PageWindowRef::decode_into`] writes the pages straight into the caller's destination
//! (e.g. the staging buffer handed to UFFDIO_COPY) and returns a [`PageMask`] of the zero
//! pages, which it leaves untouched so the destination can place them with UFFDIO_ZEROPAGE.
//!
//! Payload layout (big endian):
//! `region u32, first_page u64, page_count u32, encoding u8, [v2: request_id u32], body`
//!
//! | encoding   | body                                                                  |
//! |------------|-----------------------------------------------------------------------|
//! | `Raw`      | `page_count * 4096` bytes                                             |
//! | `Lz4`      | one lz4 block inflating to exactly `page_count * 4096` bytes          |
//! | `ZeroRun`  | empty                                                                 |
//! | `Mixed`    | map of 2 bits per page (0 zero, 1 raw, 2 lz4; LSB first, pad bits 0), |
//! |            | then per non-zero page: raw 4096 bytes, or `len u16` + lz4 block      |
//!
//! Version 1 has no `Mixed` encoding and no request id: a v1 encoder sends a window with some
//! zero pages as one raw or lz4 block.

use super::codec::{put_u16, put_u32, put_u64, Cur};
use super::header::{begin_frame, finish_frame, FLAG_URGENT_ANSWER};
use super::pages::{is_zero, PageMask};
use super::{check_version, FrameType, Limits, Region, WireError, PAGE_SIZE};

/// An lz4 page (or block) is sent only when it saves at least this many bytes per page: below
/// that the decompression time on the destination costs more than the bytes saved.
pub const LZ4_MIN_SAVING_BYTES_PER_PAGE: usize = 256;

/// How a window's body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum WindowEncoding {
    /// All pages raw.
    Raw = 1,
    /// All pages as one lz4_flex block.
    Lz4 = 2,
    /// All pages zero; no body.
    ZeroRun = 3,
    /// Per-page map of zero / raw / lz4 (version 2 and later).
    Mixed = 4,
}

impl WindowEncoding {
    fn from_u8(got: u8) -> Result<Self, WireError> {
        Ok(match got {
            1 => Self::Raw,
            2 => Self::Lz4,
            3 => Self::ZeroRun,
            4 => Self::Mixed,
            _ => return Err(WireError::InvalidField { field: "window.encoding", got: got.into() }),
        })
    }
}

/// Whether the encoder may spend CPU on lz4. The engine decides per call, from the measured
/// link rate against the measured compressor rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// Zero pages are still detected; everything else goes raw.
    #[default]
    None,
    /// Try lz4 per page (v2) or per window (v1); keep it only when it saves enough.
    Lz4,
}

/// Everything about a window except its pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WindowMeta {
    /// Region index in the Hello's table.
    pub region: u32,
    /// Page index within the region of the first page.
    pub first_page: u64,
    /// Id of the `FaultRequest` this window answers, 0 when none (always 0 in version 1).
    pub request_id: u32,
    /// Marks an answer to a fault (header flag [`FLAG_URGENT_ANSWER`]).
    pub urgent_answer: bool,
}

/// What [`encode_page_window`] produced, for the engine's metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowStats {
    /// Encoding chosen.
    pub encoding: WindowEncoding,
    /// Pages sent as zero.
    pub zero_pages: u32,
    /// Pages sent raw.
    pub raw_pages: u32,
    /// Pages sent compressed.
    pub lz4_pages: u32,
    /// Bytes appended to the output (header included).
    pub frame_bytes: usize,
}

/// Appends one `PageWindow` frame carrying `pages` (a whole number of 4 KiB pages) to `out`.
///
/// Zero pages are found first; `compression` decides whether lz4 is tried on the others. On
/// error `out` is left as it was.
pub fn encode_page_window(
    out: &mut Vec<u8>,
    version: u16,
    meta: &WindowMeta,
    pages: &[u8],
    compression: Compression,
    limits: &Limits,
) -> Result<WindowStats, WireError> {
    check_version(version)?;
    let count = check_pages(meta, pages, limits)?;
    if version < 2 && meta.request_id != 0 {
        return Err(WireError::FeatureNotInVersion { feature: "request id", version });
    }
    let mut zero = PageMask::new(count);
    for (i, page) in pages.chunks_exact(PAGE_SIZE).enumerate() {
        if is_zero(page) {
            zero.insert(i as u32);
        }
    }
    let start = begin_frame(out);
    put_u32(out, meta.region);
    put_u64(out, meta.first_page);
    put_u32(out, count);
    let enc_pos = out.len();
    out.push(0);
    if version >= 2 {
        put_u32(out, meta.request_id);
    }
    let zeros = zero.count();
    let mut stats = WindowStats {
        encoding: WindowEncoding::ZeroRun,
        zero_pages: zeros,
        raw_pages: 0,
        lz4_pages: 0,
        frame_bytes: 0,
    };
    if zeros < count {
        let use_mixed = version >= 2 && (zeros > 0 || compression == Compression::Lz4);
        if use_mixed {
            write_mixed(out, pages, &zero, compression, &mut stats);
        } else {
            write_whole(out, pages, compression, &mut stats);
        }
    }
    out[enc_pos] = stats.encoding as u8;
    let flags = if meta.urgent_answer { FLAG_URGENT_ANSWER } else { 0 };
    stats.frame_bytes = finish_frame(out, start, version, FrameType::PageWindow, flags, limits)?;
    Ok(stats)
}

fn check_pages(meta: &WindowMeta, pages: &[u8], limits: &Limits) -> Result<u32, WireError> {
    if pages.len() % PAGE_SIZE != 0 {
        return Err(WireError::NotWholePages { len_bytes: pages.len() });
    }
    let count = pages.len() / PAGE_SIZE;
    if count == 0 {
        return Err(WireError::EmptyWindow { region: meta.region, first_page: meta.first_page });
    }
    let max = limits.window_pages();
    if count > max as usize {
        return Err(WireError::WindowTooLong { count: count as u64, max: max.into() });
    }
    Ok(count as u32)
}

/// Compresses `input` onto the end of `out` when the block fits in `budget` bytes; otherwise
/// leaves `out` unchanged and returns None.
fn try_lz4(out: &mut Vec<u8>, input: &[u8], budget: usize) -> Option<usize> {
    let base = out.len();
    // lz4_flex wants room for its worst case even when we would not keep that much.
    out.resize(base + lz4_flex::block::get_maximum_output_size(input.len()), 0);
    match lz4_flex::block::compress_into(input, &mut out[base..]) {
        Ok(n) if n <= budget => {
            out.truncate(base + n);
            Some(n)
        }
        _ => {
            out.truncate(base);
            None
        }
    }
}

/// One encoding for the whole window: raw, or a single lz4 block.
fn write_whole(out: &mut Vec<u8>, pages: &[u8], compression: Compression, stats: &mut WindowStats) {
    let count = (pages.len() / PAGE_SIZE) as u32;
    // Zero pages travel inside the block: lz4 squeezes them well, raw carries them as is.
    stats.zero_pages = 0;
    if compression == Compression::Lz4 {
        let budget = pages.len() - count as usize * LZ4_MIN_SAVING_BYTES_PER_PAGE;
        if try_lz4(out, pages, budget).is_some() {
            stats.encoding = WindowEncoding::Lz4;
            stats.lz4_pages = count;
            return;
        }
    }
    out.extend_from_slice(pages);
    stats.encoding = WindowEncoding::Raw;
    stats.raw_pages = count;
}

const KIND_ZERO: u8 = 0;
const KIND_RAW: u8 = 1;
const KIND_LZ4: u8 = 2;

fn write_mixed(
    out: &mut Vec<u8>,
    pages: &[u8],
    zero: &PageMask,
    compression: Compression,
    stats: &mut WindowStats,
) {
    stats.encoding = WindowEncoding::Mixed;
    let map_pos = out.len();
    out.resize(map_pos + (zero.len() as usize).div_ceil(4), 0);
    for (i, page) in pages.chunks_exact(PAGE_SIZE).enumerate() {
        let kind = if zero.contains(i as u32) {
            KIND_ZERO
        } else if compression == Compression::Lz4 && write_lz4_page(out, page) {
            stats.lz4_pages += 1;
            KIND_LZ4
        } else {
            out.extend_from_slice(page);
            stats.raw_pages += 1;
            KIND_RAW
        };
        out[map_pos + i / 4] |= kind << ((i % 4) * 2);
    }
}

fn write_lz4_page(out: &mut Vec<u8>, page: &[u8]) -> bool {
    let len_pos = out.len();
    put_u16(out, 0);
    match try_lz4(out, page, PAGE_SIZE - LZ4_MIN_SAVING_BYTES_PER_PAGE) {
        Some(n) => {
            // n < PAGE_SIZE, fits in u16.
            out[len_pos..len_pos + 2].copy_from_slice(&(n as u16).to_be_bytes());
            true
        }
        None => {
            out.truncate(len_pos);
            false
        }
    }
}

/// A received `PageWindow`, borrowing its body from the frame buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageWindowRef<'a> {
    /// Region index in the Hello's table.
    pub region: u32,
    /// Page index within the region of the first page.
    pub first_page: u64,
    /// Pages in the window (1..=limit).
    pub page_count: u32,
    /// How the body is encoded.
    pub encoding: WindowEncoding,
    /// Id of the `FaultRequest` answered, 0 when none (always 0 in version 1).
    pub request_id: u32,
    /// Header flag [`FLAG_URGENT_ANSWER`].
    pub urgent_answer: bool,
    body: &'a [u8],
}

impl<'a> PageWindowRef<'a> {
    /// Builds a window from already-encoded parts (for re-sending or forwarding a window
    /// without decoding it). `body` is checked when it is encoded or decoded, not here.
    pub fn from_parts(
        meta: &WindowMeta,
        page_count: u32,
        encoding: WindowEncoding,
        body: &'a [u8],
    ) -> Self {
        Self {
            region: meta.region,
            first_page: meta.first_page,
            page_count,
            encoding,
            request_id: meta.request_id,
            urgent_answer: meta.urgent_answer,
            body,
        }
    }

    /// The encoded body (after the fixed fields).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// Bytes of destination memory the window fills: `page_count * PAGE_SIZE`.
    pub fn len_bytes(&self) -> usize {
        self.page_count as usize * PAGE_SIZE
    }

    pub(crate) fn parse(
        version: u16,
        flags: u8,
        payload: &'a [u8],
        limits: &Limits,
    ) -> Result<Self, WireError> {
        let mut c = Cur::new(payload);
        let region = c.u32("window.region")?;
        let first_page = c.u64("window.first_page")?;
        let page_count = c.u32("window.page_count")?;
        let encoding = WindowEncoding::from_u8(c.u8("window.encoding")?)?;
        let request_id = if version >= 2 { c.u32("window.request_id")? } else { 0 };
        if page_count == 0 {
            return Err(WireError::EmptyWindow { region, first_page });
        }
        let max = limits.window_pages();
        if page_count > max {
            return Err(WireError::WindowTooLong { count: page_count.into(), max: max.into() });
        }
        if encoding == WindowEncoding::Mixed && version < 2 {
            return Err(WireError::FeatureNotInVersion { feature: "mixed window", version });
        }
        let w = Self {
            region,
            first_page,
            page_count,
            encoding,
            request_id,
            urgent_answer: flags & FLAG_URGENT_ANSWER != 0,
            body: c.rest(),
        };
        w.check_body_shape()?;
        Ok(w)
    }

    /// Cheap structural checks of the body; the full check happens in `decode_into`.
    fn check_body_shape(&self) -> Result<(), WireError> {
        let have = self.body.len() as u64;
        let need = match self.encoding {
            WindowEncoding::Raw => self.len_bytes() as u64,
            WindowEncoding::ZeroRun => 0,
            WindowEncoding::Lz4 => 1,
            WindowEncoding::Mixed => u64::from(self.page_count).div_ceil(4),
        };
        if have < need {
            return Err(WireError::Truncated { what: "window.body", need, have });
        }
        let exact = matches!(self.encoding, WindowEncoding::Raw | WindowEncoding::ZeroRun);
        if exact && have > need {
            return Err(WireError::TrailingBytes {
                frame: FrameType::PageWindow,
                extra: have - need,
            });
        }
        Ok(())
    }

    /// Appends the payload to `out` in `version`'s layout.
    pub(crate) fn write_payload(
        &self,
        version: u16,
        out: &mut Vec<u8>,
        limits: &Limits,
    ) -> Result<(), WireError> {
        // Never emit what our own decoder would refuse.
        if self.page_count == 0 {
            return Err(WireError::EmptyWindow {
                region: self.region,
                first_page: self.first_page,
            });
        }
        let max = limits.window_pages();
        if self.page_count > max {
            return Err(WireError::WindowTooLong {
                count: self.page_count.into(),
                max: max.into(),
            });
        }
        if version < 2 && self.encoding == WindowEncoding::Mixed {
            return Err(WireError::FeatureNotInVersion { feature: "mixed window", version });
        }
        if version < 2 && self.request_id != 0 {
            return Err(WireError::FeatureNotInVersion { feature: "request id", version });
        }
        put_u32(out, self.region);
        put_u64(out, self.first_page);
        put_u32(out, self.page_count);
        out.push(self.encoding as u8);
        if version >= 2 {
            put_u32(out, self.request_id);
        }
        out.extend_from_slice(self.body);
        Ok(())
    }

    /// Header flags of this window.
    pub(crate) fn flags(&self) -> u8 {
        if self.urgent_answer {
            FLAG_URGENT_ANSWER
        } else {
            0
        }
    }

    /// Checks the window against the region table announced in the Hello.
    pub fn validate(&self, regions: &[Region]) -> Result<(), WireError> {
        validate_range(regions, self.region, self.first_page, self.page_count)
    }

    /// Decodes the pages into `dest` (exactly `page_count * 4096` bytes). Non-zero pages are
    /// written in place; zero pages are left untouched and returned in the mask (use
    /// [`PageMask::fill_zero_pages`] when the buffer itself must hold them).
    pub fn decode_into(&self, dest: &mut [u8]) -> Result<PageMask, WireError> {
        let expected = self.len_bytes();
        if dest.len() != expected {
            return Err(WireError::DestinationSize { expected, got: dest.len() });
        }
        self.check_body_shape()?;
        match self.encoding {
            WindowEncoding::Raw => {
                dest.copy_from_slice(self.body);
                Ok(PageMask::new(self.page_count))
            }
            WindowEncoding::ZeroRun => Ok(PageMask::full(self.page_count)),
            WindowEncoding::Lz4 => {
                inflate_exact(self.body, dest, 0)?;
                Ok(PageMask::new(self.page_count))
            }
            WindowEncoding::Mixed => self.decode_mixed(dest),
        }
    }

    fn decode_mixed(&self, dest: &mut [u8]) -> Result<PageMask, WireError> {
        let count = self.page_count as usize;
        let mut c = Cur::new(self.body);
        let map = c.bytes(count.div_ceil(4), "window.map")?;
        let pad_bits = (map.len() * 4 - count) * 2;
        if pad_bits > 0 && map[map.len() - 1] >> (8 - pad_bits) != 0 {
            let last = map[map.len() - 1];
            return Err(WireError::InvalidField { field: "window.map padding", got: last.into() });
        }
        let mut zero = PageMask::new(self.page_count);
        for (i, page) in dest.chunks_exact_mut(PAGE_SIZE).enumerate() {
            match (map[i / 4] >> ((i % 4) * 2)) & 3 {
                KIND_ZERO => zero.insert(i as u32),
                KIND_RAW => page.copy_from_slice(c.bytes(PAGE_SIZE, "window.raw page")?),
                KIND_LZ4 => {
                    let len = c.u16("window.lz4 page length")?;
                    if usize::from(len) >= PAGE_SIZE {
                        return Err(WireError::Lz4PageTooLong { page: i as u32, len: len.into() });
                    }
                    inflate_exact(c.bytes(len.into(), "window.lz4 page")?, page, i as u32)?;
                }
                kind => {
                    return Err(WireError::InvalidField {
                        field: "window.page kind",
                        got: kind.into(),
                    })
                }
            }
        }
        c.finish(FrameType::PageWindow)?;
        Ok(zero)
    }
}

/// Inflates one lz4 block into `dest`, which it must fill exactly.
fn inflate_exact(block: &[u8], dest: &mut [u8], page: u32) -> Result<(), WireError> {
    use lz4_flex::block::DecompressError;
    let expected = dest.len();
    match lz4_flex::block::decompress_into(block, dest) {
        Ok(got) if got == expected => Ok(()),
        Ok(got) => Err(WireError::Lz4SizeMismatch { page, expected, got }),
        Err(DecompressError::OutputTooSmall { expected: got, .. }) => {
            Err(WireError::Lz4SizeMismatch { page, expected, got })
        }
        Err(source) => Err(WireError::Lz4Corrupt { page, source }),
    }
}

/// Checks that pages `first_page .. first_page + count` of region `region` exist in `regions`.
pub fn validate_range(
    regions: &[Region],
    region: u32,
    first_page: u64,
    count: u32,
) -> Result<(), WireError> {
    let r = regions
        .get(region as usize)
        .ok_or(WireError::RegionOutOfRange { region, regions: regions.len() })?;
    let region_pages = r.pages();
    if count == 0 {
        return Err(WireError::EmptyWindow { region, first_page });
    }
    if first_page >= region_pages {
        return Err(WireError::PageOutOfRange { region, page: first_page, region_pages });
    }
    if first_page + u64::from(count) > region_pages {
        return Err(WireError::WindowCrossesRegionEnd { region, first_page, count, region_pages });
    }
    Ok(())
}
