//! The join protocol (ALPN `klf-join/1`): a new node redeems a one-time token at the seed the token
//! names, pinning the mesh CA by fingerprint, and receives a certificate for the key it generated.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use klf_proto::{ErrorCode, Frame, JoinAccept, JoinRequest, Limits, SeedPeer};
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig};
use ractor::ActorRef;
use tracing::{info, warn};

use super::member::MemberId;
use super::membership::{MembershipMsg, alive_members};
use super::stream::exchange;
use super::transport::{TransportError, close_code};
use klf_security::credentials::KeyRequest;
use klf_security::{JoinToken, MeshCa, SecurityError, TokenBook, TokenRejected, tls};

/// How long a joining node waits for the seed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a join failed, in words a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Token(#[from] SecurityError),
    #[error("cannot reach the seed {seed}: {cause}")]
    Unreachable {
        seed: String,
        #[source]
        cause: SeedUnreachable,
    },
    #[error("the seed refused the join: {0}")]
    Refused(String),
    #[error("the seed answered with something unexpected: {0}")]
    Protocol(String),
    #[error("the join's TLS settings do not suit QUIC: {0}")]
    Tls(#[source] NoInitialCipherSuite),
}

/// Why the seed a token names could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum SeedUnreachable {
    #[error("cannot resolve: {0}")]
    Resolve(#[source] std::io::Error),
    #[error("the name resolves to no address")]
    NoAddress,
    #[error("cannot open a local QUIC endpoint: {0}")]
    Bind(#[source] std::io::Error),
    #[error(transparent)]
    Connect(quinn::ConnectError),
    #[error(transparent)]
    Handshake(quinn::ConnectionError),
    #[error(transparent)]
    Exchange(TransportError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Why a seed refused a join request. The message goes back to the joining node verbatim.
#[derive(Debug, thiserror::Error)]
enum AdmitRefusal {
    #[error("this node does not hold the mesh CA key and cannot admit nodes")]
    NoCa,
    #[error("{0}")]
    BadName(String),
    #[error("the join request must name the new node's QUIC address")]
    NoAdvertise,
    #[error(transparent)]
    Token(#[from] TokenRejected),
    #[error("bad certificate request: {0}")]
    Csr(#[source] SecurityError),
}

impl AdmitRefusal {
    /// The code of the `Error` frame that tells the joining node.
    fn code(&self) -> ErrorCode {
        match self {
            Self::NoCa => ErrorCode::Unsupported,
            Self::BadName(_) | Self::NoAdvertise | Self::Csr(_) => ErrorCode::Malformed,
            Self::Token(_) => ErrorCode::TokenRejected,
        }
    }
}

/// Serves join requests on a node that holds the mesh CA.
pub struct JoinService {
    ca: Option<MeshCa>,
    book: Mutex<TokenBook>,
    mesh_id: String,
    mesh_name: String,
    membership: ActorRef<MembershipMsg>,
}

/// A node name: 1 to 63 characters of `a-z 0-9 - _ .`.
pub fn check_node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid node name {name:?}: use 1 to 63 characters of a-z, 0-9, '-', '_' and '.'"
        ))
    }
}

impl JoinService {
    pub fn new(
        ca: Option<MeshCa>,
        book: TokenBook,
        mesh_id: String,
        mesh_name: String,
        membership: ActorRef<MembershipMsg>,
    ) -> Self {
        Self {
            ca,
            book: Mutex::new(book),
            mesh_id,
            mesh_name,
            membership,
        }
    }

    /// Whether this node can admit new nodes (it holds the CA key).
    pub fn holds_ca(&self) -> bool {
        self.ca.is_some()
    }

    /// Issues a join token naming `seed` (this node's advertised address).
    pub fn issue_token(&self, seed: &str, ttl: Duration) -> Result<JoinToken, SecurityError> {
        let ca = self.ca.as_ref().ok_or_else(|| {
            SecurityError::InvalidToken(
                "this node does not hold the mesh CA key; create join tokens on the node that ran `klf init`".into(),
            )
        })?;
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        book.issue(&self.mesh_id, ca.fingerprint(), seed, ttl)
    }

    /// Answers a join request: a `JoinAccept` or an `Error` frame saying why not.
    pub async fn handle(&self, request: JoinRequest, remote: SocketAddr) -> Frame {
        match self.admit(request, remote).await {
            Ok(accept) => Frame::JoinAccept(accept),
            Err(refusal) => {
                warn!(%remote, %refusal, "join refused");
                Frame::error(refusal.code(), refusal.to_string())
            }
        }
    }

    async fn admit(
        &self,
        request: JoinRequest,
        remote: SocketAddr,
    ) -> Result<JoinAccept, AdmitRefusal> {
        let Some(ca) = &self.ca else {
            return Err(AdmitRefusal::NoCa);
        };
        check_node_name(&request.name).map_err(AdmitRefusal::BadName)?;
        if request.advertise.is_empty() {
            return Err(AdmitRefusal::NoAdvertise);
        }
        self.book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .redeem(&request.token_id, &request.secret)?;
        let (node_id, cert) = ca
            .sign_csr(&request.csr_der, &request.name)
            .map_err(AdmitRefusal::Csr)?;
        let seeds = alive_members(&self.membership).await.unwrap_or_default();
        info!(%remote, %node_id, name = %request.name, "admitted a new node");
        Ok(JoinAccept {
            node_id,
            cert_der: cert.to_vec(),
            ca_der: ca.cert_der().to_vec(),
            mesh_id: self.mesh_id.clone(),
            mesh_name: self.mesh_name.clone(),
            seeds: seeds.into_iter().map(seed_peer).collect(),
        })
    }
}

fn seed_peer(m: MemberId) -> SeedPeer {
    SeedPeer {
        node_id: m.node_id,
        name: m.name,
        addr: m.addr,
        api: m.api,
        generation: m.generation,
    }
}

/// A seed from a `JoinAccept`, as a member identity to announce to.
pub fn member_of_seed(s: SeedPeer) -> MemberId {
    MemberId {
        node_id: s.node_id,
        name: s.name,
        addr: s.addr,
        api: s.api,
        generation: s.generation,
    }
}

/// What a successful join gives the new node.
pub struct JoinOutcome {
    pub accept: JoinAccept,
    pub key_pem: String,
}

/// Redeems `token` at its seed: generates this node's key, sends a CSR and returns the certificate.
pub async fn redeem(
    token: &JoinToken,
    name: &str,
    advertise: &str,
    api: &str,
) -> Result<JoinOutcome, JoinError> {
    token.check_not_expired()?;
    check_node_name(name).map_err(JoinError::Refused)?;
    let unreachable = |cause| JoinError::Unreachable {
        seed: token.seed.clone(),
        cause,
    };
    let seed: SocketAddr = tokio::net::lookup_host(&token.seed)
        .await
        .map_err(|e| unreachable(SeedUnreachable::Resolve(e)))?
        .next()
        .ok_or_else(|| unreachable(SeedUnreachable::NoAddress))?;
    let request = KeyRequest::generate(name)?;
    let tls = tls::join_client_config(token.fingerprint_bytes()?)?;
    let quic = QuicClientConfig::try_from(tls).map_err(JoinError::Tls)?;
    let bind: SocketAddr = if seed.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|e| unreachable(SeedUnreachable::Bind(e)))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(quic)));
    let frame = Frame::JoinRequest(JoinRequest {
        token_id: token.id_bytes()?,
        secret: token.secret_bytes()?,
        csr_der: request.csr_der,
        name: name.to_string(),
        advertise: advertise.to_string(),
        api: api.to_string(),
    });
    let server_name = tls::server_name();
    let attempt = async {
        let conn = endpoint
            .connect(seed, &server_name.to_str())
            .map_err(|e| unreachable(SeedUnreachable::Connect(e)))?
            .await
            .map_err(|e| unreachable(SeedUnreachable::Handshake(e)))?;
        let answer = exchange(&conn, &frame, &Limits::default()).await;
        let turned_away = answer.as_ref().err().and_then(|_| turned_away(&conn));
        conn.close(0u32.into(), b"done");
        Ok::<_, JoinError>((answer, turned_away))
    };
    let (answer, turned_away) = tokio::time::timeout(JOIN_TIMEOUT, attempt)
        .await
        .map_err(|_| unreachable(SeedUnreachable::Timeout(JOIN_TIMEOUT)))??;
    endpoint.wait_idle().await;
    if let Some(reason) = turned_away {
        return Err(JoinError::Refused(reason));
    }
    match answer {
        Ok(Frame::JoinAccept(accept)) => {
            if accept.mesh_id != token.mesh_id {
                return Err(JoinError::Protocol(format!(
                    "the seed belongs to mesh {}, the token to {}",
                    accept.mesh_id, token.mesh_id
                )));
            }
            Ok(JoinOutcome {
                accept,
                key_pem: request.key_pem,
            })
        }
        Ok(other) => Err(JoinError::Protocol(format!(
            "expected JoinAccept, got {}",
            other.kind_name()
        ))),
        Err(TransportError::Remote { message, .. }) => Err(JoinError::Refused(message)),
        Err(e) => Err(unreachable(SeedUnreachable::Exchange(e))),
    }
}

/// The reason the seed node gave when it closed the connection for the join gate's limits (too
/// many attempts, or a request too slow): that is a refusal to act on, not an unreachable seed.
fn turned_away(conn: &quinn::Connection) -> Option<String> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(close)
            if [close_code::JOIN_RATE_LIMITED, close_code::JOIN_DEADLINE]
                .map(quinn::VarInt::from_u32)
                .contains(&close.error_code) =>
        {
            Some(String::from_utf8_lossy(&close.reason).into_owned())
        }
        _ => None,
    }
}
