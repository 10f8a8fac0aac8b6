//! transport (placeholder until this module lands).
