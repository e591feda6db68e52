//! `cci-scaler image build|prune`: runner-ready images for a stack's pools.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use cci_scaler::config::{StackFile, select_pools};
use cci_scaler::provision::{self, Ctx, Progress, image::BuildOptions};

use super::stack::{CliProgress, PoolArg, StackArgs, connect, print_items};
use super::{GlobalArgs, parse_duration};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Bake a runner-ready image for each pool (or --pool): a builder instance
    /// from the pool's base image installs the packages, machine runner 3 and
    /// the setup script, stops, is imaged and terminated. `init` then launches
    /// from it.
    Build(BuildArgs),
    /// Deregister all but the newest baked images of each pool (or --pool),
    /// with their snapshots.
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub pool: PoolArg,
    /// Give up (and terminate the builder) after this long.
    #[arg(long, default_value = "30m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// How often to look at the builder.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub poll_interval: Duration,
    /// Print what would be built; launch nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub pool: PoolArg,
    /// How many of the newest images of each pool to keep.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub keep: usize,
    /// Print what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(global: &GlobalArgs, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    let (stack_args, pool_arg, dry_run) = match &cmd {
        ImageCommand::Build(a) => (&a.stack, &a.pool, a.dry_run),
        ImageCommand::Prune(a) => (&a.stack, &a.pool, a.dry_run),
    };
    let file = stack_args.file(StackFile::default())?;
    let pools = select_pools(file.pools()?, pool_arg.pool.as_deref())?;
    let stack = pools[0].stack.clone();
    let progress = CliProgress::new(global.output, dry_run);
    let mut api = None;
    let ctx = connect(
        &stack_args.aws,
        &file,
        &stack,
        &stack_args.circleci_url,
        dry_run,
        &progress,
        &mut api,
    )
    .await?;
    let mut items = Vec::new();
    for s in &pools {
        let pctx = Ctx {
            names: ctx.names.for_pool(s.pool.as_deref()),
            ..ctx.clone()
        };
        match &cmd {
            ImageCommand::Build(a) => {
                let opts = BuildOptions {
                    timeout: a.timeout,
                    poll: a.poll_interval,
                };
                items.extend(provision::image::build(&pctx, s, &opts).await?);
            }
            ImageCommand::Prune(a) => {
                let pruned = provision::image::prune(&pctx, a.keep).await?;
                for i in &pruned {
                    progress.done(i);
                }
                items.extend(pruned);
            }
        }
    }
    print_items(global.output, &stack, &ctx.region, dry_run, &items, None)?;
    Ok(ExitCode::SUCCESS)
}
