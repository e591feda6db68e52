//! A pool's demand record for `headroom = "auto"`: an SSM parameter under
//! the stack's path that the scaler writes after its polls (init does not
//! make it). Init removes it when the pool's headroom is no longer auto;
//! teardown removes it (after the Lambda, so nothing writes it again).

use super::common::*;

/// The pool's demand record.
pub(crate) struct DemandRecord;

impl Resource for DemandRecord {
    fn step(&self) -> StepName {
        StepName::Lambda
    }
    fn label(&self) -> &'static str {
        "demand record"
    }
    fn per_pool(&self) -> bool {
        true
    }
    fn wanted(&self, s: &StackSettings) -> bool {
        s.auto_headroom.is_some()
    }
    fn converge<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        _s: &'a StackSettings,
        _f: &'a mut Found,
    ) -> BoxFuture<'a, R<Item>> {
        Box::pin(async move {
            let name = name(ctx);
            let detail = if exists(ctx, &name).await? {
                "headroom = \"auto\": the scaler's record of this pool's demand"
            } else {
                "headroom = \"auto\": the scaler starts it at its first poll"
            };
            Ok(Item::new("demand record", name, Action::Keep).detail(detail))
        })
    }
    fn delete<'a>(&'a self, ctx: &'a Ctx<'a>, _t: &'a Teardown) -> BoxFuture<'a, R<Vec<Item>>> {
        Box::pin(async move { delete_parameter(ctx, name(ctx), "demand record").await })
    }
}

/// The stack's usage record (`usage_org`): how far the scaler's daily
/// report of real queue waits has got. The scaler makes it; init removes it
/// when `usage_org` goes, teardown after the Lambda.
pub(crate) struct UsageRecord;

impl Resource for UsageRecord {
    fn step(&self) -> StepName {
        StepName::Lambda
    }
    fn label(&self) -> &'static str {
        "usage record"
    }
    fn wanted(&self, s: &StackSettings) -> bool {
        s.usage_org.is_some()
    }
    fn converge<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        s: &'a StackSettings,
        _f: &'a mut Found,
    ) -> BoxFuture<'a, R<Item>> {
        Box::pin(async move {
            let name = crate::names::usage_record(&ctx.names.stack);
            let org = s.usage_org.as_deref().unwrap_or_default();
            let detail = if exists(ctx, &name).await? {
                format!("usage_org = {org:?}: how far the daily report of real waits has got")
            } else {
                format!("usage_org = {org:?}: the scaler starts it at its first report")
            };
            Ok(Item::new("usage record", name, Action::Keep).detail(detail))
        })
    }
    fn delete<'a>(&'a self, ctx: &'a Ctx<'a>, _t: &'a Teardown) -> BoxFuture<'a, R<Vec<Item>>> {
        Box::pin(async move {
            delete_parameter(
                ctx,
                crate::names::usage_record(&ctx.names.stack),
                "usage record",
            )
            .await
        })
    }
}

async fn delete_parameter(ctx: &Ctx<'_>, name: String, what: &'static str) -> R<Vec<Item>> {
    if !exists(ctx, &name).await? {
        return Ok(vec![]);
    }
    if !ctx.dry_run {
        match ctx.aws.ssm.delete_parameter().name(&name).send().await {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_not_found()) => {}
            Err(e) => return Err(aws_err("ssm:DeleteParameter", &name)(e)),
        }
    }
    Ok(vec![Item::new(what, name, Action::Delete)])
}

fn name(ctx: &Ctx<'_>) -> String {
    crate::names::demand_record(&ctx.names.stack, ctx.names.pool.as_deref())
}

async fn exists(ctx: &Ctx<'_>, name: &str) -> R<bool> {
    match ctx.aws.ssm.get_parameter().name(name).send().await {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_parameter_not_found()) =>
        {
            Ok(false)
        }
        Err(e) => Err(aws_err("ssm:GetParameter", name)(e)),
    }
}
