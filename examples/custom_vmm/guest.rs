//! The guest: its memory layout and its program, a few dozen bytes of 32-bit x86 code.
//!
//! The program sweeps the data region `passes` times. Pass `p` writes one 32-bit word into
//! every data page, at an offset and with a value both derived from `p` and the page, so the
//! final memory depends on every pass having run exactly once and in order. After each pass it
//! stores the pass number in the status word and reports it on [`PORT_PASS`]; after the last it
//! writes [`PORT_DONE`] and halts. Its parameters sit in guest memory (the params page), so a
//! migrated guest carries them with its memory, and its only state besides memory is the
//! general-purpose registers.

use std::time::Duration;
use thiserror::Error;

/// Page size of the guest and of the migration.
pub const PAGE_BYTES: u64 = 4096;
/// The low region: code, parameters and status, at guest-physical 0.
pub const LOW_GPA: u64 = 0;
/// Size of the low region.
pub const LOW_BYTES: u64 = 1 << 20;
/// The data region starts here, leaving a hole after the low region, so guest-physical
/// addresses and the engines' dense page indices differ (as they do in a real VM's layout).
pub const DATA_GPA: u64 = 2 << 20;
/// Where the program starts.
pub const CODE_GPA: u64 = 0x1000;
/// The params page: data base (u32), data pages (u32), passes (u32).
pub const PARAMS_GPA: u64 = 0x2000;
/// The status word: the last pass the guest finished.
pub const STATUS_GPA: u64 = 0x3000;
/// The guest writes the pass it finished here (one VM exit per pass).
pub const PORT_PASS: u16 = 0x80;
/// The guest writes here once, after the last pass, then halts.
pub const PORT_DONE: u16 = 0x81;

/// Errors in the guest's shape.
#[derive(Debug, Error)]
pub enum GuestError {
    /// The memory is too small for a data region, or too large for 32-bit addresses.
    #[error("guest memory of {mem_bytes} bytes: need more than {min} and at most {max} bytes")]
    MemSize {
        /// What was asked for.
        mem_bytes: u64,
        /// The low region's size (the data region needs at least one page more).
        min: u64,
        /// The most a 32-bit guest can address here.
        max: u64,
    },
    /// Zero passes, or more than the guest's status word can count.
    #[error("{passes} passes: need 1 to {max}")]
    Passes {
        /// What was asked for.
        passes: u32,
        /// The most allowed.
        max: u32,
    },
}

/// The guest's memory layout and its workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestSpec {
    /// Bytes of the data region (the total memory less the low region).
    pub data_bytes: u64,
    /// Sweeps over the data region.
    pub passes: u32,
    /// The least time a pass takes: the VMM holds the vCPU at the pass's report until then,
    /// so the guest runs about as long on a fast host as on a slow one. Memory does not
    /// depend on it.
    pub min_pass: Duration,
}

/// Largest guest memory: the data region must end below 4 GiB.
const MAX_MEM_BYTES: u64 = (3 << 30) - DATA_GPA;
/// The most passes: more would only make the run longer than any test wants.
const MAX_PASSES: u32 = 1 << 16;

impl GuestSpec {
    /// A guest of `mem_bytes` in all (page-rounded) that sweeps its data `passes` times.
    pub fn new(mem_bytes: u64, passes: u32) -> Result<Self, GuestError> {
        let mem_bytes = mem_bytes / PAGE_BYTES * PAGE_BYTES;
        if mem_bytes <= LOW_BYTES || mem_bytes > MAX_MEM_BYTES {
            return Err(GuestError::MemSize { mem_bytes, min: LOW_BYTES, max: MAX_MEM_BYTES });
        }
        if passes == 0 || passes > MAX_PASSES {
            return Err(GuestError::Passes { passes, max: MAX_PASSES });
        }
        Ok(Self { data_bytes: mem_bytes - LOW_BYTES, passes, min_pass: Duration::ZERO })
    }

    /// The regions as (guest-physical address, bytes), in order.
    pub fn regions(&self) -> [(u64, u64); 2] {
        [(LOW_GPA, LOW_BYTES), (DATA_GPA, self.data_bytes)]
    }

    /// Data pages.
    pub fn data_pages(&self) -> u32 {
        (self.data_bytes / PAGE_BYTES) as u32
    }

    /// The params page's first 12 bytes.
    pub fn params(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[0..4].copy_from_slice(&(DATA_GPA as u32).to_le_bytes());
        out[4..8].copy_from_slice(&self.data_pages().to_le_bytes());
        out[8..12].copy_from_slice(&self.passes.to_le_bytes());
        out
    }
}

/// A tiny assembler: bytes, and 32-bit relative jumps patched once their target is known.
struct Code {
    bytes: Vec<u8>,
}

impl Code {
    fn put(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    fn imm32(&mut self, v: u32) -> &mut Self {
        self.put(&v.to_le_bytes())
    }

    fn here(&self) -> usize {
        self.bytes.len()
    }

    /// An 8-bit displacement from the end of the jump (2 bytes, emitted now) to `target`.
    fn rel8_to(&mut self, opcode: u8, target: usize) -> &mut Self {
        let rel = target as i64 - (self.here() + 2) as i64;
        self.put(&[opcode, rel as i8 as u8])
    }

    /// A 32-bit displacement from the end of a 6-byte `0F xx` jump to `target`.
    fn rel32_to(&mut self, opcode: u8, target: usize) -> &mut Self {
        let rel = target as i64 - (self.here() + 6) as i64;
        self.put(&[0x0f, opcode]).imm32(rel as i32 as u32)
    }
}

/// The program, to be loaded at [`CODE_GPA`] and entered in 32-bit protected mode with flat
/// segments. Registers: ebx the pass, esi the data base, ebp the data pages, edi the word being
/// written, eax its value, ecx the pages left in the pass, edx the port.
pub fn program() -> Vec<u8> {
    let mut c = Code { bytes: Vec::with_capacity(96) };
    c.put(&[0x8b, 0x35]).imm32(PARAMS_GPA as u32); // mov esi, [params.data_base]
    c.put(&[0x8b, 0x2d]).imm32(PARAMS_GPA as u32 + 4); // mov ebp, [params.data_pages]
    c.put(&[0xbb]).imm32(1); // mov ebx, 1
    let pass = c.here();
    c.put(&[0x89, 0xd8]); // mov eax, ebx
    c.put(&[0x25]).imm32(1023); // and eax, 1023: the word's slot in the page
    c.put(&[0xc1, 0xe0, 0x02]); // shl eax, 2
    c.put(&[0x8d, 0x3c, 0x06]); // lea edi, [esi + eax]
    c.put(&[0x89, 0xd8]); // mov eax, ebx
    c.put(&[0x69, 0xc0]).imm32(0x9e37_79b1); // imul eax, eax, golden ratio: the pass's seed
    c.put(&[0x89, 0xe9]); // mov ecx, ebp
    let page = c.here();
    c.put(&[0x89, 0x07]); // mov [edi], eax
    c.put(&[0x05]).imm32(0x0100_0193); // add eax, FNV prime: the next page's value
    c.put(&[0x81, 0xc7]).imm32(PAGE_BYTES as u32); // add edi, 4096
    c.put(&[0x49]); // dec ecx
    c.rel8_to(0x75, page); // jnz page
    c.put(&[0x89, 0x1d]).imm32(STATUS_GPA as u32); // mov [status], ebx
    c.put(&[0x89, 0xd8]); // mov eax, ebx
    c.put(&[0xba]).imm32(u32::from(PORT_PASS)); // mov edx, PORT_PASS
    c.put(&[0xef]); // out dx, eax
    c.put(&[0x43]); // inc ebx
    c.put(&[0x3b, 0x1d]).imm32(PARAMS_GPA as u32 + 8); // cmp ebx, [params.passes]
    c.rel32_to(0x86, pass); // jbe pass
    c.put(&[0xba]).imm32(u32::from(PORT_DONE)); // mov edx, PORT_DONE
    c.put(&[0xef]); // out dx, eax
    let halt = c.here();
    c.put(&[0xf4]); // hlt
    c.rel8_to(0xeb, halt); // jmp halt: a finished guest resumed elsewhere halts again
    c.bytes
}

/// The word pass `pass` writes into data page `page`, and its byte offset in the page: what
/// the program computes, for checking a finished guest's memory without running it.
pub fn word_of(pass: u32, page: u32) -> (u32, u64) {
    let value = pass.wrapping_mul(0x9e37_79b1).wrapping_add(page.wrapping_mul(0x0100_0193));
    (value, u64::from(pass & 1023) * 4)
}
