//! `cci-scaler scale`: one decision (`--once`) or a loop until Ctrl-C.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use cci_scaler::aws::{self, autoscaling::AsgClient};
use cci_scaler::circleci::{self, HttpLimits, RunnerApi};
use cci_scaler::scale::decide::Policy;
use cci_scaler::scale::{ScaleSettings, run_once};
use cci_scaler::token;

use super::{GlobalArgs, Output, parse_duration};

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Auto Scaling group to size.
    #[arg(long, value_name = "NAME")]
    pub asg: String,
    /// Runner resource class NAMESPACE/NAME (default: the secret's resource_class).
    #[arg(long, value_name = "NS/NAME")]
    pub resource_class: Option<String>,
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
    /// Timeout of each CircleCI request.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub circleci_timeout: Duration,
}

pub async fn run(global: &GlobalArgs, args: ScaleArgs) -> anyhow::Result<ExitCode> {
    if args.asg.trim().is_empty() || args.asg.len() > 255 {
        anyhow::bail!("--asg must be a group name of 1 to 255 characters");
    }
    if !args.once && args.interval < Duration::from_secs(1) {
        anyhow::bail!("--interval must be at least 1s");
    }
    if let Some(rc) = &args.resource_class {
        circleci::validate_resource_class(rc).map_err(anyhow::Error::msg)?;
    }

    let config = aws::load_config(&global.aws.options()).await?;
    let secrets = args
        .secret_id
        .as_ref()
        .map(|_| aws_sdk_secretsmanager::Client::new(&config));
    let (token, resource_class) = token::resolve(
        secrets.as_ref().zip(args.secret_id.as_deref()),
        args.resource_class.as_deref(),
    )
    .await?;
    let limits = HttpLimits {
        timeout: args.circleci_timeout,
        ..HttpLimits::default()
    };
    let queue = RunnerApi::new(&args.circleci_url, token, limits)?;
    let group = AsgClient::new(&config);
    let settings = ScaleSettings {
        asg: args.asg.clone(),
        resource_class,
        policy: Policy {
            boot_timeout: args.boot_timeout,
        },
        dry_run: args.dry_run,
    };

    let mut stop = shutdown_signal();
    loop {
        let result = run_once(&queue, &group, &settings).await;
        let ok = result.is_ok();
        match result {
            Ok(round) => {
                let line = match global.output {
                    Output::Text => round.human(),
                    Output::Json => serde_json::to_string(&round)?,
                };
                print_line(&line)?;
            }
            Err(e) => {
                let err = anyhow::Error::new(e).context(format!(
                    "scaling {} for {} failed; the group was not changed",
                    settings.asg, settings.resource_class
                ));
                if args.once {
                    return Err(err);
                }
                report_round_error(global.output, &err)?;
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

fn print_line(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .context("writing to stdout")
}

/// In a loop an error is reported and the next round tried.
fn report_round_error(output: Output, err: &anyhow::Error) -> anyhow::Result<()> {
    eprintln!("error: {err:#}");
    if output == Output::Json {
        let line = serde_json::json!({
            "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            "error": format!("{err:#}"),
        });
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
