//! A stand-in for the AWS Lambda Runtime API on 127.0.0.1: hands out queued
//! events on `/next` and records responses and errors.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub enum Outcome {
    Response(serde_json::Value),
    Error(serde_json::Value),
}

#[derive(Default)]
pub struct Inner {
    events: VecDeque<(String, String, Duration)>,
    pub outcomes: Vec<(String, Outcome)>,
    pub init_errors: Vec<String>,
    pub first_next: Option<Instant>,
}

#[derive(Clone, Default)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    wake: Arc<Notify>,
}

pub struct LambdaApi {
    /// `host:port`, as AWS_LAMBDA_RUNTIME_API takes it.
    pub addr: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl LambdaApi {
    pub async fn start() -> LambdaApi {
        let shared = Shared::default();
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        LambdaApi { addr, shared, task }
    }

    /// Queue an EventBridge scheduled event with the given timeout.
    pub fn push_scheduled_event(&self, id: &str, timeout: Duration) {
        let event = serde_json::json!({
            "version": "0", "id": id, "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "time": "2026-11-28T06:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/cci-scaler"], "detail": {}
        });
        self.shared.inner.lock().unwrap().events.push_back((
            id.to_string(),
            event.to_string(),
            timeout,
        ));
        self.shared.wake.notify_waiters();
    }

    pub fn outcome(&self, id: &str) -> Option<Outcome> {
        let inner = self.shared.inner.lock().unwrap();
        inner
            .outcomes
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, o)| o.clone())
    }

    pub fn first_next(&self) -> Option<Instant> {
        self.shared.inner.lock().unwrap().first_next
    }

    pub fn init_errors(&self) -> Vec<String> {
        self.shared.inner.lock().unwrap().init_errors.clone()
    }

    /// Environment for the Lambda binary to talk to this stand-in.
    pub fn env(&self, cmd: &mut tokio::process::Command) {
        cmd.env("AWS_LAMBDA_RUNTIME_API", &self.addr)
            .env("AWS_LAMBDA_FUNCTION_NAME", "cci-scaler-test")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/cci-scaler-test");
    }
}

impl Drop for LambdaApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn next(State(s): State<Shared>) -> Response {
    loop {
        let notified = s.wake.notified();
        {
            let mut inner = s.inner.lock().unwrap();
            inner.first_next.get_or_insert_with(Instant::now);
            if let Some((id, body, timeout)) = inner.events.pop_front() {
                let deadline = (SystemTime::now() + timeout)
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_millis();
                let mut headers = HeaderMap::new();
                headers.insert(
                    "Lambda-Runtime-Aws-Request-Id",
                    HeaderValue::from_str(&id).unwrap(),
                );
                headers.insert(
                    "Lambda-Runtime-Deadline-Ms",
                    HeaderValue::from_str(&deadline.to_string()).unwrap(),
                );
                headers.insert(
                    "Lambda-Runtime-Invoked-Function-Arn",
                    HeaderValue::from_static(
                        "arn:aws:lambda:us-east-1:123456789012:function:cci-scaler-test",
                    ),
                );
                headers.insert(
                    "Lambda-Runtime-Trace-Id",
                    HeaderValue::from_static("Root=1-0-0"),
                );
                headers.insert("Content-Type", HeaderValue::from_static("application/json"));
                return (StatusCode::OK, headers, body).into_response();
            }
        }
        notified.await;
    }
}

fn record(s: &Shared, id: String, outcome: Outcome) -> Response {
    s.inner.lock().unwrap().outcomes.push((id, outcome));
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"status": "OK"})),
    )
        .into_response()
}

fn json_of(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into_owned()))
}

async fn response(State(s): State<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    record(&s, id, Outcome::Response(json_of(&body)))
}

async fn error(State(s): State<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    record(&s, id, Outcome::Error(json_of(&body)))
}

async fn init_error(State(s): State<Shared>, body: Bytes) -> Response {
    s.inner
        .lock()
        .unwrap()
        .init_errors
        .push(String::from_utf8_lossy(&body).into_owned());
    (StatusCode::ACCEPTED, "").into_response()
}
