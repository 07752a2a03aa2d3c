//! Dialing a peer: resolve its address, connect with QUIC and TLS under the mesh certificate, then
//! `Hello`, all within one deadline.

use std::sync::Arc;
use std::time::Duration;

use klf_security::tls;
use quinn::Endpoint;

use super::actor::Connected;
use super::error::{DialError, TransportError};
use super::handshake::{peer_identity, say_hello};
use super::shared::Shared;

/// How long a dial (resolution, QUIC + TLS handshake, `Hello`) may take. A peer on the same network
/// answers in milliseconds; one that does not answer within 2 s is treated as down, and the
/// requests waiting for it fail fast instead of piling up.
pub(super) const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Dials `addr`, checks the peer's mesh certificate and runs `Hello`.
pub(super) async fn dial(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    addr: &str,
    shared: &Shared,
) -> Result<Connected, TransportError> {
    tokio::time::timeout(DIAL_TIMEOUT, connect(endpoint, config, addr, shared))
        .await
        .unwrap_or_else(|_| {
            Err(TransportError::unreachable(
                addr,
                DialError::Timeout(DIAL_TIMEOUT),
            ))
        })
}

async fn connect(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    addr: &str,
    shared: &Shared,
) -> Result<Connected, TransportError> {
    let unreachable = |cause| TransportError::unreachable(addr, cause);
    let socket = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| unreachable(DialError::Resolve(Arc::new(e))))?
        .next()
        .ok_or_else(|| unreachable(DialError::NoAddress))?;
    let server_name = tls::server_name();
    let conn = endpoint
        .connect_with(config, socket, &server_name.to_str())
        .map_err(|e| unreachable(DialError::Connect(e)))?
        .await
        .map_err(|e| unreachable(DialError::Handshake(e)))?;
    let identity = peer_identity(&conn)?;
    let version = say_hello(&conn, shared).await?;
    Ok(Connected {
        conn,
        identity,
        version,
    })
}
