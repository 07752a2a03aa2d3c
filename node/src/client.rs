//! The HTTP client behind every client command: finds the node's API and token from `--data DIR`,
//! or takes them from `--api URL --token T`.

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use klf_actors::node::DataDir;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::types::{ChefStreamLine, ErrorBody};

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientOptions {
    /// Data directory of a local node (its API address and admin token are read from it).
    #[arg(long, env = "KLF_DATA")]
    pub data: Option<PathBuf>,
    /// API base URL of a node, such as http://127.0.0.1:7401.
    #[arg(long, env = "KLF_API", requires = "token")]
    pub api: Option<String>,
    /// Bearer token for --api.
    #[arg(long, env = "KLF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long)]
    pub json: bool,
}

/// A client of one node's API.
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
    timeout: std::time::Duration,
}

/// Turns `host:port` (as stored in node.json) into a URL, reaching a wildcard bind via loopback.
fn base_url(api: &str) -> String {
    if api.starts_with("http://") || api.starts_with("https://") {
        return api.trim_end_matches('/').to_string();
    }
    let api = api
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    format!("http://{api}")
}

impl ApiClient {
    pub fn from_options(options: &ClientOptions) -> anyhow::Result<Self> {
        let (base, token) = match (&options.api, &options.token, &options.data) {
            (Some(api), Some(token), _) => (base_url(api), token.clone()),
            (None, _, Some(data)) => {
                let dir = DataDir::new(data);
                let settings = dir
                    .load_settings()
                    .with_context(|| format!("{} holds no node", data.display()))?;
                let api = settings.api.ok_or_else(|| {
                    anyhow!(
                        "the node in {} has not run yet (no API address); start it with `klf up --data {}`",
                        data.display(),
                        data.display()
                    )
                })?;
                (base_url(&api), dir.admin_bearer()?)
            }
            _ => bail!("say which node to talk to: --data DIR, or --api URL --token TOKEN"),
        };
        let http = reqwest::Client::builder().build()?;
        Ok(Self {
            base,
            token,
            http,
            timeout: std::time::Duration::from_secs(15),
        })
    }

    /// Waits up to `timeout` for each answer (default 15 s).
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        self.send_traced(request).await.0
    }

    /// Sends `request` and reads its JSON answer; also returns the answer's `x-klf-trace-id`,
    /// which an invoke carries on success and on failure alike.
    async fn send_traced<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> (anyhow::Result<T>, Option<String>) {
        let response = match request
            .timeout(self.timeout)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the node's API at {}", self.base))
        {
            Ok(response) => response,
            Err(e) => return (Err(e), None),
        };
        let trace_id = response
            .headers()
            .get("x-klf-trace-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let status = response.status();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => return (Err(e.into()), trace_id),
        };
        if !status.is_success() {
            return (
                Err(anyhow::anyhow!("{status}: {}", error_message(&body))),
                trace_id,
            );
        }
        let answer =
            serde_json::from_slice(&body).context("the node's API answered with unexpected JSON");
        (answer, trace_id)
    }

    /// POSTs `body`; the answer and its trace id (see [`Self::send_traced`]).
    pub async fn post_json_traced<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> (anyhow::Result<T>, Option<String>) {
        self.send_traced(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    pub async fn put_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// POSTs `body` and hands each line of the Chef's NDJSON answer to `each` as it arrives.
    pub async fn post_chef_stream(
        &self,
        path: &str,
        body: &impl Serialize,
        mut each: impl FnMut(ChefStreamLine) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .timeout(self.timeout)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the node's API at {}", self.base))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await?;
            bail!("{status}: {}", error_message(&body));
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                each(
                    serde_json::from_slice(&line)
                        .context("the node's API sent a line this klf cannot read")?,
                )?;
            }
        }
        Ok(())
    }
}

/// The message of an error answer: the API's `{"error":{"message"}}`, else the body as text (a
/// proxy's page, say).
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}
