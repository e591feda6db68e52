//! `cci-scaler scale`: one decision (`--once`) or a loop until Ctrl-C.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use cci_scaler::aws::{self, autoscaling::AsgClient};
use cci_scaler::circleci::{self, HttpLimits, RunnerApi};
use cci_scaler::scale::decide::Policy;
use cci_scaler::scale::pools::Pool;
use cci_scaler::scale::{ScaleSettings, run_once};
use cci_scaler::token;

use super::{AwsArgs, GlobalArgs, Output, parse_duration};

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Auto Scaling group to size. Repeat it, each with its --resource-class
    /// in the same order, to scale several pools in one poll.
    #[arg(long, value_name = "NAME")]
    pub asg: Vec<String>,
    /// Scale a stack made by `init`: every pool of its stack file (--config,
    /// or ./cci-scaler.toml), or with --resource-class its one pool. The
    /// token: CIRCLECI_TOKEN, else the stack's scaler secret.
    #[arg(long, value_name = "NAME", conflicts_with = "asg")]
    pub stack: Option<String>,
    /// The stack's file: it names the stack (--stack wins) and its pools
    /// [default: ./cci-scaler.toml if present, without --asg].
    #[arg(long, value_name = "FILE", conflicts_with = "asg")]
    pub config: Option<std::path::PathBuf>,
    /// A stack's pool: scale this one only.
    #[arg(long, value_name = "NAME", conflicts_with = "asg")]
    pub pool: Option<String>,
    /// Runner resource class NAMESPACE/NAME (one group: default the secret's
    /// resource_class; several: one per --asg).
    #[arg(long, value_name = "NS/NAME")]
    pub resource_class: Vec<String>,
    /// Secrets Manager secret (name or ARN) holding {"resource_class", "circle_token"};
    /// without it the token comes from CIRCLECI_TOKEN or CIRCLECI_CLI_TOKEN.
    #[arg(long, value_name = "ID")]
    pub secret_id: Option<String>,
    /// CircleCI runner API base URL.
    #[arg(long, env = "CIRCLECI_RUNNER_API_URL", default_value = circleci::DEFAULT_URL, value_name = "URL")]
    pub circleci_url: String,
    /// Run one decision and exit.
    #[arg(long)]
    pub once: bool,
    /// Time between decisions without --once.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,
    /// Print the decision; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Instances that have not registered as a runner after this long are terminated.
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    pub boot_timeout: Duration,
    /// Spot pools: fall back to on demand after spot launches have failed
    /// this long while the group is short of its desired capacity...
    #[arg(long, default_value = "3m", value_parser = parse_duration, value_name = "DURATION")]
    pub spot_grace: Duration,
    /// ...for this long, then back to spot.
    #[arg(long, default_value = "30m", value_parser = parse_duration, value_name = "DURATION")]
    pub spot_cooldown: Duration,
    /// Also put each poll's metrics into CloudWatch (PutMetricData, batched;
    /// namespace cci-scaler, dimensions stack and pool), as the Lambda's log
    /// lines do.
    #[arg(long)]
    pub metrics: bool,
    /// Timeout of each CircleCI request.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub circleci_timeout: Duration,
    /// CircleCI requests in flight at once, over all pools (a throttle from
    /// CircleCI holds them all back together).
    #[arg(long, default_value_t = circleci::DEFAULT_MAX_IN_FLIGHT as u16, value_parser = clap::value_parser!(u16).range(1..=circleci::MAX_IN_FLIGHT_LIMIT as i64), value_name = "N")]
    pub circleci_concurrency: u16,
    #[command(flatten)]
    pub aws: AwsArgs,
}

pub async fn run(global: &GlobalArgs, args: ScaleArgs) -> anyhow::Result<ExitCode> {
    for asg in &args.asg {
        if asg.trim().is_empty() || asg.len() > 255 {
            anyhow::bail!("--asg must be a group name of 1 to 255 characters");
        }
    }
    if !args.once && args.interval < Duration::from_secs(1) {
        anyhow::bail!("--interval must be at least 1s");
    }
    for rc in &args.resource_class {
        circleci::validate_resource_class(rc).map_err(anyhow::Error::msg)?;
    }
    if args.asg.is_empty() {
        let (stack, pools) = stack_pools(&args)?;
        let args = ScaleArgs {
            stack: Some(stack),
            ..args
        };
        return run_pools(global, args, pools).await;
    }
    if args.asg.len() > 1 {
        if args.resource_class.len() != args.asg.len() {
            anyhow::bail!(
                "several groups need one --resource-class each, in the same order: {} --asg, {} --resource-class",
                args.asg.len(),
                args.resource_class.len()
            );
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = args.asg.iter().find(|a| !seen.insert(*a)) {
            anyhow::bail!("--asg {dup} is given twice");
        }
        let pools: Vec<Pool> = args
            .asg
            .iter()
            .zip(&args.resource_class)
            .map(|(asg, rc)| Pool {
                name: asg.clone(),
                asg: asg.clone(),
                resource_class: rc.clone(),
                headroom: Vec::new(),
                auto: None,
                model: None,
            })
            .collect();
        return run_pools(global, args, pools).await;
    }
    if args.resource_class.len() > 1 {
        anyhow::bail!(
            "one --resource-class per --asg: {} given for 1 group",
            args.resource_class.len()
        );
    }
    let asg = args.asg[0].clone();

    let config = aws::load_config(&args.aws.options()).await?;
    let secrets = args
        .secret_id
        .as_ref()
        .map(|_| aws_sdk_secretsmanager::Client::new(&config));
    let (token, resource_class) = token::resolve(
        secrets.as_ref().zip(args.secret_id.as_deref()),
        args.resource_class.first().map(String::as_str),
    )
    .await?;
    let limits = HttpLimits {
        timeout: args.circleci_timeout,
        max_in_flight: usize::from(args.circleci_concurrency),
        ..HttpLimits::default()
    };
    let queue = RunnerApi::new(&args.circleci_url, token, limits)?;
    let group = AsgClient::new(&config);
    let settings = ScaleSettings {
        asg,
        resource_class,
        policy: Policy {
            boot_timeout: args.boot_timeout,
            spot_grace: args.spot_grace,
            spot_cooldown: args.spot_cooldown,
            ..Policy::default()
        },
        headroom: Default::default(),
        auto: None,
        dry_run: args.dry_run,
    };

    let metrics = args
        .metrics
        .then(|| aws_sdk_cloudwatch::Client::new(&config));
    let mut stop = shutdown_signal();
    loop {
        let result = run_once(&queue, &group, &settings).await;
        let ok = result.is_ok();
        match result {
            Ok(round) => {
                print_round(global.output, &round)?;
                if let Some(cw) = &metrics {
                    put_metrics(
                        cw,
                        args.stack.as_deref().unwrap_or(&settings.asg),
                        &[(&settings.asg, &round)],
                    )
                    .await;
                }
            }
            Err(e) => {
                let err = failed(e, &settings.asg, &settings.resource_class);
                if args.once {
                    return Err(err);
                }
                report_round_error(global.output, &err, None)?;
            }
        }
        if args.once {
            return Ok(ExitCode::SUCCESS);
        }
        if *stop.borrow() {
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = stop.changed() => {
                return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
            }
        }
    }
}

/// Several pools, each decided and applied on its own in one poll; a pool that
/// fails is reported and the others are still scaled. Exit 1 if any failed.
async fn run_pools(
    global: &GlobalArgs,
    args: ScaleArgs,
    pools: Vec<Pool>,
) -> anyhow::Result<ExitCode> {
    let config = aws::load_config(&args.aws.options()).await?;
    // A stack's own scaler secret holds the token when none is in the
    // environment.
    let secret_id = args.secret_id.clone().or_else(|| {
        args.stack
            .as_deref()
            .filter(|_| token::token_from_env().is_none())
            .map(cci_scaler::names::scaler_secret)
    });
    let secrets = secret_id
        .as_ref()
        .map(|_| aws_sdk_secretsmanager::Client::new(&config));
    let token = token::resolve_token(secrets.as_ref().zip(secret_id.as_deref())).await?;
    let limits = HttpLimits {
        timeout: args.circleci_timeout,
        max_in_flight: usize::from(args.circleci_concurrency),
        ..HttpLimits::default()
    };
    let queue = RunnerApi::new(&args.circleci_url, token, limits)?;
    let group = AsgClient::new(&config);
    let policy = Policy {
        boot_timeout: args.boot_timeout,
        spot_grace: args.spot_grace,
        spot_cooldown: args.spot_cooldown,
        ..Policy::default()
    };
    let metrics = args
        .metrics
        .then(|| aws_sdk_cloudwatch::Client::new(&config));
    let mut stop = shutdown_signal();
    loop {
        let results =
            cci_scaler::scale::pools::run_pools(&queue, &group, &pools, &policy, args.dry_run)
                .await;
        let mut ok = true;
        let mut done = Vec::new();
        for (pool, result) in pools.iter().zip(results) {
            match result {
                Ok(round) => {
                    print_round(global.output, &round)?;
                    done.push((pool.name.clone(), round));
                }
                Err(e) => {
                    ok = false;
                    let err = failed(e, &pool.asg, &pool.resource_class);
                    report_round_error(global.output, &err, Some(&pool.name))?;
                }
            }
        }
        if let Some(cw) = &metrics {
            let stack = args.stack.clone().unwrap_or_else(|| "cci-scaler".into());
            let rounds: Vec<(&str, &cci_scaler::scale::Round)> =
                done.iter().map(|(p, r)| (p.as_str(), r)).collect();
            put_metrics(cw, &stack, &rounds).await;
        }
        let code = if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
        if args.once || *stop.borrow() {
            return Ok(code);
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = stop.changed() => return Ok(code),
        }
    }
}

/// The stack (`--stack`, else its file's `stack`) and its pools: its stack
/// file's, or one from --resource-class; `--pool` narrows them. Names only:
/// nothing of provisioning is needed.
fn stack_pools(args: &ScaleArgs) -> anyhow::Result<(String, Vec<Pool>)> {
    use cci_scaler::config::{DEFAULT_STACK_FILE, StackFile, select_pools};
    let path = args
        .config
        .clone()
        .or_else(|| Some(std::path::PathBuf::from(DEFAULT_STACK_FILE)).filter(|p| p.is_file()));
    let mut file = match &path {
        Some(p) => StackFile::load(p)?,
        None => StackFile::default(),
    };
    if args.stack.is_some() {
        file.stack = args.stack.clone();
    }
    let Some(stack) = file.stack.clone() else {
        match &path {
            Some(p) => crate::usage!(
                "the stack file {} names no stack: set `stack` in it, or pass --stack NAME",
                p.display()
            ),
            None => crate::usage!(
                "nothing to scale: pass --asg NAME (with --resource-class), or --stack NAME / --config FILE for a stack made by init"
            ),
        }
    };
    if args.resource_class.len() > 1 {
        crate::usage!("with --stack, give at most one --resource-class (a stack without pools)");
    }
    if let Some(rc) = args.resource_class.first() {
        file.pool.resource_class = Some(rc.clone());
    }
    if path.is_none() && file.pool.resource_class.is_none() {
        crate::usage!(
            "no stack file ({DEFAULT_STACK_FILE} or --config) to read stack {stack}'s pools from: pass --config FILE, or --resource-class NS/NAME for a stack without pools"
        );
    }
    let pools = select_pools(file.pools()?, args.pool.as_deref())?;
    super::warn(&pools);
    let pools = pools
        .into_iter()
        .map(|p| Pool {
            // A stack without pools: its group names the pool, as in the
            // Lambda's metrics (and the alarms and dashboard on them).
            name: p
                .pool
                .clone()
                .unwrap_or_else(|| cci_scaler::names::group(&stack, None)),
            asg: cci_scaler::names::group(&stack, p.pool.as_deref()),
            auto: p.auto_scale(),
            model: None,
            resource_class: p.resource_class,
            headroom: p.headroom,
        })
        .collect();
    Ok((stack, pools))
}

/// Put a poll's metrics; a failure is reported and the loop goes on (the
/// scaling itself was done).
async fn put_metrics(
    cw: &aws_sdk_cloudwatch::Client,
    stack: &str,
    rounds: &[(&str, &cci_scaler::scale::Round)],
) {
    if let Err(e) = cci_scaler::aws::metrics::put(cw, stack, rounds).await {
        eprintln!("warning: metrics not put: {e}");
    }
}

fn print_round(output: Output, round: &cci_scaler::scale::Round) -> anyhow::Result<()> {
    let line = match output {
        Output::Text => round.human(),
        Output::Json => serde_json::to_string(round)?,
    };
    print_line(&line)
}

fn failed(e: cci_scaler::scale::ScaleError, asg: &str, rc: &str) -> anyhow::Error {
    anyhow::Error::new(e).context(format!(
        "scaling {asg} for {rc} failed; the group was not changed"
    ))
}

fn print_line(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .context("writing to stdout")
}

/// In a loop an error is reported and the next round tried.
fn report_round_error(
    output: Output,
    err: &anyhow::Error,
    pool: Option<&str>,
) -> anyhow::Result<()> {
    eprintln!("error: {err:#}");
    if output == Output::Json {
        let mut line = serde_json::json!({
            "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            "error": format!("{err:#}"),
        });
        if let Some(p) = pool {
            line["pool"] = serde_json::json!(p);
        }
        print_line(&line.to_string())?;
    }
    Ok(())
}

/// Becomes true at the first Ctrl-C or SIGTERM (the current round finishes);
/// a second one exits at once.
fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).ok();
        async fn next(term: &mut Option<tokio::signal::unix::Signal>) {
            match term {
                Some(t) => {
                    tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = t.recv() => {} }
                }
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        next(&mut term).await;
        eprintln!("stopping after the current round (interrupt again to exit now)");
        let _ = tx.send(true);
        next(&mut term).await;
        std::process::exit(130);
    });
    rx
}
