//! `status`: what exists (a read-only walk), and the fleet's state.

use serde::Serialize;

use crate::scale::RunnerQueue;

use super::common::*;

/// The stack as `status` reports it.
#[derive(Debug, Serialize)]
pub struct StackStatus {
    /// What an operator should fix (one line each).
    pub warnings: Vec<String>,
    pub resources: Vec<Item>,
    pub pools: Vec<PoolStatus>,
    pub schedule_enabled: Option<bool>,
    pub lambda_runs: LambdaRuns,
}

/// One pool: its queue, group, instances and registered runners.
#[derive(Debug, Serialize)]
pub struct PoolStatus {
    /// `None`: the one pool of a stack without `[[pool]]` tables.
    pub pool: Option<String>,
    pub resource_class: Option<String>,
    pub group: String,
    /// The headroom period active now (from the Lambda's settings), if any.
    pub headroom: Option<crate::scale::headroom::Active>,
    /// `None`: the group does not exist.
    pub fleet: Option<Fleet>,
    /// Spot pools: instances interrupted in the last hour (id, seconds since
    /// the epoch of the notice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Vec<(String, u64)>>,
    /// The image its launch template launches from, and its age.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<PoolImage>,
}

/// A pool's image as `status` reports it.
#[derive(Debug, Serialize)]
pub struct PoolImage {
    pub id: String,
    /// When it was made (RFC 3339, as EC2 has it).
    pub created: String,
    pub age_days: u64,
    /// A runner-ready image this stack baked (`image build`, or init).
    pub baked: bool,
}

/// A pool's fleet as `status` reports it.
#[derive(Debug, Serialize)]
pub struct Fleet {
    pub min: i32,
    pub max: i32,
    pub desired: i32,
    pub instances: Vec<FleetInstance>,
    pub unclaimed_tasks: Option<u32>,
    pub running_tasks: Option<u32>,
    pub registered_runners: Option<Vec<String>>,
    /// Registered runners beyond the running tasks: idle, ready for a job.
    pub spares_up: Option<u32>,
    /// The group's warm pool: its size and its instances (`None`: no pool).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm_pool: Option<WarmPool>,
    pub circleci_error: Option<String>,
}

/// A group's warm pool as `status` reports it.
#[derive(Debug, Serialize)]
pub struct WarmPool {
    pub size: i32,
    /// Instance id and lifecycle state (`Warmed:Stopped`, `Warmed:Pending`...).
    pub instances: Vec<(String, String)>,
}

/// The scaling Lambda's recent polls, from its CloudWatch log group.
#[derive(Debug, Default, Serialize)]
pub struct LambdaRuns {
    /// Polls logged in the window.
    pub polls: usize,
    /// Failed invocations logged in the window.
    pub errors: usize,
    pub last_poll: Option<String>,
    pub last_error: Option<String>,
    /// The latest decisions, oldest first (at most [`RECENT_DECISIONS`]).
    pub recent: Vec<Decision>,
    /// Why the logs could not be read, if they could not.
    pub unreadable: Option<String>,
}

/// How many of the Lambda's latest decisions `status` keeps.
pub const RECENT_DECISIONS: usize = 30;

/// One decision of the Lambda, from its log line.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub time: String,
    /// The group it sized.
    pub asg: String,
    pub action: String,
    pub desired_before: i64,
    pub desired_after: i64,
    pub unclaimed: i64,
    pub running: i64,
    pub reason: String,
}

/// The Lambda's log lines of the last `window`: one JSON line per poll, and
/// one `"level": "error"` line per failed invocation.
async fn lambda_runs(ctx: &Ctx<'_>, window: Duration) -> LambdaRuns {
    let group = format!("/aws/lambda/{}", ctx.names.function());
    let since = std::time::SystemTime::now()
        .checked_sub(window)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut runs = LambdaRuns::default();
    let mut pages = ctx
        .aws
        .logs
        .filter_log_events()
        .log_group_name(&group)
        .start_time(since)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                runs.unreadable = Some(if is_not_found(&e) {
                    format!(
                        "no log group {group}: the Lambda's logs have nowhere to go (init makes it: run init again)"
                    )
                } else {
                    crate::aws::AwsError::call("logs:FilterLogEvents", &group, &e).to_string()
                });
                return runs;
            }
        };
        for ev in page.events() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(ev.message().unwrap_or(""))
            else {
                continue;
            };
            if v.get("poll").is_some() {
                runs.polls += 1;
                runs.recent.push(Decision {
                    time: v["time"].as_str().unwrap_or_default().to_string(),
                    asg: v["asg"].as_str().unwrap_or_default().to_string(),
                    action: v["action"].as_str().unwrap_or_default().to_string(),
                    desired_before: v["group"]["desired_before"].as_i64().unwrap_or(0),
                    desired_after: v["group"]["desired_after"].as_i64().unwrap_or(0),
                    unclaimed: v["queue"]["unclaimed"].as_i64().unwrap_or(0),
                    running: v["queue"]["running"].as_i64().unwrap_or(0),
                    reason: v["reason"].as_str().unwrap_or_default().to_string(),
                });
                if runs.recent.len() > RECENT_DECISIONS {
                    runs.recent.remove(0);
                }
                runs.last_poll = Some(format!(
                    "{} {} (desired {} -> {})",
                    v["time"].as_str().unwrap_or(""),
                    v["action"].as_str().unwrap_or(""),
                    v["group"]["desired_before"],
                    v["group"]["desired_after"]
                ));
            } else if v["level"] == "error" {
                runs.errors += 1;
                runs.last_error = v["error"].as_str().map(String::from);
            }
        }
    }
    runs
}

#[derive(Debug, Serialize)]
pub struct FleetInstance {
    pub id: String,
    pub lifecycle: String,
    pub health: String,
    pub protected: bool,
    pub registered: bool,
    /// When it was launched (seconds since the epoch), if EC2 said.
    pub launched: Option<u64>,
}

/// What exists (read only) and every pool's state (read concurrently).
pub async fn status(
    ctx: &Ctx<'_>,
    pools: &[PoolRecord],
    image_max_age: Duration,
) -> R<StackStatus> {
    let dry = Ctx {
        dry_run: true,
        ..ctx.clone()
    };
    // A dry-run teardown lists what exists, and whether it is ours.
    let mut resources = super::runner::teardown(&dry, pools, false).await?;
    for i in &mut resources {
        if i.action == Action::Delete {
            i.action = Action::Keep;
            i.detail = None;
        }
    }
    let headroom = headroom_of(ctx).await?;
    let now = std::time::SystemTime::now();
    let reads = pools.iter().map(|p| {
        let active = headroom
            .get(&p.name)
            .and_then(|specs| crate::scale::headroom::Schedule::new(specs).ok())
            .and_then(|s| s.active(now));
        pool_status(ctx, p, active)
    });
    let pools = futures::future::try_join_all(reads).await?;
    let rule = ctx
        .aws
        .events
        .describe_rule()
        .name(ctx.names.rule())
        .send()
        .await
        .ok();
    let mut warnings = vec![];
    let max_days = image_max_age.as_secs() / 86_400;
    for p in &pools {
        // Baked images only: a stock one is the base init resolves anew.
        if let Some(img) = p
            .image
            .as_ref()
            .filter(|i| i.baked && i.age_days > max_days)
        {
            warnings.push(format!(
                "pool {}: its image {} is {} days old (image_max_age {max_days}d): bake a fresh one with `cci-scaler image build`, then run `cci-scaler init`",
                p.pool.as_deref().unwrap_or(&p.group),
                img.id,
                img.age_days
            ));
        }
    }
    // The scaler's CircleCI token: the one that ran init can create resource
    // classes and runner tokens, which only organisation admins may do.
    if super::scaler_secret::holds_init_token(ctx).await? == Some(true) {
        warnings.push(format!(
            "the scaler's CircleCI token is the one that ran init, an organisation admin's (creating resource classes and runner tokens needs one); \
             give the scaler a dedicated user's token: run init with {} set to it (see README, Security)",
            crate::token::SCALER_TOKEN_VAR
        ));
    }
    Ok(StackStatus {
        warnings,
        resources,
        pools,
        schedule_enabled: rule
            .map(|r| r.state() == Some(&aws_sdk_eventbridge::types::RuleState::Enabled)),
        lambda_runs: lambda_runs(ctx, Duration::from_secs(15 * 60)).await,
    })
}

/// Each pool's headroom periods, as the Lambda has them.
async fn headroom_of(
    ctx: &Ctx<'_>,
) -> R<HashMap<Option<String>, Vec<crate::scale::headroom::HeadroomSpec>>> {
    let mut out = HashMap::new();
    let Some(Owned { it, ours: true }) = super::function::find(ctx).await? else {
        return Ok(out);
    };
    let Some(vars) = it
        .configuration()
        .and_then(|c| c.environment())
        .and_then(|e| e.variables())
    else {
        return Ok(out);
    };
    if let Some(specs) = vars
        .get("CCI_SCALER_HEADROOM")
        .and_then(|v| serde_json::from_str(v).ok())
    {
        out.insert(None, specs);
    }
    if let Some(pools) = vars
        .get("CCI_SCALER_POOLS")
        .and_then(|v| serde_json::from_str::<Vec<crate::scale::pools::Pool>>(v).ok())
    {
        for p in pools {
            out.insert(Some(p.name), p.headroom);
        }
    }
    Ok(out)
}

async fn pool_status(
    ctx: &Ctx<'_>,
    p: &PoolRecord,
    headroom: Option<crate::scale::headroom::Active>,
) -> R<PoolStatus> {
    let pctx = Ctx {
        names: ctx.names.for_pool(p.name.as_deref()),
        ..ctx.clone()
    };
    let mut out = PoolStatus {
        pool: p.name.clone(),
        resource_class: p.resource_class.clone(),
        group: pctx.names.group(),
        headroom,
        fleet: None,
        interrupted: None,
        image: pool_image(&pctx).await,
    };
    let Some(Owned { it: g, .. }) = super::group::find(&pctx).await? else {
        return Ok(out);
    };
    if crate::scale::spot::is_spot_group(&g) {
        let since = std::time::SystemTime::now() - Duration::from_secs(3600);
        let list =
            crate::aws::autoscaling::interrupted_instances(&ctx.aws.ec2, &out.group, since).await?;
        out.interrupted = Some(
            list.into_iter()
                .map(|(id, at)| (id, crate::scale::spot::epoch(at)))
                .collect(),
        );
    }
    let snapshot = match &p.resource_class {
        Some(rc) => ctx.circleci.snapshot(rc).await.map_err(|e| e.to_string()),
        None => Err("the resource class is unknown: pass --resource-class".to_string()),
    };
    let (unclaimed, running, runners, err) = match snapshot {
        Ok(s) => {
            let mut r: Vec<String> = s.runners.into_iter().collect();
            r.sort();
            (
                Some(s.depth.unclaimed),
                Some(s.depth.running),
                Some(r),
                None,
            )
        }
        Err(e) => (None, None, None, Some(e)),
    };
    let ids: Vec<String> = g
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(String::from))
        .collect();
    // Only the ages shown: without them status still reports the rest.
    let launched = if ids.is_empty() {
        HashMap::new()
    } else {
        crate::aws::autoscaling::launch_times(&ctx.aws.ec2, &ids)
            .await
            .unwrap_or_default()
    };
    let warm = ctx
        .aws
        .asg
        .describe_warm_pool()
        .auto_scaling_group_name(&out.group)
        .send()
        .await
        .map_err(aws_err("autoscaling:DescribeWarmPool", &out.group))?;
    let warm_pool = warm.warm_pool_configuration().map(|c| WarmPool {
        size: c.min_size().unwrap_or(0),
        instances: warm
            .instances()
            .iter()
            .map(|i| {
                (
                    i.instance_id().unwrap_or_default().to_string(),
                    i.lifecycle_state()
                        .map(|l| l.as_str().to_string())
                        .unwrap_or_default(),
                )
            })
            .collect(),
    });
    out.fleet = Some(Fleet {
        warm_pool,
        min: g.min_size().unwrap_or(0),
        max: g.max_size().unwrap_or(0),
        desired: g.desired_capacity().unwrap_or(0),
        instances: g
            .instances()
            .iter()
            .map(|i| {
                let id = i.instance_id().unwrap_or_default().to_string();
                FleetInstance {
                    registered: runners.as_ref().is_some_and(|r| r.contains(&id)),
                    launched: launched.get(&id).map(|t| crate::scale::spot::epoch(*t)),
                    id,
                    lifecycle: i
                        .lifecycle_state()
                        .map(|l| l.as_str().to_string())
                        .unwrap_or_default(),
                    health: i.health_status().unwrap_or_default().to_string(),
                    protected: i.protected_from_scale_in().unwrap_or(false),
                }
            })
            .collect(),
        unclaimed_tasks: unclaimed,
        running_tasks: running,
        spares_up: runners
            .as_ref()
            .zip(running)
            .map(|(r, running)| (r.len() as u32).saturating_sub(running)),
        registered_runners: runners,
        circleci_error: err,
    });
    Ok(out)
}

/// A pool's metrics over a period (`status --since`).
#[derive(Debug, Serialize)]
pub struct PoolHistory {
    pub pool: Option<String>,
    pub peak_unclaimed: f64,
    pub peak_desired: f64,
    pub instance_hours: f64,
    pub reaped: f64,
    pub errors: f64,
    /// The unclaimed queue over the period, oldest first (one value per
    /// period step; missing steps are 0).
    pub unclaimed: Vec<f64>,
    pub step_seconds: i32,
    /// Data points found over all the metrics (0: no data for the period).
    pub points: usize,
    /// The queue waits jobs really had, per UTC day in the period, as the
    /// scaler reported them from CircleCI's usage export (`usage_org`).
    pub real_waits: Vec<RealDay>,
}

/// One day's real queue waits (seconds) and job runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RealDay {
    /// The day's UTC midnight, seconds since the epoch.
    pub day: i64,
    pub p50_s: f64,
    pub p95_s: f64,
    pub max_s: f64,
    pub jobs: f64,
    /// The same runs replayed through the simulator with the pool's
    /// settings: its p95 (`None`: not reported).
    pub sim_p95_s: Option<f64>,
}

/// Sum up the pools' metrics since `since` ago, in one GetMetricData call
/// (more only when the answer is paged).
pub async fn history(ctx: &Ctx<'_>, pools: &[PoolRecord], since: Duration) -> R<Vec<PoolHistory>> {
    use aws_sdk_cloudwatch::types as cw;
    let now = std::time::SystemTime::now();
    let start = now - since;
    // About 60 steps, whole minutes.
    let step = ((since.as_secs() / 60).div_ceil(60).max(1) * 60) as i32;
    let metrics = [
        ("unclaimed", "Unclaimed", "Maximum"),
        ("desired", "Desired", "Maximum"),
        ("inservice", "InService", "Average"),
        ("reaped", "Reaped", "Sum"),
        ("errors", "Errors", "Sum"),
    ];
    let dim_pool = |p: &PoolRecord| match (pools.len(), &p.name) {
        (1, _) | (_, None) => ctx.names.for_pool(p.name.as_deref()).group(),
        (_, Some(n)) => n.clone(),
    };
    // The daily real waits, a point a day.
    let daily = [
        ("rw50", "RealWaitP50"),
        ("rw95", "RealWaitP95"),
        ("rwmax", "RealWaitMax"),
        ("rjobs", "RealJobs"),
        ("sw95", "SimWaitP95"),
    ];
    let mut queries = Vec::new();
    for (i, p) in pools.iter().enumerate() {
        let all = metrics
            .iter()
            .map(|&(id, m, stat)| (id, m, stat, step))
            .chain(daily.iter().map(|&(id, m)| (id, m, "Maximum", 86_400)));
        for (id, metric, stat, step) in all {
            queries.push(
                cw::MetricDataQuery::builder()
                    .id(format!("p{i}_{id}"))
                    .metric_stat(
                        cw::MetricStat::builder()
                            .metric(
                                cw::Metric::builder()
                                    .namespace(crate::scale::metrics::NAMESPACE)
                                    .metric_name(metric)
                                    .dimensions(
                                        cw::Dimension::builder()
                                            .name("stack")
                                            .value(&ctx.names.stack)
                                            .build(),
                                    )
                                    .dimensions(
                                        cw::Dimension::builder()
                                            .name("pool")
                                            .value(dim_pool(p))
                                            .build(),
                                    )
                                    .build(),
                            )
                            .period(step)
                            .stat(stat)
                            .build(),
                    )
                    .build(),
            );
        }
    }
    let mut values: HashMap<String, Vec<(i64, f64)>> = HashMap::new();
    let mut token: Option<String> = None;
    loop {
        let out = ctx
            .aws
            .cloudwatch
            .get_metric_data()
            .set_metric_data_queries(Some(queries.clone()))
            .start_time(aws_sdk_cloudwatch::primitives::DateTime::from(start))
            .end_time(aws_sdk_cloudwatch::primitives::DateTime::from(now))
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(aws_err("cloudwatch:GetMetricData", "the stack's metrics"))?;
        for r in out.metric_data_results() {
            let entry = values
                .entry(r.id().unwrap_or_default().to_string())
                .or_default();
            for (t, v) in r.timestamps().iter().zip(r.values()) {
                entry.push((t.secs(), *v));
            }
        }
        token = out.next_token().map(String::from);
        if token.is_none() {
            break;
        }
    }
    let start_s = crate::scale::spot::epoch(start) as i64;
    let steps = (since.as_secs() as i64 / step as i64).max(1) as usize;
    Ok(pools
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let get = |id: &str| {
                values
                    .get(&format!("p{i}_{id}"))
                    .cloned()
                    .unwrap_or_default()
            };
            let max = |id: &str| get(id).iter().map(|(_, v)| *v).fold(0.0, f64::max);
            // A fold from +0: an empty f64 sum is -0, printed "-0".
            let sum = |id: &str| get(id).iter().fold(0.0, |a, (_, v)| a + v);
            let mut unclaimed = vec![0.0; steps];
            for (t, v) in get("unclaimed") {
                let k = ((t - start_s).max(0) / step as i64) as usize;
                if let Some(slot) = unclaimed.get_mut(k.min(steps - 1)) {
                    *slot = f64::max(*slot, v);
                }
            }
            PoolHistory {
                pool: p.name.clone(),
                peak_unclaimed: max("unclaimed"),
                peak_desired: max("desired"),
                instance_hours: sum("inservice") * step as f64 / 3600.0,
                reaped: sum("reaped"),
                errors: sum("errors"),
                unclaimed,
                step_seconds: step,
                points: metrics.iter().map(|(id, _, _)| get(id).len()).sum(),
                real_waits: {
                    let mut days: Vec<RealDay> = get("rw95")
                        .iter()
                        .map(|&(t, p95)| {
                            let day = t - t.rem_euclid(86_400);
                            let find = |id: &str| {
                                get(id)
                                    .iter()
                                    .find(|(u, _)| u - u.rem_euclid(86_400) == day)
                                    .map(|(_, v)| *v)
                            };
                            let at = |id: &str| find(id).unwrap_or(0.0);
                            RealDay {
                                day,
                                p50_s: at("rw50"),
                                p95_s: p95,
                                max_s: at("rwmax"),
                                jobs: at("rjobs"),
                                sim_p95_s: find("sw95"),
                            }
                        })
                        .collect();
                    days.sort_by_key(|d| d.day);
                    days.dedup_by_key(|d| d.day);
                    days
                },
            }
        })
        .collect())
}

/// The image the pool's launch template launches from (`None`: no template,
/// or its image cannot be read: status goes on without it).
async fn pool_image(ctx: &Ctx<'_>) -> Option<PoolImage> {
    let ec2 = &ctx.aws.ec2;
    let v = ec2
        .describe_launch_template_versions()
        .launch_template_name(ctx.names.launch_template())
        .versions("$Latest")
        .send()
        .await
        .ok()?;
    let id = v
        .launch_template_versions()
        .first()?
        .launch_template_data()?
        .image_id()?
        .to_string();
    let img = ec2.describe_images().image_ids(&id).send().await.ok()?;
    let image = img.images().first()?;
    let created = image.creation_date()?.to_string();
    let baked = image
        .tags()
        .iter()
        .any(|t| t.key() == Some(super::image::IMAGE_OF_TAG));
    let at =
        humantime::parse_rfc3339_weak(created.trim_end_matches('Z').split('.').next()?).ok()?;
    let age_days = std::time::SystemTime::now()
        .duration_since(at)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    Some(PoolImage {
        id,
        created,
        age_days,
        baked,
    })
}
