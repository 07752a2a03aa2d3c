//! A real HTTP server speaking the OpenAI chat-completions API, for tests of `ctx.model` and the
//! Chef's `openai` provider: each request gets the next scripted answer (the last repeats), and
//! every request body is kept so tests can check what was sent. A request with `stream: true` is
//! answered as server-sent events, one word per chunk, as real servers stream tokens. A test can
//! hold the answers ([`ModelServer::hold`]) to keep the calls waiting on the model in flight for as
//! long as it needs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// 200 with a chat completion whose content is this text.
    Content(String),
    /// 200 with a completion whose content is `echo: ` and the last message.
    Echo,
    /// Any status and raw body, with an optional `Retry-After` (seconds).
    Raw {
        status: u16,
        body: String,
        retry_after: Option<u32>,
    },
    /// A model that never stops on its own: it writes words until the request's `max_tokens`
    /// (then `finish_reason: length`), or forever, slowly, when there is none.
    Ramble,
}

#[derive(Default)]
struct State {
    script: Vec<Scripted>,
    requests: Vec<Value>,
}

/// The running server; stops when dropped.
pub struct ModelServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// True while answers are held.
    held: Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `text` as a stream of one-word chunks.
fn words(text: &str) -> futures_util::stream::BoxStream<'static, String> {
    let mut chunks: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
    if chunks.is_empty() {
        chunks.push(String::new());
    }
    futures_util::stream::iter(chunks).boxed()
}

/// A streamed chat completion: a `data:` event per chunk, then one with the finish reason and the
/// usage, then `data: [DONE]`.
fn stream(
    request: &Value,
    chunks: futures_util::stream::BoxStream<'static, String>,
    finish_reason: &'static str,
) -> axum::response::Response {
    let model = request["model"].clone();
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = counted.clone();
    let chunk_model = model.clone();
    let events = chunks
        .map(move |chunk| {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let event = json!({
                "object": "chat.completion.chunk",
                "model": chunk_model,
                "choices": [{ "index": 0, "delta": { "content": chunk }, "finish_reason": null }],
            });
            Ok::<_, std::convert::Infallible>(format!("data: {event}\n\n"))
        })
        .chain(futures_util::stream::once(async move {
            let last = json!({
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{ "index": 0, "delta": {}, "finish_reason": finish_reason }],
                "usage": { "prompt_tokens": 10, "completion_tokens": counted.load(std::sync::atomic::Ordering::Relaxed) },
            });
            Ok(format!("data: {last}\n\ndata: [DONE]\n\n"))
        }));
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
        axum::body::Body::from_stream(events),
    )
        .into_response()
}

fn completion(content: &str, request: &Value) -> Value {
    let prompt_tokens = request["messages"].as_array().map_or(0, |m| {
        m.iter()
            .map(|m| {
                m["content"]
                    .as_str()
                    .map_or(0, |c| c.split_whitespace().count())
            })
            .sum::<usize>()
    });
    json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": request["model"],
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": content }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": prompt_tokens, "completion_tokens": content.split_whitespace().count() },
    })
}

impl ModelServer {
    /// Starts on a free loopback port.
    pub async fn start(script: Vec<Scripted>) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(State {
            script,
            requests: Vec::new(),
        }));
        let shared = state.clone();
        let held = Arc::new(tokio::sync::watch::channel(false).0);
        let gate = held.clone();
        let app = Router::new().route(
            "/v1/chat/completions",
            post(move |body: String| {
                let shared = shared.clone();
                let gate = gate.clone();
                async move {
                    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let answer = {
                        let mut state = shared.lock().unwrap_or_else(|e| e.into_inner());
                        state.requests.push(request.clone());
                        let n = state.requests.len() - 1;
                        state
                            .script
                            .get(n)
                            .or(state.script.last())
                            .cloned()
                            .unwrap_or(Scripted::Echo)
                    };
                    // Recorded first, so a test sees the request while it is held. The sender
                    // lives in the server, so the wait cannot fail while the server runs.
                    let _ = gate.subscribe().wait_for(|held| !held).await;
                    let streams = request["stream"].as_bool() == Some(true);
                    match answer {
                        Scripted::Content(text) if streams => {
                            stream(&request, words(&text), "stop")
                        }
                        Scripted::Ramble => {
                            let limit = request["max_tokens"].as_u64();
                            let rambling = futures_util::stream::iter(0u64..)
                                .take_while(move |n| {
                                    std::future::ready(limit.is_none_or(|l| *n < l))
                                })
                                .then(move |n| async move {
                                    if limit.is_none() {
                                        tokio::time::sleep(std::time::Duration::from_millis(20))
                                            .await;
                                    }
                                    format!("word{n} ")
                                });
                            let reason = if limit.is_some() { "length" } else { "stop" };
                            if streams {
                                stream(&request, rambling.boxed(), reason)
                            } else {
                                let text: Vec<String> =
                                    futures_util::StreamExt::collect(rambling).await;
                                let mut body = completion(&text.concat(), &request);
                                body["choices"][0]["finish_reason"] = json!(reason);
                                (StatusCode::OK, body.to_string()).into_response()
                            }
                        }
                        Scripted::Content(text) => {
                            (StatusCode::OK, completion(&text, &request).to_string())
                                .into_response()
                        }
                        Scripted::Echo => {
                            let last = request["messages"]
                                .as_array()
                                .and_then(|m| m.last())
                                .and_then(|m| m["content"].as_str())
                                .unwrap_or_default()
                                .to_string();
                            let text = format!("echo: {last}");
                            (StatusCode::OK, completion(&text, &request).to_string())
                                .into_response()
                        }
                        Scripted::Raw {
                            status,
                            body,
                            retry_after,
                        } => {
                            let mut response = (
                                StatusCode::from_u16(status)
                                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                                body,
                            )
                                .into_response();
                            if let Some(seconds) = retry_after
                                && let Ok(value) = seconds.to_string().parse()
                            {
                                response.headers_mut().insert("retry-after", value);
                            }
                            response
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            state,
            held,
            task,
        })
    }

    /// The base URL a provider is configured with.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Holds the answer to every request from now on (each is recorded when it arrives, so
    /// [`ModelServer::requests`] shows it) until [`ModelServer::release`].
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Answers the held requests, and later ones at once again.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    /// Every request body received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.state
            .lock()
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }
}
