//! The EventBridge rule that runs the Lambda every minute, its target and the
//! Lambda's invoke permission. Teardown removes it first, so nothing raises
//! capacity while the stack goes away.

use super::common::*;

/// The schedule.
pub(crate) struct Schedule;

impl Resource for Schedule {
    fn step(&self) -> StepName {
        StepName::Schedule
    }
    fn label(&self) -> &'static str {
        "schedule"
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
        Box::pin(async move { Ok(vec![delete(ctx).await?]) })
    }
}

pub(crate) async fn find(
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

pub(crate) const SCHEDULE: &str = "rate(1 minute)";
pub(crate) const TARGET_ID: &str = "cci-scaler";
pub(crate) const PERMISSION_ID: &str = "cci-scaler-schedule";

async fn converge(ctx: &Ctx<'_>, f: &Found) -> R<Item> {
    use aws_sdk_eventbridge::types as et;
    let name = ctx.names.rule();
    let events = &ctx.aws.events;
    let mut action = Action::Keep;
    let rule_arn = match find(ctx).await? {
        Some(Owned { ours: false, .. }) => return Err(not_ours("EventBridge rule", &name, ctx)),
        Some(Owned { it: r, .. }) => {
            let arn = r.arn().unwrap_or_default().to_string();
            if r.schedule_expression() != Some(SCHEDULE)
                || r.state() != Some(&et::RuleState::Enabled)
            {
                action = Action::Update;
            }
            Some(arn)
        }
        None => {
            action = Action::Create;
            None
        }
    };
    if ctx.dry_run {
        let mut item = Item::new("EventBridge rule", &name, action).detail(SCHEDULE);
        if let Some(a) = rule_arn {
            item = item.id(a);
        }
        return Ok(item);
    }
    let rule_arn = if action == Action::Keep {
        rule_arn.unwrap_or_default()
    } else {
        events
            .put_rule()
            .name(&name)
            .schedule_expression(SCHEDULE)
            .state(et::RuleState::Enabled)
            .description(format!(
                "cci-scaler {}: run the scaler every minute",
                ctx.names.stack
            ))
            .tags(
                et::Tag::builder()
                    .key(STACK_TAG)
                    .value(&ctx.names.stack)
                    .build()
                    .expect("set"),
            )
            .send()
            .await
            .map_err(aws_err("events:PutRule", &name))?
            .rule_arn()
            .unwrap_or_default()
            .to_string()
    };
    let function_arn = f.function_arn.clone().unwrap_or_default();
    let targets = events
        .list_targets_by_rule()
        .rule(&name)
        .send()
        .await
        .map_err(aws_err("events:ListTargetsByRule", &name))?;
    if !targets
        .targets()
        .iter()
        .any(|t| t.id() == TARGET_ID && t.arn() == function_arn)
    {
        if action == Action::Keep {
            action = Action::Update;
        }
        events
            .put_targets()
            .rule(&name)
            .targets(
                et::Target::builder()
                    .id(TARGET_ID)
                    .arn(&function_arn)
                    .build()
                    .expect("set"),
            )
            .send()
            .await
            .map_err(aws_err("events:PutTargets", &name))?;
    }
    let policy = match ctx
        .aws
        .lambda
        .get_policy()
        .function_name(ctx.names.function())
        .send()
        .await
    {
        Ok(p) => p.policy().unwrap_or_default().to_string(),
        Err(e) if is_not_found(&e) => String::new(),
        Err(e) => return Err(aws_err("lambda:GetPolicy", &ctx.names.function())(e)),
    };
    if !policy.contains(PERMISSION_ID) {
        if action == Action::Keep {
            action = Action::Update;
        }
        ctx.aws
            .lambda
            .add_permission()
            .function_name(ctx.names.function())
            .statement_id(PERMISSION_ID)
            .action("lambda:InvokeFunction")
            .principal("events.amazonaws.com")
            .source_arn(&rule_arn)
            .send()
            .await
            .map_err(aws_err("lambda:AddPermission", &ctx.names.function()))?;
    }
    Ok(Item::new("EventBridge rule", &name, action)
        .id(rule_arn)
        .detail(SCHEDULE))
}

async fn delete(ctx: &Ctx<'_>) -> R<Item> {
    let name = ctx.names.rule();
    let ev = &ctx.aws.events;
    let rule = match find(ctx).await? {
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
