//! What `init`, `teardown` and `status` share: the stack's identity, the AWS and
//! CircleCI connections, and the progress display.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use cci_scaler::aws;
use cci_scaler::circleci::{self, HttpLimits, RunnerApi};
use cci_scaler::config::{DEFAULT_STACK_FILE, StackFile};
use cci_scaler::provision::{Action, Clients, Ctx, Item, Names, PoolRecord, Progress};
use cci_scaler::token;

use super::{AwsArgs, Output};

#[derive(Debug, Clone, Args)]
pub struct StackArgs {
    /// Stack file (TOML); flags win over it [default: ./cci-scaler.toml if present].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Stack name: prefixes and tags every resource.
    #[arg(long, value_name = "NAME")]
    pub stack: Option<String>,
    /// Runner resource class NAMESPACE/NAME (a stack without [[pool]] tables).
    #[arg(long, value_name = "NS/NAME")]
    pub resource_class: Option<String>,
    /// CircleCI runner API base URL.
    #[arg(long, env = "CIRCLECI_RUNNER_API_URL", default_value = circleci::DEFAULT_URL, value_name = "URL")]
    pub circleci_url: String,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// `--pool`, for the commands that can act on one pool of a stack.
#[derive(Debug, Clone, Args)]
pub struct PoolArg {
    /// Act on this pool of the stack only.
    #[arg(long, value_name = "NAME")]
    pub pool: Option<String>,
}

impl StackArgs {
    /// The stack file (if any) merged under the flags.
    pub fn file(&self, flags: StackFile) -> anyhow::Result<StackFile> {
        let path = match &self.config {
            Some(p) => Some(p.clone()),
            None => Some(PathBuf::from(DEFAULT_STACK_FILE)).filter(|p| p.is_file()),
        };
        let file = match path {
            Some(p) => StackFile::load(&p)?,
            None => StackFile::default(),
        };
        let mut flags = StackFile {
            stack: self.stack.clone(),
            region: self.aws.region.clone(),
            profile: self.aws.profile.clone(),
            ..flags
        };
        flags.pool.resource_class = self.resource_class.clone();
        Ok(file.merged(flags))
    }
}

/// Connections for a stack command. The personal token comes from
/// CIRCLECI_TOKEN / CIRCLECI_CLI_TOKEN, as for `scale`.
pub async fn connect<'a>(
    aws_args: &AwsArgs,
    file: &StackFile,
    stack: &str,
    circleci_url: &str,
    dry_run: bool,
    progress: &'a dyn Progress,
    api: &'a mut Option<RunnerApi>,
) -> anyhow::Result<Ctx<'a>> {
    let personal = token::token_from_env().ok_or(token::TokenError::Missing)?;
    let options = aws::AwsOptions {
        profile: file.profile.clone(),
        region: file.region.clone(),
        endpoint_url: aws_args.endpoint_url.clone(),
    };
    let config = aws::load_config(&options).await?;
    let region = config.region().map(|r| r.to_string()).unwrap_or_default();
    *api = Some(RunnerApi::new(
        circleci_url,
        personal.clone(),
        HttpLimits::default(),
    )?);
    Ok(Ctx {
        aws: Clients::new(&config),
        region,
        names: Names::new(stack),
        circleci: api.as_ref().expect("set above"),
        scaler_token: token::scaler_token_from_env(),
        personal_token: personal,
        dry_run,
        progress,
    })
}

/// Spinners with elapsed time on a terminal; plain lines otherwise. Always on
/// stderr: stdout carries the result.
pub struct CliProgress {
    bar: Mutex<Option<(ProgressBar, Instant)>>,
    terminal: bool,
    dry_run: bool,
}

impl CliProgress {
    pub fn new(output: Output, dry_run: bool) -> CliProgress {
        CliProgress {
            bar: Mutex::new(None),
            terminal: output == Output::Text && std::io::stderr().is_terminal(),
            dry_run,
        }
    }
}

pub fn describe(item: &Item, dry_run: bool) -> String {
    let mut s = format!(
        "{:<20} {:<17} {}",
        item.action.verb(dry_run),
        item.kind,
        item.name
    );
    if let Some(id) = &item.id
        && id != &item.name
    {
        s.push_str(&format!(" ({id})"));
    }
    if let Some(d) = &item.detail {
        s.push_str(&format!(" [{d}]"));
    }
    s
}

impl Progress for CliProgress {
    fn start(&self, step: &str) {
        let mut bar = self.bar.lock().unwrap();
        if self.terminal {
            let pb = ProgressBar::new_spinner();
            pb.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            pb.set_message(step.to_string());
            pb.enable_steady_tick(Duration::from_millis(100));
            *bar = Some((pb, Instant::now()));
        } else {
            *bar = Some((ProgressBar::hidden(), Instant::now()));
        }
    }

    fn note(&self, message: &str) {
        match &*self.bar.lock().unwrap() {
            Some((pb, _)) if self.terminal => pb.set_message(message.to_string()),
            _ => eprintln!("  ... {message}"),
        }
    }

    fn done(&self, item: &Item) {
        let taken = self.bar.lock().unwrap().take();
        let elapsed = taken.as_ref().map(|(_, t)| t.elapsed()).unwrap_or_default();
        let line = format!(
            "{} ({:.1}s)",
            describe(item, self.dry_run),
            elapsed.as_secs_f64()
        );
        match taken {
            Some((pb, _)) if self.terminal => pb.finish_with_message(line),
            _ => eprintln!("{line}"),
        }
    }
}

/// Print the resources (text) or the JSON summary.
pub fn print_items(
    output: Output,
    stack: &str,
    region: &str,
    dry_run: bool,
    items: &[Item],
    extra: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let changed = items.iter().any(|i| i.action.changes());
    match output {
        Output::Json => {
            let mut v = serde_json::json!({
                "stack": stack, "region": region, "dry_run": dry_run, "changed": changed, "resources": items,
            });
            if let (Some(extra), Some(obj)) = (extra, v.as_object_mut())
                && let Some(e) = extra.as_object()
            {
                obj.extend(e.clone());
            }
            println!("{v}");
        }
        Output::Text => {
            // The resources were listed as each step finished (on stderr).
            let n = items.iter().filter(|i| i.action.changes()).count();
            if dry_run {
                println!("dry run: {n} change(s) planned, nothing was changed");
            } else if changed {
                println!("{n} change(s) made");
            } else {
                println!("no changes: everything is as configured");
            }
        }
    }
    Ok(())
}

pub fn any_foreign(items: &[Item]) -> bool {
    items.iter().any(|i| i.action == Action::Foreign)
}

/// The stack name, and the resource class if given (teardown and status find
/// it in the stack itself otherwise).
pub fn require_stack(file: &StackFile) -> anyhow::Result<(String, Option<String>)> {
    let Some(stack) = file.stack.clone() else {
        crate::usage!("no stack name: pass --stack or set `stack` in the stack file");
    };
    if let Err(e) = cci_scaler::render::validate_stack(&stack) {
        crate::usage!("{e}");
    }
    if let Some(rc) = &file.pool.resource_class
        && let Err(e) = circleci::validate_resource_class(rc)
    {
        crate::usage!("{e}");
    }
    Ok((stack, file.pool.resource_class.clone()))
}

/// The stack's pools as it recorded them (a given --resource-class wins for
/// a stack without pools), narrowed to `--pool`. A stack that recorded
/// nothing is taken as one pool of a stack without pools (its resources are
/// still found by name).
pub async fn stack_pools(
    ctx: &Ctx<'_>,
    given: Option<String>,
    pool: Option<&str>,
) -> anyhow::Result<Vec<PoolRecord>> {
    let mut pools = cci_scaler::provision::recorded_pools(ctx).await?;
    if pools.is_empty() {
        pools.push(PoolRecord {
            name: None,
            resource_class: None,
        });
    }
    if let Some(rc) = given {
        match pools.as_mut_slice() {
            [p] if p.name.is_none() => p.resource_class = Some(rc),
            _ => anyhow::bail!(
                "--resource-class is for a stack without pools; stack {} has pools {}: use --pool NAME",
                ctx.names.stack,
                pool_names(&pools)
            ),
        }
    }
    match pool {
        None => Ok(pools),
        Some(want) => pick_pool(&ctx.names.stack, &pools, want),
    }
}

/// The pool named `want` among the stack's pools, or an error listing them.
pub fn pick_pool(stack: &str, pools: &[PoolRecord], want: &str) -> anyhow::Result<Vec<PoolRecord>> {
    let picked: Vec<PoolRecord> = pools
        .iter()
        .filter(|p| p.name.as_deref() == Some(want))
        .cloned()
        .collect();
    if picked.is_empty() {
        anyhow::bail!(
            "stack {stack} has no pool named {want} (its pools: {})",
            pool_names(pools)
        );
    }
    Ok(picked)
}

pub fn pool_names(pools: &[PoolRecord]) -> String {
    pools
        .iter()
        .map(|p| {
            p.name
                .clone()
                .unwrap_or_else(|| "(one pool, unnamed)".into())
        })
        .collect::<Vec<_>>()
        .join(", ")
}
