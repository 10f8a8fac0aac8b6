//! The VM state blob: magic, version, length, CRC32, then the fields.
//!
//! `VmState::to_blob` produces it on the source, `VmState::from_blob` checks and parses it on
//! the destination. Header (32 bytes, little-endian): magic `HMVMSTAT`, version u32, flags u32
//! (0), payload length u64, CRC32 of the payload u32, reserved u32. The payload is a sequence
//! of fixed-order fields; KVM structs travel as their raw bytes with a length prefix that must
//! equal the struct size, so a layout change is caught instead of misread.

use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::devices::{ControlVcpu, DeviceState, SerialState, SERIAL_KEEP_BYTES};
use super::state::{StateError, VcpuState, VmState, XSAVE_BYTES};

/// First 8 bytes of every blob.
pub const MAGIC: [u8; 8] = *b"HMVMSTAT";
/// The only version this build writes and reads.
pub const VERSION: u32 = 1;
/// Header length, bytes.
pub const HEADER_BYTES: usize = 32;
/// Largest blob accepted or produced, bytes.
pub const MAX_BLOB_BYTES: usize = 1 << 20;
const MAX_VCPUS: u64 = 64;
const MAX_MSRS: u64 = 1024;

impl VmState {
    /// Encodes the state as a self-checking blob.
    pub fn to_blob(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(8192 * self.vcpus.len() + 8192);
        p.extend_from_slice(&self.mem_bytes.to_le_bytes());
        put_u32(&mut p, self.vcpus.len() as u32);
        for v in &self.vcpus {
            put_vcpu(&mut p, v);
        }
        put_devices(&mut p, &self.devices);
        let mut out = Vec::with_capacity(HEADER_BYTES + p.len());
        out.extend_from_slice(&MAGIC);
        put_u32(&mut out, VERSION);
        put_u32(&mut out, 0);
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        put_u32(&mut out, crc32fast::hash(&p));
        put_u32(&mut out, 0);
        out.extend_from_slice(&p);
        out
    }

    /// Checks (size cap, magic, version, length, CRC) and decodes a blob.
    pub fn from_blob(b: &[u8]) -> Result<VmState, StateError> {
        if b.len() > MAX_BLOB_BYTES {
            return Err(StateError::TooLarge { len_bytes: b.len(), max_bytes: MAX_BLOB_BYTES });
        }
        let mut r = Reader { b };
        let magic: [u8; 8] = r.array("header.magic")?;
        if magic != MAGIC {
            return Err(StateError::BadMagic { found: magic });
        }
        let version = r.u32("header.version")?;
        if version != VERSION {
            return Err(StateError::UnsupportedVersion { found: version, supported: VERSION });
        }
        let _flags = r.u32("header.flags")?;
        let len = r.u64("header.payload_len")?;
        let crc = r.u32("header.crc")?;
        let _reserved = r.u32("header.reserved")?;
        if len != r.b.len() as u64 {
            return Err(StateError::PayloadLength { header_bytes: len, actual_bytes: r.b.len() });
        }
        let actual = crc32fast::hash(r.b);
        if actual != crc {
            return Err(StateError::Crc { expected: crc, actual });
        }
        let mem_bytes = r.u64("mem_bytes")?;
        let n = r.count("vcpus", MAX_VCPUS)?;
        let vcpus = (0..n).map(|_| get_vcpu(&mut r)).collect::<Result<Vec<_>, _>>()?;
        let devices = get_devices(&mut r)?;
        if !r.b.is_empty() {
            return Err(StateError::Trailing { extra_bytes: r.b.len() });
        }
        Ok(VmState { mem_bytes, vcpus, devices })
    }
}

fn put_u32(p: &mut Vec<u8>, v: u32) {
    p.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(p: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(p, bytes.len() as u32);
    p.extend_from_slice(bytes);
}

fn put_vcpu(p: &mut Vec<u8>, v: &VcpuState) {
    put_bytes(p, v.regs.as_bytes());
    put_bytes(p, v.sregs.as_bytes());
    put_bytes(p, &v.xsave);
    put_bytes(p, v.xcrs.as_bytes());
    put_bytes(p, v.debugregs.as_bytes());
    put_bytes(p, v.events.as_bytes());
    put_u32(p, v.mp_state.mp_state);
    put_u32(p, v.tsc_khz);
    put_u32(p, v.msrs.len() as u32);
    for &(i, d) in &v.msrs {
        put_u32(p, i);
        p.extend_from_slice(&d.to_le_bytes());
    }
}

fn put_devices(p: &mut Vec<u8>, d: &DeviceState) {
    let s = &d.serial;
    p.extend_from_slice(&[s.ier, s.lcr, s.mcr, s.scr, s.dll, s.dlm]);
    put_bytes(p, &s.output);
    put_u32(p, d.control.len() as u32);
    for c in &d.control {
        put_u32(p, c.phase);
        let flags = u8::from(c.digest_lo.is_some())
            | u8::from(c.digest.is_some()) << 1
            | u8::from(c.done) << 2;
        p.push(flags);
        put_u32(p, c.digest_lo.unwrap_or(0));
        p.extend_from_slice(&c.digest.unwrap_or(0).to_le_bytes());
        put_u32(p, c.ticket);
    }
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], StateError> {
        if self.b.len() < n {
            return Err(StateError::Truncated { field, need_bytes: n, have_bytes: self.b.len() });
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], StateError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(field, N)?);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, StateError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn count(&mut self, field: &'static str, max: u64) -> Result<u64, StateError> {
        let count = u64::from(self.u32(field)?);
        if count > max {
            return Err(StateError::TooMany { field, count, max });
        }
        Ok(count)
    }

    fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], StateError> {
        let n = self.count(field, max as u64)? as usize;
        self.take(field, n)
    }

    /// A length-prefixed KVM struct whose length must equal its size.
    fn pod<T: FromBytes + IntoBytes + Immutable>(
        &mut self,
        field: &'static str,
    ) -> Result<T, StateError> {
        let expected_bytes = std::mem::size_of::<T>();
        let raw = self.bytes(field, MAX_BLOB_BYTES)?;
        T::read_from_bytes(raw).map_err(|_| StateError::FieldSize {
            field,
            len_bytes: raw.len(),
            expected_bytes,
        })
    }
}

fn get_vcpu(r: &mut Reader<'_>) -> Result<VcpuState, StateError> {
    let regs = r.pod("regs")?;
    let sregs = r.pod("sregs")?;
    let xsave = r.bytes("xsave", XSAVE_BYTES)?;
    if xsave.len() != XSAVE_BYTES {
        return Err(StateError::FieldSize {
            field: "xsave",
            len_bytes: xsave.len(),
            expected_bytes: XSAVE_BYTES,
        });
    }
    let xcrs = r.pod("xcrs")?;
    let debugregs = r.pod("debugregs")?;
    let events = r.pod("vcpu_events")?;
    let mp_state = kvm_bindings::kvm_mp_state { mp_state: r.u32("mp_state")? };
    let tsc_khz = r.u32("tsc_khz")?;
    let n = r.count("msrs", MAX_MSRS)?;
    let msrs = (0..n)
        .map(|_| Ok((r.u32("msr.index")?, r.u64("msr.data")?)))
        .collect::<Result<Vec<_>, StateError>>()?;
    Ok(VcpuState {
        regs,
        sregs,
        xsave: xsave.to_vec(),
        xcrs,
        debugregs,
        events,
        mp_state,
        msrs,
        tsc_khz,
    })
}

fn get_devices(r: &mut Reader<'_>) -> Result<DeviceState, StateError> {
    let [ier, lcr, mcr, scr, dll, dlm] = r.array::<6>("serial.registers")?;
    let output = r.bytes("serial.output", SERIAL_KEEP_BYTES)?.to_vec();
    let serial = SerialState { ier, lcr, mcr, scr, dll, dlm, output };
    let n = r.count("control", MAX_VCPUS)?;
    let mut control = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let phase = r.u32("control.phase")?;
        let flags = r.u8("control.flags")?;
        let lo = r.u32("control.digest_lo")?;
        let digest = r.u64("control.digest")?;
        let ticket = r.u32("control.ticket")?;
        control.push(ControlVcpu {
            phase,
            digest_lo: (flags & 1 != 0).then_some(lo),
            digest: (flags & 2 != 0).then_some(digest),
            done: flags & 4 != 0,
            ticket,
        });
    }
    Ok(DeviceState { serial, control })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{kvm_debugregs, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs};

    fn sample() -> VmState {
        let vcpu = VcpuState {
            regs: kvm_regs { rip: 0x10_0000, rax: 42, ..Default::default() },
            sregs: kvm_sregs { cr3: 0x3000, ..Default::default() },
            xsave: (0..XSAVE_BYTES).map(|i| i as u8).collect(),
            xcrs: kvm_xcrs { nr_xcrs: 1, ..Default::default() },
            debugregs: kvm_debugregs { dr7: 0x400, ..Default::default() },
            events: kvm_vcpu_events::default(),
            mp_state: kvm_bindings::kvm_mp_state { mp_state: 0 },
            msrs: vec![(0x10, 123), (0xc000_0100, 7)],
            tsc_khz: 2_000_000,
        };
        let mut devices = DeviceState::default();
        devices.serial.output = b"AB".to_vec();
        devices.control = vec![ControlVcpu {
            phase: 3,
            digest_lo: Some(5),
            digest: None,
            done: false,
            ticket: 9,
        }];
        VmState { mem_bytes: 64 << 20, vcpus: vec![vcpu.clone(), vcpu], devices }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        let blob = s.to_blob();
        assert_eq!(VmState::from_blob(&blob).unwrap(), s);
    }

    #[test]
    fn bad_blobs_get_named_errors() {
        let blob = sample().to_blob();
        let mut corrupt = blob.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0x40;
        assert!(matches!(VmState::from_blob(&corrupt), Err(StateError::Crc { .. })));
        for cut in [0, 7, 20, HEADER_BYTES, blob.len() - 1] {
            let e = VmState::from_blob(&blob[..cut]).unwrap_err();
            assert!(
                matches!(e, StateError::Truncated { .. } | StateError::PayloadLength { .. }),
                "cut at {cut}: {e}"
            );
        }
        let mut v2 = blob.clone();
        v2[8] = 2;
        assert!(matches!(
            VmState::from_blob(&v2),
            Err(StateError::UnsupportedVersion { found: 2, supported: 1 })
        ));
        let mut magic = blob.clone();
        magic[0] = b'X';
        assert!(matches!(VmState::from_blob(&magic), Err(StateError::BadMagic { .. })));
        let big = vec![0u8; MAX_BLOB_BYTES + 1];
        assert!(matches!(VmState::from_blob(&big), Err(StateError::TooLarge { .. })));
        let mut trailing = blob.clone();
        trailing.push(0);
        assert!(matches!(VmState::from_blob(&trailing), Err(StateError::PayloadLength { .. })));
    }

    #[test]
    fn a_wrong_struct_size_inside_a_valid_crc_is_caught() {
        let s = sample();
        let mut p = Vec::new();
        p.extend_from_slice(&s.mem_bytes.to_le_bytes());
        put_u32(&mut p, 1);
        put_bytes(&mut p, &[0u8; 10]); // regs too short
        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC);
        put_u32(&mut blob, VERSION);
        put_u32(&mut blob, 0);
        blob.extend_from_slice(&(p.len() as u64).to_le_bytes());
        put_u32(&mut blob, crc32fast::hash(&p));
        put_u32(&mut blob, 0);
        blob.extend_from_slice(&p);
        assert!(matches!(
            VmState::from_blob(&blob),
            Err(StateError::FieldSize { field: "regs", len_bytes: 10, .. })
        ));
    }
}
