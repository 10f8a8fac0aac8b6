//! Initial machine state: identity page tables, GDT and TSS in memory; long-mode CPL 3
//! segments, control registers and entry registers in the vCPU; CPUID.
//!
//! Why CPL 3: under the paravirtual `kvm_pvm` module, CPL 0 guest code is emulated (about
//! 1000x slower) while 64-bit CPL 3 code runs natively. IOPL 3 in RFLAGS lets `in`/`out` at
//! CPL 3 exit to the VMM instead of faulting.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

use super::error::VmError;
use super::layout::{
    params_gpa, stack_top_gpa, Layout, CODE_GPA, GDT_GPA, PAGE_BYTES, PDPT_GPA, PD_GPA, PML4_GPA,
    TSS_GPA,
};

const PTE_PRESENT: u64 = 1;
const PTE_WRITE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PDE_HUGE: u64 = 1 << 7;
const TABLE_FLAGS: u64 = PTE_PRESENT | PTE_WRITE | PTE_USER;

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS: reserved bit 1 and IOPL = 3; IF stays clear (no interrupts are ever injected).
const RFLAGS_INIT: u64 = 0x2 | (3 << 12);

/// User code selector: GDT index 3, RPL 3.
pub const USER_CS: u16 = (3 << 3) | 3;
/// User data selector: GDT index 4, RPL 3.
pub const USER_DS: u16 = (4 << 3) | 3;
/// TSS selector: GDT index 5 (a 16-byte descriptor).
pub const TSS_SEL: u16 = 5 << 3;
const GDT_ENTRIES: usize = 7;
/// Offset of the I/O permission bitmap in the TSS (right after the 104-byte TSS proper).
const IOMAP_OFFSET: u64 = 104;
/// Ports covered by the (all-zero, i.e. all-allowed) I/O permission bitmap.
const IOMAP_PORTS: u64 = 0x800;
/// TSS limit: the TSS, the bitmap, and the trailing byte the CPU (and KVM's emulator) may read.
const TSS_LIMIT: u32 = (IOMAP_OFFSET + IOMAP_PORTS / 8) as u32;

/// The data's guest-physical range (2 MiB aligned at both ends).
fn data_range(layout: &Layout) -> (u64, u64) {
    let data = layout.data_slots();
    let start = data.first().map_or(0, |s| s.guest_phys);
    let end = data.last().map_or(0, |s| s.guest_phys + s.size_bytes);
    (start, end)
}

/// Accessed bit of a page-table entry.
pub const PTE_ACCESSED: u64 = 1 << 5;

/// Writes the 4 KiB page tables that map the data into the page-table region (`pt` = its
/// bytes): entry k maps data page k, present, writable, user.
pub fn write_data_page_tables(pt: &mut [u8], layout: &Layout) {
    let (start, end) = data_range(layout);
    for (k, entry) in pt.chunks_exact_mut(8).take(((end - start) / PAGE_BYTES) as usize).enumerate()
    {
        entry.copy_from_slice(&((start + k as u64 * PAGE_BYTES) | TABLE_FLAGS).to_le_bytes());
    }
}

/// Writes page tables, GDT and TSS into the system region (`sys` = its bytes).
pub fn write_tables(sys: &mut [u8], layout: &Layout) {
    let put = |sys: &mut [u8], gpa: u64, v: u64| {
        let o = gpa as usize;
        sys[o..o + 8].copy_from_slice(&v.to_le_bytes());
    };
    put(sys, PML4_GPA, PDPT_GPA | TABLE_FLAGS);
    let gib = 1u64 << 30;
    let pds = layout.total_bytes().div_ceil(gib);
    let (data_start, data_end) = data_range(layout);
    for i in 0..pds {
        let pd = PD_GPA + i * PAGE_BYTES;
        put(sys, PDPT_GPA + i * 8, pd | TABLE_FLAGS);
        for j in 0..512 {
            let gpa = i * gib + j * (2 << 20);
            let pde = if (data_start..data_end).contains(&gpa) {
                // Data: a 4 KiB page table in the page-table region, one per 2 MiB.
                (layout.page_table_gpa() + (gpa - data_start) / 512) | TABLE_FLAGS
            } else {
                gpa | TABLE_FLAGS | PDE_HUGE
            };
            put(sys, pd + j * 8, pde);
        }
    }
    for (i, d) in gdt_entries().iter().enumerate() {
        put(sys, GDT_GPA + 8 * i as u64, *d);
    }
    // TSS: all stack pointers zero (no privilege change ever happens). The I/O permission
    // bitmap (zero bytes = allowed) is what makes port I/O work under PVM: the guest runs at
    // hardware CPL 3 with the real IOPL forced to 0, so every `in`/`out` raises #GP, which
    // kvm_pvm hands to KVM's instruction emulator; the emulator checks the guest's IOPL (which
    // PVM has replaced by the hardware value 0 after the first exit) and then this bitmap.
    // On VMX/SVM KVM the IOPL of 3 alone lets the access reach the VMM.
    put(sys, TSS_GPA + 0x60, IOMAP_OFFSET << 48);
}

fn gdt_entries() -> [u64; GDT_ENTRIES] {
    let tss_lo = u64::from(TSS_LIMIT)
        | (TSS_GPA & 0xff_ffff) << 16
        | 0xb << 40 // type: 64-bit TSS, busy
        | 1 << 47 // present
        | ((TSS_GPA >> 24) & 0xff) << 56;
    [
        0,
        0x00af_9b00_0000_ffff, // kernel code, 64-bit
        0x00cf_9300_0000_ffff, // kernel data
        0x00af_fb00_0000_ffff, // user code, 64-bit, DPL 3
        0x00cf_f300_0000_ffff, // user data, DPL 3
        tss_lo,
        TSS_GPA >> 32,
    ]
}

fn user_segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 3,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Long mode, paging, CPL 3 segments, a busy TSS.
pub fn initial_sregs(mut s: kvm_sregs) -> kvm_sregs {
    s.cs = user_segment(USER_CS, true);
    let data = user_segment(USER_DS, false);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
    s.tr = kvm_segment {
        base: TSS_GPA,
        limit: TSS_LIMIT,
        selector: TSS_SEL,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    s.ldt = kvm_segment { type_: 0x2, unusable: 1, ..Default::default() };
    s.gdt.base = GDT_GPA;
    s.gdt.limit = (GDT_ENTRIES * 8 - 1) as u16;
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    s.cr3 = PML4_GPA;
    s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    s.efer = EFER_LME | EFER_LMA;
    s
}

/// Entry registers of vCPU `index`: code start, its stack, `rdi` = its parameter page.
pub fn initial_regs(index: u32) -> kvm_regs {
    kvm_regs {
        rip: CODE_GPA,
        rsp: stack_top_gpa(index),
        rdi: params_gpa(index),
        rflags: RFLAGS_INIT,
        ..Default::default()
    }
}

/// The host's supported CPUID, read once per VM.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VmError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(VmError::GetCpuid)
}

/// Sets CPUID on a vCPU, with its initial APIC id in leaf 1.
pub fn set_cpuid(vcpu: &VcpuFd, index: u32, base: &CpuId) -> Result<(), VmError> {
    let mut cpuid = base.clone();
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.ebx = (e.ebx & 0x00ff_ffff) | (index << 24);
        }
        if e.function == 0xb || e.function == 0x1f {
            e.edx = index;
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(|source| VmError::SetCpuid { vcpu: index, source })
}

/// Sets the initial sregs and regs of a vCPU.
pub fn set_initial_state(vcpu: &VcpuFd, index: u32) -> Result<(), VmError> {
    let sregs = vcpu.get_sregs().map_err(|source| VmError::InitRegs {
        what: "sregs",
        vcpu: index,
        source,
    })?;
    vcpu.set_sregs(&initial_sregs(sregs)).map_err(|source| VmError::InitRegs {
        what: "sregs",
        vcpu: index,
        source,
    })?;
    vcpu.set_regs(&initial_regs(index)).map_err(|source| VmError::InitRegs {
        what: "regs",
        vcpu: index,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::config::{VmConfig, WorkloadKind, WorkloadSpec};
    use crate::vm::layout::SYSTEM_BYTES;

    #[test]
    fn tables_identity_map_all_ram() {
        let cfg = VmConfig {
            mem_bytes: 3 << 30,
            vcpus: 1,
            workload: WorkloadSpec::new(WorkloadKind::Scan, 1),
        };
        let layout = Layout::new(&cfg);
        // All of guest RAM as one byte array, so the walk can follow any table.
        let mut ram = vec![0u8; layout.total_bytes() as usize];
        write_tables(&mut ram[..SYSTEM_BYTES as usize], &layout);
        let pt_at = layout.page_table_gpa() as usize;
        write_data_page_tables(&mut ram[pt_at..], &layout);
        let rd = |gpa: u64| {
            let o = gpa as usize;
            u64::from_le_bytes(ram[o..o + 8].try_into().unwrap())
        };
        // Walk addresses through PML4 -> PDPT -> PD: 2 MiB pages for the system and
        // page-table regions, 4 KiB pages for the data.
        let data_end = layout.page_table_gpa();
        for gpa in [0u64, 0x20_0000, 0x20_1234, (1 << 30) + 0x12_3456, data_end - 1, data_end + 8] {
            let pml4e = rd(PML4_GPA + ((gpa >> 39) & 511) * 8);
            assert_eq!(pml4e & 7, 7);
            let pdpte = rd((pml4e & !0xfff) + ((gpa >> 30) & 511) * 8);
            assert_eq!(pdpte & 7, 7);
            let pde = rd((pdpte & !0xfff) + ((gpa >> 21) & 511) * 8);
            let is_data = (0x20_0000..data_end).contains(&gpa);
            if is_data {
                assert_eq!(pde & (7 | PDE_HUGE), 7, "data is mapped by a page table at {gpa:#x}");
                let pte = rd((pde & !0xfff) + ((gpa >> 12) & 511) * 8);
                assert_eq!(pte & 7, 7);
                assert_eq!((pte & !0xfff) | (gpa & 0xfff), gpa);
            } else {
                assert_eq!(pde & (7 | PDE_HUGE), 7 | PDE_HUGE);
                assert_eq!((pde & !0x1f_ffff & !(1 << 63)) | (gpa & 0x1f_ffff), gpa);
            }
        }
        assert_eq!(rd(GDT_GPA + 8 * 3) >> 45 & 3, 3, "user code DPL 3");
    }
}
