//! The model provider a node offers its functions (`ctx.model`) and, later, the Chef.
//!
//! One interface, [`ModelProvider`], so that a function written against `ctx.model` runs the
//! same whether the node talks to a hosted OpenAI-compatible endpoint or to a local server that
//! speaks the same API. A node without a configured provider has none: `ctx.model` then fails
//! with a message that says how to configure one, rather than pretending.

mod openai;

use futures_util::future::BoxFuture;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use openai::OpenAiCompatible;

/// One message of a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// What a caller asks of the model.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ModelRequest {
    pub messages: Vec<Message>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// Ask for a JSON object (`response_format: json_object`); the caller still validates it.
    pub json: bool,
    /// With `json`: the JSON Schema the answer must follow, sent as a structured output
    /// (`response_format: json_schema`) where the server accepts it. A server that refuses it is
    /// asked for a plain JSON object instead, and one that refuses that for plain text: the
    /// caller checks the answer against the schema either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
}

/// Tokens a call consumed, as the provider reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// The model's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelReply {
    pub text: String,
    /// The model that answered, as the provider names it.
    pub model: String,
    pub usage: Usage,
    /// Attempts it took (1 when the first succeeded).
    pub attempts: u32,
    /// Why the model stopped (`stop`, or `length` when `max_tokens` cut the answer off).
    #[serde(default)]
    pub finish_reason: Option<String>,
}

impl ModelReply {
    /// Whether `max_tokens` cut the answer off (it is then probably incomplete).
    pub fn truncated(&self) -> bool {
        self.finish_reason.as_deref() == Some("length")
    }
}

/// How far a streamed answer got, reported as it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streamed {
    /// Content chunks received (one token each on the servers seen so far).
    pub chunks: u64,
    /// Since the request was sent (the prompt's reading included).
    pub elapsed: Duration,
    /// Since the first chunk arrived: the rate of generation is `chunks / generating`.
    pub generating: Duration,
}

/// Told of each streamed chunk (it must be quick: it runs on the reading task).
pub type ProgressSink = std::sync::Arc<dyn Fn(Streamed) + Send + Sync>;

/// Why a model call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The provider refused the credentials (401/403): retrying cannot help.
    #[error("the model provider refused the credentials (HTTP {status}): {message}")]
    Unauthorized { status: u16, message: String },
    /// The request itself was rejected (400, 404, 422…): retrying cannot help.
    #[error("the model provider rejected the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// Still failing (429, 5xx, timeouts, connection errors) after every attempt.
    #[error("the model provider is unavailable after {attempts} attempts: {last}")]
    Exhausted { attempts: u32, last: String },
    /// The provider answered 2xx with something that is not a chat completion.
    #[error("the model provider's answer is malformed: {0}")]
    Malformed(String),
    /// The request is not one the provider can send (no messages, bad configuration).
    #[error("bad model request: {0}")]
    BadRequest(String),
}

/// A chat-completion model.
pub trait ModelProvider: Send + Sync + 'static {
    /// Completes `request`, giving up by `timeout`.
    fn complete(
        &self,
        request: ModelRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<ModelReply, ModelError>>;
    /// Like [`ModelProvider::complete`], telling `progress` of each chunk as the answer streams
    /// in. Providers that cannot stream answer at once (the default).
    fn complete_streaming(
        &self,
        request: ModelRequest,
        timeout: Duration,
        progress: ProgressSink,
    ) -> BoxFuture<'static, Result<ModelReply, ModelError>> {
        let _ = progress;
        self.complete(request, timeout)
    }
    /// What `klf` shows about the provider (never the key).
    fn describe(&self) -> String;
    /// The model requests name (`gen_ai.request.model` on exchange spans).
    fn model_name(&self) -> String {
        self.describe()
    }
}

/// How to reach an OpenAI-compatible endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// Up to and including the version segment, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// Attempts per call, for 429, 5xx, timeouts and connection errors.
    pub max_attempts: u32,
    /// First backoff; doubled per attempt unless the provider sends `Retry-After`.
    pub backoff: Duration,
}

impl ModelConfig {
    /// The environment's provider: `KLF_MODEL_BASE_URL` (or `OPENAI_BASE_URL`), `KLF_MODEL`
    /// (or `OPENAI_MODEL`, default `gpt-4o-mini`) and `KLF_MODEL_API_KEY` (or `OPENAI_API_KEY`).
    /// `None` when no base URL is set: the node has no model provider.
    pub fn from_env() -> Option<Self> {
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
        };
        let base_url = var(&["KLF_MODEL_BASE_URL", "OPENAI_BASE_URL"])?;
        Some(Self {
            base_url,
            model: var(&["KLF_MODEL", "OPENAI_MODEL"]).unwrap_or_else(|| "gpt-4o-mini".into()),
            api_key: var(&["KLF_MODEL_API_KEY", "OPENAI_API_KEY"]),
            max_attempts: 4,
            backoff: Duration::from_millis(250),
        })
    }
}

/// The message `ctx.model` gives when the node has no provider.
pub fn unavailable_message(node: &str) -> String {
    format!(
        "no model provider is configured on node {node}: start it with KLF_MODEL_BASE_URL (an \
         OpenAI-compatible endpoint such as https://api.openai.com/v1), KLF_MODEL and \
         KLF_MODEL_API_KEY set"
    )
}
