//! Recorded model exchanges: [`Recording`] keeps every exchange of a real provider and writes them
//! to a file; [`Replay`] answers from such a file, in order, and refuses a request that is not the
//! one recorded — so a test over a replay runs the real provider code without a network, and a
//! recording made stale by a change to the prompts says so instead of answering the wrong question.
//!
//! The file:
//!
//! ```json
//! {"exchanges": [{"request": {"messages": [{"role": "system", "content": "…"}, …], "json": true},
//!                 "reply": {"text": "…", "model": "gpt-4o-mini",
//!                           "usage": {"input_tokens": 812, "output_tokens": 41}}}]}
//! ```

use futures_util::future::BoxFuture;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::debug;

use klf_model::{Message, ModelError, ModelProvider, ModelReply, Usage};

/// How much of a differing message a mismatch error quotes, either side of the first difference.
const QUOTE_AROUND: usize = 60;

/// What was asked of the model: what a replay compares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub messages: Vec<Message>,
    #[serde(default)]
    pub json: bool,
}

/// What the model answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedReply {
    pub text: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub usage: Usage,
    /// Why the model stopped (`length`: cut off by `max_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
}

/// One request and its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub request: RecordedRequest,
    pub reply: RecordedReply,
}

/// A recording file's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedExchanges {
    pub exchanges: Vec<Exchange>,
}

/// Why a recording could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot read the recording {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error(
        "the recording {path} is not a recording ({message}); it should be {{\"exchanges\": [{{\"request\": {{\"messages\", \"json\"}}, \"reply\": {{\"text\", \"model\", \"usage\"}}}}]}}"
    )]
    Parse { path: PathBuf, message: String },
    #[error("cannot write the recording {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// A model that answers from recorded exchanges, in order.
#[derive(Debug)]
pub struct Replay {
    /// Where the exchanges came from, for messages.
    source: String,
    exchanges: Vec<Exchange>,
    next: Mutex<usize>,
}

impl Replay {
    /// Exchanges held in memory; `source` names them in errors.
    pub fn new(source: impl Into<String>, exchanges: Vec<Exchange>) -> Self {
        Self {
            source: source.into(),
            exchanges,
            next: Mutex::new(0),
        }
    }

    /// The exchanges of a recording file.
    pub fn load(path: &Path) -> Result<Self, RecordingError> {
        let text = std::fs::read_to_string(path).map_err(|e| RecordingError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let recorded: RecordedExchanges =
            serde_json::from_str(&text).map_err(|e| RecordingError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Self::new(path.display().to_string(), recorded.exchanges))
    }

    /// How many exchanges have been answered.
    pub fn used(&self) -> usize {
        *self.next.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answer(&self, request: &RecordedRequest) -> Result<ModelReply, ModelError> {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let n = *next;
        let Some(exchange) = self.exchanges.get(n) else {
            return Err(ModelError::BadRequest(format!(
                "replay {}: exchange {} was asked for but the recording has only {}; the code now \
                 asks the model more than when it was recorded: record it again \
                 (KLF_CHEF_RECORD=FILE on the node, then klf chef --provider openai)",
                self.source,
                n + 1,
                self.exchanges.len()
            )));
        };
        if let Some(difference) = difference(&exchange.request, request) {
            return Err(ModelError::BadRequest(format!(
                "replay {}: exchange {} of {} differs from the recording: {difference}; the \
                 recording is stale: record it again (KLF_CHEF_RECORD=FILE on the node, then klf chef \
                 --provider openai)",
                self.source,
                n + 1,
                self.exchanges.len()
            )));
        }
        *next += 1;
        debug!(source = %self.source, exchange = n + 1, "replayed a model exchange");
        Ok(ModelReply {
            text: exchange.reply.text.clone(),
            model: exchange.reply.model.clone(),
            usage: exchange.reply.usage,
            attempts: 1,
            finish_reason: exchange.reply.finish_reason.clone(),
        })
    }
}

impl ModelProvider for Replay {
    fn complete(
        &self,
        request: klf_model::ModelRequest,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<ModelReply, ModelError>> {
        let result = self.answer(&RecordedRequest {
            messages: request.messages,
            json: request.json,
        });
        Box::pin(async move { result })
    }

    fn describe(&self) -> String {
        format!("replay of {}", self.source)
    }
}

/// What differs between the recorded request and the one sent, in words; `None` when they match.
pub fn difference(recorded: &RecordedRequest, sent: &RecordedRequest) -> Option<String> {
    if recorded.json != sent.json {
        return Some(format!(
            "the recording asked for JSON: {}, this request: {}",
            recorded.json, sent.json
        ));
    }
    for (i, (r, s)) in recorded.messages.iter().zip(&sent.messages).enumerate() {
        if r.role != s.role {
            return Some(format!(
                "message {} is from {:?} in the recording but from {:?} now",
                i + 1,
                r.role,
                s.role
            ));
        }
        if r.content != s.content {
            let at = first_difference(&r.content, &s.content);
            return Some(format!(
                "message {} ({}) differs at character {}: recorded {:?}, sent {:?}",
                i + 1,
                r.role,
                at,
                excerpt(&r.content, at),
                excerpt(&s.content, at)
            ));
        }
    }
    if recorded.messages.len() != sent.messages.len() {
        return Some(format!(
            "the recording has {} messages, this request {}",
            recorded.messages.len(),
            sent.messages.len()
        ));
    }
    None
}

/// The byte offset of the first difference (at a character boundary of both).
fn first_difference(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| a.len().min(b.len()))
}

/// `text` around byte offset `at`, with `…` where it was cut.
fn excerpt(text: &str, at: usize) -> String {
    let mut start = at.saturating_sub(QUOTE_AROUND).min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (at + QUOTE_AROUND).min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    format!(
        "{}{}{}",
        if start > 0 { "…" } else { "" },
        &text[start..end],
        if end < text.len() { "…" } else { "" }
    )
}

/// A model that records every successful exchange of `inner`, to be saved as a replay file.
pub struct Recording<P> {
    inner: Arc<P>,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
}

impl<P: ModelProvider> Recording<P> {
    pub fn new(inner: P) -> Self {
        Self {
            inner: Arc::new(inner),
            exchanges: Arc::default(),
        }
    }

    /// The exchanges so far, in the order they completed.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.exchanges
            .lock()
            .map(|e| e.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Writes the exchanges so far as a replay file (creating its folder).
    pub fn save(&self, path: &Path) -> Result<(), RecordingError> {
        let write = |message: String| RecordingError::Write {
            path: path.to_path_buf(),
            message,
        };
        let recorded = RecordedExchanges {
            exchanges: self.exchanges(),
        };
        let mut text = serde_json::to_string_pretty(&recorded).map_err(|e| write(e.to_string()))?;
        text.push('\n');
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).map_err(|e| write(e.to_string()))?;
        }
        std::fs::write(path, text).map_err(|e| write(e.to_string()))
    }
}

impl<P: ModelProvider> Recording<P> {
    /// Records `reply`'s exchange once it has completed.
    fn record(
        &self,
        request: &klf_model::ModelRequest,
        reply: BoxFuture<'static, Result<ModelReply, ModelError>>,
    ) -> BoxFuture<'static, Result<ModelReply, ModelError>> {
        let recorded = RecordedRequest {
            messages: request.messages.clone(),
            json: request.json,
        };
        let exchanges = self.exchanges.clone();
        Box::pin(async move {
            let reply = reply.await?;
            exchanges
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Exchange {
                    request: recorded,
                    reply: RecordedReply {
                        text: reply.text.clone(),
                        model: reply.model.clone(),
                        usage: reply.usage,
                        finish_reason: reply.finish_reason.clone(),
                    },
                });
            Ok(reply)
        })
    }
}

impl<P: ModelProvider> ModelProvider for Recording<P> {
    fn complete(
        &self,
        request: klf_model::ModelRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<ModelReply, ModelError>> {
        let reply = self.inner.complete(request.clone(), timeout);
        self.record(&request, reply)
    }

    fn complete_streaming(
        &self,
        request: klf_model::ModelRequest,
        timeout: Duration,
        progress: klf_model::ProgressSink,
    ) -> BoxFuture<'static, Result<ModelReply, ModelError>> {
        let reply = self
            .inner
            .complete_streaming(request.clone(), timeout, progress);
        self.record(&request, reply)
    }

    fn describe(&self) -> String {
        format!("{} (recording)", self.inner.describe())
    }

    fn model_name(&self) -> String {
        self.inner.model_name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use klf_model::ModelRequest;

    fn message(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    fn exchange(user: &str, answer: &str) -> Exchange {
        Exchange {
            request: RecordedRequest {
                messages: vec![message("system", "be brief"), message("user", user)],
                json: true,
            },
            reply: RecordedReply {
                text: answer.into(),
                model: "m".into(),
                usage: Usage {
                    input_tokens: 3,
                    output_tokens: 1,
                },
                finish_reason: None,
            },
        }
    }

    fn ask(user: &str) -> ModelRequest {
        ModelRequest {
            messages: vec![message("system", "be brief"), message("user", user)],
            json: true,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn answers_in_order_then_says_it_ran_out() {
        let replay = Replay::new("mem", vec![exchange("a", "1"), exchange("b", "2")]);
        let t = Duration::from_secs(1);
        assert_eq!(
            replay.complete(ask("a"), t).await.map(|r| r.text),
            Ok("1".into())
        );
        assert_eq!(
            replay.complete(ask("b"), t).await.map(|r| r.text),
            Ok("2".into())
        );
        let error = replay.complete(ask("c"), t).await.unwrap_err().to_string();
        assert!(
            error.contains("exchange 3 was asked for but the recording has only 2"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_different_request_names_the_exchange_and_the_difference() {
        let replay = Replay::new("mem", vec![exchange("find market opportunities", "1")]);
        let error = replay
            .complete(ask("find market chances"), Duration::from_secs(1))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("exchange 1 of 1 differs"), "{error}");
        assert!(
            error.contains("message 2 (user) differs at character 12"),
            "{error}"
        );
        assert!(
            error.contains("opportunities") && error.contains("chances"),
            "{error}"
        );
        assert!(error.contains("stale"), "{error}");
        // The mismatch did not use the exchange up.
        assert_eq!(replay.used(), 0);
    }

    #[test]
    fn differences_in_count_role_and_json_are_named() {
        let recorded = exchange("a", "1").request;
        let mut sent = recorded.clone();
        sent.json = false;
        assert!(difference(&recorded, &sent).is_some_and(|d| d.contains("JSON")));
        let mut sent = recorded.clone();
        sent.messages.push(message("user", "more"));
        assert!(difference(&recorded, &sent).is_some_and(|d| d.contains("2 messages")));
        let mut sent = recorded.clone();
        sent.messages[1].role = "assistant".into();
        assert!(difference(&recorded, &sent).is_some_and(|d| d.contains("\"assistant\"")));
        assert_eq!(difference(&recorded, &recorded), None);
    }

    #[tokio::test]
    async fn a_recording_saves_what_replays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/rec.json");
        let recording = Recording::new(Replay::new("mem", vec![exchange("a", "1")]));
        let reply = recording
            .complete(ask("a"), Duration::from_secs(1))
            .await
            .expect("reply");
        assert_eq!(reply.text, "1");
        recording.save(&path).expect("save");
        let replay = Replay::load(&path).expect("load");
        assert_eq!(
            replay
                .complete(ask("a"), Duration::from_secs(1))
                .await
                .map(|r| (r.text, r.usage.input_tokens)),
            Ok(("1".into(), 3))
        );
    }

    #[test]
    fn unreadable_and_malformed_files_are_typed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("none.json");
        assert!(matches!(
            Replay::load(&missing),
            Err(RecordingError::Read { .. })
        ));
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\"turns\": []}").expect("write");
        let error = Replay::load(&bad).unwrap_err();
        assert!(matches!(error, RecordingError::Parse { .. }), "{error}");
        assert!(error.to_string().contains("exchanges"), "{error}");
    }
}
