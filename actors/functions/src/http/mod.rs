//! `ctx.http`: what a function may reach outside the mesh and the client that reaches it.
//!
//! - [`policy`]: pure decisions (allow rules of the manifest, address classes, the operator's
//!   CIDR allowances), unit-tested on their own.
//! - [`client`]: the node's HTTP client (reqwest with rustls) applying that policy at connect
//!   time and after every redirect, with the body and time limits of the grant.
//!
//! The sandbox checks the grant and the first URL in Rust before the host is asked (see
//! `sandbox/natives.rs`); the host's client checks again on every hop.

pub mod client;
pub mod policy;

use serde::{Deserialize, Serialize};

pub use client::{HttpClient, HttpCounts, HttpHeader, HttpRequest, HttpResponse};
pub use policy::{AddressPolicy, AllowRule, Cidr};

/// Defaults and bounds of the manifest's `[http]` table.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1 << 20;
pub const MAX_MAX_REQUEST_BYTES: u64 = 16 << 20;
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 4 << 20;
pub const MAX_MAX_RESPONSE_BYTES: u64 = 64 << 20;
pub const DEFAULT_CONCURRENCY: u64 = 16;
pub const MAX_CONCURRENCY: u64 = 1024;
pub const DEFAULT_PER_SECOND: u64 = 100;
pub const MAX_PER_SECOND: u64 = 100_000;
/// Redirects one request follows at most.
pub const MAX_REDIRECTS: usize = 5;

/// The manifest's `[http]` table: where `ctx.http.fetch` may go, and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpGrant {
    /// `allow = ["https://api.example.com/v1/*", …]`.
    pub allow: Vec<AllowRule>,
    /// Largest request body.
    pub max_request_bytes: u64,
    /// Largest response body read; a larger one fails the request.
    pub max_response_bytes: u64,
    /// Requests one instance has in flight at once; more wait for a slot (within the deadline).
    pub concurrency: u64,
    /// Requests per second the function may start on a node; more are refused.
    pub per_second: u64,
}

impl Default for HttpGrant {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            concurrency: DEFAULT_CONCURRENCY,
            per_second: DEFAULT_PER_SECOND,
        }
    }
}

impl HttpGrant {
    /// A grant of `rules` with the default limits (for tests and tools).
    pub fn allowing(rules: &[&str]) -> Result<Self, String> {
        Ok(Self {
            allow: rules
                .iter()
                .map(|r| AllowRule::parse(r))
                .collect::<Result<_, _>>()?,
            ..Self::default()
        })
    }
}
