//! A stand-in for CircleCI's runner API on 127.0.0.1: settable queue counts and
//! runner list, injectable faults, and a record of every request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
}

type Shared = Arc<Mutex<Queue>>;

pub struct CircleCi {
    pub url: String,
    pub state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl CircleCi {
    pub async fn start() -> CircleCi {
        let state: Shared = Arc::default();
        let app = Router::new()
            .route("/api/v3/runner/tasks", get(unclaimed))
            .route("/api/v3/runner/tasks/running", get(running))
            .route("/api/v3/runner", get(runners))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CircleCi { url, state, task }
    }

    pub fn set_queue(&self, unclaimed: u32, running: u32) {
        let mut s = self.state.lock().unwrap();
        s.unclaimed = unclaimed;
        s.running = running;
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

    pub fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path == path).count()
    }
}

impl Drop for CircleCi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(serde::Deserialize)]
struct Params {
    #[serde(rename = "resource-class")]
    resource_class: Option<String>,
}

/// Record, wait, apply a fault; `None` means answer normally.
async fn gate(
    state: &Shared,
    path: &str,
    headers: &HeaderMap,
    params: &Params,
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
    if params.resource_class.is_none() {
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

async fn unclaimed(State(s): State<Shared>, h: HeaderMap, Query(p): Query<Params>) -> Response {
    if let Some(r) = gate(&s, "/api/v3/runner/tasks", &h, &p).await {
        return r;
    }
    let n = s.lock().unwrap().unclaimed;
    axum::Json(json!({ "unclaimed_task_count": n })).into_response()
}

async fn running(State(s): State<Shared>, h: HeaderMap, Query(p): Query<Params>) -> Response {
    if let Some(r) = gate(&s, "/api/v3/runner/tasks/running", &h, &p).await {
        return r;
    }
    let n = s.lock().unwrap().running;
    axum::Json(json!({ "running_runner_tasks": n })).into_response()
}

async fn runners(State(s): State<Shared>, h: HeaderMap, Query(p): Query<Params>) -> Response {
    if let Some(r) = gate(&s, "/api/v3/runner", &h, &p).await {
        return r;
    }
    let (names, rc) = (
        s.lock().unwrap().runners.clone(),
        p.resource_class.unwrap_or_default(),
    );
    let items: Vec<_> = names
        .iter()
        .map(|n| {
            json!({
                "resource_class": rc, "hostname": format!("ip-10-0-0-1-{n}"), "name": n,
                "first_connected": "2026-01-01T00:00:00Z", "last_connected": "2026-01-01T00:00:00Z",
                "last_used": "2026-01-01T00:00:00Z", "version": "3.0.0"
            })
        })
        .collect();
    axum::Json(json!({ "items": items })).into_response()
}
