//! Helpers shared by the integration tests and benchmarks: meshes of in-process nodes (the
//! library's own [`LocalMesh`]), meshes of `klf` processes, and waiting for a condition with a
//! deadline (never a fixed sleep).

pub mod processes;

pub use klf_actors::node::{LocalMesh, LocalMesh as InProcessMesh, wait_until};
