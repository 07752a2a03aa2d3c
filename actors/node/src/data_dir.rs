//! The node's data directory: who the node is, its keys and tokens, and whom it knew.
//!
//! ```text
//! node.json          name, node id, mesh id and name, last listen / advertise / API addresses
//! ca.pem             the mesh CA certificate
//! ca.key             the mesh CA key (only on the node that ran `klf init`), 0600
//! node.pem           this node's certificate, signed by the mesh CA
//! node.key           this node's private key, 0600
//! admin.token        this node's admin API bearer token, 0600 (read by CLI commands given --data)
//! api-tokens.json    hashes, principals and roles of the API tokens this node accepts, 0600
//! join-tokens.json   join tokens this node issued (hashed secrets, expiry, used), 0600
//! peers.json         members known at the last change, announced to on restart
//! store.redb         the embedded store: catalog records, artifacts, function key-value data,
//!                    the ledger (Chef runs, maintenance events)
//! roi.toml           optional: the prices ROI uses (`[roi]`, see docs/roi.md)
//! lock               locked (flock) while a node runs from this dir; holds its process id
//! ```

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use klf_mesh::MemberId;
use klf_mesh::membership::load_peers;
use klf_security::{ApiToken, MeshCa, NodeCredentials, SecurityError, TokenBook, files};

/// What `node.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSettings {
    pub name: String,
    pub node_id: String,
    pub mesh_id: String,
    pub mesh_name: String,
    /// UDP address the QUIC endpoint binds.
    pub listen: Option<String>,
    /// QUIC address peers dial.
    pub advertise: Option<String>,
    /// TCP address of the HTTP API.
    pub api: Option<String>,
}

/// An exclusive lock on a data dir, held while a node runs from it; released when dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Paths inside a data dir, and loading and saving what they hold.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the data dir for this process: a second `klf up` on the same dir is refused here,
    /// before it binds a port or announces itself under the same node id.
    pub fn lock(&self) -> Result<DataDirLock, crate::NodeError> {
        use std::io::Write as _;
        let path = self.root.join("lock");
        let file_error = |source| crate::NodeError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(file_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(crate::NodeError::InUse {
                    path: self.root.clone(),
                    holder: holder.trim().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(file_error(e)),
        }
        file.set_len(0).map_err(file_error)?;
        write!(file, "{}", std::process::id()).map_err(file_error)?;
        Ok(DataDirLock { _file: file })
    }

    pub fn node_file(&self) -> PathBuf {
        self.root.join("node.json")
    }
    /// User ingredients loaded by every start of this node (see `klf_chef::ingredients`).
    pub fn ingredients_dir(&self) -> PathBuf {
        self.root.join("ingredients")
    }

    /// Secrets functions read with `ctx.secret(NAME)`: one file per secret.
    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    pub fn node_cert(&self) -> PathBuf {
        self.root.join("node.pem")
    }
    pub fn node_key(&self) -> PathBuf {
        self.root.join("node.key")
    }
    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin.token")
    }
    pub fn api_tokens(&self) -> PathBuf {
        self.root.join("api-tokens.json")
    }
    pub fn join_tokens(&self) -> PathBuf {
        self.root.join("join-tokens.json")
    }
    pub fn peers(&self) -> PathBuf {
        self.root.join("peers.json")
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("store.redb")
    }

    /// Whether a node identity exists here.
    pub fn is_initialized(&self) -> bool {
        self.node_file().exists()
    }

    /// Creates the directory (0700) if needed.
    pub fn create(&self) -> Result<(), SecurityError> {
        std::fs::create_dir_all(&self.root).map_err(|source| SecurityError::File {
            path: self.root.clone(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700));
        }
        Ok(())
    }

    pub fn load_settings(&self) -> Result<NodeSettings, SecurityError> {
        files::read_json(&self.node_file())
    }

    pub fn save_settings(&self, settings: &NodeSettings) -> Result<(), SecurityError> {
        files::write_private_json(&self.node_file(), settings)
    }

    pub fn save_certificate(&self, path: &Path, der: &[u8]) -> Result<(), SecurityError> {
        files::write_private(
            path,
            pem::encode(&pem::Pem::new("CERTIFICATE", der)).as_bytes(),
        )
    }

    fn load_certificate(&self, path: &Path) -> Result<CertificateDer<'static>, SecurityError> {
        let text = files::read_string(path)?;
        let parsed = pem::parse(text).map_err(|source| SecurityError::BadPem {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(CertificateDer::from(parsed.into_contents()))
    }

    /// This node's credentials.
    pub fn load_credentials(&self) -> Result<NodeCredentials, SecurityError> {
        let cert = self.load_certificate(&self.node_cert())?;
        let ca = self.load_certificate(&self.ca_cert())?;
        let key = files::read_string(&self.node_key())?;
        NodeCredentials::new(cert, ca, &key)
    }

    /// The mesh CA, if this node holds its key.
    pub fn load_ca(&self) -> Result<Option<MeshCa>, SecurityError> {
        if !self.ca_key().exists() {
            return Ok(None);
        }
        let cert = self.load_certificate(&self.ca_cert())?;
        let key = files::read_string(&self.ca_key())?;
        MeshCa::load(cert, &key).map(Some)
    }

    pub fn load_api_tokens(&self) -> Result<Vec<ApiToken>, SecurityError> {
        files::read_json(&self.api_tokens())
    }

    /// Creates an admin API token, stores its hash, and keeps the bearer in `admin.token` for the CLI.
    pub fn create_admin_token(&self) -> Result<String, SecurityError> {
        let (bearer, record) = ApiToken::generate("admin", &["admin"])?;
        files::write_private_json(&self.api_tokens(), &[record])?;
        files::write_private(&self.admin_token(), bearer.as_bytes())?;
        Ok(bearer)
    }

    pub fn admin_bearer(&self) -> Result<String, SecurityError> {
        Ok(files::read_string(&self.admin_token())?.trim().to_string())
    }

    pub fn token_book(&self) -> Result<TokenBook, SecurityError> {
        TokenBook::open(self.join_tokens())
    }

    pub fn known_peers(&self) -> Vec<MemberId> {
        load_peers(&self.peers())
    }

    pub fn save_peers(&self, peers: &[MemberId]) -> Result<(), SecurityError> {
        files::write_private_json(&self.peers(), peers)
    }
}
