//! Function secrets on the mesh's nodes: files `<data>/secrets/NAME` that `ctx.secret(NAME)`
//! reads on whichever node hosts the function. Since any alive node may host a function (placement
//! moves), a secret a function needs must be on every node: this module asks every member which
//! of a set of secrets it lacks, and stores a secret on every member, over KLF (`Agent` frames of
//! kind [`SECRETS_KIND`], on the members' mutually authenticated connections).
//!
//! Values travel only between members and are written 0600; they are never logged or echoed.

use std::path::Path;
use std::time::Duration;

use klf_proto::{AgentMessage, ErrorCode, Frame};
use serde::{Deserialize, Serialize};

use super::ops::{agent_answer, ask_peer};
use super::{Node, NodeError};

/// The `kind` of `Agent` frames that ask a node about its secrets.
pub const SECRETS_KIND: &str = "klf.secrets";
/// How long one member may take to answer.
const SECRETS_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest secret stored (what `ctx.secret` reads is bounded the same way).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// What a node is asked.
#[derive(Debug, Serialize, Deserialize)]
enum SecretsRequest {
    /// Which of these does it lack?
    Missing { names: Vec<String> },
    /// Store this value under this name.
    Put { name: String, value: String },
}

/// What it answers.
#[derive(Debug, Serialize, Deserialize)]
enum SecretsAnswer {
    Missing(Vec<String>),
    Stored,
    Refused(String),
}

/// Which secrets one member lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretGaps {
    /// The member's name.
    pub node: String,
    /// The secrets it does not hold (all of them when it could not be asked).
    pub missing: Vec<String>,
    /// Why it could not be asked, if it could not.
    pub unreachable: Option<String>,
}

/// Whether `name` may name a secret file: 1 to 64 of a-z, A-Z, 0-9, `-`, `_`, `.`, not starting
/// with a dot (no paths, no hidden files).
pub fn is_valid_secret_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn missing_here(dir: &Path, names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|name| !is_valid_secret_name(name) || !dir.join(name).is_file())
        .cloned()
        .collect()
}

fn put_here(dir: &Path, name: &str, value: &str) -> Result<(), NodeError> {
    if !is_valid_secret_name(name) {
        return Err(NodeError::Config(format!(
            "{name:?} is not a secret name: 1 to 64 of a-z, A-Z, 0-9, '-', '_', '.'"
        )));
    }
    if value.len() > MAX_SECRET_BYTES {
        return Err(NodeError::Config(format!(
            "secret {name:?} is {} bytes; the limit is {MAX_SECRET_BYTES}",
            value.len()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|source| NodeError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    klf_security::files::write_private(&dir.join(name), value.as_bytes())?;
    Ok(())
}

/// The answer to a peer's `Agent` frame of kind [`SECRETS_KIND`].
pub(crate) fn answer(dir: &Path, request: &AgentMessage) -> Frame {
    let asked: SecretsRequest = match serde_json::from_slice(&request.body) {
        Ok(asked) => asked,
        Err(e) => {
            return Frame::error(ErrorCode::Malformed, format!("not a secrets request: {e}"));
        }
    };
    let answer = match asked {
        SecretsRequest::Missing { names } => SecretsAnswer::Missing(missing_here(dir, &names)),
        SecretsRequest::Put { name, value } => match put_here(dir, &name, &value) {
            Ok(()) => {
                tracing::info!(secret = %name, "secret stored at a member's request");
                SecretsAnswer::Stored
            }
            Err(e) => SecretsAnswer::Refused(e.to_string()),
        },
    };
    agent_answer(request, &answer)
}

impl Node {
    /// Which of `names` each alive member (this node first) lacks; members lacking none are
    /// left out. A member that cannot be asked is reported lacking all of them, with why.
    pub async fn secret_gaps(&self, names: &[String]) -> Vec<SecretGaps> {
        let dir = self.data_dir().secrets_dir();
        let mut gaps = Vec::new();
        let here = missing_here(&dir, names);
        if !here.is_empty() {
            gaps.push(SecretGaps {
                node: self.settings().name.clone(),
                missing: here,
                unreachable: None,
            });
        }
        let body = match serde_json::to_vec(&SecretsRequest::Missing {
            names: names.to_vec(),
        }) {
            Ok(body) => body,
            Err(e) => {
                gaps.push(SecretGaps {
                    node: self.settings().name.clone(),
                    missing: names.to_vec(),
                    unreachable: Some(format!("the question does not encode: {e}")),
                });
                return gaps;
            }
        };
        for peer in self.alive_peers().await {
            let asked: Result<SecretsAnswer, String> = ask_peer(
                self.transport(),
                &peer,
                SECRETS_KIND,
                body.clone(),
                SECRETS_TIMEOUT,
            )
            .await;
            let gap = match asked {
                Ok(SecretsAnswer::Missing(missing)) if missing.is_empty() => continue,
                Ok(SecretsAnswer::Missing(missing)) => SecretGaps {
                    node: peer.name.clone(),
                    missing,
                    unreachable: None,
                },
                Ok(other) => SecretGaps {
                    node: peer.name.clone(),
                    missing: names.to_vec(),
                    unreachable: Some(format!("it answered {other:?}")),
                },
                Err(why) => SecretGaps {
                    node: peer.name.clone(),
                    missing: names.to_vec(),
                    unreachable: Some(why),
                },
            };
            gaps.push(gap);
        }
        gaps
    }

    /// Stores secret `name` on every alive member (this node first); returns their names. Fails
    /// naming the members that could not store it (those that did keep it).
    pub async fn put_secret_everywhere(
        &self,
        name: &str,
        value: &str,
    ) -> Result<Vec<String>, NodeError> {
        put_here(&self.data_dir().secrets_dir(), name, value)?;
        let mut stored = vec![self.settings().name.clone()];
        let body = serde_json::to_vec(&SecretsRequest::Put {
            name: name.to_string(),
            value: value.to_string(),
        })
        .map_err(|e| NodeError::Config(format!("the secret does not encode: {e}")))?;
        let mut failed = Vec::new();
        for peer in self.alive_peers().await {
            let asked: Result<SecretsAnswer, String> = ask_peer(
                self.transport(),
                &peer,
                SECRETS_KIND,
                body.clone(),
                SECRETS_TIMEOUT,
            )
            .await;
            match asked {
                Ok(SecretsAnswer::Stored) => stored.push(peer.name.clone()),
                Ok(SecretsAnswer::Refused(why)) | Err(why) => failed.push(why),
                Ok(other) => failed.push(format!("node {} answered {other:?}", peer.name)),
            }
        }
        if failed.is_empty() {
            Ok(stored)
        } else {
            Err(NodeError::Config(format!(
                "secret {name:?} is stored on {} but not everywhere: {}",
                stored.join(", "),
                failed.join("; ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_cannot_be_paths() {
        for good in ["api-tokens", "db_key", "key.v2", "A1"] {
            assert!(is_valid_secret_name(good), "{good}");
        }
        for bad in ["", ".hidden", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!is_valid_secret_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_node_stores_and_reports_its_secrets() {
        let dir = tempfile::tempdir().expect("tmp");
        let secrets = dir.path().join("secrets");
        let names = vec!["a".to_string(), "b".to_string(), "../etc".to_string()];
        assert_eq!(missing_here(&secrets, &names), names);
        put_here(&secrets, "a", "value").expect("put");
        assert_eq!(missing_here(&secrets, &names), ["b", "../etc"]);
        assert!(put_here(&secrets, "../etc", "x").is_err());
        assert!(put_here(&secrets, "big", &"x".repeat(MAX_SECRET_BYTES + 1)).is_err());
    }
}
