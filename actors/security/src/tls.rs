//! rustls configurations for the KLF QUIC endpoint.
//!
//! - The server offers ALPN `klf/1` and `klf-join/1`. It asks every client for a certificate and
//!   verifies any it gets against the mesh CA; a client without one is let through the handshake
//!   only so that the transport can accept it on `klf-join/1` and refuse it on `klf/1`.
//! - A member dials with its own certificate and verifies the server against the mesh CA.
//! - A joining node has no certificate yet: it verifies the seed against the CA whose fingerprint
//!   the join token pins.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;

use super::{NodeCredentials, SecurityError};
use crate::credentials::NODE_SAN;

/// The server name a dialer verifies: every node certificate carries it.
pub fn server_name() -> ServerName<'static> {
    ServerName::DnsName(
        NODE_SAN
            .try_into()
            .unwrap_or_else(|_| unreachable!("NODE_SAN is a valid DNS name")),
    )
}

/// The process's crypto provider (ring, as quinn uses), installed once.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            // Another library may have installed one first; ours is passed explicitly everywhere anyway.
            let _ = CryptoProvider::install_default((*provider).clone());
            provider
        })
        .clone()
}

fn ca_roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, SecurityError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// TLS for the node's QUIC server (both ALPNs).
pub fn server_config(creds: &NodeCredentials) -> Result<rustls::ServerConfig, SecurityError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(ca_roots(&creds.ca_der)?, provider())
            .allow_unauthenticated()
            .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain(), creds.private_key())?;
    config.alpn_protocols = vec![klf_proto::ALPN_MESH.to_vec(), klf_proto::ALPN_JOIN.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// TLS for a member dialing another member: its own certificate, the mesh CA as the only root.
pub fn mesh_client_config(creds: &NodeCredentials) -> Result<rustls::ClientConfig, SecurityError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(ca_roots(&creds.ca_der)?)
        .with_client_auth_cert(creds.chain(), creds.private_key())?;
    config.alpn_protocols = vec![klf_proto::ALPN_MESH.to_vec()];
    Ok(config)
}

/// TLS for a node redeeming a join token: no client certificate; the server must present a chain
/// whose CA has the pinned fingerprint and whose node certificate that CA signed.
pub fn join_client_config(ca_fingerprint: [u8; 32]) -> Result<rustls::ClientConfig, SecurityError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier {
            fingerprint: ca_fingerprint,
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![klf_proto::ALPN_JOIN.to_vec()];
    Ok(config)
}

/// Verifies a seed against the CA pinned by a join token. The CA certificate comes from the seed's
/// own chain, and is trusted only if its SHA-256 equals the pin; then ordinary WebPKI verification
/// of the node certificate against it follows.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: [u8; 32],
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| super::sha256(c) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the seed does not present the mesh CA pinned by the join token (wrong mesh or forged token)"
                        .into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::Other(rustls::OtherError(Arc::new(e))))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
