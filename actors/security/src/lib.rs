//! The security framework of the Broth layer: the mesh CA and node certificates, TLS set-up for the
//! KLF endpoints, one-time join tokens and API tokens.
//!
//! Trust is rooted in the mesh CA created by `klf init`. Every mesh connection is mutual TLS against
//! it and a peer's node id is read from its certificate, never from a frame.

pub mod api_token;
pub mod ca;
pub mod credentials;
pub mod files;
pub mod join_token;
pub mod tls;

pub use api_token::ApiToken;
pub use ca::MeshCa;
pub use credentials::{NodeCredentials, PeerIdentity, node_id_of_public_key};
pub use join_token::{JoinToken, TokenBook, TokenRejected};

/// Errors of the security layer. Each keeps the error it stems from (I/O, parsing, TLS) as its
/// source, and says in its message which file or token is at fault.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("certificate error: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),
    #[error("certificate verifier error: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not UTF-8")]
    NotUtf8 {
        path: std::path::PathBuf,
        #[source]
        source: std::string::FromUtf8Error,
    },
    /// A JSON file (node settings, tokens) that does not parse.
    #[error("{path}: {source}")]
    BadJson {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Something meant for a JSON file that cannot be written as JSON; nothing was written.
    #[error("{path}: cannot be written as JSON: {source}")]
    Encode {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: not a PEM certificate: {source}")]
    BadPem {
        path: std::path::PathBuf,
        #[source]
        source: pem::PemError,
    },
    /// A peer's certificate lacks what a node certificate must carry (the message says what).
    #[error("peer certificate: {0}")]
    PeerCertificate(String),
    #[error("peer certificate: unparsable: {0}")]
    UnparsableCertificate(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("peer certificate: bad subject alt names: {0}")]
    SubjectAltNames(#[source] x509_parser::error::X509Error),
    #[error("the operating system's random number generator failed; no key or token can be made")]
    NoRandomness,
    /// A join token that is refused for a reason the message gives (expired, damaged field).
    #[error("invalid join token: {0}")]
    InvalidToken(String),
    #[error("invalid join token: the token is damaged (not base64url: {0})")]
    TokenNotBase64(#[source] base64::DecodeError),
    #[error("invalid join token: the token is damaged ({0})")]
    TokenNotJson(#[source] serde_json::Error),
}

/// SHA-256 of some DER bytes: the CA fingerprint that join tokens pin.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Fresh random bytes from the OS (ring's system RNG), for secrets and ids. Fails only when the
/// OS cannot provide randomness, in which case no key or token can be made either.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], SecurityError> {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| SecurityError::NoRandomness)?;
    Ok(out)
}
