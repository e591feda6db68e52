//! CircleCI runner API client (queue depth and registered runners), returning
//! our own types. Authenticates with a personal API token (`Circle-Token`),
//! which never appears in an error, a log line or a `Debug` print.

use crate::scale::{ApiError, QueueSnapshot, RunnerQueue};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error_chain;
use crate::scale::decide::QueueDepth;

pub const DEFAULT_URL: &str = "https://runner.circleci.com";

/// Bounds on how long one logical request may take.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Per attempt, connection set-up included.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts for 429, 5xx and connection failures (1 = no retry).
    pub attempts: u32,
    /// First backoff; doubled on each retry.
    pub backoff: Duration,
    /// Cap on any single wait, `Retry-After` included.
    pub max_backoff: Duration,
    /// Requests in flight at once, over all pools (connections are reused,
    /// over HTTP/2 where the server offers it).
    pub max_in_flight: usize,
}

/// The default bound on requests in flight to CircleCI.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;
/// The most that may be asked for (stack file, flag, Lambda environment).
pub const MAX_IN_FLIGHT_LIMIT: usize = 256;

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            attempts: 3,
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CircleCiError {
    #[error(
        "CircleCI rejected the personal API token (HTTP {status}) for {what}: check that CIRCLECI_TOKEN \
         (or the secret's circle_token) is a valid personal token with access to the resource class's \
         namespace{message}"
    )]
    Unauthorized {
        status: u16,
        what: String,
        message: String,
    },
    #[error(
        "CircleCI found no {what} (HTTP 404): check the resource class name and the runner API URL{message}"
    )]
    NotFound { what: String, message: String },
    #[error(
        "CircleCI kept rate-limiting {what} (HTTP 429) after {attempts} attempt(s); try again later or poll less often{message}"
    )]
    RateLimited {
        what: String,
        attempts: u32,
        message: String,
    },
    #[error(
        "CircleCI failed {what} with HTTP {status} after {attempts} attempt(s); check CircleCI's status page and try again{message}"
    )]
    Server {
        what: String,
        status: u16,
        attempts: u32,
        message: String,
    },
    #[error("CircleCI answered {what} with HTTP {status}{message}")]
    Status {
        what: String,
        status: u16,
        message: String,
    },
    #[error("CircleCI answered {what} with malformed JSON ({detail}); check the runner API URL")]
    Malformed { what: String, detail: String },
    #[error(
        "CircleCI did not answer {what} within {timeout}; check the network or raise --circleci-timeout"
    )]
    Timeout { what: String, timeout: String },
    #[error(
        "could not reach CircleCI for {what} after {attempts} attempt(s): {detail}; check the runner API URL and the network"
    )]
    Unreachable {
        what: String,
        attempts: u32,
        detail: String,
    },
    #[error(
        "CircleCI's usage export of {window} failed: {reason}; try again later, or a shorter window"
    )]
    ExportFailed { window: String, reason: String },
    #[error("invalid CircleCI runner API URL '{url}': {detail}")]
    BadUrl { url: String, detail: String },
    #[error("could not set up the HTTP client: {0}")]
    Client(String),
}

/// A runner agent registered with CircleCI.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Runner {
    pub name: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub resource_class: String,
}

#[derive(Clone)]
pub struct RunnerApi {
    http: reqwest::Client,
    base: reqwest::Url,
    token: SecretString,
    limits: HttpLimits,
    /// At most `limits.max_in_flight` requests at once (every pool's).
    gate: Arc<Semaphore>,
    /// When CircleCI throttles one request (429), every request waits until
    /// then: one backoff for all pools, not a retry storm per pool.
    throttled_until: Arc<Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for RunnerApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerApi")
            .field("base", &self.base.as_str())
            .field("token", &"[redacted]")
            .finish()
    }
}

#[derive(Deserialize)]
struct Unclaimed {
    unclaimed_task_count: u32,
}

#[derive(Deserialize)]
struct Running {
    running_runner_tasks: u32,
}

#[derive(Deserialize)]
struct Runners {
    items: Vec<Runner>,
    /// CircleCI's page token convention (its v2 API's): absent, null or empty
    /// on the last page.
    #[serde(default)]
    next_page_token: Option<String>,
}

/// A bound on the pages of one runner list (at 100 a page, 100,000 runners):
/// a server that never stops paging is an error, not a hang.
const MAX_RUNNER_PAGES: usize = 1000;

impl RunnerApi {
    pub fn new(
        base_url: &str,
        token: SecretString,
        limits: HttpLimits,
    ) -> Result<Self, CircleCiError> {
        let bad = |detail: &str| CircleCiError::BadUrl {
            url: base_url.to_string(),
            detail: detail.to_string(),
        };
        let mut base = reqwest::Url::parse(base_url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad(
                "the scheme must be https (or http for a local stand-in)",
            ));
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(bad("no host"));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let in_flight = limits.max_in_flight.max(1);
        let http = reqwest::Client::builder()
            .timeout(limits.timeout)
            .connect_timeout(limits.connect_timeout)
            // Connections are kept for the next poll (the Lambda polls every
            // few seconds); as many idle as may be busy.
            .pool_max_idle_per_host(in_flight)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("cci-scaler/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CircleCiError::Client(e.to_string()))?;
        Ok(RunnerApi {
            http,
            base,
            token,
            limits,
            gate: Arc::new(Semaphore::new(in_flight)),
            throttled_until: Arc::new(Mutex::new(None)),
        })
    }

    /// The API's base URL (with a trailing slash).
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    pub async fn unclaimed_tasks(&self, resource_class: &str) -> Result<u32, CircleCiError> {
        let r: Unclaimed = self
            .get("api/v3/runner/tasks", resource_class, "unclaimed tasks")
            .await?;
        Ok(r.unclaimed_task_count)
    }

    pub async fn running_tasks(&self, resource_class: &str) -> Result<u32, CircleCiError> {
        let r: Running = self
            .get(
                "api/v3/runner/tasks/running",
                resource_class,
                "running tasks",
            )
            .await?;
        Ok(r.running_runner_tasks)
    }

    /// Every registered runner of the resource class, all pages.
    pub async fn runners(&self, resource_class: &str) -> Result<Vec<Runner>, CircleCiError> {
        self.runner_pages(
            "resource-class",
            resource_class,
            format!("registered runners of {resource_class}"),
        )
        .await
    }

    /// Every registered runner of the namespace (all its resource classes),
    /// all pages: one read for several resource classes.
    pub async fn namespace_runners(&self, namespace: &str) -> Result<Vec<Runner>, CircleCiError> {
        self.runner_pages(
            "namespace",
            namespace,
            format!("registered runners of namespace {namespace}"),
        )
        .await
    }

    async fn runner_pages(
        &self,
        filter: &str,
        value: &str,
        noun: String,
    ) -> Result<Vec<Runner>, CircleCiError> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        let mut seen = HashSet::new();
        for page in 1..=MAX_RUNNER_PAGES {
            let mut query = vec![(filter, value)];
            if let Some(t) = &token {
                query.push(("page-token", t.as_str()));
            }
            let what = if page == 1 {
                format!("{noun} (GET /api/v3/runner)")
            } else {
                format!("{noun}, page {page} (GET /api/v3/runner)")
            };
            let r: Runners = self
                .call(
                    reqwest::Method::GET,
                    "api/v3/runner",
                    &query,
                    None,
                    what.clone(),
                )
                .await?;
            all.extend(r.items);
            match r.next_page_token.filter(|t| !t.is_empty()) {
                None => return Ok(all),
                Some(t) if !seen.insert(t.clone()) => {
                    return Err(CircleCiError::Malformed {
                        what,
                        detail: "a page token came back twice, so the list would never end".into(),
                    });
                }
                Some(t) => token = Some(t),
            }
        }
        Err(CircleCiError::Malformed {
            what: noun,
            detail: format!("more than {MAX_RUNNER_PAGES} pages"),
        })
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        resource_class: &str,
        noun: &str,
    ) -> Result<T, CircleCiError> {
        self.call(
            reqwest::Method::GET,
            path,
            &[("resource-class", resource_class)],
            None,
            format!("{noun} of {resource_class} (GET /{path})"),
        )
        .await
    }

    /// One API call with bounded retries: 429 always, 5xx and connection
    /// failures only where repeating cannot create a second resource (not POST).
    /// An empty success body reads as JSON `null`.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
        what: String,
    ) -> Result<T, CircleCiError> {
        let mut url = self.base.join(path).map_err(|e| CircleCiError::BadUrl {
            url: self.base.to_string(),
            detail: e.to_string(),
        })?;
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        let idempotent = method != reqwest::Method::POST;

        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.limits.attempts;
            let permit = self.admitted().await?;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header("Circle-Token", self.token.expose_secret())
                .header("Accept", "application/json");
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if e.is_timeout() => {
                    return Err(CircleCiError::Timeout {
                        what,
                        timeout: humantime::format_duration(self.limits.timeout).to_string(),
                    });
                }
                Err(e) => {
                    if last || !(idempotent || e.is_connect()) {
                        return Err(CircleCiError::Unreachable {
                            what,
                            attempts: attempt,
                            detail: error_chain(&e),
                        });
                    }
                    drop(permit);
                    tokio::time::sleep(self.backoff(attempt, None)).await;
                    continue;
                }
            };
            let status = resp.status();
            if status.is_success() {
                let body = match resp.bytes().await {
                    Ok(b) => b,
                    Err(e) if e.is_timeout() => {
                        return Err(CircleCiError::Timeout {
                            what,
                            timeout: humantime::format_duration(self.limits.timeout).to_string(),
                        });
                    }
                    Err(e) => {
                        return Err(CircleCiError::Unreachable {
                            what,
                            attempts: attempt,
                            detail: error_chain(&e),
                        });
                    }
                };
                let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
                    b"null"
                } else {
                    &body
                };
                return serde_json::from_slice(body).map_err(|e| CircleCiError::Malformed {
                    what,
                    detail: e.to_string(),
                });
            }
            let retryable =
                status == StatusCode::TOO_MANY_REQUESTS || (status.is_server_error() && idempotent);
            if retryable && !last {
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let wait = self.backoff(attempt, retry_after);
                if status == StatusCode::TOO_MANY_REQUESTS {
                    // Shared: the other pools' requests wait as well.
                    let until = Instant::now() + wait;
                    let mut t = self
                        .throttled_until
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    if t.is_none_or(|t| t < until) {
                        *t = Some(until);
                    }
                    continue;
                }
                drop(permit);
                tokio::time::sleep(wait).await;
                continue;
            }
            let message = message_of(resp).await;
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => CircleCiError::Unauthorized {
                    status: status.as_u16(),
                    what,
                    message,
                },
                StatusCode::NOT_FOUND => CircleCiError::NotFound { what, message },
                StatusCode::TOO_MANY_REQUESTS => CircleCiError::RateLimited {
                    what,
                    attempts: attempt,
                    message,
                },
                s if s.is_server_error() => CircleCiError::Server {
                    what,
                    status: s.as_u16(),
                    attempts: attempt,
                    message,
                },
                s => CircleCiError::Status {
                    what,
                    status: s.as_u16(),
                    message,
                },
            });
        }
    }

    /// A place among the requests in flight, once no throttle is in force:
    /// a 429 seen by any request holds every request back, those already
    /// waiting for a place included.
    async fn admitted(&self) -> Result<tokio::sync::SemaphorePermit<'_>, CircleCiError> {
        loop {
            let permit = self
                .gate
                .acquire()
                .await
                .map_err(|e| CircleCiError::Client(e.to_string()))?;
            let until = *self
                .throttled_until
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match until {
                Some(until) if until > Instant::now() => {
                    drop(permit);
                    tokio::time::sleep_until(until).await;
                }
                _ => return Ok(permit),
            }
        }
    }

    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .limits
            .backoff
            .saturating_mul(1 << (attempt - 1).min(16));
        retry_after.unwrap_or(exp).min(self.limits.max_backoff)
    }
}

impl RunnerQueue for RunnerApi {
    // CircleCI's errors become the core's (ApiError) at each `?`.
    /// The three requests go out at once: one decision costs one round trip.
    async fn snapshot(&self, resource_class: &str) -> Result<QueueSnapshot, ApiError> {
        let (unclaimed, running, runners) = tokio::try_join!(
            self.unclaimed_tasks(resource_class),
            self.running_tasks(resource_class),
            self.runners(resource_class),
        )?;
        Ok(QueueSnapshot {
            depth: QueueDepth { unclaimed, running },
            runners: runners.into_iter().map(|r| r.name).collect(),
        })
    }

    async fn depth(&self, resource_class: &str) -> Result<QueueDepth, ApiError> {
        let (unclaimed, running) = tokio::try_join!(
            self.unclaimed_tasks(resource_class),
            self.running_tasks(resource_class),
        )?;
        Ok(QueueDepth { unclaimed, running })
    }

    async fn registered(
        &self,
        namespace: &str,
    ) -> Result<HashMap<String, HashSet<String>>, ApiError> {
        let mut by_class: HashMap<String, HashSet<String>> = HashMap::new();
        for r in self.namespace_runners(namespace).await? {
            by_class.entry(r.resource_class).or_default().insert(r.name);
        }
        Ok(by_class)
    }
}

impl From<CircleCiError> for ApiError {
    fn from(e: CircleCiError) -> ApiError {
        ApiError::Failed(e.to_string())
    }
}

/// CircleCI's `message` field of an error body, as `": <message>"`, cut short.
async fn message_of(resp: reqwest::Response) -> String {
    #[derive(Deserialize)]
    struct Body {
        message: String,
    }
    let Ok(bytes) = resp.bytes().await else {
        return String::new();
    };
    match serde_json::from_slice::<Body>(&bytes) {
        Ok(b) if !b.message.trim().is_empty() => {
            let m: String = b.message.trim().chars().take(200).collect();
            format!(" (CircleCI says: {m})")
        }
        _ => String::new(),
    }
}

/// `namespace/name`, each part of letters, digits, `-`, `_` or `.`.
pub fn validate_resource_class(rc: &str) -> Result<(), String> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 100
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match rc.split_once('/') {
        Some((ns, name)) if ok_part(ns) && ok_part(name) => Ok(()),
        _ => Err(format!(
            "invalid resource class '{rc}': expected namespace/name (letters, digits, '-', '_', '.')"
        )),
    }
}

pub mod usage;

#[cfg(test)]
mod tests;
