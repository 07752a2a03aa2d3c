//! A node's own credentials (key, certificate, the mesh CA) and the identity read off a peer's
//! certificate.

use rcgen::{CertificateParams, KeyPair, PublicKeyData};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::SecurityError;

/// The DNS name every node certificate carries; dialers verify the server against it, so any node of
/// the mesh can answer at any address. The node's own id is in a second name, [`node_san`].
pub const NODE_SAN: &str = "node.klf";
const NODE_SAN_SUFFIX: &str = ".node.klf";

/// The DNS name that carries a node id in its certificate.
pub fn node_san(node_id: &str) -> String {
    format!("{node_id}{NODE_SAN_SUFFIX}")
}

/// A node id is the first 16 hex digits of SHA-256 of the node's public key (SubjectPublicKeyInfo),
/// so it is bound to the key and cannot be chosen by a joining node.
pub fn node_id_of_public_key(public_key: &impl PublicKeyData) -> String {
    let digest = super::sha256(&public_key.subject_public_key_info());
    hex::encode(&digest[..8])
}

/// What this node presents on every connection.
#[derive(Debug, Clone)]
pub struct NodeCredentials {
    pub node_id: String,
    pub name: String,
    pub cert_der: CertificateDer<'static>,
    pub ca_der: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
}

impl NodeCredentials {
    /// Assembles credentials from their parts (as stored in the data dir).
    pub fn new(
        cert_der: CertificateDer<'static>,
        ca_der: CertificateDer<'static>,
        key_pem: &str,
    ) -> Result<Self, SecurityError> {
        let key = KeyPair::from_pem(key_pem)?;
        let peer = PeerIdentity::from_cert(&cert_der)?;
        let expected = node_id_of_public_key(&key);
        if peer.node_id != expected {
            return Err(SecurityError::PeerCertificate(format!(
                "the node certificate names node {} but the key belongs to node {expected}",
                peer.node_id
            )));
        }
        Ok(Self {
            node_id: peer.node_id,
            name: peer.name,
            cert_der,
            ca_der,
            key_pkcs8: key.serialize_der(),
        })
    }

    /// The certificate chain presented to peers: this node's certificate, then the mesh CA (so a
    /// joining node can check the CA against the fingerprint its token pins).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone(), self.ca_der.clone()]
    }

    /// The private key, for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

/// A new key pair and a CSR for it, made by a node that is about to join.
pub struct KeyRequest {
    pub key_pem: String,
    pub csr_der: Vec<u8>,
}

impl KeyRequest {
    /// Generates the joining node's key and a CSR proving possession of it.
    pub fn generate(name: &str) -> Result<Self, SecurityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let csr = params.serialize_request(&key)?;
        Ok(Self {
            key_pem: key.serialize_pem(),
            csr_der: csr.der().to_vec(),
        })
    }
}

/// Who a peer is, according to its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub node_id: String,
    pub name: String,
}

impl PeerIdentity {
    /// Reads the node id (from the `<id>.node.klf` name) and the node name (the common name) off a
    /// certificate that TLS has already verified against the mesh CA.
    pub fn from_cert(cert: &CertificateDer<'_>) -> Result<Self, SecurityError> {
        let (_, cert) =
            X509Certificate::from_der(cert).map_err(SecurityError::UnparsableCertificate)?;
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let san = cert
            .subject_alternative_name()
            .map_err(SecurityError::SubjectAltNames)?
            .ok_or_else(|| SecurityError::PeerCertificate("no subject alt names".into()))?;
        let node_id = san
            .value
            .general_names
            .iter()
            .find_map(|n| match n {
                GeneralName::DNSName(dns) => dns.strip_suffix(NODE_SAN_SUFFIX),
                _ => None,
            })
            .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| {
                SecurityError::PeerCertificate(
                    "no node id (<id>.node.klf) in the certificate".into(),
                )
            })?;
        Ok(Self {
            node_id: node_id.to_string(),
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MeshCa;

    #[test]
    fn issued_certificate_carries_the_key_bound_node_id() {
        let (ca, _) = MeshCa::create("m1").unwrap();
        let request = KeyRequest::generate("alpha").unwrap();
        let (node_id, cert) = ca.sign_csr(&request.csr_der, "alpha").unwrap();
        let creds =
            NodeCredentials::new(cert.clone(), ca.cert_der().clone(), &request.key_pem).unwrap();
        assert_eq!(creds.node_id, node_id);
        assert_eq!(creds.name, "alpha");
        assert_eq!(PeerIdentity::from_cert(&cert).unwrap().node_id, node_id);
        assert_eq!(node_id.len(), 16);
    }

    #[test]
    fn credentials_refuse_a_key_that_is_not_the_certificates() {
        let (ca, _) = MeshCa::create("m1").unwrap();
        let request = KeyRequest::generate("alpha").unwrap();
        let other = KeyRequest::generate("beta").unwrap();
        let (_, cert) = ca.sign_csr(&request.csr_der, "alpha").unwrap();
        let err = NodeCredentials::new(cert, ca.cert_der().clone(), &other.key_pem).unwrap_err();
        assert!(err.to_string().contains("key belongs to node"), "{err}");
    }

    #[test]
    fn garbage_csr_is_refused() {
        let (ca, _) = MeshCa::create("m1").unwrap();
        assert!(ca.sign_csr(b"not a csr", "x").is_err());
    }
}
