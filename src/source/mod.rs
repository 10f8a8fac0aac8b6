//! The source side of a migration: pre-copy rounds, working-set tracking, the switch-over,
//! the background push and the fault service.

pub mod push;
pub mod workingset;
