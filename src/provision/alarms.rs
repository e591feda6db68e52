//! CloudWatch alarms: the scaler failing (its Lambda's errors), and per
//! pool jobs starved (unclaimed while at max) and boots failing (instances
//! reaped). Each description says what to check; actions go to the alarm
//! topic when there is one. Alarms of the stack that the settings no longer
//! want (a pool removed) are deleted.

use aws_sdk_cloudwatch::types as cw;

use super::common::*;

/// The stack's alarms.
pub(crate) struct Alarms;

impl Resource for Alarms {
    fn step(&self) -> StepName {
        StepName::Alarms
    }
    fn label(&self) -> &'static str {
        "alarms"
    }
    fn wanted(&self, s: &StackSettings) -> bool {
        s.alarms.enabled
    }
    fn converge<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        s: &'a StackSettings,
        f: &'a mut Found,
    ) -> BoxFuture<'a, R<Item>> {
        Box::pin(converge(ctx, s, f))
    }
    fn delete<'a>(&'a self, ctx: &'a Ctx<'a>, _t: &'a Teardown) -> BoxFuture<'a, R<Vec<Item>>> {
        Box::pin(async move { delete_except(ctx, &[]).await })
    }
}

/// The value of the `pool` metric dimension the Lambda logs for a pool: its
/// group for a stack of one pool (one group), else its name.
pub(crate) fn metric_pool(f: &Found, p: &PoolFound) -> String {
    if f.pools.len() == 1 {
        p.group.clone()
    } else {
        p.name.clone().unwrap_or_else(|| "default".into())
    }
}

/// One alarm as we want it.
struct Want {
    name: String,
    namespace: &'static str,
    metric: &'static str,
    dimensions: Vec<(&'static str, String)>,
    statistic: cw::Statistic,
    period: i32,
    evaluation_periods: i32,
    datapoints: i32,
    description: String,
}

fn wanted(ctx: &Ctx<'_>, s: &StackSettings, f: &Found) -> Vec<Want> {
    let a = &s.alarms;
    let stack = &ctx.names.stack;
    let function = ctx.names.function();
    let mut out = vec![Want {
        name: ctx.names.prefixed("-scaler-failing"),
        namespace: "AWS/Lambda",
        metric: "Errors",
        dimensions: vec![("FunctionName", function.clone())],
        statistic: cw::Statistic::Sum,
        period: 60,
        evaluation_periods: 5,
        datapoints: a.scaler_errors as i32,
        description: format!(
            "The cci-scaler Lambda {function} of stack {stack} failed in {} of the last 5 minutes, so no pool is being scaled. Check its log group /aws/lambda/{function} (each failure is an \"error\" line saying what failed) or run `cci-scaler status --stack {stack}`.",
            a.scaler_errors
        ),
    }];
    for p in &f.pools {
        let pool = metric_pool(f, p);
        let part = p.name.as_ref().map(|n| format!("-{n}")).unwrap_or_default();
        let dims = vec![("stack", stack.clone()), ("pool", pool)];
        out.push(Want {
            name: ctx.names.prefixed(&format!("{part}-starved")),
            namespace: crate::scale::metrics::NAMESPACE,
            metric: "Starved",
            dimensions: dims.clone(),
            statistic: cw::Statistic::Minimum,
            period: 60,
            evaluation_periods: a.starved_minutes as i32,
            datapoints: a.starved_minutes as i32,
            description: format!(
                "Jobs of {} waited for {} minutes while {} was at its max size: raise max_instances, or check the EC2 quotas (and spot capacity) of its instance types.",
                p.resource_class, a.starved_minutes, p.group
            ),
        });
        out.push(Want {
            name: ctx.names.prefixed(&format!("{part}-boots-failing")),
            namespace: crate::scale::metrics::NAMESPACE,
            metric: "Reaped",
            dimensions: dims,
            statistic: cw::Statistic::Sum,
            period: (a.reaped_window_minutes * 60) as i32,
            evaluation_periods: 1,
            datapoints: 1,
            description: format!(
                "Instances of {} did not register as CircleCI runners within the boot timeout in the last {} minutes and were terminated: read an instance's console output and /var/log/cci-scaler-boot.log; check the image, the setup script and the runner token secret.",
                p.group, a.reaped_window_minutes
            ),
        });
    }
    out
}

/// What we compare between a wanted alarm and one that exists.
fn fingerprint_of(a: &cw::MetricAlarm) -> Value {
    let mut dims: Vec<(String, String)> = a
        .dimensions()
        .iter()
        .map(|d| {
            (
                d.name().unwrap_or_default().to_string(),
                d.value().unwrap_or_default().to_string(),
            )
        })
        .collect();
    dims.sort();
    json!({
        "ns": a.namespace(), "metric": a.metric_name(), "dims": dims,
        "stat": a.statistic().map(|s| s.as_str()), "period": a.period(),
        "eval": a.evaluation_periods(), "dp": a.datapoints_to_alarm(),
        "threshold": a.threshold(), "cmp": a.comparison_operator().map(|c| c.as_str()),
        "missing": a.treat_missing_data(), "actions": a.alarm_actions(), "ok": a.ok_actions(),
        "description": a.alarm_description(),
    })
}

fn fingerprint_want(w: &Want, actions: &[String]) -> Value {
    let mut dims: Vec<(String, String)> = w
        .dimensions
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    dims.sort();
    json!({
        "ns": w.namespace, "metric": w.metric, "dims": dims,
        "stat": w.statistic.as_str(), "period": w.period,
        "eval": w.evaluation_periods, "dp": w.datapoints,
        "threshold": 1.0, "cmp": "GreaterThanOrEqualToThreshold",
        "missing": "notBreaching", "actions": actions, "ok": actions,
        "description": w.description,
    })
}

/// The stack's alarms that exist: name, and whether tagged ours.
async fn existing(ctx: &Ctx<'_>) -> R<Vec<(cw::MetricAlarm, bool)>> {
    let prefix = ctx.names.prefixed("-");
    let mut out = Vec::new();
    let mut pages = ctx
        .aws
        .cloudwatch
        .describe_alarms()
        .alarm_name_prefix(&prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(aws_err("cloudwatch:DescribeAlarms", &prefix))?;
        for a in page.metric_alarms() {
            let arn = a.alarm_arn().unwrap_or_default();
            let tags = ctx
                .aws
                .cloudwatch
                .list_tags_for_resource()
                .resource_arn(arn)
                .send()
                .await
                .map_err(aws_err("cloudwatch:ListTagsForResource", arn))?;
            let stack_tag = tags
                .tags()
                .iter()
                .find(|t| t.key() == Some(STACK_TAG))
                .and_then(|t| t.value());
            match stack_tag {
                // Another stack's (whose name starts like ours): not ours to see.
                Some(other) if other != ctx.names.stack => {}
                Some(_) => out.push((a.clone(), true)),
                None => out.push((a.clone(), false)),
            }
        }
    }
    Ok(out)
}

async fn converge(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<Item> {
    let want = wanted(ctx, s, f);
    let have = existing(ctx).await?;
    let actions: Vec<String> = f.topic_arn.iter().cloned().collect();
    let (mut created, mut updated) = (0, 0);
    for w in &want {
        let current = have
            .iter()
            .find(|(a, _)| a.alarm_name() == Some(w.name.as_str()));
        match current {
            Some((_, false)) => return Err(not_ours("CloudWatch alarm", &w.name, ctx)),
            Some((a, true)) if fingerprint_of(a) == fingerprint_want(w, &actions) => continue,
            Some(_) => updated += 1,
            None => created += 1,
        }
        if ctx.dry_run {
            continue;
        }
        let mut put = ctx
            .aws
            .cloudwatch
            .put_metric_alarm()
            .alarm_name(&w.name)
            .alarm_description(&w.description)
            .namespace(w.namespace)
            .metric_name(w.metric)
            .statistic(w.statistic.clone())
            .period(w.period)
            .evaluation_periods(w.evaluation_periods)
            .datapoints_to_alarm(w.datapoints)
            .threshold(1.0)
            .comparison_operator(cw::ComparisonOperator::GreaterThanOrEqualToThreshold)
            .treat_missing_data("notBreaching")
            .set_alarm_actions(Some(actions.clone()))
            .set_ok_actions(Some(actions.clone()))
            .tags(
                cw::Tag::builder()
                    .key(STACK_TAG)
                    .value(&ctx.names.stack)
                    .build(),
            );
        for (k, v) in &w.dimensions {
            put = put.dimensions(cw::Dimension::builder().name(*k).value(v).build());
        }
        put.send()
            .await
            .map_err(aws_err("cloudwatch:PutMetricAlarm", &w.name))?;
    }
    let names: Vec<String> = want.iter().map(|w| w.name.clone()).collect();
    let removed = delete_except(ctx, &names)
        .await?
        .iter()
        .filter(|i| i.action == Action::Delete)
        .count();
    let action = if created == want.len() && removed == 0 {
        Action::Create
    } else if created + updated + removed > 0 {
        Action::Update
    } else {
        Action::Keep
    };
    let mut detail = format!("{} alarm(s)", want.len());
    if removed > 0 {
        detail.push_str(&format!(", {removed} no longer wanted removed"));
    }
    if f.topic_arn.is_some() {
        detail.push_str(", to the alarm topic");
    }
    Ok(Item::new("alarms", ctx.names.prefixed("-*"), action).detail(detail))
}

/// Delete the stack's alarms (tagged ours) not named in `keep`.
async fn delete_except(ctx: &Ctx<'_>, keep: &[String]) -> R<Vec<Item>> {
    let mut items = Vec::new();
    for (a, ours) in existing(ctx).await? {
        let name = a.alarm_name().unwrap_or_default().to_string();
        if keep.contains(&name) {
            continue;
        }
        if !ours {
            items.push(Item::new("CloudWatch alarm", &name, Action::Foreign));
            continue;
        }
        if !ctx.dry_run {
            ctx.aws
                .cloudwatch
                .delete_alarms()
                .alarm_names(&name)
                .send()
                .await
                .map_err(aws_err("cloudwatch:DeleteAlarms", &name))?;
        }
        items.push(Item::new("CloudWatch alarm", &name, Action::Delete));
    }
    Ok(items)
}
