//! CircleCI's Usage API: an export of an organisation's job runs over a
//! window of at most 32 days (up to 13 months back), created, polled until
//! done, and its files (gzip CSV parts, behind pre-signed links) downloaded.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{CircleCiError, RunnerApi, error_chain};

/// The longest window one export covers.
pub const MAX_WINDOW_S: i64 = 32 * 86_400;
/// How far back CircleCI keeps usage (13 months, counted short).
pub const MAX_AGE_S: i64 = 395 * 86_400;

#[derive(Debug, Clone, Deserialize)]
struct ExportJob {
    usage_export_job_id: String,
    state: String,
    #[serde(default)]
    download_urls: Vec<String>,
    #[serde(default)]
    error_reason: Option<String>,
}

/// `[start, end)` split into windows of at most [`MAX_WINDOW_S`].
pub fn windows(start: i64, end: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut s = start;
    while s < end {
        let e = (s + MAX_WINDOW_S).min(end);
        out.push((s, e));
        s = e;
    }
    out
}

fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// How to wait for an export.
#[derive(Debug, Clone, Copy)]
pub struct ExportWait {
    pub poll: Duration,
    pub timeout: Duration,
}

/// CircleCI's v2 API, where the Usage API lives.
pub const DEFAULT_API_URL: &str = "https://circleci.com/api/v2/";

/// Where an export stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportState {
    /// Created or processing: ask again later.
    Pending {
        id: String,
        state: String,
    },
    Completed {
        id: String,
        urls: Vec<String>,
    },
    Failed {
        id: String,
        reason: String,
    },
}

impl From<ExportJob> for ExportState {
    fn from(j: ExportJob) -> Self {
        let id = j.usage_export_job_id;
        match j.state.as_str() {
            "completed" => ExportState::Completed {
                id,
                urls: j.download_urls,
            },
            "failed" => ExportState::Failed {
                id,
                reason: j.error_reason.unwrap_or_else(|| "no reason given".into()),
            },
            _ => ExportState::Pending { id, state: j.state },
        }
    }
}

/// `start to end`, as errors name a window.
pub fn window_name((start, end): (i64, i64)) -> String {
    format!("{} to {}", rfc3339(start), rfc3339(end))
}

impl RunnerApi {
    /// Ask for an export of `org`'s job runs over a window (at most 32 days).
    pub async fn create_usage_export(
        &self,
        org: &str,
        (start, end): (i64, i64),
    ) -> Result<ExportState, CircleCiError> {
        let path = format!("organizations/{org}/usage_export_job");
        let job: ExportJob = self
            .call(
                reqwest::Method::POST,
                &path,
                &[],
                Some(&serde_json::json!({"start": rfc3339(start), "end": rfc3339(end)})),
                format!(
                    "the usage export of {} (POST /{path})",
                    window_name((start, end))
                ),
            )
            .await?;
        Ok(job.into())
    }

    /// Where the export `id` stands.
    pub async fn usage_export_state(
        &self,
        org: &str,
        id: &str,
        window: &str,
    ) -> Result<ExportState, CircleCiError> {
        let get = format!("organizations/{org}/usage_export_job/{id}");
        let job: ExportJob = self
            .call(
                reqwest::Method::GET,
                &get,
                &[],
                None,
                format!("the usage export of {window} (GET /{get})"),
            )
            .await?;
        Ok(job.into())
    }

    /// A completed export's files' bytes (gzip or not), fetched without
    /// the token.
    pub async fn usage_export_files(
        &self,
        urls: &[String],
        window: &str,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Vec<Vec<u8>>, CircleCiError> {
        let mut files = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            progress(&format!(
                "usage export {window}: downloading part {} of {}",
                i + 1,
                urls.len()
            ));
            files.push(self.download(url, window).await?);
        }
        Ok(files)
    }

    /// One export (a window of at most 32 days), created and waited for:
    /// its files' bytes, as downloaded (gzip or not). `progress` hears each
    /// state change.
    pub async fn usage_export(
        &self,
        org: &str,
        span: (i64, i64),
        wait: ExportWait,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Vec<Vec<u8>>, CircleCiError> {
        let window = window_name(span);
        let started = Instant::now();
        let mut state = self.create_usage_export(org, span).await?;
        loop {
            let id = match state {
                ExportState::Completed { urls, .. } => {
                    return self.usage_export_files(&urls, &window, progress).await;
                }
                ExportState::Failed { reason, .. } => {
                    return Err(CircleCiError::ExportFailed { window, reason });
                }
                ExportState::Pending { id, state } => {
                    progress(&format!("usage export {window}: {state}"));
                    if started.elapsed() > wait.timeout {
                        return Err(CircleCiError::Timeout {
                            what: format!("the usage export of {window} (still {state})"),
                            timeout: humantime::format_duration(wait.timeout).to_string(),
                        });
                    }
                    id
                }
            };
            tokio::time::sleep(wait.poll).await;
            state = self.usage_export_state(org, &id, &window).await?;
        }
    }

    /// A pre-signed file link: no token is sent with it.
    async fn download(&self, url: &str, window: &str) -> Result<Vec<u8>, CircleCiError> {
        let what = format!("a file of the usage export of {window}");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.limits.attempts;
            let resp = match self.http.get(url).send().await {
                Ok(r) => r,
                Err(e) if last => {
                    return Err(CircleCiError::Unreachable {
                        what,
                        attempts: attempt,
                        detail: error_chain(&e),
                    });
                }
                Err(_) => {
                    tokio::time::sleep(self.backoff(attempt, None)).await;
                    continue;
                }
            };
            let status = resp.status();
            if status.is_success() {
                return resp.bytes().await.map(|b| b.to_vec()).map_err(|e| {
                    CircleCiError::Unreachable {
                        what,
                        attempts: attempt,
                        detail: error_chain(&e),
                    }
                });
            }
            if (status.is_server_error() || status.as_u16() == 429) && !last {
                tokio::time::sleep(self.backoff(attempt, None)).await;
                continue;
            }
            return Err(CircleCiError::Status {
                what,
                status: status.as_u16(),
                message: String::new(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_windows_are_split_into_exports_of_32_days() {
        let day = 86_400;
        assert_eq!(windows(0, 10 * day), vec![(0, 10 * day)]);
        assert_eq!(
            windows(0, 40 * day),
            vec![(0, 32 * day), (32 * day, 40 * day)]
        );
        assert!(windows(5, 5).is_empty());
    }
}
