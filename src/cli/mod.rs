//! Command-line definitions (clap) and dispatch; one file per subcommand.

pub mod image;
pub mod init;
pub mod render;
pub mod scale;
pub mod simulate;
pub mod stack;
pub mod status;
pub mod teardown;

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
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// AWS settings, as the AWS CLI takes them. The standard credential chain
/// applies; AWS_PROFILE, AWS_REGION and AWS_ENDPOINT_URL are honoured.
#[derive(Debug, Clone, Args)]
pub struct AwsArgs {
    /// Named AWS profile (default: AWS_PROFILE, else "default").
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// AWS region (default: AWS_REGION, else the profile's region).
    #[arg(long, global = true, value_name = "REGION")]
    pub region: Option<String>,
    /// Send every AWS request to this endpoint (default: AWS_ENDPOINT_URL).
    #[arg(long, global = true, value_name = "URL")]
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
    /// Runner-ready images: bake one per pool, prune old ones.
    #[command(subcommand)]
    Image(image::ImageCommand),
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
        Command::Render(cmd) => render::run(&cli.global, cmd).await,
        Command::Simulate(args) => simulate::run(&cli.global, args).await,
        Command::Image(cmd) => image::run(&cli.global, cmd).await,
    }
}
