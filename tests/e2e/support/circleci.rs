//! A stand-in for CircleCI's runner API on 127.0.0.1: settable queue counts and
//! runner list, injectable faults, and a record of every request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Path;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde_json::json;

use super::TOKEN;

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer every request with this status and a CircleCI-style message.
    Status(u16),
    /// Answer 200 with a body that is not the expected JSON.
    Malformed,
    /// Never answer.
    Hang,
    /// Fail the first `n` requests with this status, then answer normally.
    Flaky(u16, u32),
    /// Answer 429 (`Retry-After: 1`) to every request that arrives within
    /// this long of the first throttled one (CircleCI answering a burst).
    ThrottleFor(Duration),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub resource_class: Option<String>,
    pub token_ok: bool,
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct Queue {
    pub unclaimed: u32,
    pub running: u32,
    pub runners: Vec<String>,
    pub fault: Option<Fault>,
    pub delay: Duration,
    pub requests: Vec<Request>,
    /// Resource classes: (id, resource_class, description).
    pub classes: Vec<(String, String, String)>,
    /// Runner tokens: (id, resource_class, nickname, token).
    pub tokens: Vec<(String, String, String, String)>,
    pub next_id: u32,
    /// A request held open until the test releases it (see `CircleCi::hold`).
    pub hold: Option<Hold>,
    /// Per resource class: (unclaimed, running), over the global counts.
    pub class_queues: std::collections::HashMap<String, (u32, u32)>,
    /// Per resource class: registered runner names, over the global list.
    pub class_runners: std::collections::BTreeMap<String, Vec<String>>,
    /// TCP connections accepted.
    pub connections: u32,
    /// Requests being answered now, and the most at once.
    pub in_flight: u32,
    pub max_in_flight: u32,
    /// 429s answered, and when the throttle began.
    pub throttled: u32,
    pub throttle_start: Option<Instant>,
}

#[derive(Debug)]
pub struct Hold {
    /// Which point to hold: a request key such as `POST /api/v3/runner/token`
    /// (held before it is handled), or that key plus `:answered` (held after
    /// its effect, before the answer is sent).
    pub at: String,
    pub arrived: bool,
    pub release: tokio::sync::watch::Receiver<bool>,
}

type Shared = Arc<Mutex<Queue>>;

pub struct CircleCi {
    pub url: String,
    pub state: Shared,
    task: tokio::task::JoinHandle<()>,
    release: std::sync::Mutex<Option<tokio::sync::watch::Sender<bool>>>,
}

impl CircleCi {
    pub async fn start() -> CircleCi {
        let state: Shared = Arc::default();
        let app = Router::new()
            .route("/api/v3/runner/tasks", get(unclaimed))
            .route("/api/v3/runner/tasks/running", get(running))
            .route("/api/v3/runner", get(runners))
            .route(
                "/api/v3/runner/resource",
                get(list_classes).post(create_class),
            )
            .route("/api/v3/runner/resource/{id}", delete(delete_class))
            .route("/api/v3/runner/resource/{id}/force", delete(delete_class))
            .route("/api/v3/runner/token", get(list_tokens).post(create_token))
            .route("/api/v3/runner/token/{id}", delete(delete_token))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                count_in_flight,
            ))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let conns = state.clone();
        let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
            conns.lock().unwrap().connections += 1;
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CircleCi {
            url,
            state,
            task,
            release: std::sync::Mutex::new(None),
        }
    }

    /// Hold the first request that reaches `at` open until `release`: a test
    /// can then act (send a signal, kill a process) at an exact point of the
    /// work instead of racing it with a delay.
    pub fn hold(&self, at: &str) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        *self.release.lock().unwrap() = Some(tx);
        self.state.lock().unwrap().hold = Some(Hold {
            at: at.to_string(),
            arrived: false,
            release: rx,
        });
    }

    /// Wait until the held request has arrived.
    pub async fn wait_held(&self, within: Duration) {
        super::eventually("the held request to arrive", within, || async {
            self.state
                .lock()
                .unwrap()
                .hold
                .as_ref()
                .is_some_and(|h| h.arrived)
                .then_some(())
        })
        .await
    }

    /// Let the held request go on.
    pub fn release(&self) {
        if let Some(tx) = self.release.lock().unwrap().take() {
            let _ = tx.send(true);
        }
    }

    pub fn set_queue(&self, unclaimed: u32, running: u32) {
        let mut s = self.state.lock().unwrap();
        s.unclaimed = unclaimed;
        s.running = running;
    }

    /// The queue of one resource class (others keep the global counts).
    pub fn set_class_queue(&self, rc: &str, unclaimed: u32, running: u32) {
        self.state
            .lock()
            .unwrap()
            .class_queues
            .insert(rc.to_string(), (unclaimed, running));
    }

    /// The registered runners of one resource class (listed by namespace too).
    pub fn set_class_runners(&self, rc: &str, names: &[String]) {
        self.state
            .lock()
            .unwrap()
            .class_runners
            .insert(rc.to_string(), names.to_vec());
    }

    pub fn set_runners(&self, names: &[&str]) {
        self.state.lock().unwrap().runners = names.iter().map(|s| s.to_string()).collect();
    }

    pub fn set_fault(&self, fault: Option<Fault>) {
        self.state.lock().unwrap().fault = fault;
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn classes(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .classes
            .iter()
            .map(|c| c.1.clone())
            .collect()
    }

    /// (nickname, token value) of every runner token.
    pub fn tokens(&self) -> Vec<(String, String)> {
        self.state
            .lock()
            .unwrap()
            .tokens
            .iter()
            .map(|t| (t.2.clone(), t.3.clone()))
            .collect()
    }

    pub fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path == path).count()
    }
}

impl Drop for CircleCi {
    fn drop(&mut self) {
        self.release();
        self.task.abort();
    }
}

#[derive(serde::Deserialize, Default)]
struct Params {
    #[serde(rename = "resource-class")]
    resource_class: Option<String>,
    namespace: Option<String>,
    #[serde(rename = "page-token")]
    page_token: Option<String>,
}

/// Runners per page of the runner list, as a paginating API would serve them.
pub const RUNNER_PAGE_SIZE: usize = 100;

/// Record, wait, apply a fault; `None` means answer normally.
async fn gate(
    state: &Shared,
    path: &str,
    headers: &HeaderMap,
    params: &Params,
) -> Option<Response> {
    gate_with(state, path, headers, params, true).await
}

async fn gate_with(
    state: &Shared,
    path: &str,
    headers: &HeaderMap,
    params: &Params,
    needs_class: bool,
) -> Option<Response> {
    let token_ok = headers.get("Circle-Token").and_then(|v| v.to_str().ok()) == Some(TOKEN);
    let (delay, fault) = {
        let mut s = state.lock().unwrap();
        s.requests.push(Request {
            path: path.to_string(),
            resource_class: params.resource_class.clone(),
            token_ok,
            at: Instant::now(),
        });
        let fault = match s.fault.clone() {
            Some(Fault::ThrottleFor(d)) => {
                let start = *s.throttle_start.get_or_insert_with(Instant::now);
                if start.elapsed() < d {
                    s.throttled += 1;
                    Some(Fault::ThrottleFor(d))
                } else {
                    None
                }
            }
            Some(Fault::Flaky(code, n)) if n > 0 => {
                s.fault = Some(Fault::Flaky(code, n - 1));
                Some(Fault::Status(code))
            }
            Some(Fault::Flaky(..)) => None,
            f => f,
        };
        (s.delay, fault)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    held(state, path).await;
    match fault {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap();
            let mut resp = (
                status,
                axum::Json(json!({"message": format!("stand-in fault {code}")})),
            )
                .into_response();
            if code == 429 {
                resp.headers_mut()
                    .insert("Retry-After", "0".parse().unwrap());
            }
            return Some(resp);
        }
        Some(Fault::ThrottleFor(_)) => {
            let mut resp = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({"message": "Too Many Requests"})),
            )
                .into_response();
            resp.headers_mut()
                .insert("Retry-After", "1".parse().unwrap());
            return Some(resp);
        }
        Some(Fault::Malformed) => {
            return Some((StatusCode::OK, "<html>not json</html>").into_response());
        }
        Some(Fault::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        _ => {}
    }
    if !token_ok {
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"message": "Invalid token provided."})),
            )
                .into_response(),
        );
    }
    if needs_class && params.resource_class.is_none() {
        return Some(
            (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"message": "resource-class is required"})),
            )
                .into_response(),
        );
    }
    None
}

/// If the test holds requests at `at`, wait there until it releases them.
async fn held(state: &Shared, at: &str) {
    let release = {
        let mut s = state.lock().unwrap();
        match s.hold.as_mut() {
            Some(h) if h.at == at && !h.arrived => {
                h.arrived = true;
                Some(h.release.clone())
            }
            _ => None,
        }
    };
    if let Some(mut rx) = release {
        let _ = rx.wait_for(|go| *go).await;
    }
}

async fn unclaimed(State(s): State<Shared>, h: HeaderMap, Query(p): Query<Params>) -> Response {
    if let Some(r) = gate(&s, "/api/v3/runner/tasks", &h, &p).await {
        return r;
    }
    let n = {
        let st = s.lock().unwrap();
        let rc = p.resource_class.unwrap_or_default();
        st.class_queues.get(&rc).map_or(st.unclaimed, |q| q.0)
    };
    axum::Json(json!({ "unclaimed_task_count": n })).into_response()
}

async fn running(State(s): State<Shared>, h: HeaderMap, Query(p): Query<Params>) -> Response {
    if let Some(r) = gate(&s, "/api/v3/runner/tasks/running", &h, &p).await {
        return r;
    }
    let n = {
        let st = s.lock().unwrap();
        let rc = p.resource_class.unwrap_or_default();
        st.class_queues.get(&rc).map_or(st.running, |q| q.1)
    };
    axum::Json(json!({ "running_runner_tasks": n })).into_response()
}

async fn runners(State(s): State<Shared>, h: HeaderMap, Query(p): Query<Params>) -> Response {
    if let Some(r) = gate_with(&s, "/api/v3/runner", &h, &p, false).await {
        return r;
    }
    // (name, resource class) of every runner the filter selects.
    let names: Vec<(String, String)> = {
        let st = s.lock().unwrap();
        match (&p.resource_class, &p.namespace) {
            (Some(rc), None) => match st.class_runners.get(rc) {
                Some(v) => v.iter().map(|n| (n.clone(), rc.clone())).collect(),
                None => st.runners.iter().map(|n| (n.clone(), rc.clone())).collect(),
            },
            (None, Some(ns)) => st
                .class_runners
                .iter()
                .filter(|(rc, _)| rc.starts_with(&format!("{ns}/")))
                .flat_map(|(rc, v)| v.iter().map(|n| (n.clone(), rc.clone())))
                .collect(),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "exactly one of resource-class and namespace is required",
                );
            }
        }
    };
    // Pages of RUNNER_PAGE_SIZE; the token is the next offset, opaque to the client.
    let start = match p
        .page_token
        .as_deref()
        .map(|t| t.strip_prefix("off-").map(str::parse::<usize>))
    {
        None => 0,
        Some(Some(Ok(n))) if n <= names.len() => n,
        Some(_) => return error(StatusCode::BAD_REQUEST, "invalid page token"),
    };
    let end = (start + RUNNER_PAGE_SIZE).min(names.len());
    let next = (end < names.len()).then(|| format!("off-{end}"));
    let items: Vec<_> = names[start..end]
        .iter()
        .map(|(n, rc)| {
            json!({
                "resource_class": rc, "hostname": format!("ip-10-0-0-1-{n}"), "name": n,
                "first_connected": "2026-01-01T00:00:00Z", "last_connected": "2026-01-01T00:00:00Z",
                "last_used": "2026-01-01T00:00:00Z", "version": "3.0.0"
            })
        })
        .collect();
    axum::Json(json!({ "items": items, "next_page_token": next })).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

async fn list_classes(State(s): State<Shared>, h: HeaderMap, Query(p): Query<Params>) -> Response {
    if let Some(r) = gate_with(&s, "/api/v3/runner/resource", &h, &p, false).await {
        return r;
    }
    let Some(ns) = p.namespace else {
        return error(StatusCode::BAD_REQUEST, "namespace is required");
    };
    let items: Vec<_> = s
        .lock()
        .unwrap()
        .classes
        .iter()
        .filter(|c| c.1.starts_with(&format!("{ns}/")))
        .map(|c| json!({"id": c.0, "resource_class": c.1, "description": c.2}))
        .collect();
    axum::Json(json!({ "items": items })).into_response()
}

async fn create_class(
    State(s): State<Shared>,
    h: HeaderMap,
    body: axum::Json<serde_json::Value>,
) -> Response {
    if let Some(r) = gate_with(
        &s,
        "POST /api/v3/runner/resource",
        &h,
        &Params::default(),
        false,
    )
    .await
    {
        return r;
    }
    let rc = body["resource_class"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let desc = body["description"].as_str().unwrap_or_default().to_string();
    let mut st = s.lock().unwrap();
    if st.classes.iter().any(|c| c.1 == rc) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "resource class already exists",
        );
    }
    st.next_id += 1;
    let id = format!("rc-{:04}", st.next_id);
    st.classes.push((id.clone(), rc.clone(), desc.clone()));
    axum::Json(json!({"id": id, "resource_class": rc, "description": desc})).into_response()
}

async fn delete_class(State(s): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = gate_with(
        &s,
        "DELETE /api/v3/runner/resource",
        &h,
        &Params::default(),
        false,
    )
    .await
    {
        return r;
    }
    let mut st = s.lock().unwrap();
    let Some(pos) = st.classes.iter().position(|c| c.0 == id) else {
        return error(StatusCode::NOT_FOUND, "resource class not found");
    };
    let (_, rc, _) = st.classes.remove(pos);
    st.tokens.retain(|t| t.1 != rc);
    axum::Json(json!({})).into_response()
}

async fn list_tokens(State(s): State<Shared>, h: HeaderMap, Query(p): Query<Params>) -> Response {
    if let Some(r) = gate(&s, "/api/v3/runner/token", &h, &p).await {
        return r;
    }
    let rc = p.resource_class.unwrap_or_default();
    let items: Vec<_> = s
        .lock()
        .unwrap()
        .tokens
        .iter()
        .filter(|t| t.1 == rc)
        .map(|t| json!({"id": t.0, "resource_class": t.1, "nickname": t.2, "created_at": "2026-11-28T00:00:00Z"}))
        .collect();
    axum::Json(json!({ "items": items })).into_response()
}

async fn create_token(
    State(s): State<Shared>,
    h: HeaderMap,
    body: axum::Json<serde_json::Value>,
) -> Response {
    if let Some(r) = gate_with(
        &s,
        "POST /api/v3/runner/token",
        &h,
        &Params::default(),
        false,
    )
    .await
    {
        return r;
    }
    let rc = body["resource_class"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let nickname = body["nickname"].as_str().unwrap_or_default().to_string();
    let created = {
        let mut st = s.lock().unwrap();
        if st.classes.iter().any(|c| c.1 == rc) {
            st.next_id += 1;
            let id = format!("tok-{:04}", st.next_id);
            let token = format!(
                "runner-token-{:04}-5f2c9a8e7d6b4c3a2e1f0d9c8b7a6f5e",
                st.next_id
            );
            st.tokens
                .push((id.clone(), rc.clone(), nickname.clone(), token.clone()));
            Some((id, token))
        } else {
            None
        }
    };
    let Some((id, token)) = created else {
        return error(StatusCode::NOT_FOUND, "resource class not found");
    };
    held(&s, "POST /api/v3/runner/token:answered").await;
    axum::Json(
        json!({"id": id, "token": token, "resource_class": rc, "nickname": nickname,
        "created_at": "2026-11-28T00:00:00Z"}),
    )
    .into_response()
}

async fn delete_token(State(s): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = gate_with(
        &s,
        "DELETE /api/v3/runner/token",
        &h,
        &Params::default(),
        false,
    )
    .await
    {
        return r;
    }
    let mut st = s.lock().unwrap();
    let before = st.tokens.len();
    st.tokens.retain(|t| t.0 != id);
    if st.tokens.len() == before {
        return error(StatusCode::NOT_FOUND, "token not found");
    }
    axum::Json(json!({})).into_response()
}

/// Counts the requests being answered at once.
async fn count_in_flight(
    State(state): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    {
        let mut s = state.lock().unwrap();
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
    }
    let resp = next.run(req).await;
    state.lock().unwrap().in_flight -= 1;
    resp
}
