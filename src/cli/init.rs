//! `cci-scaler init`: create the whole stack, or converge it to the settings.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use cci_scaler::config::{PoolFile, StackFile};
use std::io::{BufRead, IsTerminal, Write};

use cci_scaler::provision::{self, Ctx, PoolRecord, StepName, artifact};

use super::stack::{CliProgress, StackArgs, connect, describe, pool_names, print_items};
use super::{GlobalArgs, Output, parse_duration};

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    /// Resource class description (when it is created).
    #[arg(long)]
    pub description: Option<String>,
    /// The group's max size [default: 10].
    #[arg(long, value_name = "N")]
    pub max_instances: Option<u32>,
    /// EC2 instance type [default: t3.medium].
    #[arg(long, value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// AMI id, or the name of an SSM parameter holding one [default: Canonical's
    /// Ubuntu 22.04 LTS public parameter].
    #[arg(long, value_name = "AMI|PARAMETER")]
    pub image: Option<String>,
    /// Subnet to launch into (repeatable) [default: the default VPC's default subnets].
    #[arg(long = "subnet", value_name = "SUBNET")]
    pub subnets: Vec<String>,
    /// EC2 key pair for SSH access [default: none].
    #[arg(long, value_name = "NAME")]
    pub key_pair: Option<String>,
    /// Root volume size (encrypted gp3) [default: 30].
    #[arg(long, value_name = "GB")]
    pub root_volume_gb: Option<u32>,
    /// IMDSv2 hop limit [default: 1].
    #[arg(long, value_name = "N")]
    pub imds_hop_limit: Option<u32>,
    /// Lambda poll interval [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub poll_interval: Option<String>,
    /// Lambda poll window per invocation [default: 50s].
    #[arg(long, value_name = "DURATION")]
    pub poll_window: Option<String>,
    /// Reap instances not registered after this [default: 10m].
    #[arg(long, value_name = "DURATION")]
    pub boot_timeout: Option<String>,
    /// Days the Lambda's log group keeps its logs [default: 30].
    #[arg(long, value_name = "DAYS")]
    pub log_retention_days: Option<u32>,
    /// Runner idle timeout [default: 1m].
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Runner max run time [default: 5h].
    #[arg(long, value_name = "DURATION")]
    pub max_run_time: Option<String>,
    /// Runner working directory.
    #[arg(long, value_name = "PATH")]
    pub working_directory: Option<String>,
    /// Environment setup script run before the runner starts.
    #[arg(long, value_name = "FILE")]
    pub setup_script: Option<PathBuf>,
    /// Extra Debian package for the runners (repeatable).
    #[arg(long = "apt-package", value_name = "NAME")]
    pub apt_packages: Vec<String>,
    /// Give jobs password-less sudo (they could then lift the rule that keeps
    /// them from the instance's credentials) [default: off].
    #[arg(long)]
    pub job_sudo: bool,
    /// The Lambda binary to deploy [default: cci-scaler-lambda beside cci-scaler].
    #[arg(long, value_name = "FILE", conflicts_with = "lambda_zip")]
    pub lambda_binary: Option<PathBuf>,
    /// A ready Lambda zip holding `bootstrap`.
    #[arg(long, value_name = "FILE")]
    pub lambda_zip: Option<PathBuf>,
    /// Do not bake a runner-ready image for a pool whose install inputs no
    /// baked image matches: its instances install at boot (2-5 minutes).
    #[arg(long, env = "CCI_SCALER_NO_BAKE", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_bake: bool,
    /// Give up a bake (and terminate its builder) after this long.
    #[arg(long, default_value = "30m", value_parser = parse_duration, value_name = "DURATION")]
    pub bake_timeout: std::time::Duration,
    /// How often to look at a builder while it bakes.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION", hide = true)]
    pub bake_poll_interval: std::time::Duration,
    /// Print the plan (create/update/keep per resource); write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove pools the stack file no longer lists without asking.
    #[arg(long, short)]
    pub yes: bool,
}

/// `cci-scaler step NAME`: one piece of `init`, for bootstrap scripts.
#[derive(Debug, Args)]
pub struct StepArgs {
    /// The step to run (or repeat); the others are only read.
    #[arg(value_enum)]
    pub name: StepName,
    #[command(flatten)]
    pub init: InitArgs,
}

pub async fn run_step(global: &GlobalArgs, args: StepArgs) -> anyhow::Result<ExitCode> {
    converge(global, args.init, Some(args.name)).await
}

pub async fn run(global: &GlobalArgs, args: InitArgs) -> anyhow::Result<ExitCode> {
    converge(global, args, None).await
}

async fn converge(
    global: &GlobalArgs,
    args: InitArgs,
    only: Option<StepName>,
) -> anyhow::Result<ExitCode> {
    let flags = StackFile {
        subnets: (!args.subnets.is_empty()).then(|| args.subnets.clone()),
        poll_interval: args.poll_interval.clone(),
        poll_window: args.poll_window.clone(),
        boot_timeout: args.boot_timeout.clone(),
        log_retention_days: args.log_retention_days,
        pool: PoolFile {
            description: args.description.clone(),
            max_instances: args.max_instances,
            instance_type: args.instance_type.clone(),
            image: args.image.clone(),
            key_pair: args.key_pair.clone(),
            root_volume_gb: args.root_volume_gb,
            imds_hop_limit: args.imds_hop_limit,
            idle_timeout: args.idle_timeout.clone(),
            max_run_time: args.max_run_time.clone(),
            working_directory: args.working_directory.clone(),
            setup_script: args.setup_script.clone(),
            apt_packages: (!args.apt_packages.is_empty()).then(|| args.apt_packages.clone()),
            job_sudo: args.job_sudo.then_some(true),
            ..PoolFile::default()
        },
        ..StackFile::default()
    };
    // Everything local is checked before the first call.
    let file = args.stack.file(flags)?;
    let pools = file.pools()?;
    super::warn(&pools);
    let stack = pools[0].stack.clone();
    let sudo: Vec<&str> = pools
        .iter()
        .filter(|p| p.runner.job_sudo)
        .map(|p| p.pool.as_deref().unwrap_or(&stack))
        .collect();
    if !sudo.is_empty() {
        eprintln!(
            "warning: job_sudo is on ({}): jobs get password-less sudo, so they can lift the rule that keeps them from the instance role's credentials and the runner token (see SECURITY.md)",
            sudo.join(", ")
        );
    }
    let artifact = match (&args.lambda_zip, &args.lambda_binary) {
        (Some(z), _) => artifact::from_zip(z)?,
        (None, Some(b)) => artifact::from_binary(b)?,
        (None, None) => artifact::from_binary(&artifact::default_binary()?)?,
    };

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
    // Pools the stack has and the file no longer lists: shown, confirmed,
    // removed after the rest converged (the Lambda stops scaling them first).
    let removing: Vec<PoolRecord> = provision::recorded_pools(&ctx)
        .await?
        .into_iter()
        .filter(|r| !pools.iter().any(|p| p.pool == r.name))
        .collect();
    if !removing.is_empty() && only.is_none() && !args.dry_run {
        let names = pool_names(&removing);
        let plan = Ctx {
            dry_run: true,
            progress: &provision::Quiet,
            ..ctx.clone()
        };
        let planned = provision::remove_pools(&plan, &removing, false).await?;
        eprintln!("the stack file no longer lists pool(s) {names}; init will remove:");
        for i in planned.iter().filter(|i| i.action.changes()) {
            eprintln!("  {}", describe(i, true));
        }
        if !args.yes {
            if !std::io::stdin().is_terminal() {
                anyhow::bail!(
                    "init would remove pool(s) {names} and their instances: pass --yes to confirm (stdin is not a terminal); nothing was changed"
                );
            }
            eprint!("Remove them, terminating their instances? [y/N] ");
            std::io::stderr().flush()?;
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "yes") {
                anyhow::bail!("not confirmed; nothing was changed");
            }
        }
    }
    let bake = (!args.no_bake).then_some(provision::image::BuildOptions {
        timeout: args.bake_timeout,
        poll: args.bake_poll_interval,
    });
    let mut items = provision::init(&ctx, &pools, &removing, &artifact, only, bake).await?;
    if !removing.is_empty() && only.is_none() {
        items.extend(provision::remove_pools(&ctx, &removing, false).await?);
    }
    // The job role, when the stack has one: jobs assume it with their
    // CircleCI OIDC token (the aws-cli orb does the exchange).
    let job_role_arn = items
        .iter()
        .find(|i| i.kind == "job role")
        .and_then(|i| i.id.clone());
    let aws_step = job_role_arn
        .as_deref()
        .map(|arn| {
            format!(
                "      # AWS access through the job role (CircleCI OIDC), not the instance's:\n      \
                 - aws-cli/setup:\n          role_arn: {arn}\n          region: {}\n",
                ctx.region
            )
        })
        .unwrap_or_default();
    let orbs = if job_role_arn.is_some() {
        "orbs:\n  aws-cli: circleci/aws-cli@5\n"
    } else {
        ""
    };
    let job = |name: &str, class: &str| {
        format!(
            "  {name}:\n    machine: true\n    resource_class: {class}\n    steps:\n      - checkout\n{aws_step}"
        )
    };
    let jobs: String = match pools.as_slice() {
        [p] => job("build", &p.resource_class),
        _ => pools
            .iter()
            .map(|p| {
                job(
                    &format!("build-{}", p.pool.as_deref().unwrap_or("default")),
                    &p.resource_class,
                )
            })
            .collect(),
    };
    let snippet = format!("version: 2.1\n{orbs}jobs:\n{jobs}");
    let settings = match pools.as_slice() {
        [p] if p.pool.is_none() => serde_json::to_value(p)?,
        _ => serde_json::to_value(&pools)?,
    };
    print_items(
        global.output,
        &stack,
        &ctx.region,
        args.dry_run,
        &items,
        Some(serde_json::json!({
            "circleci_config": snippet,
            "settings": settings,
            "job_role_arn": job_role_arn,
        })),
    )?;
    if global.output == Output::Text && !args.dry_run && only.is_none() {
        println!("\nSend jobs to the fleet with this in .circleci/config.yml:\n\n{snippet}");
    }
    Ok(ExitCode::SUCCESS)
}
