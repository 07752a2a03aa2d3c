//! Functions: packages, the sandbox, instances.

pub mod instances;
pub mod native;
pub mod package;
pub mod sandbox;
