//! wire (placeholder until this module lands).
