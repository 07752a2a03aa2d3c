//! The registry: the replicated catalog of function releases and deployments.

pub mod artifact;
pub mod catalog;

pub use catalog::{
    Catalog, DependencyError, Deployment, PublishConflict, Record, Release, Versioned,
};
