//! The scaling Lambda (custom runtime `provided.al2023`, shipped as `bootstrap`).
//!
//! EventBridge invokes it each minute; each invocation polls every
//! `CCI_SCALER_POLL_INTERVAL` (default 10s) for `CCI_SCALER_POLL_WINDOW`
//! (default 50s), running the same core as `cci-scaler scale`. One JSON line per
//! poll on stdout; any error fails the invocation before the group is changed.
//!
//! Environment:
//! - `CCI_SCALER_SECRET_ID` (required): secret holding {"resource_class", "circle_token"}
//! - `CCI_SCALER_ASG` (required): the Auto Scaling group
//! - `CCI_SCALER_RESOURCE_CLASS`: overrides/checks the secret's resource class
//! - `CCI_SCALER_POLL_INTERVAL`, `CCI_SCALER_POLL_WINDOW`, `CCI_SCALER_BOOT_TIMEOUT`,
//!   `CCI_SCALER_CIRCLECI_TIMEOUT`: durations (`10s`, `500ms`, or plain seconds)
//! - `CIRCLECI_RUNNER_API_URL`: runner API base URL

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use cci_scaler::aws::{self, AwsOptions, autoscaling::AsgClient};
use cci_scaler::circleci::{self, HttpLimits, RunnerApi};
use cci_scaler::scale::decide::Policy;
use cci_scaler::scale::{ScaleSettings, run_once};
use cci_scaler::{error_chain, token};

struct Env {
    secret_id: String,
    asg: String,
    resource_class: Option<String>,
    interval: Duration,
    window: Duration,
    boot_timeout: Duration,
    circleci_timeout: Duration,
    circleci_url: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn duration_var(name: &str, default: Duration) -> Result<Duration, String> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .or_else(|_| humantime::parse_duration(v.trim()))
            .map_err(|_| format!("{name}={v} is not a duration (examples: 10s, 500ms, 50)")),
    }
}

impl Env {
    fn from_env() -> Result<Env, String> {
        let required = |n: &str| var(n).ok_or_else(|| format!("{n} is not set"));
        let env = Env {
            secret_id: required("CCI_SCALER_SECRET_ID")?,
            asg: required("CCI_SCALER_ASG")?,
            resource_class: var("CCI_SCALER_RESOURCE_CLASS"),
            interval: duration_var("CCI_SCALER_POLL_INTERVAL", Duration::from_secs(10))?,
            window: duration_var("CCI_SCALER_POLL_WINDOW", Duration::from_secs(50))?,
            boot_timeout: duration_var("CCI_SCALER_BOOT_TIMEOUT", Duration::from_secs(600))?,
            circleci_timeout: duration_var("CCI_SCALER_CIRCLECI_TIMEOUT", Duration::from_secs(10))?,
            circleci_url: var("CIRCLECI_RUNNER_API_URL")
                .unwrap_or_else(|| circleci::DEFAULT_URL.to_string()),
        };
        if env.interval.is_zero() {
            return Err("CCI_SCALER_POLL_INTERVAL must be above 0".into());
        }
        if let Some(rc) = &env.resource_class {
            circleci::validate_resource_class(rc)?;
        }
        Ok(env)
    }
}

struct Scaler {
    env: Env,
    group: AsgClient,
    secrets: aws_sdk_secretsmanager::Client,
    /// Read from the secret once per container, on the first invocation.
    queue: OnceCell<(RunnerApi, ScaleSettings)>,
}

fn failure(kind: &str, message: String) -> Diagnostic {
    log(json!({"level": "error", "error_type": kind, "error": message}));
    Diagnostic {
        error_type: kind.to_string(),
        error_message: message,
    }
}

fn log(line: Value) {
    println!("{line}");
}

impl Scaler {
    async fn queue(&self) -> Result<&(RunnerApi, ScaleSettings), Diagnostic> {
        self.queue
            .get_or_try_init(|| async {
                let (token, resource_class) = token::resolve(
                    Some((&self.secrets, &self.env.secret_id)),
                    self.env.resource_class.as_deref(),
                )
                .await
                .map_err(|e| failure("SecretError", e.to_string()))?;
                let limits = HttpLimits {
                    timeout: self.env.circleci_timeout,
                    ..HttpLimits::default()
                };
                let api = RunnerApi::new(&self.env.circleci_url, token, limits)
                    .map_err(|e| failure("ConfigError", e.to_string()))?;
                let settings = ScaleSettings {
                    asg: self.env.asg.clone(),
                    resource_class,
                    policy: Policy {
                        boot_timeout: self.env.boot_timeout,
                    },
                    dry_run: false,
                };
                Ok((api, settings))
            })
            .await
    }

    async fn handle(&self, event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
        let start = Instant::now();
        let deadline = UNIX_EPOCH + Duration::from_millis(event.context.deadline);
        let (api, settings) = self.queue().await?;
        let mut polls: u32 = 0;
        let mut desired;
        loop {
            let round = run_once(api, &self.group, settings).await.map_err(|e| {
                failure(
                    "ScaleError",
                    format!(
                        "scaling {} for {} failed; the group was not changed: {}",
                        settings.asg,
                        settings.resource_class,
                        error_chain(&e)
                    ),
                )
            })?;
            polls += 1;
            desired = Some(round.group.desired_after);
            let mut line = serde_json::to_value(&round).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut line {
                m.insert("poll".into(), json!(polls));
                m.insert("request_id".into(), json!(event.context.request_id));
            }
            log(line);

            // Polls at 0, interval, 2*interval, ... up to the window, while the
            // invocation's deadline leaves room for one more round.
            let next = self.env.interval * polls;
            if next > self.env.window {
                break;
            }
            let next_at = start + next;
            let left = deadline
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            if next_at.saturating_duration_since(Instant::now()) + self.env.circleci_timeout > left
            {
                break;
            }
            tokio::time::sleep_until(next_at.into()).await;
        }
        Ok(json!({"polls": polls, "desired": desired}))
    }
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let env = match Env::from_env() {
        Ok(e) => e,
        Err(msg) => {
            log(json!({"level": "error", "error_type": "ConfigError", "error": msg}));
            return Err(msg.into());
        }
    };
    let config = aws::load_config(&AwsOptions::default())
        .await
        .inspect_err(|e| {
            log(json!({"level": "error", "error_type": "ConfigError", "error": e.to_string()}));
        })?;
    let scaler: &'static Scaler = Box::leak(Box::new(Scaler {
        env,
        group: AsgClient::new(&config),
        secrets: aws_sdk_secretsmanager::Client::new(&config),
        queue: OnceCell::new(),
    }));
    lambda_runtime::run(service_fn(move |event| scaler.handle(event))).await
}
