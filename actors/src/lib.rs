//! A KLF node as a tree of ractor actors, and the domain logic each actor owns.
//!
//! Layers, top down (imports only go down): `node` (assembles a running node) → `mesh` (transport,
//! membership, join) → `security`. Later issues add registry, placement, functions, router, chef and
//! ledger beside them.

pub mod functions;
pub mod mesh;
pub mod node;
pub mod placement;
pub mod registry;
pub mod security;
pub mod store;
