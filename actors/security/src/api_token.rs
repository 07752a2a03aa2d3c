//! Bearer tokens of the HTTP API. A token has a principal and roles; the node stores only its
//! SHA-256 and compares in constant time. (Authorization policy beyond roles comes with cedar later.)

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// A stored API token: who it is and what it may do, but not the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub principal: String,
    pub roles: Vec<String>,
    /// Hex SHA-256 of the bearer string.
    pub sha256: String,
}

impl ApiToken {
    /// Makes a new random bearer string for `principal` and the record that verifies it.
    pub fn generate(
        principal: &str,
        roles: &[&str],
    ) -> Result<(String, Self), super::SecurityError> {
        let bearer = format!(
            "klfa_{}",
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                super::random_bytes::<32>()?
            )
        );
        let record = Self {
            principal: principal.to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            sha256: hex::encode(super::sha256(bearer.as_bytes())),
        };
        Ok((bearer, record))
    }

    /// Whether `bearer` is this token, compared in constant time.
    pub fn matches(&self, bearer: &str) -> bool {
        let presented = hex::encode(super::sha256(bearer.as_bytes()));
        presented.as_bytes().ct_eq(self.sha256.as_bytes()).into()
    }

    /// Whether the token holds `role` (`admin` holds every role).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role || r == "admin")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_its_own_bearer() {
        let (bearer, token) = ApiToken::generate("admin", &["admin"]).expect("randomness");
        assert!(token.matches(&bearer));
        assert!(!token.matches("klfa_wrong"));
        assert!(!token.matches(""));
        assert!(token.has_role("reader"));
    }
}
