//! The `klf-join/1` ALPN: the one door a client may open without a certificate from the mesh CA.
//!
//! Anyone who can reach the port can knock, so everything behind the door is bounded before the
//! client has proven anything:
//! - how often: a token bucket per source address ([`JOIN_RATE`]), checked before any stream is
//!   read, so a flood costs one TLS handshake per attempt and nothing more;
//! - how much: a join request may be at most [`klf_proto::Limits::JOIN_MAX_FRAME_LEN`] bytes,
//!   refused from its header before anything is allocated for it;
//! - how long: the whole request must arrive within [`JOIN_READ_DEADLINE`], so a client that
//!   sends a header and then nothing cannot hold a connection open.

use std::time::{Duration, Instant};

use klf_proto::{ErrorCode, Frame, Limits};
use quinn::{Connection, VarInt};

use super::error::TransportError;
use super::rate_limit::{RatePolicy, RateRefusal};
use super::shared::Shared;
use super::{close, close_code};
use crate::stream::{error_frame_for, read_frame, write_frame};

/// How long a join client has, from the end of its TLS handshake, to deliver its whole request.
///
/// A request is under 2 KiB: one or two round trips, even on a slow WAN link. 5 s is ample for
/// that, frees the connection of a client that stalls soon, and leaves an honest client most of
/// its own 10 s join timeout for the answer.
pub const JOIN_READ_DEADLINE: Duration = Duration::from_secs(5);

/// How often one source may try to join: 8 attempts at once, then one a second, for up to 4096
/// sources (about 256 KiB).
///
/// Joins are rare and come from an operator or a scheduler: even a script that adds a rack of
/// nodes from behind one NAT address gets eight at once and one more every second, while a source
/// trying tokens or just burning CPU is held to one attempt a second.
pub const JOIN_RATE: RatePolicy = RatePolicy {
    burst: 8,
    refill_every: Duration::from_secs(1),
    max_sources: 4096,
};

/// How long the node waits for a join client to close after its answer was sent.
const ANSWERED_LINGER: Duration = Duration::from_secs(2);

/// Why this node turned a join connection away before reading a request from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    /// The source made too many join attempts lately.
    #[error("join rate limit: {0}")]
    RateLimited(#[from] RateRefusal),
    /// The client did not deliver a whole request in time.
    #[error("no complete join request within {0:?}; the connection was closed")]
    Deadline(Duration),
}

/// Serves one join request on a `klf-join/1` connection, then lets the client close.
pub(super) async fn serve_join(conn: Connection, shared: &Shared) -> Result<(), TransportError> {
    let remote = conn.remote_address();
    if let Err(refusal) = shared.admit_join_attempt(remote.ip(), Instant::now()) {
        let refusal = JoinRefusal::RateLimited(refusal);
        close(&conn, close_code::JOIN_RATE_LIMITED, &refusal.to_string());
        return Err(refusal.into());
    }
    let read = async {
        let (send, mut recv) = conn.accept_bi().await.map_err(TransportError::Connection)?;
        let request = read_frame(&mut recv, &Limits::join()).await;
        Ok::<_, TransportError>((send, recv, request))
    };
    let (mut send, mut recv, request) = match tokio::time::timeout(JOIN_READ_DEADLINE, read).await {
        Ok(read) => read?,
        Err(_) => {
            let refusal = JoinRefusal::Deadline(JOIN_READ_DEADLINE);
            close(&conn, close_code::JOIN_DEADLINE, &refusal.to_string());
            return Err(refusal.into());
        }
    };
    let answer = match request {
        Ok(Frame::JoinRequest(request)) => match shared.handler.get() {
            Some(handler) => handler.join(request, remote).await,
            None => Frame::error(ErrorCode::Unavailable, "the node is still starting; retry"),
        },
        Ok(other) => Frame::error(
            ErrorCode::Unauthorized,
            format!(
                "only JoinRequest is allowed without a mesh certificate, got {}",
                other.kind_name()
            ),
        ),
        Err(TransportError::Proto(error)) => {
            // Stop the client sending whatever follows (the body behind an oversized header).
            let _ = recv.stop(VarInt::from(error.code().to_u16()));
            error_frame_for(&error)
        }
        Err(error) => return Err(error),
    };
    write_frame(&mut send, &answer, &shared.limits).await?;
    let _ = tokio::time::timeout(ANSWERED_LINGER, conn.closed()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use klf_proto::{JoinRequest, ProtoError};
    use klf_security::credentials::KeyRequest;

    #[test]
    fn a_real_join_request_is_a_small_fraction_of_the_join_limit() {
        let csr = KeyRequest::generate("a-node-name").unwrap();
        let request = Frame::JoinRequest(JoinRequest {
            token_id: [0; 16],
            secret: [0; 32],
            csr_der: csr.csr_der,
            name: "n".repeat(63),
            advertise: "node-17.klf.example.internal:7946".into(),
            api: "node-17.klf.example.internal:8080".into(),
        });
        let bytes = klf_proto::encode(&request, &Limits::join()).unwrap();
        assert!(bytes.len() < 2048, "{} bytes", bytes.len());
    }

    #[test]
    fn the_join_limit_is_far_below_the_mesh_limit() {
        assert_eq!(Limits::join().effective_max(), 64 * 1024);
        assert_eq!(
            Limits::default().effective_max() / Limits::join().effective_max(),
            256
        );
    }

    #[test]
    fn a_refused_join_says_what_happened_and_when_to_retry() {
        let refusal = JoinRefusal::from(RateRefusal::TooFast {
            from: super::super::rate_limit::Source::of([127, 0, 0, 1].into()),
            retry_in: Duration::from_millis(500),
        });
        assert_eq!(
            refusal.to_string(),
            "join rate limit: too many attempts from 127.0.0.1; retry in 500ms"
        );
        assert_eq!(
            JoinRefusal::Deadline(JOIN_READ_DEADLINE).to_string(),
            "no complete join request within 5s; the connection was closed"
        );
    }

    #[test]
    fn the_join_rate_admits_a_burst_of_eight_then_one_a_second() {
        let mut limit = super::super::rate_limit::SourceRateLimit::new(JOIN_RATE);
        let t0 = Instant::now();
        let from = [192, 0, 2, 1].into();
        for _ in 0..8 {
            limit.try_acquire(from, t0).unwrap();
        }
        assert!(limit.try_acquire(from, t0).is_err());
        assert!(limit.try_acquire(from, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn an_oversized_header_is_refused_with_the_join_limit_in_the_message() {
        let [a, b, c, d] = (1u32 << 20).to_be_bytes();
        let error = klf_proto::parse_header([a, b, c, d, 0, 50], &Limits::join()).unwrap_err();
        assert!(matches!(
            error,
            ProtoError::FrameTooLarge { max: 65536, .. }
        ));
        let Frame::Error(frame) = error_frame_for(&error) else {
            panic!("not an error frame");
        };
        assert_eq!(frame.code, ErrorCode::FrameTooLarge);
        assert!(frame.message.contains("65536"), "{}", frame.message);
    }
}
