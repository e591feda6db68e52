//! A CloudWatch dashboard per stack: per pool, the queue against capacity,
//! runners and spares, reaps and errors, the scaler's latency. Dashboards
//! carry no tags: ours is the one whose text widget names the stack.

use super::common::*;

/// The stack's dashboard.
pub(crate) struct Dashboard;

impl Resource for Dashboard {
    fn step(&self) -> StepName {
        StepName::Alarms
    }
    fn label(&self) -> &'static str {
        "dashboard"
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
        Box::pin(async move { Ok(vec![delete(ctx).await?]) })
    }
}

fn name(ctx: &Ctx<'_>) -> String {
    ctx.names.prefixed("")
}

fn marker(ctx: &Ctx<'_>) -> String {
    format!("cci-scaler stack `{}`", ctx.names.stack)
}

fn body(ctx: &Ctx<'_>, s: &StackSettings, f: &Found) -> Value {
    let ns = crate::scale::metrics::NAMESPACE;
    let stack = &ctx.names.stack;
    let mut widgets = vec![json!({
        "type": "text", "x": 0, "y": 0, "width": 24, "height": 2,
        "properties": {"markdown": format!(
            "## {}\nQueue against capacity per pool, from every poll of the scaler (metrics in `{ns}`). Made by `cci-scaler init`; `cci-scaler status --stack {stack} --since 24h` sums them up.",
            marker(ctx)
        )}
    })];
    let metric = |m: &str, pool: &str, label: &str| json!([ns, m, "stack", stack, "pool", pool, {"label": label}]);
    // With `usage_org`, a row per pool more: the waits jobs really had.
    let rows = if s.usage_org.is_some() { 12 } else { 6 };
    for (i, p) in f.pools.iter().enumerate() {
        let pool = super::alarms::metric_pool(f, p);
        let title = p.name.clone().unwrap_or_else(|| p.group.clone());
        let y = 2 + rows * i as i64;
        let graph = |x: i64, w: i64, t: String, metrics: Vec<Value>, stat: &str| {
            json!({"type": "metric", "x": x, "y": y, "width": w, "height": 6, "properties": {
                "title": t, "view": "timeSeries", "region": ctx.region, "stat": stat, "period": 60,
                "metrics": metrics}})
        };
        widgets.push(graph(
            0,
            12,
            format!("{title}: queue and capacity ({})", p.resource_class),
            vec![
                metric("Unclaimed", &pool, "unclaimed (waiting)"),
                metric("Running", &pool, "running"),
                metric("Desired", &pool, "desired"),
                metric("InService", &pool, "in service"),
                metric("Spares", &pool, "idle runners"),
            ],
            "Maximum",
        ));
        widgets.push(graph(
            12,
            6,
            format!("{title}: reaps, starvation, errors"),
            vec![
                metric("Reaped", &pool, "instances reaped"),
                metric("Starved", &pool, "starved polls"),
                metric("Errors", &pool, "errors"),
            ],
            "Sum",
        ));
        widgets.push(graph(
            18,
            6,
            format!("{title}: scaler latency (ms)"),
            vec![
                metric("CircleCiLatency", &pool, "CircleCI"),
                metric("AwsLatency", &pool, "AWS"),
            ],
            "Average",
        ));
        if s.usage_org.is_some() {
            widgets.push(json!({"type": "metric", "x": 0, "y": y + 6, "width": 24, "height": 6,
                "properties": {
                    "title": format!("{title}: queue wait jobs really had, per day (s; CircleCI's usage export, queued to started)"),
                    "view": "timeSeries", "region": ctx.region, "stat": "Maximum", "period": 86_400,
                    "metrics": [
                        metric("RealWaitP50", &pool, "p50"),
                        metric("RealWaitP95", &pool, "p95"),
                        metric("RealWaitMax", &pool, "max"),
                        metric("SimWaitP95", &pool, "p95 simulated (the same runs, the stack's settings)"),
                    ]}}));
        }
    }
    json!({"widgets": widgets})
}

/// The dashboard's body, if it exists.
async fn find(ctx: &Ctx<'_>) -> R<Option<Value>> {
    let name = name(ctx);
    match ctx
        .aws
        .cloudwatch
        .get_dashboard()
        .dashboard_name(&name)
        .send()
        .await
    {
        Ok(out) => Ok(out
            .dashboard_body()
            .and_then(|b| serde_json::from_str(b).ok())
            .or(Some(Value::Null))),
        Err(e) if is_not_found(&e) || code(&e) == "ResourceNotFound" => Ok(None),
        Err(e) => Err(aws_err("cloudwatch:GetDashboard", &name)(e)),
    }
}

fn is_ours(ctx: &Ctx<'_>, body: &Value) -> bool {
    body["widgets"][0]["properties"]["markdown"]
        .as_str()
        .is_some_and(|m| m.contains(&marker(ctx)))
}

async fn converge(ctx: &Ctx<'_>, s: &StackSettings, f: &Found) -> R<Item> {
    let name = name(ctx);
    let want = body(ctx, s, f);
    let action = match find(ctx).await? {
        Some(b) if !is_ours(ctx, &b) => return Err(not_ours("CloudWatch dashboard", &name, ctx)),
        Some(b) if b == want => return Ok(Item::new("dashboard", &name, Action::Keep)),
        Some(_) => Action::Update,
        None => Action::Create,
    };
    if !ctx.dry_run {
        ctx.aws
            .cloudwatch
            .put_dashboard()
            .dashboard_name(&name)
            .dashboard_body(want.to_string())
            .send()
            .await
            .map_err(aws_err("cloudwatch:PutDashboard", &name))?;
    }
    Ok(Item::new("dashboard", &name, action).detail(format!("{} pool(s)", f.pools.len())))
}

async fn delete(ctx: &Ctx<'_>) -> R<Item> {
    let name = name(ctx);
    match find(ctx).await? {
        None => Ok(Item::new("dashboard", &name, Action::Absent)),
        Some(b) if !is_ours(ctx, &b) => Ok(Item::new("dashboard", &name, Action::Foreign)),
        Some(_) => {
            if !ctx.dry_run {
                ctx.aws
                    .cloudwatch
                    .delete_dashboards()
                    .dashboard_names(&name)
                    .send()
                    .await
                    .map_err(aws_err("cloudwatch:DeleteDashboards", &name))?;
            }
            Ok(Item::new("dashboard", &name, Action::Delete))
        }
    }
}
