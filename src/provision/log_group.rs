//! The Lambda's log group, made by `init` rather than by the Lambda's first
//! run: tagged, with a retention (`log_retention_days`, default 30) instead of
//! never expiring, and existing before the first poll, so its metrics (EMF)
//! and `status` never depend on the function's role being allowed to create
//! it. One the Lambda made itself before `init` did (a stack made by an older
//! release) carries no tag: it is adopted only while the stack's own function
//! exists, since nothing else writes to that name.

use super::common::*;

/// The Lambda's log group.
pub(crate) struct LogGroup;

impl Resource for LogGroup {
    fn step(&self) -> StepName {
        StepName::Lambda
    }
    fn label(&self) -> &'static str {
        "log group"
    }
    fn converge<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        s: &'a StackSettings,
        _f: &'a mut Found,
    ) -> BoxFuture<'a, R<Item>> {
        Box::pin(converge(ctx, s))
    }
    fn delete<'a>(&'a self, ctx: &'a Ctx<'a>, _t: &'a Teardown) -> BoxFuture<'a, R<Vec<Item>>> {
        Box::pin(async move { Ok(vec![delete(ctx).await?]) })
    }
}

/// `/aws/lambda/<function>`: the name Lambda writes to.
pub(crate) fn name(ctx: &Ctx<'_>) -> String {
    format!("/aws/lambda/{}", ctx.names.function())
}

struct LogGroupFound {
    arn: String,
    retention: Option<i32>,
    ours: bool,
}

async fn find(ctx: &Ctx<'_>) -> R<Option<LogGroupFound>> {
    let name = name(ctx);
    let logs = &ctx.aws.logs;
    let out = logs
        .describe_log_groups()
        .log_group_name_prefix(&name)
        .send()
        .await
        .map_err(aws_err("logs:DescribeLogGroups", &name))?;
    let Some(g) = out
        .log_groups()
        .iter()
        .find(|g| g.log_group_name() == Some(name.as_str()))
    else {
        return Ok(None);
    };
    let arn = g.arn().unwrap_or_default().to_string();
    // The tagging API takes the ARN without DescribeLogGroups' `:*`.
    let tags = logs
        .list_tags_for_resource()
        .resource_arn(arn.trim_end_matches(":*"))
        .send()
        .await
        .map_err(aws_err("logs:ListTagsForResource", &name))?;
    let ours = tags
        .tags()
        .is_some_and(|t| t.get(STACK_TAG) == Some(&ctx.names.stack));
    Ok(Some(LogGroupFound {
        arn,
        retention: g.retention_in_days(),
        ours,
    }))
}

fn log_tags(ctx: &Ctx<'_>) -> HashMap<String, String> {
    tags(ctx)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

async fn converge(ctx: &Ctx<'_>, s: &StackSettings) -> R<Item> {
    let name = name(ctx);
    let logs = &ctx.aws.logs;
    let days = s.log_retention_days as i32;
    let detail = format!("retention {days} days");
    let (mut item, retention) = match find(ctx).await? {
        Some(g) if g.ours => (
            Item::new("log group", &name, Action::Keep).id(&g.arn),
            g.retention,
        ),
        Some(g) => {
            // Made by the Lambda's own first run: ours only while our
            // function is there to have made it.
            let function_ours = matches!(
                super::function::find(ctx).await?,
                Some(Owned { ours: true, .. })
            );
            if !function_ours {
                return Err(not_ours("log group", &name, ctx));
            }
            if !ctx.dry_run {
                logs.tag_resource()
                    .resource_arn(g.arn.trim_end_matches(":*"))
                    .set_tags(Some(log_tags(ctx)))
                    .send()
                    .await
                    .map_err(aws_err("logs:TagResource", &name))?;
            }
            (
                Item::new("log group", &name, Action::Update)
                    .id(&g.arn)
                    .detail(format!(
                        "{detail}; adopted (made by the Lambda's first run)"
                    )),
                g.retention,
            )
        }
        None if ctx.dry_run => {
            return Ok(Item::new("log group", &name, Action::Create).detail(detail));
        }
        None => {
            logs.create_log_group()
                .log_group_name(&name)
                .set_tags(Some(log_tags(ctx)))
                .send()
                .await
                .map_err(aws_err("logs:CreateLogGroup", &name))?;
            (
                Item::new("log group", &name, Action::Create).detail(detail),
                None,
            )
        }
    };
    if retention != Some(days) {
        if !ctx.dry_run {
            logs.put_retention_policy()
                .log_group_name(&name)
                .retention_in_days(days)
                .send()
                .await
                .map_err(aws_err("logs:PutRetentionPolicy", &name))?;
        }
        item.changed();
        if item.detail.is_none() {
            item = item.detail(match retention {
                Some(d) => format!("retention {d} -> {days} days"),
                None => format!("retention never expire -> {days} days"),
            });
        }
    }
    Ok(item)
}

async fn delete(ctx: &Ctx<'_>) -> R<Item> {
    let name = name(ctx);
    let Some(g) = find(ctx).await? else {
        return Ok(Item::new("log group", &name, Action::Absent));
    };
    if !g.ours {
        return Ok(Item::new("log group", &name, Action::Foreign).id(g.arn));
    }
    if !ctx.dry_run {
        match ctx
            .aws
            .logs
            .delete_log_group()
            .log_group_name(&name)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(aws_err("logs:DeleteLogGroup", &name)(e)),
        }
    }
    Ok(Item::new("log group", &name, Action::Delete).id(g.arn))
}
