//! The runner instances' role, one per pool: read their pool's token;
//! terminate themselves and set their own health within their pool's group;
//! tag their own interruption (spot). A pool's runners reach nothing of the
//! stack's other pools.

use super::common::*;
use super::role::group_arn_pattern;

/// The runner role (per pool).
pub(crate) struct RunnerRole;

impl Resource for RunnerRole {
    fn step(&self) -> StepName {
        StepName::Iam
    }
    fn label(&self) -> &'static str {
        "runner role"
    }
    fn per_pool(&self) -> bool {
        true
    }
    fn converge<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        _s: &'a StackSettings,
        f: &'a mut Found,
    ) -> BoxFuture<'a, R<Item>> {
        Box::pin(converge(ctx, f))
    }
    fn delete<'a>(&'a self, ctx: &'a Ctx<'a>, _t: &'a Teardown) -> BoxFuture<'a, R<Vec<Item>>> {
        Box::pin(async move {
            Ok(vec![
                super::role::delete(ctx, ctx.names.runner_role()).await?,
            ])
        })
    }
}

/// One resource as a string, several as a list.
pub(crate) fn one_or_list(mut v: Vec<String>) -> Value {
    if v.len() == 1 {
        Value::String(v.remove(0))
    } else {
        json!(v)
    }
}

/// The policy of one pool's runners (`p`): its token secret, its group, and
/// for a spot pool the interruption tag on its own instances.
pub(crate) fn runner_policy(ctx: &Ctx<'_>, account: &str, p: &PoolFound) -> Value {
    let secret = p
        .runner_token_secret_arn
        .clone()
        .unwrap_or_else(|| PENDING.into());
    let mut policy = json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ReadOwnRunnerToken", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
             "Resource": secret},
            {"Sid": "LeaveOwnGroup", "Effect": "Allow",
             "Action": ["autoscaling:TerminateInstanceInAutoScalingGroup", "autoscaling:SetInstanceHealth"],
             "Resource": group_arn_pattern(ctx, account, &p.group)}
        ]
    });
    // Warm pools: each launch completes the group's launch hook itself.
    if p.warm_pool > 0
        && let Some(st) = policy["Statement"].as_array_mut()
    {
        st.push(json!({"Sid": "CompleteOwnLaunch", "Effect": "Allow",
            "Action": "autoscaling:CompleteLifecycleAction",
            "Resource": group_arn_pattern(ctx, account, &p.group)}));
    }
    // Spot pools: an interrupted instance tags itself (that one tag, on the
    // stack's instances only, and in a stack of pools on its pool's).
    if p.spot
        && let Some(st) = policy["Statement"].as_array_mut()
    {
        let mut owner = json!({"aws:ResourceTag/cci-scaler:stack": ctx.names.stack});
        if let Some(pool) = &ctx.names.pool {
            owner[format!("aws:ResourceTag/{POOL_TAG}")] = json!(pool);
        }
        st.push(
            json!({"Sid": "MarkOwnInterruption", "Effect": "Allow", "Action": "ec2:CreateTags",
            "Resource": format!("arn:aws:ec2:{}:{account}:instance/*", ctx.region),
            "Condition": {
                "StringEquals": owner,
                "ForAllValues:StringEquals": {"aws:TagKeys": ["cci-scaler:interrupted"]}
            }}),
        );
    }
    policy
}

async fn converge(ctx: &Ctx<'_>, f: &Found) -> R<Item> {
    let policy = runner_policy(ctx, &f.account, f.pool());
    Ok(super::role::converge(
        ctx,
        "IAM role",
        &ctx.names.runner_role(),
        super::role::trust("ec2.amazonaws.com"),
        Some(policy),
    )
    .await?
    .0)
}

/// The role and instance profile all pools of a stack shared before each
/// pool had its own. A stack of pools made by an older release has them;
/// `init` removes them once no instance of the stack still uses the profile
/// (its exit hook needs the role's credentials to leave its group), and
/// teardown removes them. A stack without pools keeps using that name as
/// its one pool's role, so nothing here touches it.
pub(crate) struct SharedRunnerRole;

impl Resource for SharedRunnerRole {
    fn step(&self) -> StepName {
        StepName::Iam
    }
    fn label(&self) -> &'static str {
        "shared runner role"
    }
    fn wanted(&self, _s: &StackSettings) -> bool {
        false
    }
    fn delete<'a>(&'a self, ctx: &'a Ctx<'a>, t: &'a Teardown) -> BoxFuture<'a, R<Vec<Item>>> {
        Box::pin(async move {
            if !t.stack_has_pools {
                return Ok(vec![]);
            }
            retire_shared(ctx, t.in_use_check).await
        })
    }
}

async fn retire_shared(ctx: &Ctx<'_>, check_use: bool) -> R<Vec<Item>> {
    let name = ctx.names.shared_runner_role();
    let profile = super::instance_profile::find_named(ctx, &name).await?;
    let role = super::role::find(ctx, &name).await?;
    if profile.is_none() && role.is_none() {
        return Ok(vec![]);
    }
    if check_use && let Some(Owned { it: p, ours: true }) = &profile {
        let users = instances_using(ctx, p.arn()).await?;
        if users > 0 {
            return Ok(vec![
                Item::new("IAM role", &name, Action::Keep).detail(format!(
                    "shared by all pools before each had its own: {users} instance(s) still use it; a later init removes it"
                )),
            ]);
        }
    }
    let mut items = Vec::new();
    if profile.is_some() {
        items.push(super::instance_profile::delete_named(ctx, &name).await?);
    }
    if role.is_some() {
        items.push(super::role::delete(ctx, name).await?);
    }
    Ok(items)
}

/// Instances of the stack (not terminated) launched with the profile `arn`.
async fn instances_using(ctx: &Ctx<'_>, arn: &str) -> R<usize> {
    let mut n = 0;
    let mut pages = ctx
        .aws
        .ec2
        .describe_instances()
        .filters(
            ec2t::Filter::builder()
                .name(format!("tag:{STACK_TAG}"))
                .values(&ctx.names.stack)
                .build(),
        )
        .filters(
            ec2t::Filter::builder()
                .name("instance-state-name")
                .set_values(Some(
                    ["pending", "running", "stopping", "stopped"]
                        .map(String::from)
                        .to_vec(),
                ))
                .build(),
        )
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(aws_err("ec2:DescribeInstances", arn))?;
        n += page
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| i.iam_instance_profile().and_then(|p| p.arn()) == Some(arn))
            .count();
    }
    Ok(n)
}
