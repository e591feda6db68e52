//! A stand-in for CircleCI's Usage API on 127.0.0.1, written from its
//! documentation: an export job is created for a window (at most 32 days,
//! not ending in the future), reports `processing` for a few polls, then
//! `completed` with links to gzip CSV parts (two unless set; each with its
//! header) of
//! the job runs queued in the window, or `failed` for the org `failing`.
//! The first poll is answered 429 with Retry-After once. Every request is
//! recorded, with whether it carried the token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::TOKEN;

pub const HEADER: &str = "JOB_ID,PROJECT_NAME,WORKFLOW_NAME,JOB_NAME,RESOURCE_CLASS,EXECUTOR,JOB_RUN_QUEUED_AT,JOB_RUN_STARTED_AT,JOB_RUN_STOPPED_AT";

#[derive(Default)]
struct Inner {
    /// (queued at, seconds since the epoch; the CSV line).
    rows: Vec<(i64, String)>,
    exports: HashMap<String, (i64, i64, u32, bool)>,
    throttled: bool,
    /// Parts each export is split into (0: two).
    parts: usize,
    /// (method and path, whether Circle-Token was sent).
    requests: Vec<(String, bool)>,
    url: String,
}

type Shared = Arc<Mutex<Inner>>;

pub struct UsageApi {
    pub url: String,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl UsageApi {
    pub async fn start() -> UsageApi {
        let state: Shared = Arc::default();
        let app = Router::new()
            .route("/api/v2/organizations/{org}/usage_export_job", post(create))
            .route(
                "/api/v2/organizations/{org}/usage_export_job/{id}",
                get(poll),
            )
            .route("/files/{id}/{part}", get(file))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        state.lock().unwrap().url = base.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        UsageApi {
            url: format!("{base}/api/v2/"),
            state,
            task,
        }
    }

    /// A job run: queued `ago` seconds before now, waiting `wait` s, running
    /// `run` s (`None`: never started).
    pub fn add_run(&self, id: u32, class: &str, ago: i64, wait: i64, run: Option<i64>) {
        let now = jiff::Timestamp::now().as_second();
        let t = |s: i64| {
            jiff::Timestamp::from_second(s)
                .unwrap()
                .strftime("%Y-%m-%d %H:%M:%S.000")
                .to_string()
        };
        let q = now - ago;
        let (started, stopped) = match run {
            Some(r) => (t(q + wait), t(q + wait + r)),
            None => ("\\N".to_string(), "\\N".to_string()),
        };
        let line = format!(
            "{id},api,build,\"job, {id}\",{class},machine,{},{started},{stopped}",
            t(q)
        );
        self.state.lock().unwrap().rows.push((q, line));
    }

    /// Split each export into `n` gzip parts.
    pub fn set_parts(&self, n: usize) {
        self.state.lock().unwrap().parts = n;
    }

    pub fn requests(&self) -> Vec<(String, bool)> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for UsageApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn note(s: &Shared, what: String, h: &HeaderMap) -> bool {
    let token = h.get("Circle-Token").and_then(|v| v.to_str().ok()) == Some(TOKEN);
    let sent = h.contains_key("Circle-Token");
    s.lock().unwrap().requests.push((what, sent));
    token
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"message": message}))).into_response()
}

async fn create(
    State(s): State<Shared>,
    Path(org): Path<String>,
    h: HeaderMap,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> Response {
    if !note(&s, format!("POST export {org}"), &h) {
        return error(StatusCode::UNAUTHORIZED, "Invalid token provided.");
    }
    let at = |k: &str| {
        body[k]
            .as_str()
            .and_then(|v| v.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_second())
    };
    let (Some(start), Some(end)) = (at("start"), at("end")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "start and end must be RFC 3339 times",
        );
    };
    if end > jiff::Timestamp::now().as_second() + 5 {
        return error(StatusCode::BAD_REQUEST, "end cannot be in the future");
    }
    if end - start > 32 * 86_400 || end <= start {
        return error(
            StatusCode::BAD_REQUEST,
            "the window must be 1 second to 32 days",
        );
    }
    let mut st = s.lock().unwrap();
    let id = format!("export-{}", st.exports.len() + 1);
    st.exports
        .insert(id.clone(), (start, end, 2, org == "failing"));
    (
        StatusCode::CREATED,
        axum::Json(json!({"usage_export_job_id": id, "state": "created",
            "start": body["start"], "end": body["end"], "download_urls": []})),
    )
        .into_response()
}

async fn poll(
    State(s): State<Shared>,
    Path((org, id)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    if !note(&s, format!("GET export {org} {id}"), &h) {
        return error(StatusCode::UNAUTHORIZED, "Invalid token provided.");
    }
    let mut st = s.lock().unwrap();
    if !st.throttled {
        st.throttled = true;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("Retry-After", "1")],
            axum::Json(json!({"message": "Rate limit exceeded"})),
        )
            .into_response();
    }
    let url = st.url.clone();
    let Some(e) = st.exports.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "Export job not found.");
    };
    if e.2 > 0 {
        e.2 -= 1;
        return axum::Json(
            json!({"usage_export_job_id": id, "state": "processing", "download_urls": []}),
        )
        .into_response();
    }
    if e.3 {
        return axum::Json(json!({"usage_export_job_id": id, "state": "failed",
            "error_reason": "the export could not be generated", "download_urls": []}))
        .into_response();
    }
    let parts = if st.parts == 0 { 2 } else { st.parts };
    let urls: Vec<String> = (0..parts)
        .map(|p| format!("{url}/files/{id}/{p}"))
        .collect();
    axum::Json(json!({"usage_export_job_id": id, "state": "completed", "download_urls": urls}))
        .into_response()
}

async fn file(
    State(s): State<Shared>,
    Path((id, part)): Path<(String, usize)>,
    h: HeaderMap,
) -> Response {
    note(&s, format!("GET file {id} {part}"), &h);
    let st = s.lock().unwrap();
    let Some(&(start, end, _, _)) = st.exports.get(&id) else {
        return error(StatusCode::NOT_FOUND, "NoSuchKey");
    };
    let parts = if st.parts == 0 { 2 } else { st.parts };
    let mut csv = format!("{HEADER}\n");
    for (i, (q, line)) in st
        .rows
        .iter()
        .filter(|(q, _)| *q >= start && *q < end)
        .enumerate()
    {
        let _ = q;
        if i % parts == part {
            csv.push_str(line);
            csv.push('\n');
        }
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, csv.as_bytes()).unwrap();
    (StatusCode::OK, gz.finish().unwrap()).into_response()
}
