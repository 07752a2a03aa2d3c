//! Functions: the package contract, the sandbox that runs a function (QuickJS with `klf:base` and
//! the host capabilities), native built-ins, and the static analysis every deploy path runs.

pub mod analysis;
pub mod http;
pub mod native;
pub mod package;
pub mod perf;
pub mod sandbox;
