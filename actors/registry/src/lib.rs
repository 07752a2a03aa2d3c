//! The registry: the replicated catalog of function releases and deployments.

pub mod actor;
pub mod artifact;
pub mod catalog;

pub use actor::{Registry, RegistryArgs, RegistryError, RegistryMsg};
pub use catalog::{
    AuditFinding, Canary, Catalog, DependencyError, Deployment, PerfRecord, PublishConflict,
    Record, Release, Versioned, Yank,
};
