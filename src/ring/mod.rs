//! ring (placeholder until this module lands).
