//! hybridmig: live migration of KVM virtual machines.
//!
//! The crate follows a page's journey from the source host to the destination host:
//! [`vm`] runs the guest, [`wire`] encodes what crosses, [`ring`] drives io_uring,
//! [`transport`] carries the bulk and urgent streams.

pub mod dest;
pub mod driver;
pub mod embed;
pub mod host_check;
pub mod memory;
pub mod metrics;
pub mod migration;
pub mod ports;
pub mod ring;
pub mod secure;
pub mod session;
pub mod sim;
pub mod source;
pub mod transport;
pub mod vm;
pub mod wire;
