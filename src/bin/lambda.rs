//! The scaling Lambda (custom runtime `provided.al2023`, shipped as `bootstrap`).
//!
//! EventBridge invokes it each minute; each invocation polls every
//! `CCI_SCALER_POLL_INTERVAL` (default 10s) for `CCI_SCALER_POLL_WINDOW`
//! (default 50s), running the same core as `cci-scaler scale`. One JSON line per
//! poll on stdout; any error fails the invocation before the group is changed.
//!
//! Environment:
//! - `CCI_SCALER_SECRET_ID` (required): secret holding {"resource_class", "circle_token"}
//! - `CCI_SCALER_ASG`: the Auto Scaling group
//! - `CCI_SCALER_RESOURCE_CLASS`: overrides/checks the secret's resource class
//! - `CCI_SCALER_POOLS`, instead of the two above: several pools as JSON,
//!   `[{"name": ..., "asg": ..., "resource_class": ...}, ...]`; every poll scales
//!   all of them at once, one JSON line per pool; a pool that fails is logged
//!   and the others still scaled; the invocation fails if any pool failed.
//! - `CCI_SCALER_HEADROOM`: spare runners by schedule for the one group, JSON
//!   `[{"schedule": "0 8 * * MON-FRI", "duration": "11h", "time_zone": ..., "count": 2}]`
//!   (a pool of `CCI_SCALER_POOLS` carries its own `headroom` list)
//! - `CCI_SCALER_POLL_INTERVAL`, `CCI_SCALER_POLL_WINDOW`, `CCI_SCALER_BOOT_TIMEOUT`,
//!   `CCI_SCALER_CIRCLECI_TIMEOUT`: durations (`10s`, `500ms`, or plain seconds)
//! - `CCI_SCALER_SPOT_GRACE` (3m), `CCI_SCALER_SPOT_COOLDOWN` (30m): a spot pool
//!   short of capacity falls back to on demand after spot launches failed for
//!   the grace period, for the cool-down
//! - `CCI_SCALER_STACK`: the stack, a metric dimension (default: the group)
//! - `CIRCLECI_RUNNER_API_URL`: runner API base URL
//! - `CCI_SCALER_USAGE_ORG`, `CCI_SCALER_USAGE_RECORD`: report the queue
//!   waits jobs really had, day by day, from CircleCI's usage export of this
//!   organisation (`cci_scaler::scale::real_waits`; where it stands is the
//!   SSM parameter named by the record), one step an hour at
//!   `CCI_SCALER_USAGE_MINUTE` (default 7; `*`: every invocation), beside
//!   the polls; `CIRCLECI_API_URL`: the v2 API
//!
//! Each poll's line also carries CloudWatch Embedded Metric Format (namespace
//! `cci-scaler`, dimensions stack and pool): metrics at no extra API call.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use cci_scaler::aws::{self, AwsOptions, autoscaling::AsgClient};
use cci_scaler::circleci::{self, HttpLimits, RunnerApi};
use cci_scaler::scale::decide::Policy;
use cci_scaler::scale::headroom::{HeadroomSpec, Schedule};
use cci_scaler::scale::pools::{Pool, run_pools};
use cci_scaler::scale::{AutoHeadroom, ScaleSettings, run_once};
use cci_scaler::{error_chain, token};

struct Env {
    secret_id: String,
    stack: Option<String>,
    asg: Option<String>,
    headroom: Schedule,
    auto: Option<AutoHeadroom>,
    /// `CCI_SCALER_HEADROOM` as given (for the simulator).
    headroom_specs: Vec<HeadroomSpec>,
    /// The one group's settings for the simulator (`CCI_SCALER_MODEL`).
    model: Option<cci_scaler::scale::real_waits::SimModel>,
    pools: Option<Vec<Pool>>,
    resource_class: Option<String>,
    interval: Duration,
    window: Duration,
    boot_timeout: Duration,
    spot_grace: Duration,
    spot_cooldown: Duration,
    circleci_timeout: Duration,
    /// CircleCI requests in flight at once, over all pools.
    circleci_concurrency: usize,
    circleci_url: String,
    /// The daily report of real queue waits: (org, record), when asked for.
    usage: Option<(String, String)>,
    /// The minute of the hour it steps at (`None`: every invocation).
    usage_minute: Option<u64>,
    usage_url: String,
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
        let headroom_specs = var("CCI_SCALER_HEADROOM")
            .map(|v| {
                serde_json::from_str::<Vec<HeadroomSpec>>(&v).map_err(|e| {
                    format!(
                        "CCI_SCALER_HEADROOM is not a JSON list of {{\"schedule\", \"duration\", \"time_zone\", \"count\"}}: {e}"
                    )
                })
            })
            .transpose()?
            .unwrap_or_default();
        let env = Env {
            secret_id: required("CCI_SCALER_SECRET_ID")?,
            stack: var("CCI_SCALER_STACK"),
            asg: var("CCI_SCALER_ASG"),
            headroom: Schedule::new(&headroom_specs)
                .map_err(|e| format!("CCI_SCALER_HEADROOM: {e}"))?,
            auto: var("CCI_SCALER_AUTO_HEADROOM")
                .map(|v| {
                    serde_json::from_str::<AutoHeadroom>(&v).map_err(|e| {
                        format!(
                            "CCI_SCALER_AUTO_HEADROOM is not a JSON object of {{\"max_spares\", \"record\", \"poll_s\"}}: {e}"
                        )
                    })
                })
                .transpose()?,
            headroom_specs,
            model: var("CCI_SCALER_MODEL")
                .map(|v| {
                    serde_json::from_str(&v).map_err(|e| {
                        format!(
                            "CCI_SCALER_MODEL is not a JSON object of {{\"max_instances\", \"boot_s\", \"idle_timeout_s\"}}: {e}"
                        )
                    })
                })
                .transpose()?,
            pools: var("CCI_SCALER_POOLS")
                .map(|v| {
                    serde_json::from_str::<Vec<Pool>>(&v).map_err(|e| {
                        format!(
                            "CCI_SCALER_POOLS is not a JSON list of {{\"name\", \"asg\", \"resource_class\"}}: {e}"
                        )
                    })
                })
                .transpose()?,
            resource_class: var("CCI_SCALER_RESOURCE_CLASS"),
            interval: duration_var("CCI_SCALER_POLL_INTERVAL", Duration::from_secs(10))?,
            window: duration_var("CCI_SCALER_POLL_WINDOW", Duration::from_secs(50))?,
            boot_timeout: duration_var("CCI_SCALER_BOOT_TIMEOUT", Duration::from_secs(600))?,
            spot_grace: duration_var("CCI_SCALER_SPOT_GRACE", Duration::from_secs(180))?,
            spot_cooldown: duration_var("CCI_SCALER_SPOT_COOLDOWN", Duration::from_secs(1800))?,
            circleci_timeout: duration_var("CCI_SCALER_CIRCLECI_TIMEOUT", Duration::from_secs(10))?,
            circleci_concurrency: match var("CCI_SCALER_CIRCLECI_CONCURRENCY") {
                None => circleci::DEFAULT_MAX_IN_FLIGHT,
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=circleci::MAX_IN_FLIGHT_LIMIT).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "CCI_SCALER_CIRCLECI_CONCURRENCY must be 1 to {}, not {v:?}",
                            circleci::MAX_IN_FLIGHT_LIMIT
                        )
                    })?,
            },
            circleci_url: var("CIRCLECI_RUNNER_API_URL")
                .unwrap_or_else(|| circleci::DEFAULT_URL.to_string()),
            usage: match (var("CCI_SCALER_USAGE_ORG"), var("CCI_SCALER_USAGE_RECORD")) {
                (Some(org), Some(record)) => Some((org, record)),
                (None, None) => None,
                _ => {
                    return Err(
                        "set both CCI_SCALER_USAGE_ORG and CCI_SCALER_USAGE_RECORD, or neither"
                            .into(),
                    );
                }
            },
            usage_minute: match var("CCI_SCALER_USAGE_MINUTE").as_deref() {
                None => Some(7),
                Some("*") => None,
                Some(m) => Some(m.parse::<u64>().ok().filter(|m| *m < 60).ok_or_else(|| {
                    format!("CCI_SCALER_USAGE_MINUTE must be 0 to 59 or *, not {m:?}")
                })?),
            },
            usage_url: var("CIRCLECI_API_URL")
                .unwrap_or_else(|| circleci::usage::DEFAULT_API_URL.to_string()),
        };
        if env.interval.is_zero() {
            return Err("CCI_SCALER_POLL_INTERVAL must be above 0".into());
        }
        if let Some(rc) = &env.resource_class {
            circleci::validate_resource_class(rc)?;
        }
        match (&env.asg, &env.pools) {
            (None, None) => return Err("set CCI_SCALER_ASG (or CCI_SCALER_POOLS)".into()),
            (Some(_), Some(_)) => {
                return Err("set CCI_SCALER_ASG or CCI_SCALER_POOLS, not both".into());
            }
            (None, Some(pools)) => {
                if pools.is_empty() {
                    return Err("CCI_SCALER_POOLS lists no pool".into());
                }
                for p in pools {
                    circleci::validate_resource_class(&p.resource_class)?;
                    Schedule::new(&p.headroom)
                        .map_err(|e| format!("CCI_SCALER_POOLS, pool {}: {e}", p.name))?;
                }
            }
            (Some(_), None) => {}
        }
        Ok(env)
    }
}

struct Scaler {
    env: Env,
    group: AsgClient,
    secrets: aws_sdk_secretsmanager::Client,
    /// Read from the secret once per container, on the first invocation
    /// (with the v2 API client for the usage export, when asked for).
    queue: OnceCell<(RunnerApi, Mode, Option<RunnerApi>)>,
}

/// One group (today's environment) or several pools.
enum Mode {
    One(ScaleSettings),
    Pools(Vec<Pool>, Policy),
}

fn failure(kind: &str, message: String) -> Diagnostic {
    log(json!({"level": "error", "error_type": kind, "error": message}));
    Diagnostic {
        error_type: kind.to_string(),
        error_message: message,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn log(line: Value) {
    println!("{line}");
}

impl Scaler {
    async fn queue(&self) -> Result<&(RunnerApi, Mode, Option<RunnerApi>), Diagnostic> {
        self.queue
            .get_or_try_init(|| async {
                let secret = Some((&self.secrets, self.env.secret_id.as_str()));
                let policy = Policy {
                    boot_timeout: self.env.boot_timeout,
                    spot_grace: self.env.spot_grace,
                    spot_cooldown: self.env.spot_cooldown,
                    headroom: 0,
                };
                let (token, mode) = match (&self.env.asg, &self.env.pools) {
                    (Some(asg), _) => {
                        let (token, resource_class) =
                            token::resolve(secret, self.env.resource_class.as_deref())
                                .await
                                .map_err(|e| failure("SecretError", e.to_string()))?;
                        let settings = ScaleSettings {
                            asg: asg.clone(),
                            resource_class,
                            policy,
                            headroom: self.env.headroom.clone(),
                            auto: self.env.auto.clone(),
                            dry_run: false,
                        };
                        (token, Mode::One(settings))
                    }
                    (None, pools) => {
                        let token = token::resolve_token(secret)
                            .await
                            .map_err(|e| failure("SecretError", e.to_string()))?;
                        (
                            token,
                            Mode::Pools(pools.clone().unwrap_or_default(), policy),
                        )
                    }
                };
                let limits = HttpLimits {
                    timeout: self.env.circleci_timeout,
                    max_in_flight: self.env.circleci_concurrency,
                    ..HttpLimits::default()
                };
                let usage = match self.env.usage {
                    Some(_) => Some(
                        RunnerApi::new(&self.env.usage_url, token.clone(), limits)
                            .map_err(|e| failure("ConfigError", e.to_string()))?,
                    ),
                    None => None,
                };
                let api = RunnerApi::new(&self.env.circleci_url, token, limits)
                    .map_err(|e| failure("ConfigError", e.to_string()))?;
                Ok((api, mode, usage))
            })
            .await
    }

    fn stack_name<'a>(&'a self, asg: &'a str) -> &'a str {
        self.env.stack.as_deref().unwrap_or(asg)
    }

    /// A poll's line: the round, and its metrics in EMF.
    fn log_round(&self, round: &cci_scaler::scale::Round, pool: &str, poll: u32, request_id: &str) {
        let mut line = serde_json::to_value(round).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut line {
            m.insert("poll".into(), json!(poll));
            m.insert("request_id".into(), json!(request_id));
        }
        let metrics = cci_scaler::scale::metrics::of_round(round);
        log(cci_scaler::scale::metrics::emf(
            line,
            self.stack_name(&round.asg),
            pool,
            &metrics,
            now_ms(),
        ));
    }

    /// One poll of several pools: a line per pool; failures are logged and
    /// returned (the others are still scaled).
    async fn poll_pools(
        &self,
        api: &RunnerApi,
        pools: &[Pool],
        policy: &Policy,
        poll: u32,
        request_id: &str,
    ) -> Vec<String> {
        let mut failed = Vec::new();
        let results = run_pools(api, &self.group, pools, policy, false).await;
        for (pool, result) in pools.iter().zip(results) {
            match result {
                Ok(round) => {
                    self.log_round(&round, &pool.name, poll, request_id);
                }
                Err(e) => {
                    let message = format!(
                        "scaling {} for {} failed; the group was not changed: {}",
                        pool.asg,
                        pool.resource_class,
                        error_chain(&e)
                    );
                    log(cci_scaler::scale::metrics::emf_error(
                        json!({"level": "error", "error_type": "ScaleError",
                        "poll": poll, "request_id": request_id, "error": message}),
                        self.stack_name(&pool.asg),
                        &pool.name,
                        "ScaleError",
                        now_ms(),
                    ));
                    failed.push(pool.name.clone());
                }
            }
        }
        failed
    }

    async fn handle(&self, event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
        let (_, mode, usage) = self.queue().await?;
        let (scaled, ()) = tokio::join!(self.scale(&event), self.usage_step(mode, usage.as_ref()));
        scaled
    }

    /// The daily report of real queue waits, one step, when due: its line
    /// (with each reported day's metrics, dated that day); a failure is
    /// logged and never fails the invocation (scaling does not depend on it).
    async fn usage_step(&self, mode: &Mode, api: Option<&RunnerApi>) {
        let (Some((org, record)), Some(api)) = (&self.env.usage, api) else {
            return;
        };
        let now = (now_ms() / 1000) as i64;
        if let Some(m) = self.env.usage_minute
            && (now as u64 / 60) % 60 != m
        {
            return;
        }
        // Each pool: its metric dimension, class and model fleet.
        let fleet = |m: &Option<cci_scaler::scale::real_waits::SimModel>,
                     headroom: &[HeadroomSpec],
                     auto: &Option<AutoHeadroom>| {
            m.as_ref().map(|m| {
                m.fleet(
                    headroom,
                    auto.as_ref().map(|a| a.max_spares),
                    self.env.interval.as_secs(),
                    self.env.boot_timeout.as_secs(),
                )
            })
        };
        let pools: Vec<(String, String, Option<cci_scaler::simulate::Fleet>)> = match mode {
            Mode::One(s) => vec![(
                s.asg.clone(),
                s.resource_class.clone(),
                fleet(&self.env.model, &self.env.headroom_specs, &s.auto),
            )],
            Mode::Pools(pools, _) => pools
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        p.resource_class.clone(),
                        fleet(&p.model, &p.headroom, &p.auto),
                    )
                })
                .collect(),
        };
        let report: Vec<cci_scaler::scale::real_waits::ReportPool> = pools
            .iter()
            .map(|(_, c, f)| (c.clone(), f.clone()))
            .collect();
        // Each day is logged (its metrics dated that day) before the
        // record moves past it.
        let log_day = |d: &cci_scaler::scale::real_waits::PoolDay| {
            let Some((pool, _, _)) = pools.iter().find(|(_, c, _)| *c == d.resource_class) else {
                return;
            };
            let (metrics, at) = cci_scaler::scale::real_waits::metrics(d);
            log(cci_scaler::scale::metrics::emf(
                json!({"usage": "day", "resource_class": d.resource_class, "day": d.day,
                    "jobs": d.jobs, "waits": d.waits, "simulated": d.simulated}),
                self.stack_name(pool),
                pool,
                &metrics,
                at,
            ));
        };
        let step = cci_scaler::scale::real_waits::step(
            api,
            &self.group,
            record,
            org,
            &report,
            now,
            &log_day,
        );
        let step = match tokio::time::timeout(self.env.window, step).await {
            Ok(Ok(step)) => step,
            Ok(Err(e)) => {
                log(json!({"level": "error", "error_type": "UsageError",
                    "error": format!("the daily report of real queue waits: {}", error_chain(&e))}));
                return;
            }
            Err(_) => {
                log(json!({"level": "error", "error_type": "UsageError",
                    "error": "the daily report of real queue waits took longer than the poll window; it goes on at its next step"}));
                return;
            }
        };
        let mut line = serde_json::to_value(&step).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut line
            && let Some(Value::Array(days)) = m.get_mut("days")
        {
            let n = days.len();
            m.insert("days".into(), json!(n));
        }
        log(line);
    }

    async fn scale(&self, event: &LambdaEvent<Value>) -> Result<Value, Diagnostic> {
        let start = Instant::now();
        let deadline = UNIX_EPOCH + Duration::from_millis(event.context.deadline);
        let (api, mode, _) = self.queue().await?;
        let mut polls: u32 = 0;
        let mut desired = None;
        let mut failed: std::collections::BTreeSet<String> = Default::default();
        loop {
            let settings = match mode {
                Mode::One(s) => s,
                Mode::Pools(pools, policy) => {
                    polls += 1;
                    failed.extend(
                        self.poll_pools(api, pools, policy, polls, &event.context.request_id)
                            .await,
                    );
                    if !self.next_poll(start, deadline, polls).await {
                        break;
                    }
                    continue;
                }
            };
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
            self.log_round(&round, &settings.asg, polls, &event.context.request_id);
            if !self.next_poll(start, deadline, polls).await {
                break;
            }
        }
        if !failed.is_empty() {
            let names: Vec<String> = failed.into_iter().collect();
            return Err(failure(
                "ScaleError",
                format!(
                    "{} pool(s) failed (the others were scaled): {}",
                    names.len(),
                    names.join(", ")
                ),
            ));
        }
        Ok(json!({"polls": polls, "desired": desired}))
    }

    /// Polls at 0, interval, 2*interval, ... up to the window, while the
    /// invocation's deadline leaves room for one more round: waits for the
    /// next one, or says there is none.
    async fn next_poll(&self, start: Instant, deadline: SystemTime, polls: u32) -> bool {
        let next = self.env.interval * polls;
        if next > self.env.window {
            return false;
        }
        let next_at = start + next;
        let left = deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        if next_at.saturating_duration_since(Instant::now()) + self.env.circleci_timeout > left {
            return false;
        }
        tokio::time::sleep_until(next_at.into()).await;
        true
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
