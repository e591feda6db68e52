//! `cci-scaler render user-data`: print (or write) the runner boot script.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use secrecy::SecretString;

use cci_scaler::names;
use cci_scaler::render::{self, UserDataInput};

/// Environment variable holding the runner token for `--embed-token`.
pub const RUNNER_TOKEN_VAR: &str = "CIRCLECI_RUNNER_TOKEN";

#[derive(Debug, Subcommand)]
pub enum RenderCommand {
    /// The user-data script every runner instance runs at first boot.
    UserData(UserDataArgs),
}

/// Runner settings shared by `render user-data` and `init`.
#[derive(Debug, Clone, Args)]
pub struct RunnerArgs {
    /// Runner idle timeout: an idle runner exits (and its instance leaves) after this.
    #[arg(long, default_value = render::DEFAULT_IDLE_TIMEOUT, value_name = "DURATION")]
    pub idle_timeout: String,
    /// Longest a job may run; the service's stop timeout follows it.
    #[arg(long, default_value = render::DEFAULT_MAX_RUN_TIME, value_name = "DURATION")]
    pub max_run_time: String,
    /// Runner working directory.
    #[arg(long, default_value = render::DEFAULT_WORKING_DIRECTORY, value_name = "PATH")]
    pub working_directory: String,
    /// Script that prepares the job environment (e.g. installs Node.js); runs
    /// before the runner starts, and its failure stops the boot.
    #[arg(long, value_name = "FILE")]
    pub setup_script: Option<PathBuf>,
    /// Extra Debian package to install (repeatable).
    #[arg(long = "apt-package", value_name = "NAME")]
    pub apt_packages: Vec<String>,
    /// Give jobs password-less sudo (the instance-metadata rule is then advisory).
    #[arg(long)]
    pub job_sudo: bool,
}

#[derive(Debug, Args)]
pub struct UserDataArgs {
    /// AWS region the instances run in (default: AWS_REGION, else AWS_DEFAULT_REGION).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Stack name.
    #[arg(long, value_name = "NAME")]
    pub stack: String,
    /// Runner resource class NAMESPACE/NAME.
    #[arg(long, value_name = "NS/NAME")]
    pub resource_class: String,
    /// Auto Scaling group (default: the stack's).
    #[arg(long, value_name = "NAME")]
    pub asg: Option<String>,
    /// Secret holding the runner token (default: the stack's).
    #[arg(long, value_name = "ID")]
    pub token_secret_id: Option<String>,
    #[command(flatten)]
    pub runner: RunnerArgs,
    /// Put the runner token itself into the script, read from CIRCLECI_RUNNER_TOKEN
    /// (the tutorial's way; anyone who can read the launch template can read it).
    #[arg(long)]
    pub embed_token: bool,
    /// Write to this file (mode 0600 with --embed-token) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Region for rendering: the flag, else the environment, as the AWS CLI does.
pub fn region(flag: Option<&String>) -> anyhow::Result<String> {
    flag.cloned()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .filter(|r| !r.is_empty())
        .context("no AWS region: pass --region or set AWS_REGION")
}

pub fn read_setup_script(path: &Option<PathBuf>) -> anyhow::Result<Option<String>> {
    path.as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the setup script {}", p.display()))
        })
        .transpose()
}

pub async fn run(cmd: RenderCommand) -> anyhow::Result<ExitCode> {
    let RenderCommand::UserData(args) = cmd;
    let embedded_token = if args.embed_token {
        let token = std::env::var(RUNNER_TOKEN_VAR)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .with_context(|| {
                format!("--embed-token needs the runner token in {RUNNER_TOKEN_VAR}")
            })?;
        eprintln!(
            "warning: --embed-token puts the runner token into the user data; anyone who can \
             describe the launch template or read the instance's user data can read it"
        );
        Some(SecretString::from(token.trim().to_string()))
    } else {
        None
    };
    let input = UserDataInput {
        group: args
            .asg
            .clone()
            .unwrap_or_else(|| names::group(&args.stack, None)),
        token_secret_id: args
            .token_secret_id
            .clone()
            .unwrap_or_else(|| names::runner_token_secret(&args.stack, None)),
        stack: args.stack,
        region: region(args.region.as_ref())?,
        resource_class: args.resource_class,
        idle_timeout: args.runner.idle_timeout,
        max_run_time: args.runner.max_run_time,
        working_directory: args.runner.working_directory,
        setup_script: read_setup_script(&args.runner.setup_script)?,
        apt_packages: args.runner.apt_packages,
        spares: false,
        bake: false,
        spot: false,
        unsafe_retries: false,
        job_sudo: args.runner.job_sudo,
        warm_pool: false,
        embedded_token,
    };
    let script = render::render_user_data(&input)?;
    if script.len() > render::USER_DATA_LIMIT {
        let packed = render::pack_user_data(&script)?;
        eprintln!(
            "note: the script is {} bytes, over EC2's {}-byte user-data limit: init gives it to EC2 \
             gzip-compressed ({} bytes), which cloud-init reads; to use it elsewhere, gzip it too",
            script.len(),
            render::USER_DATA_LIMIT,
            packed.len()
        );
    }
    match &args.out {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(script.as_bytes())
                .and_then(|_| out.flush())
                .context("writing to stdout")?;
        }
        Some(path) => {
            write_atomically(path, script.as_bytes(), input.embedded_token.is_some())?;
            eprintln!("wrote {} ({} bytes)", path.display(), script.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Write beside the target, then rename: a failure leaves nothing half-written.
fn write_atomically(path: &std::path::Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("--out {} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}
