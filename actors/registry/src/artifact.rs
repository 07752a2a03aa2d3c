//! Artifacts: a package as bytes, addressed by its blake3 hash and signed by the node that published
//! it. A node verifies the hash, the signer's certificate (issued by the mesh CA, naming the signer)
//! and the signature before it runs anything it fetched.

use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use std::sync::Arc;

use super::catalog::Release;
use klf_functions::package::Package;
use klf_proto::ProtoError;
use klf_security::{NodeCredentials, PeerIdentity, SecurityError};

/// Why an artifact cannot be made, trusted or read. Failures of the key, the certificate parser
/// or the codec are kept as the source.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact hash mismatch: expected {expected}, got {actual}")]
    HashMismatch { expected: String, actual: String },
    /// The signature or the signer's certificate does not check out (the message says how).
    #[error("artifact signature: {0}")]
    Signature(String),
    #[error("artifact signature: this node's key cannot sign: {0}")]
    Key(#[source] ring::error::KeyRejected),
    #[error("artifact signature: signing failed: {0}")]
    Sign(#[source] ring::error::Unspecified),
    #[error("artifact signature: {0}")]
    SignerCertificate(#[source] Arc<SecurityError>),
    #[error("artifact does not decode: {0}")]
    Malformed(#[source] ProtoError),
    #[error("the package cannot be encoded as an artifact: {0}")]
    Encode(#[source] ProtoError),
    #[error("the artifact's klf.toml no longer parses: {0}")]
    Manifest(#[source] klf_functions::package::PackageError),
}

/// The package as artifact bytes (the same encoding every node uses, so the hash is stable).
pub fn pack(package: &Package) -> Result<Vec<u8>, ArtifactError> {
    klf_proto::encode_value(package).map_err(ArtifactError::Encode)
}

/// The package inside artifact bytes.
pub fn unpack(bytes: &[u8]) -> Result<Package, ArtifactError> {
    let mut package: Package = klf_proto::decode_value(bytes).map_err(ArtifactError::Malformed)?;
    package.restore_http().map_err(ArtifactError::Manifest)?;
    Ok(package)
}

pub fn hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// Signs artifact hashes with this node's key.
pub struct Signer {
    key: EcdsaKeyPair,
    pub node_id: String,
    pub cert_der: Vec<u8>,
}

impl Signer {
    pub fn new(credentials: &NodeCredentials) -> Result<Self, ArtifactError> {
        let pkcs8 = credentials.private_key();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.secret_der(),
            &ring::rand::SystemRandom::new(),
        )
        .map_err(ArtifactError::Key)?;
        Ok(Self {
            key,
            node_id: credentials.node_id.clone(),
            cert_der: credentials.cert_der.to_vec(),
        })
    }

    pub fn sign(&self, hash: &[u8; 32]) -> Result<Vec<u8>, ArtifactError> {
        self.key
            .sign(&ring::rand::SystemRandom::new(), hash)
            .map(|s| s.as_ref().to_vec())
            .map_err(ArtifactError::Sign)
    }
}

/// Checks that `bytes` are the artifact `release` names, signed by a node of this mesh.
pub fn verify(release: &Release, bytes: &[u8], ca_der: &[u8]) -> Result<(), ArtifactError> {
    let actual = hash(bytes);
    if actual != release.artifact {
        return Err(ArtifactError::HashMismatch {
            expected: hex::encode(release.artifact),
            actual: hex::encode(actual),
        });
    }
    let bad = |m: &str| ArtifactError::Signature(m.to_string());
    let (_, ca) = X509Certificate::from_der(ca_der)
        .map_err(|_| bad("the mesh CA certificate does not parse"))?;
    let (_, signer) = X509Certificate::from_der(&release.signer_cert)
        .map_err(|_| bad("the signer certificate does not parse"))?;
    signer
        .verify_signature(Some(ca.public_key()))
        .map_err(|_| bad("the signer certificate was not issued by this mesh's CA"))?;
    let identity = PeerIdentity::from_cert(&rustls_pki_types::CertificateDer::from(
        release.signer_cert.as_slice(),
    ))
    .map_err(|e| ArtifactError::SignerCertificate(Arc::new(e)))?;
    if identity.node_id != release.signer {
        return Err(bad("the signer certificate names another node"));
    }
    let public_key = signer.public_key().subject_public_key.data.as_ref();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_key)
        .verify(&release.artifact, &release.signature)
        .map_err(|_| bad("the signature does not match the artifact hash"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use klf_security::MeshCa;

    /// A node of a new mesh: its credentials, issued by a fresh CA.
    fn setup() -> (NodeCredentials, Package) {
        let (ca, _) = MeshCa::create("m").unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let (_, cert) = ca.issue_node_cert(&key, "n").unwrap();
        let creds =
            NodeCredentials::new(cert, ca.cert_der().clone(), &key.serialize_pem()).unwrap();
        let manifest_text = "name = \"f\"\nversion = \"1.0.0\"\ntype = \"t\"\n".to_string();
        let package = Package {
            manifest: klf_functions::package::Manifest::parse(&manifest_text, "klf.toml").unwrap(),
            manifest_text,
            source: "export default class {}".into(),
            examples: vec![],
            input_schema: None,
            output_schema: None,
        };
        (creds, package)
    }

    fn release_for(signer: &Signer, package: &Package, bytes: &[u8]) -> Release {
        let artifact = hash(bytes);
        Release {
            manifest: package.manifest.clone(),
            artifact,
            artifact_len: bytes.len() as u64,
            signature: signer.sign(&artifact).unwrap(),
            signer: signer.node_id.clone(),
            signer_cert: signer.cert_der.clone(),
            owner: "admin".into(),
            created_unix_ms: 0,
        }
    }

    #[test]
    fn a_signed_artifact_verifies_and_tampering_is_caught() {
        let (creds, package) = setup();
        let signer = Signer::new(&creds).unwrap();
        let bytes = pack(&package).unwrap();
        assert_eq!(unpack(&bytes).unwrap(), package);
        let release = release_for(&signer, &package, &bytes);
        verify(&release, &bytes, &creds.ca_der).unwrap();

        let mut tampered = bytes.clone();
        tampered[0] ^= 1;
        assert!(matches!(
            verify(&release, &tampered, &creds.ca_der),
            Err(ArtifactError::HashMismatch { .. })
        ));
        let mut forged = release.clone();
        forged.signature[10] ^= 1;
        assert!(matches!(
            verify(&forged, &bytes, &creds.ca_der),
            Err(ArtifactError::Signature(_))
        ));
        let mut impostor = release.clone();
        impostor.signer = "0000000000000000".into();
        assert!(verify(&impostor, &bytes, &creds.ca_der).is_err());
    }

    #[test]
    fn a_signer_from_another_mesh_is_refused() {
        let (creds, package) = setup();
        let (other, _) = setup();
        let bytes = pack(&package).unwrap();
        let release = release_for(&Signer::new(&other).unwrap(), &package, &bytes);
        let err = verify(&release, &bytes, &creds.ca_der).unwrap_err();
        assert!(
            err.to_string().contains("not issued by this mesh's CA"),
            "{err}"
        );
    }

    #[test]
    fn garbage_artifacts_do_not_decode() {
        assert!(matches!(
            unpack(&[0xff; 40]),
            Err(ArtifactError::Malformed(_))
        ));
    }
}
