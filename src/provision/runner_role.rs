//! The runner instances' role: read their own token; terminate themselves and
//! set their own health, within their own group.

use super::common::*;
use super::role::group_arn_pattern;

/// The runner role.
pub(crate) struct RunnerRole;

impl Resource for RunnerRole {
    fn step(&self) -> StepName {
        StepName::Iam
    }
    fn label(&self) -> &'static str {
        "runner role"
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

/// The runner instances: read their own token; terminate themselves and set
/// their own health, within their own group.
/// One pool: a single resource, as before pools (so such a stack's policy
/// does not change); several: a list.
pub(crate) fn one_or_list(mut v: Vec<String>) -> Value {
    if v.len() == 1 {
        Value::String(v.remove(0))
    } else {
        json!(v)
    }
}

pub(crate) fn runner_policy(ctx: &Ctx<'_>, account: &str, f: &Found) -> Value {
    let secrets = f
        .pools
        .iter()
        .map(|p| {
            p.runner_token_secret_arn
                .clone()
                .unwrap_or_else(|| PENDING.into())
        })
        .collect();
    let groups = f
        .pools
        .iter()
        .map(|p| group_arn_pattern(ctx, account, &p.group))
        .collect();
    let mut policy = json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ReadOwnRunnerToken", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
             "Resource": one_or_list(secrets)},
            {"Sid": "LeaveOwnGroup", "Effect": "Allow",
             "Action": ["autoscaling:TerminateInstanceInAutoScalingGroup", "autoscaling:SetInstanceHealth"],
             "Resource": one_or_list(groups)}
        ]
    });
    // Spot pools: an interrupted instance tags itself (that one tag, on the
    // stack's instances only).
    if f.pools.iter().any(|p| p.spot)
        && let Some(st) = policy["Statement"].as_array_mut()
    {
        st.push(
            json!({"Sid": "MarkOwnInterruption", "Effect": "Allow", "Action": "ec2:CreateTags",
            "Resource": format!("arn:aws:ec2:{}:{account}:instance/*", ctx.region),
            "Condition": {
                "StringEquals": {"aws:ResourceTag/cci-scaler:stack": ctx.names.stack},
                "ForAllValues:StringEquals": {"aws:TagKeys": ["cci-scaler:interrupted"]}
            }}),
        );
    }
    policy
}

async fn converge(ctx: &Ctx<'_>, f: &Found) -> R<Item> {
    let policy = runner_policy(ctx, &f.account, f);
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
