//! The interface a VMM implements to be migrated: re-exported from [`crate::ports`], where
//! both engines find it.

pub use crate::ports::vm::{
    host_addr_of, layout_of, page_of_host_addr, DestVm, EmbedError, GuestPages, HostRegion,
    MigratableVm,
};
