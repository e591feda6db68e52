//! `cci-scaler teardown`: remove everything the stack created, and nothing else.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use cci_scaler::config::StackFile;
use cci_scaler::provision::{self, PoolRecord};

use super::GlobalArgs;
use super::stack::{
    CliProgress, PoolArg, StackArgs, any_foreign, connect, pick_pool, print_items, require_stack,
    stack_pools,
};

#[derive(Debug, Args)]
pub struct TeardownArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub pool: PoolArg,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    pub yes: bool,
    /// Keep the CircleCI resource class (its tokens are still deleted).
    #[arg(long)]
    pub keep_resource_class: bool,
    /// Print what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(global: &GlobalArgs, args: TeardownArgs) -> anyhow::Result<ExitCode> {
    let file = args.stack.file(StackFile::default())?;
    let (stack, rc) = require_stack(&file)?;
    let pool = args.pool.pool.as_deref();
    let what = match pool {
        Some(p) => format!("pool {p} of stack {stack}"),
        None => format!("stack {stack}"),
    };
    if !args.yes && !args.dry_run {
        if !std::io::stdin().is_terminal() {
            bail!(
                "teardown removes {what} and its instances: pass --yes to confirm (stdin is not a terminal)"
            );
        }
        let class = rc.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        let word = pool.unwrap_or(&stack);
        eprint!("Remove {what}{class}, terminating its instances? Type {word} to confirm: ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != word {
            bail!("not confirmed; nothing was removed");
        }
    }
    let progress = CliProgress::new(global.output, args.dry_run);
    let mut api = None;
    let ctx = connect(
        &args.stack.aws,
        &file,
        &stack,
        &args.stack.circleci_url,
        args.dry_run,
        &progress,
        &mut api,
    )
    .await?;
    // The stack knows its own pools and resource classes (its scaler
    // secret); read them before the secret goes.
    let all = stack_pools(&ctx, rc, None).await?;
    let pools = match pool {
        None => all.clone(),
        Some(want) => pick_pool(&stack, &all, want)?,
    };
    let items = match pool {
        None => provision::teardown(&ctx, &all, args.keep_resource_class).await?,
        Some(p) => {
            if all.len() < 2 {
                bail!(
                    "{p} is the last pool of stack {stack}: remove the whole stack (teardown without --pool)"
                );
            }
            provision::remove_pools(&ctx, &pools, args.keep_resource_class).await?
        }
    };
    print_items(
        global.output,
        &stack,
        &ctx.region,
        args.dry_run,
        &items,
        None,
    )?;
    if any_foreign(&items) {
        eprintln!(
            "warning: some resources carry the stack's names but not its tag; they were left alone"
        );
    }
    let unknown: Vec<&PoolRecord> = pools
        .iter()
        .filter(|p| p.resource_class.is_none())
        .collect();
    let named: Vec<&str> = unknown.iter().filter_map(|p| p.name.as_deref()).collect();
    if !named.is_empty() {
        eprintln!(
            "note: pool(s) {} were found by their tags, but the stack's record of their resource \
             class is gone (its scaler secret and Lambda), so CircleCI was not looked at: remove \
             their runner tokens and resource classes there if they remain",
            named.join(", ")
        );
    } else if !unknown.is_empty() {
        // init records the class (in the scaler secret) before it makes
        // anything at CircleCI, and teardown removes that record last: without
        // it, nothing of the stack is left there, unless the secret was
        // deleted by hand.
        eprintln!(
            "note: the stack recorded no resource class (its scaler secret is gone), so CircleCI was \
             not looked at; if runner tokens of it remain, run teardown again with --resource-class \
             NAMESPACE/NAME"
        );
    }
    Ok(ExitCode::SUCCESS)
}
