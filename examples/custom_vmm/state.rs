//! The guest's state besides memory, and its blob: the vCPU's registers and the progress
//! device, framed by a magic, a version, the length and a CRC32, so a destination refuses a
//! blob that is truncated, corrupted or from another VMM before loading any of it.

use crate::guest::{PORT_DONE, PORT_PASS};
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use thiserror::Error;
use zerocopy::{FromBytes, IntoBytes};

/// Errors of the state blob.
#[derive(Debug, Error)]
pub enum StateError {
    /// The blob is shorter than its header, or its length is not this version's.
    #[error("state blob of {got} bytes, expected {expected}")]
    Length {
        /// Bytes received.
        got: usize,
        /// Bytes this version's blob has.
        expected: usize,
    },
    /// The blob does not start with this VMM's magic.
    #[error("state blob magic {got:02x?} is not this VMM's")]
    Magic {
        /// The first bytes received.
        got: [u8; 8],
    },
    /// A version this VMM does not read.
    #[error("state blob version {got}, this VMM reads {supported}")]
    Version {
        /// The blob's version.
        got: u32,
        /// The version read here.
        supported: u32,
    },
    /// The payload does not match its CRC.
    #[error("state blob CRC {got:#010x}, the payload's is {computed:#010x}")]
    Crc {
        /// CRC in the header.
        got: u32,
        /// CRC of the payload received.
        computed: u32,
    },
    /// Setting the registers on the destination's vCPU failed.
    #[error("setting the vCPU's {what} failed: errno {errno}")]
    Load {
        /// Which registers.
        what: &'static str,
        /// The errno.
        errno: i32,
    },
}

/// Errors of the progress device: a guest that reports passes out of order is not the guest
/// it claims to be (or its state was lost or repeated on the way).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// A pass reported out of order.
    #[error("the guest reported pass {got} after pass {last}")]
    PassOrder {
        /// The pass reported.
        got: u32,
        /// The pass before it.
        last: u32,
    },
    /// A write of a size other than 4 bytes, or to a port the device does not have.
    #[error("a {len}-byte write to port {port:#x}")]
    BadWrite {
        /// The port.
        port: u16,
        /// Bytes written.
        len: usize,
    },
}

/// The vCPU's registers.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuState {
    /// General-purpose registers, rip and rflags.
    pub regs: kvm_regs,
    /// Segments, descriptor tables and control registers.
    pub sregs: kvm_sregs,
}

impl CpuState {
    /// Reads the registers of a vCPU that is not running.
    pub fn read(vcpu: &VcpuFd) -> Result<Self, crate::vcpu::VcpuError> {
        let err = |what| {
            move |e: kvm_ioctls::Error| crate::vcpu::VcpuError::Snapshot { what, errno: e.errno() }
        };
        Ok(Self {
            regs: vcpu.get_regs().map_err(err("regs"))?,
            sregs: vcpu.get_sregs().map_err(err("sregs"))?,
        })
    }

    /// Loads the registers into a vCPU that is not running. Segments and control registers
    /// go first: they decide how KVM reads the rest.
    pub fn write(&self, vcpu: &VcpuFd) -> Result<(), StateError> {
        let err = |what| move |e: kvm_ioctls::Error| StateError::Load { what, errno: e.errno() };
        vcpu.set_sregs(&self.sregs).map_err(err("sregs"))?;
        vcpu.set_regs(&self.regs).map_err(err("regs"))
    }
}

/// The one device: the guest reports each finished pass and its end through port writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressDevice {
    /// The last pass reported.
    pub passes: u32,
    /// Whether the guest reported its end.
    pub done: bool,
}

impl ProgressDevice {
    /// A guest's write of `data` to `port`.
    pub fn on_write(&mut self, port: u16, data: &[u8]) -> Result<(), DeviceError> {
        let bad = DeviceError::BadWrite { port, len: data.len() };
        let value = u32::from_le_bytes(data.try_into().map_err(|_| bad.clone())?);
        match port {
            PORT_PASS if value == self.passes.wrapping_add(1) && !self.done => {
                self.passes = value;
                Ok(())
            }
            PORT_PASS => Err(DeviceError::PassOrder { got: value, last: self.passes }),
            PORT_DONE => {
                self.done = true;
                Ok(())
            }
            _ => Err(bad),
        }
    }
}

const MAGIC: [u8; 8] = *b"CVMMSTAT";
const VERSION: u32 = 1;
/// Magic, version, payload length, CRC32.
const HEADER_BYTES: usize = 8 + 4 + 4 + 4;
const DEVICE_BYTES: usize = 8;
const PAYLOAD_BYTES: usize = size_of::<kvm_regs>() + size_of::<kvm_sregs>() + DEVICE_BYTES;

/// The blob of `cpu` and `device`.
pub fn encode(cpu: &CpuState, device: &ProgressDevice) -> Vec<u8> {
    let mut payload = Vec::with_capacity(PAYLOAD_BYTES);
    payload.extend_from_slice(cpu.regs.as_bytes());
    payload.extend_from_slice(cpu.sregs.as_bytes());
    payload.extend_from_slice(&device.passes.to_le_bytes());
    payload.extend_from_slice(&u32::from(device.done).to_le_bytes());
    let mut blob = Vec::with_capacity(HEADER_BYTES + PAYLOAD_BYTES);
    blob.extend_from_slice(&MAGIC);
    blob.extend_from_slice(&VERSION.to_le_bytes());
    blob.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    blob.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    blob.extend_from_slice(&payload);
    blob
}

/// Checks and decodes a blob made by [`encode`].
pub fn decode(blob: &[u8]) -> Result<(CpuState, ProgressDevice), StateError> {
    let expected = HEADER_BYTES + PAYLOAD_BYTES;
    if blob.len() != expected {
        return Err(StateError::Length { got: blob.len(), expected });
    }
    let word = |at: usize| u32::from_le_bytes([blob[at], blob[at + 1], blob[at + 2], blob[at + 3]]);
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&blob[..8]);
    if magic != MAGIC {
        return Err(StateError::Magic { got: magic });
    }
    if word(8) != VERSION {
        return Err(StateError::Version { got: word(8), supported: VERSION });
    }
    if word(12) as usize != PAYLOAD_BYTES {
        return Err(StateError::Length { got: word(12) as usize + HEADER_BYTES, expected });
    }
    let payload = &blob[HEADER_BYTES..];
    let computed = crc32fast::hash(payload);
    if word(16) != computed {
        return Err(StateError::Crc { got: word(16), computed });
    }
    let (regs, rest) = payload.split_at(size_of::<kvm_regs>());
    let (sregs, device) = rest.split_at(size_of::<kvm_sregs>());
    let len = |got| StateError::Length { got, expected };
    let cpu = CpuState {
        regs: kvm_regs::read_from_bytes(regs).map_err(|_| len(blob.len()))?,
        sregs: kvm_sregs::read_from_bytes(sregs).map_err(|_| len(blob.len()))?,
    };
    let field = |at: usize| {
        u32::from_le_bytes([device[at], device[at + 1], device[at + 2], device[at + 3]])
    };
    Ok((cpu, ProgressDevice { passes: field(0), done: field(4) != 0 }))
}
