//! Finding the stack's resources by name, and whether each is ours (tagged
//! `cci-scaler:stack=<stack>`). Shared by init, teardown and status.

use aws_sdk_ec2::types as ec2t;

use super::steps::{R, aws_err, is_not_found};
use super::{Ctx, STACK_TAG};

pub(crate) fn tagged<'a>(mut tags: impl Iterator<Item = (&'a str, &'a str)>, stack: &str) -> bool {
    tags.any(|(k, v)| k == STACK_TAG && v == stack)
}

pub(crate) fn ec2_tagged(tags: &[ec2t::Tag], stack: &str) -> bool {
    tagged(
        tags.iter()
            .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or(""))),
        stack,
    )
}

pub(crate) fn group_tagged(g: &aws_sdk_autoscaling::types::AutoScalingGroup, stack: &str) -> bool {
    tagged(
        g.tags()
            .iter()
            .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or(""))),
        stack,
    )
}

/// A resource found by name, and whether it carries our stack tag.
pub(crate) struct Owned<T> {
    pub it: T,
    pub ours: bool,
}

pub(crate) async fn role(ctx: &Ctx<'_>, name: &str) -> R<Option<Owned<aws_sdk_iam::types::Role>>> {
    let iam = &ctx.aws.iam;
    let role = match iam.get_role().role_name(name).send().await {
        Ok(r) => r.role().cloned(),
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(aws_err("iam:GetRole", name)(e)),
    };
    let Some(role) = role else { return Ok(None) };
    let tags = iam
        .list_role_tags()
        .role_name(name)
        .send()
        .await
        .map_err(aws_err("iam:ListRoleTags", name))?;
    let ours = tagged(
        tags.tags().iter().map(|t| (t.key(), t.value())),
        &ctx.names.stack,
    );
    Ok(Some(Owned { it: role, ours }))
}

pub(crate) async fn instance_profile(
    ctx: &Ctx<'_>,
) -> R<Option<Owned<aws_sdk_iam::types::InstanceProfile>>> {
    let name = ctx.names.runner_role();
    let p = match ctx
        .aws
        .iam
        .get_instance_profile()
        .instance_profile_name(&name)
        .send()
        .await
    {
        Ok(p) => p.instance_profile().cloned(),
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(aws_err("iam:GetInstanceProfile", &name)(e)),
    };
    Ok(p.map(|p| {
        let ours = tagged(
            p.tags().iter().map(|t| (t.key(), t.value())),
            &ctx.names.stack,
        );
        Owned { it: p, ours }
    }))
}

/// A secret's ARN.
pub(crate) async fn secret(ctx: &Ctx<'_>, name: &str) -> R<Option<Owned<String>>> {
    match ctx
        .aws
        .secrets
        .describe_secret()
        .secret_id(name)
        .send()
        .await
    {
        Ok(d) => {
            let ours = tagged(
                d.tags()
                    .iter()
                    .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or(""))),
                &ctx.names.stack,
            );
            Ok(Some(Owned {
                it: d.arn().unwrap_or_default().to_string(),
                ours,
            }))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(aws_err("secretsmanager:DescribeSecret", name)(e)),
    }
}

pub(crate) async fn rule(
    ctx: &Ctx<'_>,
) -> R<Option<Owned<aws_sdk_eventbridge::operation::describe_rule::DescribeRuleOutput>>> {
    let name = ctx.names.rule();
    let events = &ctx.aws.events;
    let rule = match events.describe_rule().name(&name).send().await {
        Ok(r) => r,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(aws_err("events:DescribeRule", &name)(e)),
    };
    let tags = events
        .list_tags_for_resource()
        .resource_arn(rule.arn().unwrap_or_default())
        .send()
        .await
        .map_err(aws_err("events:ListTagsForResource", &name))?;
    let ours = tagged(
        tags.tags().iter().map(|t| (t.key(), t.value())),
        &ctx.names.stack,
    );
    Ok(Some(Owned { it: rule, ours }))
}

pub(crate) async fn function(
    ctx: &Ctx<'_>,
) -> R<Option<Owned<aws_sdk_lambda::operation::get_function::GetFunctionOutput>>> {
    let name = ctx.names.function();
    match ctx
        .aws
        .lambda
        .get_function()
        .function_name(&name)
        .send()
        .await
    {
        Ok(out) => {
            let ours = out
                .tags()
                .is_some_and(|t| t.get(STACK_TAG) == Some(&ctx.names.stack));
            Ok(Some(Owned { it: out, ours }))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(aws_err("lambda:GetFunction", &name)(e)),
    }
}

pub(crate) async fn security_group(
    ctx: &Ctx<'_>,
    vpc: Option<&str>,
) -> R<Option<Owned<ec2t::SecurityGroup>>> {
    let name = ctx.names.security_group();
    let mut req = ctx.aws.ec2.describe_security_groups().filters(
        ec2t::Filter::builder()
            .name("group-name")
            .values(&name)
            .build(),
    );
    if let Some(v) = vpc {
        req = req.filters(ec2t::Filter::builder().name("vpc-id").values(v).build());
    }
    let out = req
        .send()
        .await
        .map_err(aws_err("ec2:DescribeSecurityGroups", &name))?;
    Ok(out.security_groups().first().cloned().map(|sg| Owned {
        ours: ec2_tagged(sg.tags(), &ctx.names.stack),
        it: sg,
    }))
}

pub(crate) async fn launch_template(ctx: &Ctx<'_>) -> R<Option<Owned<ec2t::LaunchTemplate>>> {
    let name = ctx.names.launch_template();
    let out = ctx
        .aws
        .ec2
        .describe_launch_templates()
        .filters(
            ec2t::Filter::builder()
                .name("launch-template-name")
                .values(&name)
                .build(),
        )
        .send()
        .await
        .map_err(aws_err("ec2:DescribeLaunchTemplates", &name))?;
    Ok(out
        .launch_templates()
        .iter()
        .find(|t| t.launch_template_name() == Some(name.as_str()))
        .cloned()
        .map(|t| Owned {
            ours: ec2_tagged(t.tags(), &ctx.names.stack),
            it: t,
        }))
}

pub(crate) async fn group(
    ctx: &Ctx<'_>,
) -> R<Option<Owned<aws_sdk_autoscaling::types::AutoScalingGroup>>> {
    let name = ctx.names.group();
    let out = ctx
        .aws
        .asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&name)
        .send()
        .await
        .map_err(aws_err("autoscaling:DescribeAutoScalingGroups", &name))?;
    Ok(out
        .auto_scaling_groups()
        .iter()
        .find(|g| g.auto_scaling_group_name() == Some(name.as_str()))
        .cloned()
        .map(|g| Owned {
            ours: group_tagged(&g, &ctx.names.stack),
            it: g,
        }))
}
