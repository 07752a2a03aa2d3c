//! A KLF node as a tree of ractor actors, and the domain logic each actor owns.
//!
//! Layers, top down (imports only go down): `node` (assembles a running node) → `router` →
//! `placement`, `registry`, `functions` → `mesh` (transport, membership, join) → `security`, `store`.
//! Where a lower layer needs a higher one (a function's `ctx.call` needs the router) it goes through
//! a trait the lower layer defines (`functions::sandbox::Host`).

pub mod chef;
pub mod functions;
pub mod ingredients;
pub mod ledger;
pub mod mesh;
pub mod model;
pub mod node;
pub mod placement;
pub mod registry;
pub mod router;
pub mod security;
pub mod store;
