//! `teardown` (remove everything tagged as this stack's, in dependency order,
//! idempotently) and `status` (what exists, and the fleet's state).

use std::time::Duration;

use aws_sdk_ec2::types as ec2t;
use serde::Serialize;

use super::circleci_admin as cci;
use super::find::{self, Owned};
use super::steps::{R, aws_err};
use super::{Action, Ctx, Item};
use crate::circleci::RunnerQueue;

/// Remove the stack. Resources without our tag are reported and left alone.
pub async fn teardown(
    ctx: &Ctx<'_>,
    resource_class: &str,
    keep_resource_class: bool,
) -> R<Vec<Item>> {
    let mut items = Vec::new();
    macro_rules! run {
        ($name:literal, $e:expr) => {{
            ctx.progress.start($name);
            let item = $e.await?;
            ctx.progress.done(&item);
            items.push(item);
        }};
    }
    // The schedule first, so nothing raises capacity while we remove it.
    run!("schedule", delete_rule(ctx));
    run!("scaling lambda", delete_function(ctx));
    run!("auto scaling group", delete_group(ctx));
    run!("launch template", delete_launch_template(ctx));
    run!("instance profile", delete_instance_profile(ctx));
    run!("runner role", delete_role(ctx, ctx.names.runner_role()));
    run!("scaler role", delete_role(ctx, ctx.names.scaler_role()));
    run!(
        "runner token secret",
        delete_secret(ctx, ctx.names.runner_token_secret())
    );
    run!(
        "scaler secret",
        delete_secret(ctx, ctx.names.scaler_secret())
    );
    run!("security group", delete_security_group(ctx));
    run!("runner tokens", delete_tokens(ctx, resource_class));
    if keep_resource_class {
        items.push(
            Item::new("resource class", resource_class, Action::Keep)
                .detail("--keep-resource-class"),
        );
    } else {
        run!("resource class", delete_resource_class(ctx, resource_class));
    }
    Ok(items)
}

async fn delete_rule(ctx: &Ctx<'_>) -> R<Item> {
    let name = ctx.names.rule();
    let ev = &ctx.aws.events;
    let rule = match find::rule(ctx).await? {
        None => return Ok(Item::new("EventBridge rule", &name, Action::Absent)),
        Some(r) => r,
    };
    let arn = rule.it.arn().unwrap_or_default().to_string();
    if !rule.ours {
        return Ok(Item::new("EventBridge rule", &name, Action::Foreign).id(arn));
    }
    if !ctx.dry_run {
        ev.disable_rule()
            .name(&name)
            .send()
            .await
            .map_err(aws_err("events:DisableRule", &name))?;
        let targets = ev
            .list_targets_by_rule()
            .rule(&name)
            .send()
            .await
            .map_err(aws_err("events:ListTargetsByRule", &name))?;
        let ids: Vec<String> = targets
            .targets()
            .iter()
            .map(|t| t.id().to_string())
            .collect();
        if !ids.is_empty() {
            ev.remove_targets()
                .rule(&name)
                .set_ids(Some(ids))
                .send()
                .await
                .map_err(aws_err("events:RemoveTargets", &name))?;
        }
        ev.delete_rule()
            .name(&name)
            .send()
            .await
            .map_err(aws_err("events:DeleteRule", &name))?;
    }
    Ok(Item::new("EventBridge rule", &name, Action::Delete).id(arn))
}

async fn delete_function(ctx: &Ctx<'_>) -> R<Item> {
    let name = ctx.names.function();
    let Some(f) = find::function(ctx).await? else {
        return Ok(Item::new("Lambda function", &name, Action::Absent));
    };
    let arn =
        f.it.configuration()
            .and_then(|c| c.function_arn())
            .unwrap_or_default()
            .to_string();
    if !f.ours {
        return Ok(Item::new("Lambda function", &name, Action::Foreign).id(arn));
    }
    if !ctx.dry_run {
        ctx.aws
            .lambda
            .delete_function()
            .function_name(&name)
            .send()
            .await
            .map_err(aws_err("lambda:DeleteFunction", &name))?;
    }
    Ok(Item::new("Lambda function", &name, Action::Delete).id(arn))
}

/// Capacity to 0, terminate what is left (protection does not stop an explicit
/// terminate), wait for it, delete the group.
async fn delete_group(ctx: &Ctx<'_>) -> R<Item> {
    let name = ctx.names.group();
    let Some(Owned { it: g, ours }) = find::group(ctx).await? else {
        return Ok(Item::new("Auto Scaling group", &name, Action::Absent));
    };
    if !ours {
        return Ok(Item::new("Auto Scaling group", &name, Action::Foreign));
    }
    let ids: Vec<String> = g
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(String::from))
        .collect();
    let detail = format!("{} instance(s) terminated", ids.len());
    if ctx.dry_run {
        return Ok(Item::new("Auto Scaling group", &name, Action::Delete)
            .detail(format!("{} instance(s) to terminate", ids.len())));
    }
    let asg = &ctx.aws.asg;
    // Each instance leaves with decrement (protection does not stop an explicit
    // terminate); one that cannot (already leaving, or a race at min) is
    // terminated through EC2 once the group is at 0.
    let mut fallback = Vec::new();
    for id in &ids {
        if let Err(e) = asg
            .terminate_instance_in_auto_scaling_group()
            .instance_id(id)
            .should_decrement_desired_capacity(true)
            .send()
            .await
        {
            tracing::debug!("terminate {id} in group: {}", super::steps::code(&e));
            fallback.push(id.clone());
        }
    }
    asg.update_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .min_size(0)
        .max_size(0)
        .desired_capacity(0)
        .send()
        .await
        .map_err(aws_err("autoscaling:UpdateAutoScalingGroup", &name))?;
    if !fallback.is_empty() {
        ctx.aws
            .ec2
            .terminate_instances()
            .set_instance_ids(Some(fallback))
            .send()
            .await
            .map_err(aws_err("ec2:TerminateInstances", &name))?;
    }
    if !ids.is_empty() {
        wait_terminated(ctx, &ids).await?;
    }
    asg.delete_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .force_delete(true)
        .send()
        .await
        .map_err(aws_err("autoscaling:DeleteAutoScalingGroup", &name))?;
    Ok(Item::new("Auto Scaling group", &name, Action::Delete).detail(detail))
}

async fn wait_terminated(ctx: &Ctx<'_>, ids: &[String]) -> R<()> {
    let start = std::time::Instant::now();
    loop {
        let out = ctx
            .aws
            .ec2
            .describe_instances()
            .filters(
                ec2t::Filter::builder()
                    .name("instance-id")
                    .set_values(Some(ids.to_vec()))
                    .build(),
            )
            .send()
            .await
            .map_err(aws_err("ec2:DescribeInstances", "the group's instances"))?;
        let left = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| {
                !matches!(
                    i.state().and_then(|s| s.name()),
                    Some(ec2t::InstanceStateName::Terminated)
                )
            })
            .count();
        if left == 0 {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(600) {
            return Err(super::ProvisionError::Invalid(format!(
                "{left} instance(s) still not terminated after 10 minutes; run teardown again later"
            )));
        }
        ctx.progress
            .note(&format!("waiting for {left} instance(s) to terminate"));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn delete_launch_template(ctx: &Ctx<'_>) -> R<Item> {
    let name = ctx.names.launch_template();
    let Some(Owned { it: t, ours }) = find::launch_template(ctx).await? else {
        return Ok(Item::new("launch template", &name, Action::Absent));
    };
    let id = t.launch_template_id().unwrap_or_default().to_string();
    if !ours {
        return Ok(Item::new("launch template", &name, Action::Foreign).id(id));
    }
    if !ctx.dry_run {
        ctx.aws
            .ec2
            .delete_launch_template()
            .launch_template_id(&id)
            .send()
            .await
            .map_err(aws_err("ec2:DeleteLaunchTemplate", &name))?;
    }
    Ok(Item::new("launch template", &name, Action::Delete).id(id))
}

async fn delete_instance_profile(ctx: &Ctx<'_>) -> R<Item> {
    let iam = &ctx.aws.iam;
    let name = ctx.names.runner_role();
    let Some(Owned { it: p, ours }) = find::instance_profile(ctx).await? else {
        return Ok(Item::new("instance profile", &name, Action::Absent));
    };
    if !ours {
        return Ok(Item::new("instance profile", &name, Action::Foreign));
    }
    if !ctx.dry_run {
        for r in p.roles() {
            iam.remove_role_from_instance_profile()
                .instance_profile_name(&name)
                .role_name(r.role_name())
                .send()
                .await
                .map_err(aws_err("iam:RemoveRoleFromInstanceProfile", &name))?;
        }
        iam.delete_instance_profile()
            .instance_profile_name(&name)
            .send()
            .await
            .map_err(aws_err("iam:DeleteInstanceProfile", &name))?;
    }
    Ok(Item::new("instance profile", &name, Action::Delete).id(p.arn()))
}

async fn delete_role(ctx: &Ctx<'_>, name: String) -> R<Item> {
    let iam = &ctx.aws.iam;
    let Some(Owned { it: role, ours }) = find::role(ctx, &name).await? else {
        return Ok(Item::new("IAM role", &name, Action::Absent));
    };
    let arn = role.arn().to_string();
    if !ours {
        return Ok(Item::new("IAM role", &name, Action::Foreign).id(arn));
    }
    if !ctx.dry_run {
        let policies = iam
            .list_role_policies()
            .role_name(&name)
            .send()
            .await
            .map_err(aws_err("iam:ListRolePolicies", &name))?;
        for p in policies.policy_names() {
            iam.delete_role_policy()
                .role_name(&name)
                .policy_name(p)
                .send()
                .await
                .map_err(aws_err("iam:DeleteRolePolicy", &name))?;
        }
        let attached = iam
            .list_attached_role_policies()
            .role_name(&name)
            .send()
            .await
            .map_err(aws_err("iam:ListAttachedRolePolicies", &name))?;
        for p in attached.attached_policies() {
            iam.detach_role_policy()
                .role_name(&name)
                .set_policy_arn(p.policy_arn().map(String::from))
                .send()
                .await
                .map_err(aws_err("iam:DetachRolePolicy", &name))?;
        }
        iam.delete_role()
            .role_name(&name)
            .send()
            .await
            .map_err(aws_err("iam:DeleteRole", &name))?;
    }
    Ok(Item::new("IAM role", &name, Action::Delete).id(arn))
}

async fn delete_secret(ctx: &Ctx<'_>, name: String) -> R<Item> {
    let sm = &ctx.aws.secrets;
    let Some(Owned { it: arn, ours }) = find::secret(ctx, &name).await? else {
        return Ok(Item::new("secret", &name, Action::Absent));
    };
    if !ours {
        return Ok(Item::new("secret", &name, Action::Foreign).id(arn));
    }
    if !ctx.dry_run {
        sm.delete_secret()
            .secret_id(&name)
            .force_delete_without_recovery(true)
            .send()
            .await
            .map_err(aws_err("secretsmanager:DeleteSecret", &name))?;
    }
    Ok(Item::new("secret", &name, Action::Delete).id(arn))
}

async fn delete_security_group(ctx: &Ctx<'_>) -> R<Item> {
    let name = ctx.names.security_group();
    let Some(Owned { it: sg, ours }) = find::security_group(ctx, None).await? else {
        return Ok(Item::new("security group", &name, Action::Absent));
    };
    let id = sg.group_id().unwrap_or_default().to_string();
    if !ours {
        return Ok(Item::new("security group", &name, Action::Foreign).id(id));
    }
    if !ctx.dry_run {
        // Network interfaces of terminated instances can hold it a little while.
        super::with_patience(
            ctx.progress,
            "the security group to be free of network interfaces",
            Duration::from_secs(300),
            |e: &aws_sdk_ec2::error::SdkError<_, _>| super::steps::code(e) == "DependencyViolation",
            || ctx.aws.ec2.delete_security_group().group_id(&id).send(),
        )
        .await
        .map_err(aws_err("ec2:DeleteSecurityGroup", &name))?;
    }
    Ok(Item::new("security group", &name, Action::Delete).id(id))
}

async fn delete_tokens(ctx: &Ctx<'_>, rc: &str) -> R<Item> {
    let nickname = ctx.names.token_nickname();
    let tokens = match cci::list_tokens(ctx.circleci, rc).await {
        Ok(t) => t,
        Err(crate::circleci::CircleCiError::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let ours: Vec<_> = tokens
        .into_iter()
        .filter(|t| t.nickname == nickname)
        .collect();
    if ours.is_empty() {
        return Ok(Item::new("runner tokens", &nickname, Action::Absent));
    }
    if !ctx.dry_run {
        for t in &ours {
            cci::delete_token(ctx.circleci, &t.id).await?;
        }
    }
    Ok(Item::new("runner tokens", &nickname, Action::Delete)
        .detail(format!("{} token(s)", ours.len())))
}

async fn delete_resource_class(ctx: &Ctx<'_>, rc: &str) -> R<Item> {
    let Some(class) = cci::find_resource_class(ctx.circleci, rc).await? else {
        return Ok(Item::new("resource class", rc, Action::Absent));
    };
    if !ctx.dry_run {
        cci::delete_resource_class(ctx.circleci, &class).await?;
    }
    Ok(Item::new("resource class", rc, Action::Delete).id(class.id))
}

/// The fleet as `status` reports it.
#[derive(Debug, Serialize)]
pub struct Fleet {
    pub min: i32,
    pub max: i32,
    pub desired: i32,
    pub instances: Vec<FleetInstance>,
    pub unclaimed_tasks: Option<u32>,
    pub running_tasks: Option<u32>,
    pub registered_runners: Option<Vec<String>>,
    pub circleci_error: Option<String>,
    pub schedule_enabled: Option<bool>,
    pub lambda_runs: LambdaRuns,
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
    /// Why the logs could not be read, if they could not.
    pub unreadable: Option<String>,
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
                runs.unreadable = Some(if super::steps::is_not_found(&e) {
                    format!("no log group {group} yet: the Lambda has not run")
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
}

/// What exists (read only) and the fleet's state.
pub async fn status(ctx: &Ctx<'_>, resource_class: &str) -> R<(Vec<Item>, Option<Fleet>)> {
    let dry = Ctx {
        dry_run: true,
        ..ctx.clone()
    };
    // A dry-run teardown lists what exists, and whether it is ours.
    let mut items = teardown(&dry, resource_class, false).await?;
    for i in &mut items {
        if i.action == Action::Delete {
            i.action = Action::Keep;
            i.detail = None;
        }
    }
    let Some(Owned { it: g, .. }) = find::group(ctx).await? else {
        return Ok((items, None));
    };
    let snapshot = ctx.circleci.snapshot(resource_class).await;
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
        Err(e) => (None, None, None, Some(e.to_string())),
    };
    let rule = ctx
        .aws
        .events
        .describe_rule()
        .name(ctx.names.rule())
        .send()
        .await
        .ok();
    let fleet = Fleet {
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
        registered_runners: runners,
        circleci_error: err,
        schedule_enabled: rule
            .map(|r| r.state() == Some(&aws_sdk_eventbridge::types::RuleState::Enabled)),
        lambda_runs: lambda_runs(ctx, Duration::from_secs(15 * 60)).await,
    };
    Ok((items, Some(fleet)))
}
