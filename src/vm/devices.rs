//! Port-I/O devices: a minimal 16550 serial console and the workload control device.
//!
//! vCPU threads call [`Devices::io_in`] / [`Devices::io_out`] on every `KVM_EXIT_IO`; the
//! devices keep register state that is part of the saved VM state ([`DeviceState`]). Neither
//! device writes guest memory (there is no DMA), so they add nothing to the VMM dirty set.

/// Port numbers.
pub mod ports {
    /// First port of the serial console (COM1).
    pub const SERIAL_BASE: u16 = 0x3f8;
    /// Control device: the guest's phase (init, fill, ops, digest).
    pub const PHASE: u16 = 0x510;
    /// Control device: low 32 bits of the vCPU digest (latched).
    pub const DIGEST_LO: u16 = 0x511;
    /// Control device: high 32 bits of the vCPU digest (completes it).
    pub const DIGEST_HI: u16 = 0x512;
    /// Control device: the vCPU is done; its thread leaves the run loop.
    pub const DONE: u16 = 0x513;
    /// Control device: `in` returns the vCPU's ticket number and advances it (a read with a
    /// side effect, so a replayed `in` is visible; the workloads do not use it).
    pub const TICKET: u16 = 0x514;
}

/// Most bytes of serial output kept (older bytes are dropped).
pub const SERIAL_KEEP_BYTES: usize = 4096;

/// What a port access asks of the vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoAction {
    /// Keep running.
    Continue,
    /// The vCPU reported done with this digest; stop the thread.
    Done(u64),
}

/// Errors of port accesses.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    /// No device at this port.
    #[error("no device at port {port:#x} ({dir}, {len} bytes)")]
    UnknownPort {
        /// The port.
        port: u16,
        /// "in" or "out".
        dir: &'static str,
        /// Access width, bytes.
        len: usize,
    },
    /// The done port was written before a complete digest.
    #[error("vCPU {vcpu} wrote the done port without a complete digest")]
    DoneWithoutDigest {
        /// The vCPU.
        vcpu: u32,
    },
}

/// Register state of the serial console.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SerialState {
    /// Interrupt enable register.
    pub ier: u8,
    /// Line control register (bit 7 = DLAB).
    pub lcr: u8,
    /// Modem control register.
    pub mcr: u8,
    /// Scratch register.
    pub scr: u8,
    /// Divisor latch, low byte.
    pub dll: u8,
    /// Divisor latch, high byte.
    pub dlm: u8,
    /// Bytes the guest wrote (last [`SERIAL_KEEP_BYTES`]).
    pub output: Vec<u8>,
}

/// State of the control device for one vCPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlVcpu {
    /// Last phase written (see `guest::asm::phase`).
    pub phase: u32,
    /// Latched low half of the digest, if written.
    pub digest_lo: Option<u32>,
    /// The complete digest, once both halves arrived.
    pub digest: Option<u64>,
    /// Whether the done port was written.
    pub done: bool,
    /// Next ticket number [`ports::TICKET`] returns.
    pub ticket: u32,
}

/// All device state (saved and restored with the vCPUs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// The serial console.
    pub serial: SerialState,
    /// The control device, one entry per vCPU.
    pub control: Vec<ControlVcpu>,
}

/// The device models of one VM.
#[derive(Debug)]
pub struct Devices {
    state: DeviceState,
}

const LSR_THR_EMPTY: u8 = 0x20;
const LSR_TX_IDLE: u8 = 0x40;
const LCR_DLAB: u8 = 0x80;

impl Devices {
    /// Devices in their reset state for `vcpus` vCPUs.
    pub fn new(vcpus: u32) -> Devices {
        Devices {
            state: DeviceState {
                serial: SerialState::default(),
                control: vec![ControlVcpu::default(); vcpus as usize],
            },
        }
    }

    /// A copy of the device state.
    pub fn save(&self) -> DeviceState {
        self.state.clone()
    }

    /// Replaces the device state.
    pub fn restore(&mut self, state: &DeviceState) {
        self.state = state.clone();
    }

    /// Control state of one vCPU.
    pub fn control(&self, vcpu: u32) -> Option<ControlVcpu> {
        self.state.control.get(vcpu as usize).copied()
    }

    /// Serial output so far.
    pub fn serial_output(&self) -> &[u8] {
        &self.state.serial.output
    }

    /// A guest `in` from `port` into `data`, by vCPU `vcpu`.
    pub fn io_in(&mut self, vcpu: u32, port: u16, data: &mut [u8]) -> Result<(), DeviceError> {
        let value = match port.checked_sub(ports::SERIAL_BASE) {
            Some(reg @ 0..=7) => u32::from(self.serial_read(reg as u8)),
            _ if port == ports::TICKET => {
                let unknown = DeviceError::UnknownPort { port, dir: "in", len: data.len() };
                let ctl = self.state.control.get_mut(vcpu as usize).ok_or(unknown)?;
                ctl.ticket = ctl.ticket.wrapping_add(1);
                ctl.ticket.wrapping_sub(1)
            }
            _ => return Err(DeviceError::UnknownPort { port, dir: "in", len: data.len() }),
        };
        for (d, v) in
            data.iter_mut().zip(value.to_le_bytes().into_iter().chain(std::iter::repeat(0)))
        {
            *d = v;
        }
        Ok(())
    }

    /// A guest `out` of `data` to `port` from vCPU `vcpu`.
    pub fn io_out(&mut self, vcpu: u32, port: u16, data: &[u8]) -> Result<IoAction, DeviceError> {
        if let Some(reg @ 0..=7) = port.checked_sub(ports::SERIAL_BASE) {
            self.serial_write(reg as u8, data.first().copied().unwrap_or(0));
            return Ok(IoAction::Continue);
        }
        let unknown = DeviceError::UnknownPort { port, dir: "out", len: data.len() };
        let ctl = self.state.control.get_mut(vcpu as usize).ok_or(unknown.clone())?;
        let mut word = [0u8; 4];
        let n = data.len().min(4);
        word[..n].copy_from_slice(&data[..n]);
        let value = u32::from_le_bytes(word);
        match port {
            ports::PHASE => ctl.phase = value,
            ports::DIGEST_LO => ctl.digest_lo = Some(value),
            ports::DIGEST_HI => {
                let lo = ctl.digest_lo.ok_or(DeviceError::DoneWithoutDigest { vcpu })?;
                ctl.digest = Some(u64::from(value) << 32 | u64::from(lo));
            }
            ports::DONE => {
                let digest = ctl.digest.ok_or(DeviceError::DoneWithoutDigest { vcpu })?;
                ctl.done = true;
                return Ok(IoAction::Done(digest));
            }
            _ => return Err(unknown),
        }
        Ok(IoAction::Continue)
    }

    fn serial_read(&self, reg: u8) -> u8 {
        let s = &self.state.serial;
        let dlab = s.lcr & LCR_DLAB != 0;
        match reg {
            0 if dlab => s.dll,
            1 if dlab => s.dlm,
            0 => 0,
            1 => s.ier,
            2 => 0x01, // IIR: no interrupt pending
            3 => s.lcr,
            4 => s.mcr,
            5 => LSR_THR_EMPTY | LSR_TX_IDLE,
            6 => 0,
            _ => s.scr,
        }
    }

    fn serial_write(&mut self, reg: u8, value: u8) {
        let s = &mut self.state.serial;
        let dlab = s.lcr & LCR_DLAB != 0;
        match reg {
            0 if dlab => s.dll = value,
            1 if dlab => s.dlm = value,
            0 => {
                if s.output.len() == SERIAL_KEEP_BYTES {
                    s.output.remove(0);
                }
                s.output.push(value);
            }
            1 => s.ier = value & 0x0f,
            3 => s.lcr = value,
            4 => s.mcr = value & 0x1f,
            7 => s.scr = value,
            _ => {} // FCR, LSR, MSR writes have no effect here
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_registers_and_output() {
        let mut d = Devices::new(1);
        d.io_out(0, ports::SERIAL_BASE + 3, &[0x80]).unwrap();
        d.io_out(0, ports::SERIAL_BASE, &[0x0c]).unwrap();
        let mut b = [0u8];
        d.io_in(0, ports::SERIAL_BASE, &mut b).unwrap();
        assert_eq!(b[0], 0x0c);
        d.io_out(0, ports::SERIAL_BASE + 3, &[0x03]).unwrap();
        d.io_out(0, ports::SERIAL_BASE, b"hi").unwrap();
        d.io_out(0, ports::SERIAL_BASE + 7, &[0x5a]).unwrap();
        d.io_in(0, ports::SERIAL_BASE + 7, &mut b).unwrap();
        assert_eq!(b[0], 0x5a);
        d.io_in(0, ports::SERIAL_BASE + 5, &mut b).unwrap();
        assert_eq!(b[0], 0x60);
        assert_eq!(d.serial_output(), b"h");
        let saved = d.save();
        let mut e = Devices::new(1);
        e.restore(&saved);
        assert_eq!(e.save(), saved);
    }

    #[test]
    fn control_protocol() {
        let mut d = Devices::new(2);
        assert_eq!(
            d.io_out(1, ports::DONE, &[0; 4]),
            Err(DeviceError::DoneWithoutDigest { vcpu: 1 })
        );
        d.io_out(1, ports::PHASE, &3u32.to_le_bytes()).unwrap();
        d.io_out(1, ports::DIGEST_LO, &0x1122_3344u32.to_le_bytes()).unwrap();
        d.io_out(1, ports::DIGEST_HI, &0x5566_7788u32.to_le_bytes()).unwrap();
        let got = d.io_out(1, ports::DONE, &[0; 4]).unwrap();
        assert_eq!(got, IoAction::Done(0x5566_7788_1122_3344));
        assert_eq!(d.control(1).map(|c| (c.phase, c.done)), Some((3, true)));
        assert!(matches!(
            d.io_out(0, 0x99, &[1]),
            Err(DeviceError::UnknownPort { port: 0x99, .. })
        ));
        assert!(d.io_in(0, 0x511, &mut [0u8; 4]).is_err());
        let mut t = [0u8; 4];
        d.io_in(1, ports::TICKET, &mut t).unwrap();
        d.io_in(1, ports::TICKET, &mut t).unwrap();
        assert_eq!(u32::from_le_bytes(t), 1);
        assert_eq!(d.control(1).map(|c| c.ticket), Some(2));
    }
}
