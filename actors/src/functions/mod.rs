//! Functions: packages, the sandbox, instances.

pub mod instances;
pub mod package;
pub mod sandbox;
