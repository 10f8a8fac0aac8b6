#![warn(missing_docs)]
//! hybridmig: live migration of KVM virtual machines.
//!
//! The crate follows a page's journey from the source host to the destination host:
//! [`vm`] runs the guest, [`wire`] encodes what crosses, [`ring`] drives io_uring,
//! [`transport`] carries the bulk and urgent streams.

pub mod control;
pub mod dest;
pub mod driver;
pub mod embed;
pub mod facade;
pub mod host_check;
pub mod memory;
pub mod metrics;
#[cfg(feature = "cli")]
pub mod migration;
pub mod ports;
pub mod ring;
pub mod secure;
pub mod session;
pub mod sim;
pub mod source;
pub mod transport;
#[cfg(feature = "vmm")]
pub mod vm;
pub mod wire;
