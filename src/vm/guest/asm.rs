//! Generates the guest workload program with iced-x86's code assembler.
//!
//! One program per workload kind, shared by all vCPUs; each vCPU starts with `rdi` pointing at
//! its parameter page. The program runs at CPL 3 in 64-bit mode, so it stops by writing the
//! done port (never `hlt`). Register plan while the ops run:
//!
//! | reg | use | reg | use |
//! |-----|-----|-----|-----|
//! | rdi | parameter page | r12 | ops done |
//! | rbx | slice base | r13 | ops target |
//! | rbp | slice pages | r14 | xorshift state |
//! | rsi | read accumulator | r15 | pace base TSC |
//! | r9  | xorshift multiplier | r11 | pace base ops |
//! | r8, r10 | per-workload | rax, rcx, rdx | scratch |
//!
//! Pacing keeps its TSC values in registers only, so guest memory never holds a timing value.

use iced_x86::code_asm::*;

use super::super::config::WorkloadKind;
use super::super::devices::ports;
use super::digest::DIGEST_MUL;
use super::params::off;
use super::XORSHIFT_MUL;

/// Phase values the guest writes to [`ports::PHASE`].
pub mod phase {
    /// Before the program starts.
    pub const INIT: u32 = 0;
    /// Idle's one-time fill.
    pub const FILL: u32 = 1;
    /// Running ops.
    pub const OPS: u32 = 2;
    /// Computing the digest.
    pub const DIGEST: u32 = 3;
}

/// Errors of code generation.
#[derive(Debug, thiserror::Error)]
pub enum AsmError {
    /// iced-x86 rejected an instruction or a label.
    #[error("assembling the {kind} program failed: {source}")]
    Assemble {
        /// Workload kind.
        kind: WorkloadKind,
        /// The assembler's error.
        source: IcedError,
    },
}

type R = Result<(), IcedError>;

/// Assembles the program for `kind`, to be loaded at guest address `base`.
pub fn program(kind: WorkloadKind, base: u64) -> Result<Vec<u8>, AsmError> {
    build(kind, base).map_err(|source| AsmError::Assemble { kind, source })
}

fn build(kind: WorkloadKind, base: u64) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    prologue(&mut a)?;
    match kind {
        WorkloadKind::Scan => a.mov(r10, qword_ptr(rdi + off::BYTE_OFF))?,
        WorkloadKind::Idle => idle_fill(&mut a)?,
        _ => {}
    }
    out_imm(&mut a, ports::PHASE, phase::OPS)?;
    rdtsc64(&mut a)?;
    a.mov(r15, rax)?;
    a.xor(r11d, r11d)?;

    let mut top = a.create_label();
    let mut body = a.create_label();
    let mut finish = a.create_label();
    a.set_label(&mut top)?;
    a.cmp(r12, r13)?;
    a.jae(finish)?;
    a.cmp(qword_ptr(rdi + off::PACE), 0)?;
    a.je(body)?;
    pace_wait(&mut a, body)?;
    a.set_label(&mut body)?;
    match kind {
        WorkloadKind::Scan => op_scan(&mut a)?,
        WorkloadKind::HotCold => op_hotcold(&mut a)?,
        WorkloadKind::Random => op_random(&mut a)?,
        WorkloadKind::SeqRead => op_seqread(&mut a)?,
        WorkloadKind::Idle => {}
    }
    a.inc(r12)?;
    a.mov(qword_ptr(rdi + off::OPS), r12)?;
    a.jmp(top)?;
    a.set_label(&mut finish)?;
    epilogue(&mut a)?;
    a.assemble(base)
}

/// Loads the parameters, greets the serial port (an `in` then an `out`).
fn prologue(a: &mut CodeAssembler) -> R {
    a.mov(rbx, qword_ptr(rdi + off::SLICE_BASE))?;
    a.mov(rbp, qword_ptr(rdi + off::SLICE_PAGES))?;
    a.mov(r13, qword_ptr(rdi + off::OPS_TARGET))?;
    a.mov(r14, qword_ptr(rdi + off::PRNG_SEED))?;
    a.mov(rsi, qword_ptr(rdi + off::ACC_INIT))?;
    a.mov(r9, XORSHIFT_MUL)?;
    a.xor(r12d, r12d)?;
    a.xor(r8d, r8d)?;
    a.mov(dx, i32::from(ports::SERIAL_BASE + 5))?;
    a.in_(al, dx)?;
    a.mov(eax, dword_ptr(rdi + off::VCPU))?;
    a.add(eax, i32::from(b'A'))?;
    a.mov(dx, i32::from(ports::SERIAL_BASE))?;
    a.out(dx, al)
}

fn out_imm(a: &mut CodeAssembler, port: u16, value: u32) -> R {
    a.mov(dx, i32::from(port))?;
    a.mov(eax, value)?;
    a.out(dx, eax)
}

/// rax = full 64-bit TSC (clobbers rdx).
fn rdtsc64(a: &mut CodeAssembler) -> R {
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)
}

/// rcx = next xorshift64* output (r14 = state, r9 = multiplier).
fn next(a: &mut CodeAssembler) -> R {
    for (shift, left) in [(12, false), (25, true), (27, false)] {
        a.mov(rcx, r14)?;
        if left {
            a.shl(rcx, shift)?;
        } else {
            a.shr(rcx, shift)?;
        }
        a.xor(r14, rcx)?;
    }
    a.mov(rcx, r14)?;
    a.imul_2(rcx, r9)
}

/// rax = rbx + (rax << 12): the address of slice page rax.
fn page_addr(a: &mut CodeAssembler) -> R {
    a.shl(rax, 12)?;
    a.add(rax, rbx)
}

/// r8 = (r8 + 1) mod slice pages.
fn next_page(a: &mut CodeAssembler) -> R {
    let mut ok = a.create_label();
    a.inc(r8)?;
    a.cmp(r8, rbp)?;
    a.jb(ok)?;
    a.xor(r8d, r8d)?;
    a.set_label(&mut ok)
}

/// Waits until op r12 is allowed: `ops_base + (tsc - tsc_base) * pace / tsc_hz > r12`. A guest
/// more than PACE_SLACK ops behind (after a pause or a migration) re-bases instead of bursting.
fn pace_wait(a: &mut CodeAssembler, body: CodeLabel) -> R {
    let mut wait = a.create_label();
    let mut rebase = a.create_label();
    a.set_label(&mut wait)?;
    rdtsc64(a)?;
    a.sub(rax, r15)?;
    a.js(rebase)?;
    a.mul(qword_ptr(rdi + off::PACE))?;
    a.div(qword_ptr(rdi + off::TSC_HZ))?;
    a.add(rax, r11)?;
    a.cmp(r12, rax)?;
    a.jae(wait)?;
    a.sub(rax, r12)?;
    a.cmp(rax, qword_ptr(rdi + off::PACE_SLACK))?;
    a.jbe(body)?;
    a.set_label(&mut rebase)?;
    rdtsc64(a)?;
    a.mov(r15, rax)?;
    a.mov(r11, r12)?;
    a.jmp(wait)
}

/// Idle: fill every even page of the slice with xorshift words; odd pages stay zero.
fn idle_fill(a: &mut CodeAssembler) -> R {
    let mut page = a.create_label();
    let mut words = a.create_label();
    let mut skip = a.create_label();
    let mut done = a.create_label();
    out_imm(a, ports::PHASE, phase::FILL)?;
    a.set_label(&mut page)?;
    a.cmp(r8, rbp)?;
    a.jae(done)?;
    a.test(r8b, 1)?;
    a.jnz(skip)?;
    a.mov(rax, r8)?;
    page_addr(a)?;
    a.mov(r10, rax)?;
    a.mov(r11d, 512)?;
    a.set_label(&mut words)?;
    next(a)?;
    a.mov(qword_ptr(r10), rcx)?;
    a.add(r10, 8)?;
    a.dec(r11)?;
    a.jnz(words)?;
    a.set_label(&mut skip)?;
    a.inc(r8)?;
    a.jmp(page)?;
    a.set_label(&mut done)
}

/// Scan: increment the byte at BYTE_OFF of page r8, advance r8.
fn op_scan(a: &mut CodeAssembler) -> R {
    a.mov(rax, r8)?;
    page_addr(a)?;
    a.inc(byte_ptr(rax + r10))?;
    next_page(a)
}

/// Random: add a random word at a uniformly random word of the slice.
fn op_random(a: &mut CodeAssembler) -> R {
    next(a)?;
    a.mov(rax, rcx)?;
    a.mul(qword_ptr(rdi + off::SLICE_QWORDS))?;
    a.add(qword_ptr(rbx + rdx * 8), rcx)
}

/// SeqRead: sum the 512 words of page r8 in two lanes, fold the sum into the accumulator.
fn op_seqread(a: &mut CodeAssembler) -> R {
    let mut lp = a.create_label();
    a.mov(rax, r8)?;
    page_addr(a)?;
    a.xor(edx, edx)?;
    a.xor(r10d, r10d)?;
    a.mov(ecx, 128)?;
    a.set_label(&mut lp)?;
    a.add(rdx, qword_ptr(rax))?;
    a.add(r10, qword_ptr(rax + 8))?;
    a.add(rdx, qword_ptr(rax + 16))?;
    a.add(r10, qword_ptr(rax + 24))?;
    a.add(rax, 32)?;
    a.dec(ecx)?;
    a.jnz(lp)?;
    a.add(rdx, r10)?;
    a.rol(rsi, 17)?;
    a.xor(rsi, rdx)?;
    a.imul_2(rsi, r9)?;
    next_page(a)
}

/// HotCold, one 8-byte access. With r = next(): write iff `r >> 32 < WRITE_THRESH`; hot iff
/// `r & 0xffff_ffff < HOT_THRESH`. With r' = next(): a hot write goes to page
/// `HOT_START + hi(r' * WRITE_HOT_PAGES)`, a hot read to `HOT_START + hi(r' * HOT_PAGES)`, a
/// cold access to the `hi(r' * COLD_PAGES)`-th page outside the hot set; the word within the
/// page is `r' & 511`. A write adds r' to the word; a read folds it into the accumulator.
fn op_hotcold(a: &mut CodeAssembler) -> R {
    let mut cold = a.create_label();
    let mut hot_read = a.create_label();
    let mut hot_done = a.create_label();
    let mut access = a.create_label();
    let mut read = a.create_label();
    let mut end = a.create_label();
    next(a)?;
    a.mov(rax, rcx)?;
    a.shr(rax, 32)?;
    a.xor(r10d, r10d)?;
    a.cmp(rax, qword_ptr(rdi + off::WRITE_THRESH))?;
    a.setb(r10b)?;
    a.mov(eax, ecx)?;
    a.cmp(rax, qword_ptr(rdi + off::HOT_THRESH))?;
    a.jae(cold)?;
    next(a)?;
    a.mov(rax, rcx)?;
    a.test(r10, r10)?;
    a.jz(hot_read)?;
    a.mul(qword_ptr(rdi + off::WRITE_HOT_PAGES))?;
    a.jmp(hot_done)?;
    a.set_label(&mut hot_read)?;
    a.mul(qword_ptr(rdi + off::HOT_PAGES))?;
    a.set_label(&mut hot_done)?;
    a.add(rdx, qword_ptr(rdi + off::HOT_START))?;
    a.jmp(access)?;
    a.set_label(&mut cold)?;
    next(a)?;
    a.mov(rax, rcx)?;
    a.mul(qword_ptr(rdi + off::COLD_PAGES))?;
    a.cmp(rdx, qword_ptr(rdi + off::HOT_START))?;
    a.jb(access)?;
    a.add(rdx, qword_ptr(rdi + off::HOT_PAGES))?;
    a.set_label(&mut access)?;
    a.shl(rdx, 12)?;
    a.add(rdx, rbx)?;
    a.mov(eax, ecx)?;
    a.and(eax, 511)?;
    a.test(r10, r10)?;
    a.jz(read)?;
    a.add(qword_ptr(rdx + rax * 8), rcx)?;
    a.jmp(end)?;
    a.set_label(&mut read)?;
    a.add(rsi, qword_ptr(rdx + rax * 8))?;
    a.rol(rsi, 7)?;
    a.set_label(&mut end)
}

/// Digest loop, result slots, report (two 32-bit outs), then the done port forever.
fn epilogue(a: &mut CodeAssembler) -> R {
    let mut lp = a.create_label();
    let mut done = a.create_label();
    out_imm(a, ports::PHASE, phase::DIGEST)?;
    a.mov(qword_ptr(rdi + off::RESULT_ACC), rsi)?;
    a.mov(rax, qword_ptr(rdi + off::DIGEST_INIT))?;
    a.mov(r8, rbx)?;
    a.mov(rcx, rbp)?;
    a.shl(rcx, 9)?;
    a.mov(r9, DIGEST_MUL)?;
    a.set_label(&mut lp)?;
    a.xor(rax, qword_ptr(r8))?;
    a.rol(rax, 23)?;
    a.imul_2(rax, r9)?;
    a.add(r8, 8)?;
    a.dec(rcx)?;
    a.jnz(lp)?;
    a.xor(rax, rsi)?;
    a.imul_2(rax, r9)?;
    a.mov(rdx, rax)?;
    a.shr(rdx, 29)?;
    a.xor(rax, rdx)?;
    a.mov(qword_ptr(rdi + off::RESULT_DIGEST), rax)?;
    a.mov(r8, rax)?;
    a.mov(dx, i32::from(ports::DIGEST_LO))?;
    a.out(dx, eax)?;
    a.mov(rax, r8)?;
    a.shr(rax, 32)?;
    a.mov(dx, i32::from(ports::DIGEST_HI))?;
    a.out(dx, eax)?;
    a.set_label(&mut done)?;
    a.mov(dx, i32::from(ports::DONE))?;
    a.out(dx, eax)?;
    a.jmp(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::layout::{CODE_GPA, CODE_MAX_BYTES};
    use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};

    /// Every program assembles, fits, decodes cleanly, uses no privileged instruction and
    /// touches only the VMM's ports.
    #[test]
    fn programs_are_user_mode_and_use_known_ports() {
        let known = [
            ports::SERIAL_BASE,
            ports::SERIAL_BASE + 5,
            ports::PHASE,
            ports::DIGEST_LO,
            ports::DIGEST_HI,
            ports::DONE,
        ];
        for kind in WorkloadKind::ALL {
            let code = program(kind, CODE_GPA).expect("assembles");
            assert!(!code.is_empty() && (code.len() as u64) < CODE_MAX_BYTES);
            let mut d = Decoder::with_ip(64, &code, CODE_GPA, DecoderOptions::NONE);
            let mut last_dx: Option<u16> = None;
            let mut outs = 0;
            for ins in &mut d {
                assert!(!ins.is_invalid(), "{kind}: invalid instruction at {:#x}", ins.ip());
                assert!(
                    !matches!(ins.mnemonic(), Mnemonic::Hlt | Mnemonic::Cli | Mnemonic::Sti),
                    "{kind}: privileged {:?}",
                    ins.mnemonic()
                );
                if ins.mnemonic() == Mnemonic::Mov
                    && ins.op0_register() == iced_x86::Register::DX
                    && ins.op1_kind() == OpKind::Immediate16
                {
                    last_dx = Some(ins.immediate16());
                }
                if matches!(ins.mnemonic(), Mnemonic::Out | Mnemonic::In) {
                    let port = last_dx.expect("port set before I/O");
                    assert!(known.contains(&port), "{kind}: unknown port {port:#x}");
                    outs += 1;
                }
            }
            assert!(outs >= 6, "{kind}: {outs} port accesses");
        }
    }
}
