//! Command-line definitions (clap) and dispatch; one file per subcommand.

pub mod docs;
pub mod history;
pub mod image;
pub mod init;
pub mod render;
pub mod scale;
pub mod simulate;
pub mod stack;
pub mod status;
pub mod teardown;
pub mod usage;

use std::time::Duration;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use cci_scaler::aws::AwsOptions;

#[derive(Debug, Parser)]
#[command(
    name = "cci-scaler",
    version,
    about = "Provision and operate autoscaling fleets of CircleCI self-hosted machine runners on AWS",
    after_help = "Exit status: 0 success (or nothing to do), 1 an error (the message says what to check), 2 bad usage."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Output format of results on stdout.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// More diagnostics on stderr (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// AWS settings, as the AWS CLI takes them (on the commands that call AWS).
/// The standard credential chain applies; AWS_PROFILE, AWS_REGION and
/// AWS_ENDPOINT_URL are honoured.
#[derive(Debug, Clone, Args)]
pub struct AwsArgs {
    /// Named AWS profile (default: AWS_PROFILE, else "default").
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// AWS region (default: AWS_REGION, else the profile's region).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Send every AWS request to this endpoint (default: AWS_ENDPOINT_URL).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
}

impl AwsArgs {
    pub fn options(&self) -> AwsOptions {
        AwsOptions {
            profile: self.profile.clone(),
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the whole stack (or converge it to the settings), idempotently.
    Init(Box<init::InitArgs>),
    /// Run (or repeat) one step of init: resource-class, secrets, iam,
    /// launch-template, group, lambda, schedule or alarms.
    Step(Box<init::StepArgs>),
    /// Remove everything the stack created, and nothing else.
    Teardown(teardown::TeardownArgs),
    /// The stack's resources, the queue, the group's capacity and runners.
    Status(status::StatusArgs),
    /// Size the Auto Scaling group to the CircleCI runner queue (the Lambda's core).
    Scale(scale::ScaleArgs),
    /// Render a file the stack uses (the runner user-data script).
    #[command(subcommand)]
    Render(render::RenderCommand),
    /// Replay a day of CI jobs through our policy and the tutorial's: waits and cost.
    Simulate(simulate::SimulateArgs),
    /// Your organisation's job runs from CircleCI's usage export, as a CSV
    /// `simulate --jobs` replays.
    History(history::HistoryArgs),
    /// Who used the fleet and how long their jobs waited, from `history`'s
    /// file: cost per class and project, real queue waits per class and day.
    Usage(usage::UsageArgs),
    /// Runner-ready images: bake one per pool, prune old ones.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    Completions(docs::CompletionsArgs),
    /// Print the man page (or write every page with --out-dir).
    Man(docs::ManArgs),
}

/// Flags that do not go together, or a value out of range that clap could
/// not check: exit status 2, as for clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Fail with a [`UsageError`].
#[macro_export]
macro_rules! usage {
    ($($t:tt)*) => { return Err($crate::cli::UsageError(format!($($t)*)).into()) };
}

/// Print what the stack file sets that does not apply (named), once per pool.
pub fn warn(pools: &[cci_scaler::config::StackSettings]) {
    for p in pools {
        for w in &p.warnings {
            match &p.pool {
                Some(name) => eprintln!("warning: pool {name}: {w}"),
                None => eprintln!("warning: {w}"),
            }
        }
    }
}

/// A duration flag: `500ms`, `10s`, `5m`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 5m)"))
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init(args) => init::run(&cli.global, *args).await,
        Command::Step(args) => init::run_step(&cli.global, *args).await,
        Command::Teardown(args) => teardown::run(&cli.global, args).await,
        Command::Status(args) => status::run(&cli.global, args).await,
        Command::Scale(args) => scale::run(&cli.global, args).await,
        Command::Render(cmd) => render::run(cmd).await,
        Command::Simulate(args) => simulate::run(&cli.global, args).await,
        Command::History(args) => history::run(&cli.global, args).await,
        Command::Usage(args) => usage::run(&cli.global, args).await,
        Command::Image(cmd) => image::run(&cli.global, cmd).await,
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
    }
}
