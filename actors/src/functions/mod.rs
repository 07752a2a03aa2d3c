//! Functions: packages, the sandbox, instances.

pub mod package;
pub mod sandbox;
