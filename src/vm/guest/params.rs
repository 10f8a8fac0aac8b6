//! The per-vCPU parameter page: what the guest program reads at start and where it reports.
//!
//! Written by the VMM in `Vm::new` (one 4 KiB page per vCPU at
//! [`crate::vm::layout::params_gpa`]); the guest loads the read-only fields into registers and
//! writes the progress and result fields. Nothing timing-dependent is stored here, so the
//! memory image is a pure function of the configuration and the op count.

use super::super::config::{VmConfig, WorkloadKind};
use super::super::layout::{mix64, Slice, PAGE_BYTES};

/// Byte offsets of the fields (all little-endian u64).
pub mod off {
    /// Ops done so far; written by the guest after every op.
    pub const OPS: i32 = 0;
    /// The accumulator at the start of the digest (written by the guest).
    pub const RESULT_ACC: i32 = 8;
    /// The vCPU digest (written by the guest before reporting it).
    pub const RESULT_DIGEST: i32 = 16;
    /// Workload kind code.
    pub const KIND: i32 = 64;
    /// Guest physical (= virtual) address of the slice.
    pub const SLICE_BASE: i32 = 72;
    /// Slice length, pages.
    pub const SLICE_PAGES: i32 = 80;
    /// Ops to perform before digesting.
    pub const OPS_TARGET: i32 = 88;
    /// Initial xorshift state (never zero).
    pub const PRNG_SEED: i32 = 96;
    /// Pace, ops per second (0 = unpaced).
    pub const PACE: i32 = 104;
    /// TSC frequency, Hz.
    pub const TSC_HZ: i32 = 112;
    /// How many ops the guest may lag behind its pace before it stops catching up.
    pub const PACE_SLACK: i32 = 120;
    /// Hot set start, pages into the slice.
    pub const HOT_START: i32 = 128;
    /// Hot set length, pages.
    pub const HOT_PAGES: i32 = 136;
    /// Write-hot subset length, pages.
    pub const WRITE_HOT_PAGES: i32 = 144;
    /// An op is hot when its low 32 random bits are below this.
    pub const HOT_THRESH: i32 = 152;
    /// An op is a write when its high 32 random bits are below this.
    pub const WRITE_THRESH: i32 = 160;
    /// Byte offset in every page that scan increments.
    pub const BYTE_OFF: i32 = 168;
    /// vCPU index.
    pub const VCPU: i32 = 176;
    /// Initial value of the digest hash.
    pub const DIGEST_INIT: i32 = 184;
    /// Initial value of the read accumulator.
    pub const ACC_INIT: i32 = 192;
    /// Slice pages outside the hot set.
    pub const COLD_PAGES: i32 = 200;
    /// Slice length, 8-byte words.
    pub const SLICE_QWORDS: i32 = 208;
    /// End of the used part of the page.
    pub const END: usize = 216;
}

/// The parameter page contents for vCPU `index`.
pub fn encode(cfg: &VmConfig, slice: &Slice, index: u32, tsc_hz: u64) -> [u8; off::END] {
    let w = &cfg.workload;
    let vseed = mix64(w.seed ^ mix64(u64::from(index) + 0x51ce));
    let pace = w.pace_ops_per_sec.unwrap_or(0);
    let thresh = |f: f64| ((f * 4_294_967_296.0).round() as u64).min(1 << 32);
    let fields: [(i32, u64); 21] = [
        (off::OPS, 0),
        (off::RESULT_ACC, 0),
        (off::RESULT_DIGEST, 0),
        (off::KIND, w.kind.code()),
        (off::SLICE_BASE, slice.first_page * PAGE_BYTES),
        (off::SLICE_PAGES, slice.pages),
        (off::OPS_TARGET, slice.ops_target),
        (off::PRNG_SEED, vseed | 1),
        (off::PACE, pace),
        (off::TSC_HZ, tsc_hz),
        (off::PACE_SLACK, (pace / 100).max(1)),
        (off::HOT_START, slice.hot_start),
        (off::HOT_PAGES, slice.hot_pages),
        (off::WRITE_HOT_PAGES, slice.write_hot_pages),
        (off::HOT_THRESH, if w.kind == WorkloadKind::HotCold { thresh(w.hot_frac) } else { 0 }),
        (off::WRITE_THRESH, if slice.write_hot_pages > 0 { thresh(w.write_frac) } else { 0 }),
        (off::BYTE_OFF, mix64(w.seed) % PAGE_BYTES),
        (off::VCPU, u64::from(index)),
        (off::DIGEST_INIT, mix64(vseed ^ 0xd16e57)),
        (off::ACC_INIT, mix64(vseed ^ 0xacc)),
        (off::COLD_PAGES, slice.pages - slice.hot_pages),
    ];
    let mut page = [0u8; off::END];
    for (o, v) in fields {
        let o = o as usize;
        page[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
    let o = off::SLICE_QWORDS as usize;
    page[o..o + 8].copy_from_slice(&(slice.pages * (PAGE_BYTES / 8)).to_le_bytes());
    page
}

/// Reads field `offset` from an encoded parameter page.
pub fn field(page: &[u8], offset: i32) -> u64 {
    let o = offset as usize;
    page.get(o..o + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
}
