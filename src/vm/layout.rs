//! Guest physical layout: where the system structures, the per-vCPU slices and the hot sets are.
//!
//! Built from a [`VmConfig`] alone, so the source and the destination of a migration compute the
//! same layout. Nothing here touches memory; [`super::setup`] and [`super::guest`] write what
//! the layout places.
//!
//! ```text
//! 0x000000  system region (2 MiB, KVM slot 0)
//!   0x001000  GDT            0x002000  TSS          0x003000  PML4   0x004000 PDPT
//!   0x005000  page directories (one per GiB mapped, up to 129)
//!   0x090000  per-vCPU parameter/progress pages (one 4 KiB page each)
//!   0x100000  guest code     0x1e0000  per-vCPU stacks (16 KiB each)
//! 0x200000  workload data (KVM slots 1.., at most 1 GiB each), split into per-vCPU slices
//! then      page-table region (last KVM slot): the 4 KiB page tables that map the data, one
//!           8-byte entry per data page, so that their Accessed bits tell which data pages the
//!           guest touched (reads included), for the working-set tracker
//! ```

use super::config::{VmConfig, WorkloadKind};

/// Guest page size, bytes.
pub const PAGE_BYTES: u64 = 4096;
/// Size of the system region, bytes.
pub const SYSTEM_BYTES: u64 = 2 << 20;
/// Guest physical address where workload data starts.
pub const DATA_GPA: u64 = SYSTEM_BYTES;
/// Largest KVM slot for data, bytes.
pub const MAX_SLOT_BYTES: u64 = 1 << 30;
/// Guest physical address of the GDT.
pub const GDT_GPA: u64 = 0x1000;
/// Guest physical address of the 64-bit TSS.
pub const TSS_GPA: u64 = 0x2000;
/// Guest physical address of the PML4.
pub const PML4_GPA: u64 = 0x3000;
/// Guest physical address of the PDPT.
pub const PDPT_GPA: u64 = 0x4000;
/// Guest physical address of the first page directory.
pub const PD_GPA: u64 = 0x5000;
/// Guest physical address of vCPU 0's parameter page.
pub const PARAMS_GPA: u64 = 0x9_0000;
/// Guest physical address of the guest code.
pub const CODE_GPA: u64 = 0x10_0000;
/// Most bytes of guest code.
pub const CODE_MAX_BYTES: u64 = 0x8_0000;
/// Guest physical address of the lowest stack.
pub const STACK_GPA: u64 = 0x1e_0000;
/// Stack size per vCPU, bytes.
pub const STACK_BYTES: u64 = 0x4000;

// The system structures fit their places for the largest configuration.
const _: () = {
    let max_pds = (super::config::MAX_MEM_BYTES
        + SYSTEM_BYTES
        + page_table_bytes(super::config::MAX_MEM_BYTES))
    .div_ceil(1 << 30);
    assert!(PD_GPA + max_pds * PAGE_BYTES <= PARAMS_GPA);
    assert!(PARAMS_GPA + super::config::MAX_VCPUS as u64 * PAGE_BYTES <= CODE_GPA);
    assert!(CODE_GPA + CODE_MAX_BYTES <= STACK_GPA);
    assert!(STACK_GPA + super::config::MAX_VCPUS as u64 * STACK_BYTES <= SYSTEM_BYTES);
};

/// One KVM memory slot of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLayout {
    /// KVM slot number.
    pub slot: u32,
    /// First guest physical address.
    pub guest_phys: u64,
    /// Length, bytes.
    pub size_bytes: u64,
}

/// The part of the data memory that one vCPU owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    /// First guest page number (guest_phys / 4096).
    pub first_page: u64,
    /// Number of pages.
    pub pages: u64,
    /// Ops this vCPU performs before digesting (`u64::MAX` = unbounded).
    pub ops_target: u64,
    /// Hot set: first page, as an offset into the slice (hotcold only, else 0).
    pub hot_start: u64,
    /// Hot set length, pages (hotcold only, else 0).
    pub hot_pages: u64,
    /// Write-hot subset length, pages: the first `write_hot_pages` pages of the hot set.
    pub write_hot_pages: u64,
}

/// The complete layout of one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// KVM slots, system slot first, in guest physical order, contiguous from 0.
    pub slots: Vec<SlotLayout>,
    /// Per-vCPU slices of the data memory, in vCPU order.
    pub slices: Vec<Slice>,
}

/// Guest physical address of vCPU `index`'s parameter page.
pub fn params_gpa(index: u32) -> u64 {
    PARAMS_GPA + u64::from(index) * PAGE_BYTES
}

/// Top of vCPU `index`'s stack (the stack grows down from here).
pub fn stack_top_gpa(index: u32) -> u64 {
    STACK_GPA + (u64::from(index) + 1) * STACK_BYTES
}

/// A 64-bit mixer (splitmix64 finaliser) used to derive per-vCPU values from the seed.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Layout {
    /// Computes the layout of a validated configuration.
    pub fn new(cfg: &VmConfig) -> Layout {
        Layout { slots: slots(cfg.mem_bytes), slices: slices(cfg) }
    }

    /// Guest physical address of the page-table region (the last slot).
    pub fn page_table_gpa(&self) -> u64 {
        self.slots.last().map_or(0, |s| s.guest_phys)
    }

    /// The data slots (neither the system region nor the page-table region).
    pub fn data_slots(&self) -> &[SlotLayout] {
        &self.slots[1..self.slots.len() - 1]
    }

    /// Total guest RAM (system + data + page tables), bytes.
    pub fn total_bytes(&self) -> u64 {
        self.slots.iter().map(|s| s.size_bytes).sum()
    }

    /// Total guest pages (system + data).
    pub fn total_pages(&self) -> u64 {
        self.total_bytes() / PAGE_BYTES
    }
}

/// Bytes of 4 KiB page tables that map `mem_bytes` of data: 8 bytes a page.
pub const fn page_table_bytes(mem_bytes: u64) -> u64 {
    (mem_bytes / PAGE_BYTES * 8).div_ceil(PAGE_BYTES) * PAGE_BYTES
}

fn slots(mem_bytes: u64) -> Vec<SlotLayout> {
    let mut out = vec![SlotLayout { slot: 0, guest_phys: 0, size_bytes: SYSTEM_BYTES }];
    let mut gpa = DATA_GPA;
    let mut left = mem_bytes;
    while left > 0 {
        let size_bytes = left.min(MAX_SLOT_BYTES);
        out.push(SlotLayout { slot: out.len() as u32, guest_phys: gpa, size_bytes });
        gpa += size_bytes;
        left -= size_bytes;
    }
    out.push(SlotLayout {
        slot: out.len() as u32,
        guest_phys: gpa,
        size_bytes: page_table_bytes(mem_bytes),
    });
    out
}

/// Splits the data pages and the op budget over the vCPUs and places each hot set.
///
/// Hot set rule (hotcold): each vCPU's hot set is `min(hot_mib * 256 / vcpus, pages / 2)`
/// pages (at least 1), contiguous, starting at a seed-derived offset aligned to 16 pages. Its
/// first `round(write_frac * hot)` pages are the write-hot subset (at least 1 when
/// `write_frac > 0`).
fn slices(cfg: &VmConfig) -> Vec<Slice> {
    let n = u64::from(cfg.vcpus);
    let data_pages = cfg.mem_bytes / PAGE_BYTES;
    let per = data_pages / n;
    let w = &cfg.workload;
    (0..n)
        .map(|i| {
            let pages = if i + 1 == n { data_pages - per * (n - 1) } else { per };
            let ops_target = match w.ops {
                Some(total) => total / n + u64::from(i < total % n),
                None => u64::MAX,
            };
            let mut s = Slice {
                first_page: DATA_GPA / PAGE_BYTES + i * per,
                pages,
                ops_target,
                hot_start: 0,
                hot_pages: 0,
                write_hot_pages: 0,
            };
            if w.kind == WorkloadKind::HotCold {
                place_hot_set(&mut s, cfg, i);
            }
            s
        })
        .collect()
}

fn place_hot_set(s: &mut Slice, cfg: &VmConfig, index: u64) {
    let w = &cfg.workload;
    let wanted = w.hot_mib.saturating_mul(256) / u64::from(cfg.vcpus);
    let hot = wanted.min(s.pages / 2).max(1);
    let room = (s.pages - hot) / 16 + 1;
    s.hot_start = (mix64(w.seed ^ mix64(index + 1)) % room) * 16;
    s.hot_pages = hot;
    let write_hot = (w.write_frac * hot as f64).round() as u64;
    s.write_hot_pages = if w.write_frac > 0.0 { write_hot.clamp(1, hot) } else { 0 };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::config::WorkloadSpec;

    fn cfg(mem_mib: u64, vcpus: u32, kind: WorkloadKind) -> VmConfig {
        let mut workload = WorkloadSpec::new(kind, 7);
        workload.ops = Some(1001);
        VmConfig { mem_bytes: mem_mib << 20, vcpus, workload }
    }

    #[test]
    fn slots_cover_memory_contiguously() {
        let l = Layout::new(&cfg(2560, 1, WorkloadKind::Scan));
        assert_eq!(l.slots.len(), 5, "system, three data slots, page tables");
        assert_eq!(l.data_slots().len(), 3);
        assert_eq!(page_table_bytes(2560 << 20), (2560 << 20) / 512);
        assert_eq!(l.total_bytes(), (2560 << 20) + SYSTEM_BYTES + page_table_bytes(2560 << 20));
        let mut gpa = 0;
        for s in &l.slots {
            assert_eq!(s.guest_phys, gpa);
            assert!(s.size_bytes <= MAX_SLOT_BYTES);
            gpa += s.size_bytes;
        }
    }

    #[test]
    fn slices_are_disjoint_and_split_ops() {
        let l = Layout::new(&cfg(64, 3, WorkloadKind::HotCold));
        let total: u64 = l.slices.iter().map(|s| s.pages).sum();
        assert_eq!(total, 64 * 256);
        assert_eq!(l.slices.iter().map(|s| s.ops_target).sum::<u64>(), 1001);
        for pair in l.slices.windows(2) {
            assert_eq!(pair[0].first_page + pair[0].pages, pair[1].first_page);
        }
        for s in &l.slices {
            assert!(s.hot_start + s.hot_pages <= s.pages);
            assert!(s.write_hot_pages >= 1 && s.write_hot_pages <= s.hot_pages);
        }
    }
}
