//! `cci-scaler status`: the stack's resources, the queue, the group and runners.

use std::process::ExitCode;

use clap::Args;

use cci_scaler::config::StackFile;
use cci_scaler::provision::{self, Quiet, StackStatus};

use super::stack::{StackArgs, connect, describe, require_stack, stack_pools};
use super::{GlobalArgs, Output};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub stack: StackArgs,
}

pub async fn run(global: &GlobalArgs, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let file = args.stack.file(StackFile::default(), global)?;
    let (stack, rc) = require_stack(&file)?;
    let mut api = None;
    let ctx = connect(
        global,
        &file,
        &stack,
        &args.stack.circleci_url,
        true,
        &Quiet,
        &mut api,
    )
    .await?;
    let pools = stack_pools(&ctx, rc, args.stack.pool.as_deref()).await?;
    let st = provision::status(&ctx, &pools).await?;
    match global.output {
        Output::Json => {
            let mut v = serde_json::json!({"stack": stack, "region": ctx.region});
            if let (Some(obj), serde_json::Value::Object(more)) =
                (v.as_object_mut(), serde_json::to_value(&st)?)
            {
                obj.extend(more);
            }
            println!("{v}");
        }
        Output::Text => print_text(&stack, &ctx.region, &st),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(stack: &str, region: &str, st: &StackStatus) {
    match st.pools.as_slice() {
        [p] if p.pool.is_none() => {
            let rc = p
                .resource_class
                .as_deref()
                .unwrap_or("resource class unknown");
            println!("stack {stack} ({rc}) in {region}");
        }
        _ => println!("stack {stack} in {region}"),
    }
    for i in &st.resources {
        let line = describe(i, false).replacen("unchanged", "present  ", 1);
        println!("  {line}");
    }
    for p in &st.pools {
        let indent = if let Some(name) = &p.pool {
            let rc = p
                .resource_class
                .as_deref()
                .unwrap_or("resource class unknown");
            println!("pool {name} ({rc}):");
            "  "
        } else {
            ""
        };
        let Some(f) = &p.fleet else {
            println!("{indent}no Auto Scaling group ({})", p.group);
            continue;
        };
        match (f.unclaimed_tasks, f.running_tasks) {
            (Some(u), Some(r)) => println!("{indent}queue: {u} unclaimed, {r} running"),
            _ => println!(
                "{indent}queue: unavailable ({})",
                f.circleci_error.as_deref().unwrap_or_default()
            ),
        }
        match (&p.headroom, f.spares_up) {
            (Some(h), spares) => println!(
                "{indent}headroom: period {} active until {}: {} spare(s) wanted, {} up",
                h.period + 1,
                humantime::format_rfc3339_seconds(h.until),
                h.count,
                spares
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "? (queue unavailable)".into())
            ),
            (None, Some(s)) if s > 0 => {
                println!("{indent}headroom: no period active; {s} idle runner(s) up")
            }
            _ => {}
        }
        println!(
            "{indent}group: desired {} (min {}, max {}), {} instance(s)",
            f.desired,
            f.min,
            f.max,
            f.instances.len()
        );
        for i in &f.instances {
            println!(
                "{indent}  {} {} {}{}{}",
                i.id,
                i.lifecycle,
                i.health,
                if i.protected { " protected" } else { "" },
                if i.registered {
                    " registered"
                } else {
                    " not registered"
                }
            );
        }
        if let Some(list) = &p.interrupted {
            let ids: Vec<String> = list
                .iter()
                .map(|(id, at)| {
                    format!(
                        "{id} at {}",
                        humantime::format_rfc3339_seconds(cci_scaler::scale::spot::from_epoch(*at))
                    )
                })
                .collect();
            println!(
                "{indent}spot interruptions in the last hour: {}",
                if ids.is_empty() {
                    "none".into()
                } else {
                    ids.join(", ")
                }
            );
        }
        if let Some(r) = &f.registered_runners {
            println!(
                "{indent}registered runners: {}",
                if r.is_empty() {
                    "none".into()
                } else {
                    r.join(", ")
                }
            );
        }
    }
    match st.schedule_enabled {
        Some(true) => println!("schedule: enabled"),
        Some(false) => println!("schedule: DISABLED"),
        None => println!("schedule: missing"),
    }
    let runs = &st.lambda_runs;
    match &runs.unreadable {
        Some(why) => println!("Lambda runs: {why}"),
        None => {
            println!(
                "Lambda runs (last 15 minutes): {} poll(s), {} failed invocation(s)",
                runs.polls, runs.errors
            );
            if let Some(p) = &runs.last_poll {
                println!("  last poll: {p}");
            }
            if let Some(e) = &runs.last_error {
                println!("  last error: {e}");
            }
        }
    }
}
