//! The node's HTTP client behind `ctx.http.fetch`: reqwest with rustls, no proxy, no automatic
//! redirects. Every hop is checked against the function's allow rules and every address against
//! the [`AddressPolicy`]: IP literals before the request, names when they resolve (the resolver
//! drops refused addresses, so what is connected to is what was checked).

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderName, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode, Url};
use tracing::Span;

use super::policy::{AddressPolicy, check_url, redact};
use super::{HttpGrant, MAX_REDIRECTS};
use crate::sandbox::SandboxError;

/// One header of a request; a `secret` one was injected by name and is never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
    pub secret: bool,
}

impl fmt::Debug for HttpHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = if self.secret { "<secret>" } else { &self.value };
        write!(f, "{}: {value}", self.name)
    }
}

/// A request as the sandbox hands it to the host, already checked against `grant`.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: Method,
    pub url: Url,
    pub headers: Vec<HttpHeader>,
    pub body: Option<Vec<u8>>,
    /// The function's `[http]` grant, applied again to every redirect.
    pub grant: Arc<HttpGrant>,
}

/// What a request answered (after redirects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-case names; repeated headers joined with `, `; values that are not text left out.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// The URL that answered, as shown in spans (query values redacted).
    pub url: String,
}

/// Requests one function made through this client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCounts {
    /// Requests sent (each redirect hop is one), by host.
    pub by_host: BTreeMap<String, u64>,
    /// Requests that got no answer (refused address, connection or TLS failure).
    pub failed: u64,
}

impl HttpCounts {
    pub fn requests(&self) -> u64 {
        self.by_host.values().sum()
    }
}

/// Why the resolver gave no address for a name.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to refused addresses: {reason}")]
struct AddressRefused {
    host: String,
    reason: String,
}

/// Resolves names with the system resolver and keeps only the addresses the policy allows.
struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match policy.check(addr.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused.get_or_insert(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let reason = refused.unwrap_or_else(|| "no address".to_string());
                return Err(Box::new(AddressRefused { host, reason }) as Box<_>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for ctx.http")]
pub struct ClientError(#[source] reqwest::Error);

/// The HTTP client of a node (or of a test host): one connection pool for every function.
pub struct HttpClient {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    counts: Mutex<BTreeMap<String, HttpCounts>>,
}

fn denied(detail: String) -> SandboxError {
    SandboxError::CapabilityDenied {
        capability: "http".into(),
        detail,
    }
}

/// What a failed send says: the causes without the URL (its query may hold a key); a refused
/// address is a [`SandboxError::CapabilityDenied`].
fn send_error(url: &Url, error: reqwest::Error) -> SandboxError {
    let mut source: Option<&(dyn StdError + 'static)> = error.source();
    let mut causes = Vec::new();
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<AddressRefused>() {
            return denied(refused.to_string());
        }
        causes.push(cause.to_string());
        source = cause.source();
    }
    causes.dedup();
    let what = if error.is_connect() {
        "cannot connect"
    } else if error.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    SandboxError::Http(format!(
        "fetch {}: {what}{}",
        redact(url),
        if causes.is_empty() {
            String::new()
        } else {
            format!(": {}", causes.join(": "))
        }
    ))
}

impl HttpClient {
    /// A client that lets functions reach addresses inside `policy`'s allowances besides public
    /// ones.
    pub fn new(policy: AddressPolicy) -> Result<Self, ClientError> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .user_agent(concat!("klf-function/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError)?;
        Ok(Self {
            client,
            policy,
            counts: Mutex::default(),
        })
    }

    /// The operator's allowances this client applies.
    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// Requests per function so far.
    pub fn counts(&self) -> BTreeMap<String, HttpCounts> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn count(&self, function: &str, host: Option<&str>) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = counts.entry(function.to_string()).or_default();
        match host {
            Some(host) => *entry.by_host.entry(host.to_string()).or_default() += 1,
            None => entry.failed += 1,
        }
    }

    /// Sends `request` for `function`, following redirects within the grant; `span` (an
    /// `http.request` span the caller made) gets `http.request.method`, `url.full` (query values
    /// redacted) and `http.response.status_code`. The caller bounds the time.
    pub async fn fetch(
        &self,
        function: &str,
        request: HttpRequest,
        span: &Span,
    ) -> Result<HttpResponse, SandboxError> {
        let HttpRequest {
            mut method,
            mut url,
            mut headers,
            mut body,
            grant,
        } = request;
        if let Some(body) = &body
            && body.len() as u64 > grant.max_request_bytes
        {
            return Err(SandboxError::Http(format!(
                "the request body of {} bytes is over the limit of {} bytes ([http] \
                 max_request_bytes in klf.toml)",
                body.len(),
                grant.max_request_bytes
            )));
        }
        for hop in 0..=MAX_REDIRECTS {
            check_url(&grant.allow, &url).map_err(denied)?;
            if let Some(ip) = literal_ip(&url) {
                self.policy.check(ip).map_err(denied)?;
            }
            span.record("http.request.method", method.as_str());
            span.record("url.full", redact(&url).as_str());
            let mut builder = self.client.request(method.clone(), url.clone());
            for header in &headers {
                let name = HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| {
                    SandboxError::Http(format!("{:?} is not a valid header name", header.name))
                })?;
                let mut value = HeaderValue::from_str(&header.value).map_err(|_| {
                    SandboxError::Http(format!(
                        "the value of header {:?} is not valid header text",
                        header.name
                    ))
                })?;
                value.set_sensitive(header.secret);
                builder = builder.header(name, value);
            }
            if let Some(body) = &body {
                builder = builder.body(body.clone());
            }
            let response = match builder.send().await {
                Ok(response) => response,
                Err(error) => {
                    self.count(function, None);
                    return Err(send_error(&url, error));
                }
            };
            self.count(function, url.host_str());
            let status = response.status();
            span.record("http.response.status_code", status.as_u16());
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_string);
            if status.is_redirection()
                && let Some(location) = location
            {
                if hop == MAX_REDIRECTS {
                    return Err(SandboxError::Http(format!(
                        "fetch {}: more than {MAX_REDIRECTS} redirects",
                        redact(&url)
                    )));
                }
                let next = url.join(&location).map_err(|_| {
                    SandboxError::Http(format!(
                        "fetch {}: the redirect's Location is not a URL",
                        redact(&url)
                    ))
                })?;
                if status == StatusCode::SEE_OTHER
                    || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                        && method == Method::POST)
                {
                    method = Method::GET;
                    body = None;
                }
                // Credentials go to the origin they were meant for only.
                if next.origin() != url.origin() {
                    headers.retain(|h| {
                        !h.secret
                            && !h.name.eq_ignore_ascii_case("authorization")
                            && !h.name.eq_ignore_ascii_case("cookie")
                    });
                }
                url = next;
                continue;
            }
            return read(response, &url, grant.max_response_bytes).await;
        }
        Err(SandboxError::Http(format!(
            "fetch {}: more than {MAX_REDIRECTS} redirects",
            redact(&url)
        )))
    }
}

/// The host of `url` when it is an IP address (never resolved, so checked here).
fn literal_ip(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()
}

/// Reads the answer, refusing a body over `max` bytes (by its length when declared, else as it
/// arrives).
async fn read(
    mut response: reqwest::Response,
    url: &Url,
    max: u64,
) -> Result<HttpResponse, SandboxError> {
    let too_large = || {
        SandboxError::Http(format!(
            "fetch {}: the response body is over the limit of {max} bytes ([http] \
             max_response_bytes in klf.toml)",
            redact(url)
        ))
    };
    if response.content_length().is_some_and(|len| len > max) {
        return Err(too_large());
    }
    let status = response.status().as_u16();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in response.headers() {
        let Ok(value) = value.to_str() else { continue };
        headers
            .entry(name.as_str().to_string())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(value);
            })
            .or_insert_with(|| value.to_string());
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if (body.len() + chunk.len()) as u64 > max {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(error) => return Err(send_error(url, error)),
        }
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
        url: redact(url),
    })
}
