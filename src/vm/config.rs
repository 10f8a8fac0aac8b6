//! What the caller asks for: guest size, vCPU count and the workload.
//!
//! Values enter from the CLI (`hybridmig run`) or from the migration engines, are checked by
//! [`VmConfig::validate`], and leave as the numbers the layout and the guest code are built from.

use std::fmt;
use std::str::FromStr;

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u32 = 4;
/// Granularity of the workload memory: the identity map uses 2 MiB pages.
pub const MEM_ALIGN_BYTES: u64 = 2 << 20;
/// Largest workload memory accepted (the page tables for it fit in the system region).
pub const MAX_MEM_BYTES: u64 = 128 << 30;
/// Highest accepted pace; keeps the guest's `elapsed * pace / tsc_hz` division in range.
pub const MAX_PACE_OPS_PER_SEC: u64 = 1 << 30;

/// Errors in a configuration or in a size/workload string.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ConfigError {
    /// The vCPU count is 0 or above [`MAX_VCPUS`].
    #[error("vcpus must be 1..={MAX_VCPUS}, got {vcpus}")]
    Vcpus {
        /// The requested count.
        vcpus: u32,
    },
    /// The memory size is not a positive multiple of 2 MiB per vCPU or is too large.
    #[error("mem_bytes {mem_bytes} must be a multiple of 2 MiB, at least 2 MiB per vCPU ({vcpus} vCPUs) and at most {MAX_MEM_BYTES}")]
    MemSize {
        /// The requested size.
        mem_bytes: u64,
        /// The requested vCPU count.
        vcpus: u32,
    },
    /// A fraction is outside 0..=1 or not a number.
    #[error("{name} must be within 0..=1, got {value}")]
    Fraction {
        /// Which parameter.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// The pace is zero or above [`MAX_PACE_OPS_PER_SEC`].
    #[error("pace must be 1..={MAX_PACE_OPS_PER_SEC} ops/s, got {pace}")]
    Pace {
        /// The value given.
        pace: u64,
    },
    /// A size string such as `256M` could not be parsed.
    #[error("cannot parse size {text:?}: expected a number with an optional K, M, G or T suffix")]
    SizeSyntax {
        /// The text given.
        text: String,
    },
    /// A workload name is unknown.
    #[error("unknown workload {name:?}: expected scan, hotcold, random, seqread or idle")]
    WorkloadName {
        /// The text given.
        name: String,
    },
}

/// The guest program a VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// Increment one byte in every 4 KiB page of the slice, over and over (op = one page).
    Scan,
    /// Reads and writes with a hot set and a write-hot subset (op = one 8-byte access).
    HotCold,
    /// Uniform random 8-byte writes over the slice (op = one write).
    Random,
    /// Streaming reads over the slice folded into a checksum (op = one page).
    SeqRead,
    /// Fill the slice once (half of it zero pages), then spin on a counter (op = one spin).
    Idle,
}

impl WorkloadKind {
    /// Ops a migration runs when none is given: a few seconds of guest work on this kind of
    /// machine, so a migration after a second finds the guest still running.
    pub fn default_migration_ops(self) -> u64 {
        match self {
            WorkloadKind::Scan => 40_000_000,
            WorkloadKind::HotCold => 20_000_000,
            WorkloadKind::Random => 20_000_000,
            WorkloadKind::SeqRead => 8_000_000,
            WorkloadKind::Idle => 4_000_000_000,
        }
    }

    /// All kinds, in a fixed order (tests iterate over it).
    pub const ALL: [WorkloadKind; 5] = [
        WorkloadKind::Scan,
        WorkloadKind::HotCold,
        WorkloadKind::Random,
        WorkloadKind::SeqRead,
        WorkloadKind::Idle,
    ];

    /// The CLI name of the kind.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Scan => "scan",
            WorkloadKind::HotCold => "hotcold",
            WorkloadKind::Random => "random",
            WorkloadKind::SeqRead => "seqread",
            WorkloadKind::Idle => "idle",
        }
    }

    /// Numeric code stored in the guest parameter block.
    pub(crate) fn code(self) -> u64 {
        match self {
            WorkloadKind::Scan => 1,
            WorkloadKind::HotCold => 2,
            WorkloadKind::Random => 3,
            WorkloadKind::SeqRead => 4,
            WorkloadKind::Idle => 5,
        }
    }

    /// Whether the VMM pre-fills the data memory (text-like and random pages) in `Vm::new`.
    pub(crate) fn host_prefilled(self) -> bool {
        matches!(self, WorkloadKind::HotCold | WorkloadKind::SeqRead)
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WorkloadKind {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkloadKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| ConfigError::WorkloadName { name: s.to_string() })
    }
}

/// The workload and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    /// Which guest program.
    pub kind: WorkloadKind,
    /// Seed of every pseudo-random choice (fill, access pattern, hot set placement).
    pub seed: u64,
    /// Ops per VM after which the guest digests its memory and stops; `None` runs forever.
    /// The ops are split over the vCPUs (vCPU i gets `ops / vcpus`, the first `ops % vcpus`
    /// vCPUs one more).
    pub ops: Option<u64>,
    /// Cap on ops per second, per vCPU.
    pub pace_ops_per_sec: Option<u64>,
    /// Size of the hot set over the whole VM, MiB (hotcold only).
    pub hot_mib: u64,
    /// Fraction of ops that go to the hot set (hotcold only).
    pub hot_frac: f64,
    /// Fraction of ops that are writes (hotcold only).
    pub write_frac: f64,
}

impl WorkloadSpec {
    /// A spec with the documented defaults (W = 64 MiB, p = 0.95, w = 0.2, no op limit).
    pub fn new(kind: WorkloadKind, seed: u64) -> WorkloadSpec {
        WorkloadSpec {
            kind,
            seed,
            ops: None,
            pace_ops_per_sec: None,
            hot_mib: 64,
            hot_frac: 0.95,
            write_frac: 0.2,
        }
    }
}

/// Everything needed to build a VM (the source and the destination build the same layout).
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    /// Workload memory, bytes (the 2 MiB system region comes on top).
    pub mem_bytes: u64,
    /// Number of vCPUs, 1..=4.
    pub vcpus: u32,
    /// The guest program.
    pub workload: WorkloadSpec,
}

impl VmConfig {
    /// Checks every limit; the VM constructors call it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus { vcpus: self.vcpus });
        }
        let m = self.mem_bytes;
        if m == 0
            || m % MEM_ALIGN_BYTES != 0
            || m > MAX_MEM_BYTES
            || m < u64::from(self.vcpus) * MEM_ALIGN_BYTES
        {
            return Err(ConfigError::MemSize { mem_bytes: m, vcpus: self.vcpus });
        }
        let w = &self.workload;
        for (name, value) in [("hot_frac", w.hot_frac), ("write_frac", w.write_frac)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::Fraction { name, value });
            }
        }
        if let Some(pace) = w.pace_ops_per_sec {
            if pace == 0 || pace > MAX_PACE_OPS_PER_SEC {
                return Err(ConfigError::Pace { pace });
            }
        }
        Ok(())
    }
}

/// Parses `256M`, `1G`, `4096M`, `64K`, `1T` or a plain byte count (binary units).
pub fn parse_size(text: &str) -> Result<u64, ConfigError> {
    let err = || ConfigError::SizeSyntax { text: text.to_string() };
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(err()),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| err())?;
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096m"), Ok(4096 << 20));
        assert_eq!(parse_size("12345"), Ok(12345));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn kinds_round_trip() {
        for k in WorkloadKind::ALL {
            assert_eq!(k.to_string().parse::<WorkloadKind>(), Ok(k));
        }
        assert!("nope".parse::<WorkloadKind>().is_err());
    }

    #[test]
    fn validation_rejects_bad_values() {
        let ok = VmConfig {
            mem_bytes: 64 << 20,
            vcpus: 2,
            workload: WorkloadSpec::new(WorkloadKind::Scan, 1),
        };
        assert_eq!(ok.validate(), Ok(()));
        let mut c = ok.clone();
        c.vcpus = 5;
        assert!(matches!(c.validate(), Err(ConfigError::Vcpus { .. })));
        let mut c = ok.clone();
        c.mem_bytes = 3 << 20;
        assert!(matches!(c.validate(), Err(ConfigError::MemSize { .. })));
        let mut c = ok.clone();
        c.workload.hot_frac = 1.5;
        assert!(matches!(c.validate(), Err(ConfigError::Fraction { name: "hot_frac", .. })));
        let mut c = ok;
        c.workload.pace_ops_per_sec = Some(0);
        assert!(matches!(c.validate(), Err(ConfigError::Pace { .. })));
    }
}
