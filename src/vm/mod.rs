//! The small VMM: a KVM VM with 1-4 vCPUs running generated CPL 3 workloads, its devices,
//! and exact state save/restore.
//!
//! Data enters as a [`VmConfig`]; [`Vm::new`] builds guest memory (page tables, code,
//! parameters, data) and vCPUs, [`Vm::start`] runs them on their own threads. The migration
//! engines take memory out through [`Vm::regions`] and [`Vm::harvest_dirty`], and CPU/device
//! state through [`Vm::save_state`] / [`VmState::to_blob`]; on the destination
//! [`Vm::new_incoming`] + [`Vm::restore_state`] put them back. Progress leaves through
//! [`Vm::ops_done`] (counters in guest memory) and the final digest through
//! [`Vm::wait_finished`]. [`run_local`] is the `hybridmig run` command.

pub mod adapter;
pub mod blob;
pub mod config;
pub mod devices;
mod dirtylog;
pub mod error;
pub mod guest;
pub mod layout;
pub mod memory;
pub mod pagemap;
pub mod run;
pub mod setup;
pub mod state;
pub mod vcpu;
pub mod vmm;

/// The dirty set type the VMM harvests into (one bit a guest page, gpa / 4096).
pub use crate::memory::PageBitmap as DirtyBitmap;
pub use adapter::KvmGuest;
pub use config::{parse_size, ConfigError, VmConfig, WorkloadKind, WorkloadSpec};
pub use devices::{ControlVcpu, DeviceState};
pub use error::{VcpuFault, VmError};
pub use guest::digest::{combine_digests, digest_finish, digest_words};
pub use memory::GuestRegion;
pub use run::{measure_pause, run_local, PauseStats, Progress, RunReport};
pub use state::{StateError, VcpuState, VmState};
pub use vcpu::VcpuRun;
pub use vmm::Vm;
