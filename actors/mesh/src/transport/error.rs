//! What can go wrong in the transport, with the cause kept as a typed `source`.
//!
//! [`TransportError`] is `Clone` because one failed dial answers every request that was waiting
//! for it; causes that are not `Clone` (I/O and security errors) are shared behind an `Arc`.

use std::sync::Arc;
use std::time::Duration;

use klf_proto::{ErrorCode, ProtoError};
use klf_security::SecurityError;

use super::handshake::HelloRefusal;
use super::join_gate::JoinRefusal;

/// Errors of the transport.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// No connection to `addr` could be made. `reason` is the cause in words (callers show it and
    /// search it); `cause` is the same cause, typed.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        addr: String,
        reason: String,
        #[source]
        cause: DialError,
    },
    #[error("{addr} is unreachable and backing off; next dial in {retry_in:?}")]
    BackingOff { addr: String, retry_in: Duration },
    #[error("connection failed: {0}")]
    Connection(#[source] quinn::ConnectionError),
    #[error("stream failed: {0}")]
    Stream(#[source] StreamError),
    #[error("protocol error: {0}")]
    Proto(#[from] ProtoError),
    #[error("the peer refused ({code:?}): {message}")]
    Remote { code: ErrorCode, message: String },
    /// The peer answered, but not with the frame the exchange calls for.
    #[error("expected {expected}, got {got}")]
    UnexpectedFrame {
        expected: &'static str,
        got: &'static str,
    },
    /// This node refused a dialer's `Hello` (the dialer got an `Error` frame saying why).
    #[error("refused the peer's Hello: {0}")]
    HelloRefused(#[from] HelloRefusal),
    /// This node refused a connection on the join ALPN (the client's connection was closed with
    /// the reason).
    #[error("refused a join connection: {0}")]
    JoinRefused(#[from] JoinRefusal),
    #[error("security: {0}")]
    Security(#[source] Arc<SecurityError>),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the transport is shutting down")]
    ShuttingDown,
}

impl TransportError {
    /// A dial to `addr` that failed for `cause`.
    pub fn unreachable(addr: impl Into<String>, cause: DialError) -> Self {
        Self::Unreachable {
            addr: addr.into(),
            reason: cause.to_string(),
            cause,
        }
    }
}

impl From<SecurityError> for TransportError {
    fn from(e: SecurityError) -> Self {
        Self::Security(Arc::new(e))
    }
}

/// Why a dial found no connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DialError {
    #[error("cannot resolve: {0}")]
    Resolve(#[source] Arc<std::io::Error>),
    #[error("the name resolves to no address")]
    NoAddress,
    #[error(transparent)]
    Connect(quinn::ConnectError),
    #[error(transparent)]
    Handshake(quinn::ConnectionError),
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
    #[error("too many requests waiting for the connection (at most {max})")]
    QueueFull { max: usize },
    #[error("partitioned (fault injection)")]
    Partitioned,
}

/// Why reading or writing a frame on a stream failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamError {
    #[error("reading: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("writing: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("finishing: {0}")]
    Finish(#[from] quinn::ClosedStream),
}

impl From<StreamError> for TransportError {
    fn from(e: StreamError) -> Self {
        Self::Stream(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn unreachable_keeps_its_cause_in_words_and_typed() {
        let error = TransportError::unreachable("10.0.0.1:7000", DialError::NoAddress);
        assert_eq!(
            error.to_string(),
            "cannot reach 10.0.0.1:7000: the name resolves to no address"
        );
        let source = error.source().map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("the name resolves to no address"));
    }

    #[test]
    fn security_errors_stay_reachable_as_the_source() {
        let error = TransportError::from(SecurityError::PeerCertificate("no SAN".into()));
        assert!(error.to_string().contains("no SAN"), "{error}");
        assert!(error.source().is_some());
    }

    #[test]
    fn an_io_cause_survives_a_clone() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such host");
        let error = TransportError::unreachable("x:1", DialError::Resolve(Arc::new(io)));
        let copy = error.clone();
        let root = copy.source().and_then(|dial| dial.source());
        assert_eq!(
            root.map(ToString::to_string).as_deref(),
            Some("no such host")
        );
    }
}
