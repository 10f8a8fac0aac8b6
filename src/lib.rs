#![warn(missing_docs)]
//! hybridmig: live migration of KVM virtual machines.
//!
//! The crate follows a page's journey from the source host to the destination host: the
//! engines ([`source`], [`dest`]) decide what crosses, [`wire`] encodes it, [`session`] opens
//! and authenticates the connections ([`secure`]), [`transport`] carries the bulk and urgent
//! streams on [`ring`] (io_uring), and the drivers ([`driver`]) run the engines on real
//! sockets or, in [`sim`], on a seeded simulated link. A VMM embeds it through [`facade`] and
//! the trait of [`embed`]; [`control`] is the operator's channel. With the default features
//! the crate also has the built-in VMM (`vm`) and the command's hosts (`migration`).

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
