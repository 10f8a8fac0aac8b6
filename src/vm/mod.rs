//! vm (placeholder until this module lands).
