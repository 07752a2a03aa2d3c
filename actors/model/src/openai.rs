//! Any OpenAI-compatible chat-completions endpoint (`POST {base_url}/chat/completions`).
//!
//! Retries follow what such endpoints mean: 429 and 5xx, timeouts and connection failures are
//! transient (honouring `Retry-After` when the provider sends one); 400/401/403/404/422 are not,
//! and retrying them would only spend the caller's deadline and the user's quota — except that a
//! 400 to a request using a newer feature (`response_format: json_schema`, streaming) is asked again
//! in a simpler shape, so older servers and small local ones work too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use serde_json::{Value, json};
use tracing::{debug, warn};

use super::{
    ModelConfig, ModelError, ModelProvider, ModelReply, ModelRequest, ProgressSink, Streamed, Usage,
};

/// Longest `Retry-After` honoured; beyond it the call gives up rather than hang.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Most of a provider's error body quoted back in messages.
const MAX_QUOTED: usize = 300;

/// How much of OpenAI's `response_format` a server has accepted, best first. A server that
/// rejects a level is asked again one level down, and the level is remembered for later calls.
const FORMAT_SCHEMA: u8 = 2;
const FORMAT_OBJECT: u8 = 1;
const FORMAT_TEXT: u8 = 0;

/// A provider behind an OpenAI-compatible HTTP API.
#[derive(Clone)]
pub struct OpenAiCompatible {
    client: reqwest::Client,
    config: ModelConfig,
    /// The best `response_format` level this server accepts (see [`FORMAT_SCHEMA`]).
    format: Arc<AtomicU8>,
    /// Whether this server streams (`stream: true`); cleared when it refuses.
    streams: Arc<AtomicBool>,
}

/// One way of sending a request: which `response_format` and whether to stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    format: u8,
    stream: bool,
}

impl OpenAiCompatible {
    pub fn new(config: ModelConfig) -> Result<Self, ModelError> {
        if !(config.base_url.starts_with("http://") || config.base_url.starts_with("https://")) {
            return Err(ModelError::BadRequest(format!(
                "base URL {:?} must start with http:// or https://",
                config.base_url
            )));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ModelError::BadRequest(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            config,
            format: Arc::new(AtomicU8::new(FORMAT_SCHEMA)),
            streams: Arc::new(AtomicBool::new(true)),
        })
    }

    fn url(&self) -> String {
        format!(
            "{}/chat/completions",
            self.config.base_url.trim_end_matches('/')
        )
    }

    fn body(&self, request: &ModelRequest, shape: Shape) -> Value {
        let mut body = json!({
            "model": self.config.model,
            "messages": request.messages,
        });
        if let Some(max) = request.max_tokens {
            body["max_tokens"] = json!(max);
        }
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        if request.json {
            match (&request.schema, shape.format) {
                (Some(schema), FORMAT_SCHEMA) => {
                    body["response_format"] = json!({
                        "type": "json_schema",
                        "json_schema": { "name": "answer", "schema": schema },
                    });
                }
                (_, FORMAT_SCHEMA | FORMAT_OBJECT) => {
                    body["response_format"] = json!({ "type": "json_object" });
                }
                _ => {}
            }
        }
        if shape.stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({ "include_usage": true });
        }
        body
    }

    /// The shape to try first for `request`.
    fn first_shape(&self, request: &ModelRequest, stream: bool) -> Shape {
        let known = self.format.load(Ordering::Relaxed);
        let format = match (request.json, &request.schema) {
            (false, _) => FORMAT_TEXT,
            (true, None) => known.min(FORMAT_OBJECT),
            (true, Some(_)) => known,
        };
        Shape {
            format,
            stream: stream && self.streams.load(Ordering::Relaxed),
        }
    }

    /// After the server rejected `shape` (400/422), the next one to try, if any: first without
    /// streaming, then one `response_format` level down. What was refused is remembered.
    fn fallback(&self, request: &ModelRequest, shape: Shape) -> Option<Shape> {
        if shape.stream {
            self.streams.store(false, Ordering::Relaxed);
            return Some(Shape {
                stream: false,
                ..shape
            });
        }
        if request.json && shape.format > FORMAT_TEXT {
            let lower = shape.format - 1;
            self.format.fetch_min(lower, Ordering::Relaxed);
            return Some(Shape {
                format: lower,
                ..shape
            });
        }
        None
    }

    async fn complete_within(
        self,
        request: ModelRequest,
        timeout: Duration,
        progress: Option<ProgressSink>,
    ) -> Result<ModelReply, ModelError> {
        if request.messages.is_empty() {
            return Err(ModelError::BadRequest("no messages to send".into()));
        }
        let started = Instant::now();
        let deadline = started + timeout;
        let mut shape = self.first_shape(&request, progress.is_some());
        let attempts = self.config.max_attempts.max(1);
        let mut backoff = self.config.backoff;
        let mut last = String::new();
        let mut attempt = 0;
        while attempt < attempts {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                last = format!("deadline of {timeout:?} reached");
                return Err(ModelError::Exhausted {
                    attempts: attempt - 1,
                    last,
                });
            }
            let mut send = self
                .client
                .post(self.url())
                .json(&self.body(&request, shape))
                .timeout(remaining);
            if let Some(key) = &self.config.api_key {
                send = send.bearer_auth(key);
            }
            let wait = match send.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        let streamed = response
                            .headers()
                            .get(reqwest::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|v| v.starts_with("text/event-stream"));
                        if streamed {
                            return read_stream(response, attempt, started, progress.as_ref())
                                .await;
                        }
                        let text = response.text().await.map_err(|e| {
                            ModelError::Malformed(format!("the answer could not be read: {e}"))
                        })?;
                        return parse_reply(&text, attempt);
                    }
                    let retry_after = retry_after(response.headers());
                    let message = quote(&response.text().await.unwrap_or_default());
                    match status.as_u16() {
                        401 | 403 => {
                            return Err(ModelError::Unauthorized {
                                status: status.as_u16(),
                                message,
                            });
                        }
                        429 | 500..=599 => {
                            last = format!("HTTP {}: {message}", status.as_u16());
                            retry_after.unwrap_or(backoff)
                        }
                        code @ (400 | 422) if refuses_shape(&message) => {
                            match self.fallback(&request, shape) {
                                // Not the server's fault, and not an attempt: ask in a simpler shape.
                                Some(simpler) => {
                                    debug!(?shape, ?simpler, %message, "the server refused this request shape; asking more simply");
                                    shape = simpler;
                                    attempt -= 1;
                                    continue;
                                }
                                None => {
                                    return Err(ModelError::Rejected {
                                        status: code,
                                        message,
                                    });
                                }
                            }
                        }
                        code => {
                            return Err(ModelError::Rejected {
                                status: code,
                                message,
                            });
                        }
                    }
                }
                Err(e) => {
                    last = if e.is_timeout() {
                        "timed out".to_string()
                    } else {
                        format!("cannot reach {}: {e}", self.config.base_url)
                    };
                    backoff
                }
            };
            if attempt == attempts {
                break;
            }
            if wait > MAX_RETRY_AFTER || Instant::now() + wait >= deadline {
                warn!(
                    ?wait,
                    "the model provider asks to wait past the deadline; giving up"
                );
                return Err(ModelError::Exhausted {
                    attempts: attempt,
                    last: format!("{last} (asked to wait {wait:?}, past the deadline)"),
                });
            }
            debug!(attempt, ?wait, %last, "retrying the model provider");
            tokio::time::sleep(wait).await;
            backoff = backoff.saturating_mul(2);
        }
        Err(ModelError::Exhausted { attempts, last })
    }
}

impl ModelProvider for OpenAiCompatible {
    fn complete(
        &self,
        request: ModelRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<ModelReply, ModelError>> {
        Box::pin(self.clone().complete_within(request, timeout, None))
    }

    fn complete_streaming(
        &self,
        request: ModelRequest,
        timeout: Duration,
        progress: ProgressSink,
    ) -> BoxFuture<'static, Result<ModelReply, ModelError>> {
        Box::pin(
            self.clone()
                .complete_within(request, timeout, Some(progress)),
        )
    }

    fn describe(&self) -> String {
        format!("{} at {}", self.config.model, self.config.base_url)
    }

    fn model_name(&self) -> String {
        self.config.model.clone()
    }
}

/// Reads a server-sent-events answer (`data: {chunk}` lines, then `data: [DONE]`), telling
/// `progress` of each content chunk. The request's own timeout bounds the whole read, so a model
/// that never stops is cut off at the deadline (and, before that, by `max_tokens`).
async fn read_stream(
    mut response: reqwest::Response,
    attempts: u32,
    started: Instant,
    progress: Option<&ProgressSink>,
) -> Result<ModelReply, ModelError> {
    let mut stream = StreamedReply::default();
    let mut pending: Vec<u8> = Vec::new();
    // Generation starts with the first content chunk; before it the server reads the prompt.
    let mut first_chunk: Option<Instant> = None;
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) if e.is_timeout() => {
                return Err(ModelError::Exhausted {
                    attempts,
                    last: format!(
                        "timed out while the answer streamed in ({} chunks so far)",
                        stream.chunks
                    ),
                });
            }
            Err(e) => {
                return Err(ModelError::Malformed(format!(
                    "the stream broke after {} chunks: {e}",
                    stream.chunks
                )));
            }
        };
        if pending.len() + chunk.len() > MAX_STREAM_BYTES {
            return Err(ModelError::Malformed(format!(
                "the streamed answer is larger than {MAX_STREAM_BYTES} bytes"
            )));
        }
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let before = stream.chunks;
            if stream.line(&String::from_utf8_lossy(&line))? {
                return Ok(stream.reply(attempts));
            }
            if stream.chunks != before
                && let Some(progress) = progress
            {
                let first = *first_chunk.get_or_insert_with(Instant::now);
                progress(Streamed {
                    chunks: stream.chunks,
                    elapsed: started.elapsed(),
                    generating: first.elapsed(),
                });
            }
        }
    }
    if !pending.is_empty() {
        stream.line(&String::from_utf8_lossy(&pending))?;
    }
    Ok(stream.reply(attempts))
}

/// Largest streamed answer read (the text of a chat answer, with its JSON framing).
const MAX_STREAM_BYTES: usize = 16 * 1024 * 1024;

/// What the chunks of a streamed answer add up to.
#[derive(Debug, Default)]
struct StreamedReply {
    text: String,
    model: String,
    usage: Usage,
    finish_reason: Option<String>,
    chunks: u64,
}

impl StreamedReply {
    /// Takes one line of the event stream; true at `data: [DONE]`.
    fn line(&mut self, line: &str) -> Result<bool, ModelError> {
        let Some(data) = line.trim().strip_prefix("data:") else {
            return Ok(false); // comments, `event:` lines and blank separators
        };
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(true);
        }
        let value: Value = serde_json::from_str(data).map_err(|e| {
            ModelError::Malformed(format!(
                "a streamed chunk is not JSON ({e}): {}",
                quote(data)
            ))
        })?;
        if let Some(model) = value.get("model").and_then(Value::as_str) {
            self.model = model.to_string();
        }
        if let Some(content) = value
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            if !content.is_empty() {
                self.chunks += 1;
            }
            self.text.push_str(content);
        }
        if let Some(reason) = value
            .pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
        {
            self.finish_reason = Some(reason.to_string());
        }
        if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
            self.usage = usage_of(usage);
        }
        Ok(false)
    }

    fn reply(self, attempts: u32) -> ModelReply {
        let mut usage = self.usage;
        // A server that does not report usage: count the streamed chunks as tokens.
        if usage.output_tokens == 0 {
            usage.output_tokens = self.chunks;
        }
        ModelReply {
            text: self.text,
            model: self.model,
            usage,
            attempts,
            finish_reason: self.finish_reason,
        }
    }
}

fn usage_of(usage: &Value) -> Usage {
    let count = |field: &str| usage.get(field).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: count("prompt_tokens"),
        output_tokens: count("completion_tokens"),
    }
}

/// Whether a 400/422 says the request's *shape* is not supported (structured outputs, streaming)
/// rather than something else about it (a prompt over the context size, a bad model name): only
/// then is it asked again more simply, and the simpler shape remembered for the server.
fn refuses_shape(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "response_format",
        "json_schema",
        "json_object",
        "schema",
        "stream",
    ]
    .iter()
    .any(|feature| message.contains(feature))
}

/// `Retry-After` in seconds (the HTTP-date form is rare from these APIs and is ignored).
///
/// A wait too long for a `Duration` (`1e20`, `inf`) saturates: it is past any deadline, so the
/// call gives up instead of panicking on the conversion. A negative, NaN or unparsable value says
/// nothing usable and is ignored.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let seconds: f64 = text.trim().parse().ok()?;
    if seconds.is_nan() || seconds < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
}

fn quote(text: &str) -> String {
    let text = text.trim();
    if text.len() <= MAX_QUOTED {
        return text.to_string();
    }
    let mut end = MAX_QUOTED;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn parse_reply(text: &str, attempts: u32) -> Result<ModelReply, ModelError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ModelError::Malformed(format!("not JSON ({e}): {}", quote(text))))?;
    let content = value
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ModelError::Malformed(format!("no choices[0].message.content in {}", quote(text)))
        })?;
    Ok(ModelReply {
        text: content.to_string(),
        model: value
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        usage: value.get("usage").map(usage_of).unwrap_or_default(),
        attempts,
        finish_reason: value
            .pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::post;

    use super::*;
    use crate::Message;

    /// A chat-completions server that answers each request with the next scripted response.
    async fn server(
        script: Vec<(u16, &'static str, Option<&'static str>)>,
    ) -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let script = Arc::new(script);
        let app = Router::new().route(
            "/v1/chat/completions",
            post(move |headers: HeaderMap, body: String| {
                let script = script.clone();
                let counter = counter.clone();
                async move {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let (status, text, retry) = script[n.min(script.len() - 1)];
                    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    assert_eq!(request["model"], "test-model");
                    assert_eq!(
                        headers.get("authorization").and_then(|v| v.to_str().ok()),
                        Some("Bearer k")
                    );
                    let mut response = (
                        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                        text.to_string(),
                    )
                        .into_response();
                    if let Some(retry) = retry {
                        response
                            .headers_mut()
                            .insert("retry-after", retry.parse().expect("header"));
                    }
                    response
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/v1"), hits)
    }

    fn provider(base_url: String) -> OpenAiCompatible {
        OpenAiCompatible::new(ModelConfig {
            base_url,
            model: "test-model".into(),
            api_key: Some("k".into()),
            max_attempts: 3,
            backoff: Duration::from_millis(5),
        })
        .expect("provider")
    }

    fn ask() -> ModelRequest {
        ModelRequest {
            messages: vec![Message {
                role: "user".into(),
                content: "hi".into(),
            }],
            ..Default::default()
        }
    }

    const GOOD: &str = r#"{"model":"test-model","choices":[{"message":{"role":"assistant","content":"hello"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;

    #[tokio::test]
    async fn a_good_answer_carries_text_and_usage() {
        let (url, hits) = server(vec![(200, GOOD, None)]).await;
        let reply = provider(url)
            .complete(ask(), Duration::from_secs(5))
            .await
            .expect("reply");
        assert_eq!(reply.text, "hello");
        assert_eq!(
            reply.usage,
            Usage {
                input_tokens: 3,
                output_tokens: 1
            }
        );
        assert_eq!((reply.attempts, hits.load(Ordering::SeqCst)), (1, 1));
    }

    #[tokio::test]
    async fn rate_limits_and_server_errors_are_retried_honouring_retry_after() {
        let (url, hits) = server(vec![
            (429, "slow down", Some("0")),
            (503, "busy", None),
            (200, GOOD, None),
        ])
        .await;
        let reply = provider(url)
            .complete(ask(), Duration::from_secs(5))
            .await
            .expect("reply");
        assert_eq!((reply.attempts, hits.load(Ordering::SeqCst)), (3, 3));
    }

    #[tokio::test]
    async fn bad_credentials_are_not_retried() {
        let (url, hits) = server(vec![(401, "bad key", None), (200, GOOD, None)]).await;
        let error = provider(url)
            .complete(ask(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(error, ModelError::Unauthorized { status: 401, .. }),
            "{error}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_rejected_request_is_not_retried() {
        let (url, hits) = server(vec![(400, "no such model", None), (200, GOOD, None)]).await;
        let error = provider(url)
            .complete(ask(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("no such model"), "{error}");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn persistent_failure_ends_with_the_last_reason() {
        let (url, hits) = server(vec![(500, "boom", None)]).await;
        let error = provider(url)
            .complete(ask(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(error, ModelError::Exhausted { attempts: 3, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("boom"), "{error}");
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_retry_after_past_the_deadline_gives_up_at_once() {
        let (url, hits) = server(vec![(429, "later", Some("20"))]).await;
        let started = Instant::now();
        let error = provider(url)
            .complete(ask(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(error.to_string().contains("past the deadline"), "{error}");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn retry_after_reads_seconds_saturates_absurd_waits_and_ignores_nonsense() {
        let parse = |value: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::RETRY_AFTER, value.parse().expect("header"));
            retry_after(&headers)
        };
        assert_eq!(parse("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse("1e20"), Some(Duration::MAX));
        assert_eq!(parse("inf"), Some(Duration::MAX));
        assert_eq!(parse("-1"), None);
        assert_eq!(parse("-inf"), None);
        assert_eq!(parse("NaN"), None);
        assert_eq!(parse("soon"), None);
        assert_eq!(parse("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn an_absurd_retry_after_gives_up_at_once_instead_of_panicking() {
        let (url, hits) = server(vec![(429, "later", Some("1e20"))]).await;
        let error = provider(url)
            .complete(ask(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("past the deadline"), "{error}");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn malformed_answers_and_unreachable_endpoints_are_typed() {
        let (url, _) = server(vec![(200, "{\"choices\":[]}", None)]).await;
        let error = provider(url)
            .complete(ask(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(error, ModelError::Malformed(_)), "{error}");

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        let error = provider(format!("http://{addr}/v1"))
            .complete(ask(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(error, ModelError::Exhausted { .. }), "{error}");
        assert!(error.to_string().contains("cannot reach"), "{error}");
    }

    /// A server whose every answer is `respond(request body)`; it counts the requests it got.
    async fn server_with(
        respond: impl Fn(Value) -> axum::response::Response + Send + Sync + 'static,
    ) -> (String, Arc<std::sync::Mutex<Vec<Value>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let respond = Arc::new(respond);
        let app = Router::new().route(
            "/v1/chat/completions",
            post(move |body: String| {
                let (log, respond) = (log.clone(), respond.clone());
                async move {
                    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    log.lock().expect("log").push(request.clone());
                    respond(request)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/v1"), seen)
    }

    fn sse(chunks: &[&str], finish: &str) -> axum::response::Response {
        let mut body = String::new();
        for chunk in chunks {
            let event = json!({"model": "test-model", "choices": [{"delta": {"content": chunk}, "finish_reason": null}]});
            body.push_str(&format!("data: {event}\n\n"));
        }
        let last = json!({"model": "test-model", "choices": [{"delta": {}, "finish_reason": finish}], "usage": {"prompt_tokens": 7, "completion_tokens": chunks.len()}});
        body.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
        (
            [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
            body,
        )
            .into_response()
    }

    fn json_ask() -> ModelRequest {
        ModelRequest {
            json: true,
            schema: Some(json!({"type": "object"})),
            max_tokens: Some(32),
            ..ask()
        }
    }

    #[tokio::test]
    async fn a_streamed_answer_is_assembled_and_reports_progress() {
        let (url, seen) = server_with(|_| sse(&["{\"a\"", ": ", "1}"], "stop")).await;
        let chunks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = chunks.clone();
        let progress: ProgressSink =
            Arc::new(move |s: Streamed| log.lock().expect("log").push(s.chunks));
        let reply = provider(url)
            .complete_streaming(json_ask(), Duration::from_secs(5), progress)
            .await
            .expect("reply");
        assert_eq!(reply.text, "{\"a\": 1}");
        assert_eq!(
            reply.usage,
            Usage {
                input_tokens: 7,
                output_tokens: 3
            }
        );
        assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
        assert!(!reply.truncated());
        assert_eq!(*chunks.lock().expect("chunks"), vec![1, 2, 3]);
        let sent = seen.lock().expect("seen")[0].clone();
        assert_eq!(sent["stream"], json!(true));
        assert_eq!(sent["max_tokens"], json!(32));
        assert_eq!(sent["response_format"]["type"], json!("json_schema"));
    }

    #[tokio::test]
    async fn an_answer_cut_off_by_max_tokens_says_so() {
        let (url, _) = server_with(|_| sse(&["{\"a\": [1, 2"], "length")).await;
        let progress: ProgressSink = Arc::new(|_| {});
        let reply = provider(url)
            .complete_streaming(json_ask(), Duration::from_secs(5), progress)
            .await
            .expect("reply");
        assert!(reply.truncated());
    }

    #[tokio::test]
    async fn a_server_without_structured_outputs_or_streaming_is_asked_more_simply_and_remembered()
    {
        // Refuses json_schema and streaming (400), answers plain json_object requests.
        let (url, seen) = server_with(|request| {
            let refused = request["stream"] == json!(true)
                || request["response_format"]["type"] == json!("json_schema");
            if refused {
                (
                    StatusCode::BAD_REQUEST,
                    "unsupported parameter: stream or response_format",
                )
                    .into_response()
            } else {
                (StatusCode::OK, GOOD).into_response()
            }
        })
        .await;
        let client = provider(url);
        let progress: ProgressSink = Arc::new(|_| {});
        let reply = client
            .complete_streaming(json_ask(), Duration::from_secs(5), progress.clone())
            .await
            .expect("reply");
        assert_eq!((reply.text.as_str(), reply.attempts), ("hello", 1));
        let shapes = |from: usize| -> Vec<(Value, Value)> {
            seen.lock().expect("seen")[from..]
                .iter()
                .map(|r| (r["stream"].clone(), r["response_format"]["type"].clone()))
                .collect()
        };
        assert_eq!(
            shapes(0),
            vec![
                (json!(true), json!("json_schema")),
                (Value::Null, json!("json_schema")),
                (Value::Null, json!("json_object")),
            ]
        );
        // The next call goes straight to what works.
        client
            .complete_streaming(json_ask(), Duration::from_secs(5), progress)
            .await
            .expect("second reply");
        assert_eq!(shapes(3), vec![(Value::Null, json!("json_object"))]);
    }

    #[tokio::test]
    async fn a_prompt_over_the_context_size_is_rejected_without_downgrading_the_server() {
        let (url, seen) = server_with(|request| {
            if request["messages"][0]["content"] == json!("too long") {
                (
                    StatusCode::BAD_REQUEST,
                    "the request exceeds the available context size",
                )
                    .into_response()
            } else {
                sse(&["{}"], "stop")
            }
        })
        .await;
        let client = provider(url);
        let progress: ProgressSink = Arc::new(|_| {});
        let mut long = json_ask();
        long.messages[0].content = "too long".into();
        let error = client
            .complete_streaming(long, Duration::from_secs(5), progress.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(error, ModelError::Rejected { status: 400, .. }),
            "{error}"
        );
        assert_eq!(
            seen.lock().expect("seen").len(),
            1,
            "asked once, not in simpler shapes"
        );
        // The next request still streams and asks for structured output.
        client
            .complete_streaming(json_ask(), Duration::from_secs(5), progress)
            .await
            .expect("reply");
        let last = seen
            .lock()
            .expect("seen")
            .last()
            .cloned()
            .unwrap_or_default();
        assert_eq!(last["stream"], json!(true));
        assert_eq!(last["response_format"]["type"], json!("json_schema"));
    }

    #[tokio::test]
    async fn a_server_that_refuses_every_shape_is_a_rejected_request() {
        let (url, seen) = server_with(|_| {
            (StatusCode::BAD_REQUEST, "unsupported response_format").into_response()
        })
        .await;
        let error = provider(url)
            .complete(json_ask(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(error, ModelError::Rejected { status: 400, .. }),
            "{error}"
        );
        // json_schema, json_object, then plain text: three shapes, then it gives up.
        assert_eq!(seen.lock().expect("seen").len(), 3);
    }
}
