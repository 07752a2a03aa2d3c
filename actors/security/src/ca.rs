//! The mesh certificate authority: created by `klf init`, it signs the certificate of every node that
//! redeems a join token. Only the node that created the mesh holds its key.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};

use super::SecurityError;
use super::credentials::{NODE_SAN, node_id_of_public_key, node_san};

/// How long a node certificate is valid. Rotation before expiry is not automated yet.
const NODE_CERT_VALIDITY: time::Duration = time::Duration::days(365);
/// How long the mesh CA is valid.
const CA_VALIDITY: time::Duration = time::Duration::days(3650);

/// The mesh CA: its certificate and signing key.
pub struct MeshCa {
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl MeshCa {
    /// Creates a new CA for the mesh `mesh_id`.
    /// Returns the CA and its key as PEM, for the caller to store (0600).
    pub fn create(mesh_id: &str) -> Result<(Self, String), SecurityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("KLF mesh CA {mesh_id}"));
        dn.push(DnType::OrganizationName, "KLF mesh");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key)?;
        let cert_der = cert.der().clone();
        let key_pem = key.serialize_pem();
        Ok((
            Self {
                cert_der,
                issuer: Issuer::new(params, key),
            },
            key_pem,
        ))
    }

    /// Loads the CA from its certificate (DER) and key (PEM).
    pub fn load(cert_der: CertificateDer<'static>, key_pem: &str) -> Result<Self, SecurityError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self { cert_der, issuer })
    }

    /// The CA certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate, pinned by join tokens.
    pub fn fingerprint(&self) -> [u8; 32] {
        super::sha256(&self.cert_der)
    }

    /// Issues a node certificate for `public_key`. The CA decides the node id (a hash of the public
    /// key) and the names; nothing the requester put in a CSR's subject is trusted.
    pub fn issue_node_cert(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        name: &str,
    ) -> Result<(String, CertificateDer<'static>), SecurityError> {
        let node_id = node_id_of_public_key(public_key);
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::DnsName(NODE_SAN.try_into()?),
            SanType::DnsName(node_san(&node_id).try_into()?),
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + NODE_CERT_VALIDITY;
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok((node_id, cert.der().clone()))
    }

    /// Verifies a CSR's signature and issues a node certificate for its key.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        name: &str,
    ) -> Result<(String, CertificateDer<'static>), SecurityError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            csr_der.to_vec(),
        ))?;
        self.issue_node_cert(&csr.public_key, name)
    }
}
