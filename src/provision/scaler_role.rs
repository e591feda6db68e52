//! The scaling Lambda's role: describe (read-only, cannot be scoped), size its
//! group, read its secret, write its own logs.

use super::common::*;

/// The scaler role.
pub(crate) struct ScalerRole;

impl Resource for ScalerRole {
    fn step(&self) -> StepName {
        StepName::Iam
    }
    fn label(&self) -> &'static str {
        "scaler role"
    }
    fn converge<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        _s: &'a StackSettings,
        f: &'a mut Found,
    ) -> BoxFuture<'a, R<Item>> {
        Box::pin(converge(ctx, _s, f))
    }
    fn delete<'a>(&'a self, ctx: &'a Ctx<'a>, _t: &'a Teardown) -> BoxFuture<'a, R<Vec<Item>>> {
        Box::pin(async move {
            Ok(vec![
                super::role::delete(ctx, ctx.names.scaler_role()).await?,
            ])
        })
    }
}

/// The scaling Lambda: describe (read-only, cannot be scoped), size its group,
/// read its secret, write its own logs.
pub(crate) fn scaler_policy(
    ctx: &Ctx<'_>,
    account: &str,
    group_arns: Value,
    secret_arn: &str,
) -> Value {
    let log_group = format!(
        "arn:aws:logs:{}:{account}:log-group:/aws/lambda/{}",
        ctx.region,
        ctx.names.function()
    );
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "DescribeReadOnly", "Effect": "Allow",
             "Action": ["autoscaling:DescribeAutoScalingGroups", "ec2:DescribeInstances"], "Resource": "*"},
            {"Sid": "SizeOwnGroup", "Effect": "Allow",
             "Action": ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"],
             "Resource": group_arns},
            {"Sid": "ReadScalerSecret", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
             "Resource": secret_arn},
            // CreateLogGroup is authorised on `log-group:NAME:log-stream:`
            // (the Service Authorization Reference), which the bare
            // log-group ARN does not cover. init makes the group; this
            // lets the Lambda make it again should someone delete it.
            {"Sid": "OwnLogs", "Effect": "Allow",
             "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": format!("{log_group}:*")}
        ]
    })
}

async fn converge(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<Item> {
    let groups = super::runner_role::one_or_list(
        f.pools
            .iter()
            .map(|p| p.group_arn.clone().unwrap_or_else(|| PENDING.into()))
            .collect(),
    );
    let secret = f
        .scaler_secret_arn
        .clone()
        .unwrap_or_else(|| PENDING.into());
    let mut policy = scaler_policy(ctx, &f.account, groups, &secret);
    // Pools with headroom: the Lambda tags their groups (spare-until).
    let tagged: Vec<String> = f
        .pools
        .iter()
        .filter(|p| !p.headroom.is_empty() || p.auto.is_some())
        .map(|p| p.group_arn.clone().unwrap_or_else(|| PENDING.into()))
        .collect();
    // Spot pools: the Lambda switches their policy to on demand and back,
    // which Auto Scaling allows only to whom may launch with their template.
    let spot: Vec<&PoolFound> = f.pools.iter().filter(|p| p.spot).collect();
    if !spot.is_empty()
        && let Some(st) = policy["Statement"].as_array_mut()
    {
        let groups: Vec<String> = spot
            .iter()
            .map(|p| p.group_arn.clone().unwrap_or_else(|| PENDING.into()))
            .collect();
        let templates: Vec<String> = spot
            .iter()
            .map(|p| {
                format!(
                    "arn:aws:ec2:{}:{}:launch-template/{}",
                    ctx.region,
                    f.account,
                    p.launch_template_id.as_deref().unwrap_or(PENDING)
                )
            })
            .collect();
        let mut launch: Vec<String> = templates.clone();
        for r in [
            "instance/*",
            "volume/*",
            "network-interface/*",
            "subnet/*",
            "security-group/*",
        ] {
            launch.push(format!("arn:aws:ec2:{}:{}:{r}", ctx.region, f.account));
        }
        launch.push(format!("arn:aws:ec2:{}::image/*", ctx.region));
        // RunInstances is also authorised on the key pair a template names
        // (the Service Authorization Reference's key-pair resource type).
        let mut keys: Vec<String> = spot
            .iter()
            .filter_map(|p| p.key_pair.as_deref())
            .map(|k| format!("arn:aws:ec2:{}:{}:key-pair/{k}", ctx.region, f.account))
            .collect();
        keys.sort();
        keys.dedup();
        launch.extend(keys);
        st.push(json!({"Sid": "ReadLaunchFailures", "Effect": "Allow",
            "Action": "autoscaling:DescribeScalingActivities", "Resource": "*"}));
        st.push(json!({"Sid": "SpotFallbackOfOwnGroups", "Effect": "Allow",
            "Action": ["autoscaling:UpdateAutoScalingGroup", "autoscaling:CreateOrUpdateTags", "autoscaling:DeleteTags"],
            "Resource": super::runner_role::one_or_list(groups)}));
        st.push(json!({"Sid": "LaunchWithOwnTemplates", "Effect": "Allow",
            "Action": "ec2:RunInstances",
            "Resource": launch.clone(),
            "Condition": {"ArnLike": {"ec2:LaunchTemplate": super::runner_role::one_or_list(templates)}}}));
        st.push(json!({"Sid": "TagWhatItLaunches", "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": launch,
            "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}}}));
        let roles: Vec<String> = spot
            .iter()
            .map(|p| {
                format!(
                    "arn:aws:iam::{}:role/{}",
                    f.account,
                    ctx.names.for_pool(p.name.as_deref()).runner_role()
                )
            })
            .collect();
        st.push(
            json!({"Sid": "PassRunnerRole", "Effect": "Allow", "Action": "iam:PassRole",
            "Resource": super::runner_role::one_or_list(roles),
            "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}}),
        );
    }
    if !tagged.is_empty()
        && let Some(st) = policy["Statement"].as_array_mut()
    {
        st.insert(
            2,
            json!({"Sid": "TagSparesOfOwnGroups", "Effect": "Allow",
                   "Action": "autoscaling:CreateOrUpdateTags",
                   "Resource": super::runner_role::one_or_list(tagged)}),
        );
    }
    // Pools with auto headroom: the Lambda reads and writes their demand
    // records (one SSM parameter each), and nothing else in SSM.
    // With `usage_org`, its usage record too.
    let records: Vec<String> = f
        .pools
        .iter()
        .filter_map(|p| p.auto.as_ref().map(|a| a.record.clone()))
        .chain(
            s.usage_org
                .as_ref()
                .map(|_| crate::names::usage_record(&ctx.names.stack)),
        )
        .map(|record| {
            format!(
                "arn:aws:ssm:{}:{}:parameter{}",
                ctx.region, f.account, record
            )
        })
        .collect();
    if !records.is_empty()
        && let Some(st) = policy["Statement"].as_array_mut()
    {
        st.push(json!({"Sid": "DemandRecordsOfOwnPools", "Effect": "Allow",
            "Action": ["ssm:GetParameter", "ssm:PutParameter"],
            "Resource": super::runner_role::one_or_list(records)}));
    }
    let (item, role) = super::role::converge(
        ctx,
        "IAM role",
        &ctx.names.scaler_role(),
        super::role::trust("lambda.amazonaws.com"),
        Some(policy),
    )
    .await?;
    f.scaler_role_arn = role.map(|r| r.arn().to_string());
    Ok(item)
}
