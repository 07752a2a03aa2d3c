//! A whole KLF node as ractor actors, one crate per layer (see `ARCHITECTURE.md`):
//!
//! ```text
//! klf-chef (Chef, Kitchen: ingredients, ledger, ROI, Monitor)
//!   → klf-node-core (Node: the actors below wired over one data dir)
//!     → klf-router (placement, instances, routing)
//!       → klf-registry (catalog, artifacts) → klf-functions (packages, sandbox, analysis)
//!         → klf-mesh (transport, membership, join) → klf-security, klf-store, klf-model, klf-proto
//! ```
//!
//! Cargo enforces the direction: a crate can only name the crates below it. Where a lower layer
//! must reach a higher one (a function's `ctx.call` needs the router) it defines a trait that the
//! higher layer implements (`klf_functions::sandbox::Host`).
//!
//! This crate is the top: it re-exports each layer under its old module name (so
//! `klf_actors::router::Router` is `klf_router::Router`) and runs several nodes in one process
//! ([`LocalMesh`]) for `klf demo`, the tests and the benchmarks.

pub mod local_mesh;

pub use klf_chef as chef;
pub use klf_chef::ingredients;
pub use klf_chef::ledger;
pub use klf_functions as functions;
pub use klf_mesh as mesh;
pub use klf_model as model;
pub use klf_registry as registry;
pub use klf_router as router;
pub use klf_router::placement;
pub use klf_security as security;
pub use klf_store as store;
pub use local_mesh::{LocalMesh, LocalMeshError, wait_until};

/// A running node and what the layers above the mesh keep on it.
pub mod node {
    pub use klf_node_core::*;
}
