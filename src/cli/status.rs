//! `cci-scaler status`: the stack's resources, the queue, the group and runners.

use std::process::ExitCode;

use clap::Args;

use cci_scaler::config::StackFile;
use cci_scaler::provision::{self, Quiet};

use super::stack::{StackArgs, connect, describe, require_stack, stack_resource_class};
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
    let rc = stack_resource_class(&ctx, rc).await?;
    let (items, fleet) = provision::status(&ctx, rc.as_deref()).await?;
    match global.output {
        Output::Json => {
            println!(
                "{}",
                serde_json::json!({"stack": stack, "region": ctx.region, "resources": items, "fleet": fleet})
            );
        }
        Output::Text => {
            let rc = rc.as_deref().unwrap_or("resource class unknown");
            println!("stack {stack} ({rc}) in {}", ctx.region);
            for i in &items {
                let line = describe(i, false).replacen("unchanged", "present  ", 1);
                println!("  {line}");
            }
            match fleet {
                None => println!("no Auto Scaling group"),
                Some(f) => {
                    match (f.unclaimed_tasks, f.running_tasks) {
                        (Some(u), Some(r)) => println!("queue: {u} unclaimed, {r} running"),
                        _ => println!(
                            "queue: unavailable ({})",
                            f.circleci_error.unwrap_or_default()
                        ),
                    }
                    println!(
                        "group: desired {} (min {}, max {}), {} instance(s)",
                        f.desired,
                        f.min,
                        f.max,
                        f.instances.len()
                    );
                    for i in &f.instances {
                        println!(
                            "  {} {} {}{}{}",
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
                    if let Some(r) = f.registered_runners {
                        println!(
                            "registered runners: {}",
                            if r.is_empty() {
                                "none".into()
                            } else {
                                r.join(", ")
                            }
                        );
                    }
                    match f.schedule_enabled {
                        Some(true) => println!("schedule: enabled"),
                        Some(false) => println!("schedule: DISABLED"),
                        None => println!("schedule: missing"),
                    }
                    let runs = &f.lambda_runs;
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
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
