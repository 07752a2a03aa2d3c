//! One-time join tokens.
//!
//! `klf token create` prints a token that tells a new machine everything it needs to join safely: the
//! mesh id, the CA fingerprint to pin, a seed address, a one-time secret and an expiry. The seed keeps
//! only the SHA-256 of each secret in a [`TokenBook`] and burns a token when it is redeemed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::{SecurityError, files};

const PREFIX: &str = "klf1.";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What a join token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub mesh_id: String,
    /// Hex SHA-256 of the mesh CA certificate.
    pub ca_fingerprint: String,
    /// QUIC address of the node that issued the token and will redeem it.
    pub seed: String,
    /// Hex, 16 bytes.
    pub id: String,
    /// Base64url, 32 bytes.
    pub secret: String,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JoinToken {
    /// The token as one line of text (`klf1.` + base64url of its JSON).
    ///
    /// The JSON is built from the token's strings and number directly, so encoding cannot fail
    /// (and never yields a token without a body); [`JoinToken::decode`] reads it back with serde.
    pub fn encode(&self) -> String {
        let text = |s: &str| serde_json::Value::String(s.to_string());
        let json = serde_json::Value::Object(serde_json::Map::from_iter([
            ("mesh_id".to_string(), text(&self.mesh_id)),
            ("ca_fingerprint".to_string(), text(&self.ca_fingerprint)),
            ("seed".to_string(), text(&self.seed)),
            ("id".to_string(), text(&self.id)),
            ("secret".to_string(), text(&self.secret)),
            (
                "expires_at".to_string(),
                serde_json::Value::from(self.expires_at),
            ),
        ]));
        format!("{PREFIX}{}", B64.encode(json.to_string()))
    }

    /// Parses a token, saying precisely what is wrong with a garbled one.
    pub fn decode(text: &str) -> Result<Self, SecurityError> {
        let text = text.trim();
        let body = text.strip_prefix(PREFIX).ok_or_else(|| {
            SecurityError::InvalidToken(format!(
                "not a KLF join token (it should start with `{PREFIX}`; copy the last line printed by `klf token create`)"
            ))
        })?;
        let json = B64.decode(body).map_err(SecurityError::TokenNotBase64)?;
        let token: Self = serde_json::from_slice(&json).map_err(SecurityError::TokenNotJson)?;
        token.id_bytes()?;
        token.secret_bytes()?;
        token.fingerprint_bytes()?;
        Ok(token)
    }

    /// The token id as bytes.
    pub fn id_bytes(&self) -> Result<[u8; 16], SecurityError> {
        hex::decode(&self.id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| SecurityError::InvalidToken("the token id is damaged".into()))
    }

    /// The secret as bytes.
    pub fn secret_bytes(&self) -> Result<[u8; 32], SecurityError> {
        B64.decode(&self.secret)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| SecurityError::InvalidToken("the token secret is damaged".into()))
    }

    /// The pinned CA fingerprint as bytes.
    pub fn fingerprint_bytes(&self) -> Result<[u8; 32], SecurityError> {
        hex::decode(&self.ca_fingerprint)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| SecurityError::InvalidToken("the CA fingerprint is damaged".into()))
    }

    /// Refuses a token whose expiry has passed (the seed checks again on its own clock).
    pub fn check_not_expired(&self) -> Result<(), SecurityError> {
        let now = now_secs();
        if self.expires_at <= now {
            return Err(SecurityError::InvalidToken(format!(
                "the join token expired {}s ago; create a new one with `klf token create`",
                now - self.expires_at
            )));
        }
        Ok(())
    }
}

/// Why a seed refused to redeem a token. The messages go back to the joining node verbatim.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenRejected {
    #[error("this join token is unknown to the seed (it was not issued by this node)")]
    Unknown,
    #[error(
        "this join token was already used; join tokens are one-time, create a new one with `klf token create`"
    )]
    AlreadyUsed,
    #[error("this join token expired; create a new one with `klf token create`")]
    Expired,
    #[error("the join token's secret is wrong")]
    WrongSecret,
    /// The token was good, but the book could not be saved with it burned: the join is refused
    /// rather than let a restart accept the same token again.
    #[error("the seed could not record the token: {0}")]
    Storage(#[source] Arc<SecurityError>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IssuedToken {
    secret_sha256: String,
    expires_at: u64,
    used: bool,
}

/// The tokens a node has issued, persisted (0600) so that a restart neither forgets nor revives one.
pub struct TokenBook {
    path: PathBuf,
    issued: BTreeMap<String, IssuedToken>,
}

impl TokenBook {
    /// Opens the book stored at `path` (empty if the file does not exist yet).
    pub fn open(path: PathBuf) -> Result<Self, SecurityError> {
        let issued = if path.exists() {
            files::read_json(&path)?
        } else {
            BTreeMap::new()
        };
        Ok(Self { path, issued })
    }

    fn save(&self) -> Result<(), SecurityError> {
        files::write_private_json(&self.path, &self.issued)
    }

    /// Issues a token valid for `ttl`, naming `seed` as the address to redeem it at.
    pub fn issue(
        &mut self,
        mesh_id: &str,
        ca_fingerprint: [u8; 32],
        seed: &str,
        ttl: Duration,
    ) -> Result<JoinToken, SecurityError> {
        let id = hex::encode(super::random_bytes::<16>()?);
        let secret = super::random_bytes::<32>()?;
        let expires_at = now_secs() + ttl.as_secs().max(1);
        // Forget tokens that expired long ago so the book does not grow forever.
        let now = now_secs();
        self.issued.retain(|_, t| t.expires_at + 86_400 > now);
        self.issued.insert(
            id.clone(),
            IssuedToken {
                secret_sha256: hex::encode(super::sha256(&secret)),
                expires_at,
                used: false,
            },
        );
        self.save()?;
        Ok(JoinToken {
            mesh_id: mesh_id.to_string(),
            ca_fingerprint: hex::encode(ca_fingerprint),
            seed: seed.to_string(),
            id,
            secret: B64.encode(secret),
            expires_at,
        })
    }

    /// Redeems a token: it must be known, unused, unexpired and carry the right secret. A redeemed
    /// token is burned (and stays burned across restarts).
    pub fn redeem(&mut self, id: &[u8; 16], secret: &[u8; 32]) -> Result<(), TokenRejected> {
        let key = hex::encode(id);
        let token = self.issued.get_mut(&key).ok_or(TokenRejected::Unknown)?;
        let presented = hex::encode(super::sha256(secret));
        if !bool::from(presented.as_bytes().ct_eq(token.secret_sha256.as_bytes())) {
            return Err(TokenRejected::WrongSecret);
        }
        if token.used {
            return Err(TokenRejected::AlreadyUsed);
        }
        if token.expires_at <= now_secs() {
            return Err(TokenRejected::Expired);
        }
        token.used = true;
        self.save().map_err(|e| TokenRejected::Storage(Arc::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> (tempfile::TempDir, TokenBook) {
        let dir = tempfile::tempdir().unwrap();
        let book = TokenBook::open(dir.path().join("tokens.json")).unwrap();
        (dir, book)
    }

    #[test]
    fn token_text_round_trips_and_redeems_once() {
        let (dir, mut book) = book();
        let token = book
            .issue("mesh", [1; 32], "127.0.0.1:1", Duration::from_secs(60))
            .unwrap();
        let parsed = JoinToken::decode(&token.encode()).unwrap();
        assert_eq!(parsed, token);
        let (id, secret) = (parsed.id_bytes().unwrap(), parsed.secret_bytes().unwrap());
        assert!(matches!(
            book.redeem(&id, &[0; 32]),
            Err(TokenRejected::WrongSecret)
        ));
        assert!(book.redeem(&id, &secret).is_ok());
        assert!(matches!(
            book.redeem(&id, &secret),
            Err(TokenRejected::AlreadyUsed)
        ));
        // Burned across a reopen too.
        let mut reopened = TokenBook::open(dir.path().join("tokens.json")).unwrap();
        assert!(matches!(
            reopened.redeem(&id, &secret),
            Err(TokenRejected::AlreadyUsed)
        ));
        assert!(matches!(
            reopened.redeem(&[9; 16], &secret),
            Err(TokenRejected::Unknown)
        ));
    }

    #[test]
    fn expired_token_is_refused_on_both_sides() {
        let (_dir, mut book) = book();
        let mut token = book
            .issue("mesh", [1; 32], "127.0.0.1:1", Duration::from_secs(60))
            .unwrap();
        book.issued.values_mut().for_each(|t| t.expires_at = 1);
        let (id, secret) = (token.id_bytes().unwrap(), token.secret_bytes().unwrap());
        assert!(matches!(
            book.redeem(&id, &secret),
            Err(TokenRejected::Expired)
        ));
        token.expires_at = 1;
        let err = JoinToken::decode(&token.encode())
            .unwrap()
            .check_not_expired()
            .unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn a_burn_that_cannot_be_saved_refuses_the_join_with_the_cause() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("book").join("tokens.json");
        let mut book = TokenBook::open(path.clone()).unwrap();
        // The book's folder does not exist: saving fails with an I/O error.
        let Err(error) = book.issue("mesh", [1; 32], "127.0.0.1:1", Duration::from_secs(60)) else {
            panic!("a book in a missing folder saved")
        };
        assert!(matches!(error, SecurityError::File { .. }), "{error:?}");
        std::fs::create_dir(dir.path().join("book")).unwrap();
        let token = book
            .issue("mesh", [1; 32], "127.0.0.1:1", Duration::from_secs(60))
            .unwrap();
        std::fs::remove_dir_all(dir.path().join("book")).unwrap();
        let (id, secret) = (token.id_bytes().unwrap(), token.secret_bytes().unwrap());
        let refused = book.redeem(&id, &secret).unwrap_err();
        assert!(matches!(refused, TokenRejected::Storage(_)), "{refused:?}");
        let cause = refused
            .source()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(cause.contains("tokens"), "{cause}");
    }

    #[test]
    fn a_garbled_token_keeps_the_decoding_error_as_source() {
        use std::error::Error as _;
        for text in ["klf1.@@@", "klf1.bm90IGpzb24"] {
            let error = JoinToken::decode(text).unwrap_err();
            assert!(error.source().is_some(), "{text}: {error:?}");
        }
    }

    #[test]
    fn garbled_tokens_say_what_is_wrong() {
        for (text, needle) in [
            ("garbage-token", "should start with"),
            ("klf1.@@@", "not base64url"),
            ("klf1.bm90IGpzb24", "damaged"),
        ] {
            let err = JoinToken::decode(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
