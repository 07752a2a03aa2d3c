//! The `Hello` → `HelloAck` exchange that opens every member connection, and who the peer is.
//!
//! The decision (is this `Hello` acceptable, and at which version) is [`check_hello`], a pure
//! function of our versions, our mesh, the `Hello` and the node id the peer's certificate proves;
//! the async halves below only read, write and close.

use std::time::Duration;

use klf_proto::{ErrorCode, Frame, Hello, HelloAck, ProtoError, ProtocolVersion};
use klf_security::{PeerIdentity, SecurityError};
use quinn::Connection;

use super::error::TransportError;
use super::shared::Shared;
use super::{close, close_code};
use crate::stream::{exchange, read_frame, write_frame};

/// How long a refused dialer gets to receive the `Error` frame before the connection closes.
const REFUSAL_GRACE: Duration = Duration::from_millis(200);

/// Why this node refuses a dialer's first frame. Each refusal maps to the wire code the dialer
/// receives ([`HelloRefusal::code`]) and its message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloRefusal {
    /// The first frame decoded, but it is not a `Hello`.
    #[error("the first frame must be Hello, got {got}")]
    NotHello { got: &'static str },
    /// The first frame does not decode.
    #[error(transparent)]
    Undecodable(ProtoError),
    /// The dialer belongs to another mesh.
    #[error("this node belongs to mesh {ours}, not {theirs}")]
    WrongMesh { ours: String, theirs: String },
    /// The `Hello` names another node than the dialer's certificate, which is the authority.
    #[error("Hello claims node {claimed} but the certificate is node {certified}")]
    NodeIdMismatch { claimed: String, certified: String },
    /// The two nodes share no protocol major version.
    #[error(transparent)]
    Incompatible(ProtoError),
}

impl HelloRefusal {
    /// The code of the `Error` frame that tells the dialer.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotHello { .. } => ErrorCode::Malformed,
            Self::Undecodable(e) | Self::Incompatible(e) => e.code(),
            Self::WrongMesh { .. } | Self::NodeIdMismatch { .. } => ErrorCode::Unauthorized,
        }
    }
}

/// Decides on a dialer's `Hello`: the version both will speak, or why not.
///
/// The mesh is checked first, so a node of another mesh learns nothing more about this one; then
/// the claimed node id against `certified_node_id` (read from the certificate TLS verified); then
/// the versions.
pub fn check_hello(
    ours: &[ProtocolVersion],
    mesh_id: &str,
    hello: &Hello,
    certified_node_id: &str,
) -> Result<ProtocolVersion, HelloRefusal> {
    if hello.mesh_id != mesh_id {
        return Err(HelloRefusal::WrongMesh {
            ours: mesh_id.to_string(),
            theirs: hello.mesh_id.clone(),
        });
    }
    if hello.node_id != certified_node_id {
        return Err(HelloRefusal::NodeIdMismatch {
            claimed: hello.node_id.clone(),
            certified: certified_node_id.to_string(),
        });
    }
    klf_proto::negotiate(ours, &hello.protocol_versions).map_err(HelloRefusal::Incompatible)
}

/// The `Hello` a dialer opens with: every version this build speaks.
pub(super) fn hello(node_id: &str, mesh_id: &str) -> Frame {
    Frame::Hello(Hello {
        protocol_versions: klf_proto::SUPPORTED_VERSIONS.to_vec(),
        node_id: node_id.to_string(),
        mesh_id: mesh_id.to_string(),
        features: Vec::new(),
    })
}

/// The version a `HelloAck` settles on; any other answer ends the handshake.
pub(super) fn acked_version(answer: Frame) -> Result<ProtocolVersion, TransportError> {
    match answer {
        Frame::HelloAck(ack) => Ok(ack.version),
        other => Err(TransportError::UnexpectedFrame {
            expected: "HelloAck",
            got: other.kind_name(),
        }),
    }
}

/// Who the peer is, read from the certificate chain TLS verified.
pub(super) fn peer_identity(conn: &Connection) -> Result<PeerIdentity, TransportError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| {
            SecurityError::PeerCertificate("the peer presented no certificate".into())
        })?;
    let leaf = certs.first().ok_or_else(|| {
        SecurityError::PeerCertificate("the peer presented an empty chain".into())
    })?;
    Ok(PeerIdentity::from_cert(leaf)?)
}

/// The dialer's half: sends `Hello` on the first stream and reads the `HelloAck`. On failure the
/// connection is closed, so the peer does not keep it.
pub(super) async fn say_hello(
    conn: &Connection,
    shared: &Shared,
) -> Result<ProtocolVersion, TransportError> {
    let answer = exchange(
        conn,
        &hello(&shared.node_id, &shared.mesh_id),
        &shared.limits,
    )
    .await;
    let version = answer.and_then(acked_version);
    if let Err(error) = &version {
        close(conn, close_code::HELLO_FAILED, &error.to_string());
    }
    version
}

/// The acceptor's half: reads the dialer's `Hello` from its first stream and answers it with a
/// `HelloAck`, or with an `Error` frame and a closed connection.
pub(super) async fn answer_hello(
    conn: &Connection,
    identity: &PeerIdentity,
    shared: &Shared,
) -> Result<ProtocolVersion, TransportError> {
    let (mut send, mut recv) = conn.accept_bi().await.map_err(TransportError::Connection)?;
    let checked = match read_frame(&mut recv, &shared.limits).await {
        Ok(Frame::Hello(hello)) => check_hello(
            klf_proto::SUPPORTED_VERSIONS,
            &shared.mesh_id,
            &hello,
            &identity.node_id,
        ),
        Ok(other) => Err(HelloRefusal::NotHello {
            got: other.kind_name(),
        }),
        Err(TransportError::Proto(e)) => Err(HelloRefusal::Undecodable(e)),
        Err(e) => return Err(e),
    };
    match checked {
        Ok(version) => {
            let ack = Frame::HelloAck(HelloAck {
                version,
                node_id: shared.node_id.clone(),
                features: Vec::new(),
            });
            write_frame(&mut send, &ack, &shared.limits).await?;
            Ok(version)
        }
        Err(refusal) => {
            let message = refusal.to_string();
            let frame = Frame::error(refusal.code(), message.clone());
            // The refusal is the error to report; a failure to deliver it changes nothing.
            let _ = write_frame(&mut send, &frame, &shared.limits).await;
            // Give the error frame a moment to reach the peer before the connection closes.
            let _ = tokio::time::timeout(REFUSAL_GRACE, send.stopped()).await;
            close(conn, close_code::HELLO_FAILED, &message);
            Err(refusal.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn v(major: u16, minor: u16) -> ProtocolVersion {
        ProtocolVersion { major, minor }
    }

    fn hello_from(node_id: &str, mesh_id: &str, versions: &[ProtocolVersion]) -> Hello {
        Hello {
            protocol_versions: versions.to_vec(),
            node_id: node_id.into(),
            mesh_id: mesh_id.into(),
            features: vec!["future".into()],
        }
    }

    #[test]
    fn a_hello_from_our_mesh_with_the_certified_id_gets_the_negotiated_version() {
        let hello = hello_from("n1", "mesh-a", &[v(1, 3), v(2, 0)]);
        assert_eq!(check_hello(&[v(1, 1)], "mesh-a", &hello, "n1"), Ok(v(1, 1)));
    }

    #[test]
    fn a_hello_from_another_mesh_is_unauthorized_and_names_both_meshes() {
        let hello = hello_from("n1", "mesh-b", &[v(1, 0)]);
        let refusal = check_hello(&[v(1, 0)], "mesh-a", &hello, "n1").unwrap_err();
        assert_eq!(
            refusal,
            HelloRefusal::WrongMesh {
                ours: "mesh-a".into(),
                theirs: "mesh-b".into()
            }
        );
        assert_eq!(refusal.code(), ErrorCode::Unauthorized);
        assert_eq!(
            refusal.to_string(),
            "this node belongs to mesh mesh-a, not mesh-b"
        );
    }

    #[test]
    fn a_hello_claiming_another_node_than_its_certificate_is_unauthorized() {
        let hello = hello_from("n-claimed", "mesh-a", &[v(1, 0)]);
        let refusal = check_hello(&[v(1, 0)], "mesh-a", &hello, "n-cert").unwrap_err();
        assert_eq!(
            refusal,
            HelloRefusal::NodeIdMismatch {
                claimed: "n-claimed".into(),
                certified: "n-cert".into()
            }
        );
        assert_eq!(refusal.code(), ErrorCode::Unauthorized);
        assert!(refusal.to_string().contains("certificate is node n-cert"));
    }

    #[test]
    fn a_hello_with_no_common_major_is_incompatible() {
        let hello = hello_from("n1", "mesh-a", &[v(99, 0)]);
        let refusal = check_hello(&[v(1, 0)], "mesh-a", &hello, "n1").unwrap_err();
        assert!(
            matches!(
                refusal,
                HelloRefusal::Incompatible(ProtoError::Incompatible { .. })
            ),
            "{refusal:?}"
        );
        assert_eq!(refusal.code(), ErrorCode::Incompatible);
    }

    #[test]
    fn the_mesh_is_checked_before_the_identity_and_the_versions() {
        // Wrong on every count: only the mesh is reported, so a stranger learns nothing more.
        let hello = hello_from("someone", "mesh-b", &[v(99, 0)]);
        let refusal = check_hello(&[v(1, 0)], "mesh-a", &hello, "n1").unwrap_err();
        assert!(
            matches!(refusal, HelloRefusal::WrongMesh { .. }),
            "{refusal:?}"
        );
        // Right mesh, wrong identity and versions: the identity comes next.
        let hello = hello_from("someone", "mesh-a", &[v(99, 0)]);
        let refusal = check_hello(&[v(1, 0)], "mesh-a", &hello, "n1").unwrap_err();
        assert!(
            matches!(refusal, HelloRefusal::NodeIdMismatch { .. }),
            "{refusal:?}"
        );
    }

    #[test]
    fn a_first_frame_that_is_not_hello_is_malformed() {
        let refusal = HelloRefusal::NotHello { got: "Ping" };
        assert_eq!(refusal.code(), ErrorCode::Malformed);
        assert_eq!(
            refusal.to_string(),
            "the first frame must be Hello, got Ping"
        );
    }

    #[test]
    fn an_undecodable_first_frame_keeps_the_codec_error_and_its_code() {
        let error = ProtoError::FrameTooLarge {
            len: 1 << 30,
            max: 1 << 24,
        };
        let refusal = HelloRefusal::Undecodable(error.clone());
        assert_eq!(refusal.code(), ErrorCode::FrameTooLarge);
        assert_eq!(refusal.to_string(), error.to_string());
        let refusal = HelloRefusal::Undecodable(ProtoError::UnknownFrameKind { kind: 7 });
        assert_eq!(refusal.code(), ErrorCode::UnknownFrameKind);
    }

    #[test]
    fn the_dialers_hello_offers_every_supported_version() {
        let Frame::Hello(hello) = hello("n1", "mesh-a") else {
            panic!("not a Hello");
        };
        assert_eq!(hello.protocol_versions, klf_proto::SUPPORTED_VERSIONS);
        assert_eq!(
            check_hello(klf_proto::SUPPORTED_VERSIONS, "mesh-a", &hello, "n1"),
            Ok(klf_proto::SUPPORTED_VERSIONS[0])
        );
    }

    #[test]
    fn a_hello_ack_settles_the_version_and_anything_else_is_unexpected() {
        let ack = Frame::HelloAck(HelloAck {
            version: v(1, 0),
            node_id: "n2".into(),
            features: vec![],
        });
        assert!(matches!(acked_version(ack), Ok(version) if version == v(1, 0)));
        let error = acked_version(Frame::Ping(klf_proto::Ping { payload: vec![] })).unwrap_err();
        assert!(
            matches!(
                error,
                TransportError::UnexpectedFrame {
                    expected: "HelloAck",
                    got: "Ping"
                }
            ),
            "{error:?}"
        );
    }
}
