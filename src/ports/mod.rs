//! The ports: what the engines need from the world, in one place that both engines use and
//! neither owns.
//!
//! An engine is sans-IO: it never reads a clock, touches a socket or calls into KVM on its own
//! account. Time comes through a [`Clock`], the VM through [`MigratableVm`], guest memory
//! through [`GuestPages`] (built from the VM's [`HostRegion`]s), and placed pages leave through
//! a [`PageSink`], which on the destination is part of the [`DestVm`] port. The io_uring drivers plug in the real ones; the simulator plugs in a
//! [`VirtualClock`], a byte-array VM and an in-memory sink, and so replays a run from its seed.
//! The digest functions live here too, since both ends must compute the same one.

pub mod clock;
pub mod digest;
pub mod sink;
pub mod vm;

pub use clock::{Clock, MonoClock, VirtualClock};
pub use digest::{memory_digest, zero_page_crc};
pub use sink::{PageSink, SinkError};
pub use vm::{
    host_addr_of, layout_of, page_of_host_addr, DestVm, EmbedError, GuestPages, HostRegion,
    MigratableVm,
};
