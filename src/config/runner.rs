//! The runner's keys: in `[runner]` at the top level of a one-pool stack,
//! directly in `[[pool]]` and `[defaults]`. An error names them
//! `runner.KEY`; a pool's error names them `pool[N].KEY`.

use std::path::PathBuf;

use serde::Serialize;

use super::ConfigError;
use super::bad;
use super::pool::PoolFile;
use crate::render::{self, parse_go_duration};

/// The keys `[runner]` takes (each is a key of [`PoolFile`]).
pub const RUNNER_KEYS: &[&str] = &[
    "idle_timeout",
    "max_run_time",
    "working_directory",
    "setup_script",
    "apt_packages",
    "job_sudo",
];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunnerSettings {
    pub idle_timeout: String,
    pub max_run_time: String,
    pub working_directory: String,
    #[serde(skip)]
    pub setup_script: Option<String>,
    pub setup_script_path: Option<PathBuf>,
    pub apt_packages: Vec<String>,
    /// Jobs get password-less sudo (so they could lift the metadata rule).
    pub job_sudo: bool,
}

/// Check the runner keys and read the setup script.
pub(super) fn check(p: &PoolFile) -> Result<RunnerSettings, ConfigError> {
    let idle_timeout = p
        .idle_timeout
        .clone()
        .unwrap_or_else(|| render::DEFAULT_IDLE_TIMEOUT.into());
    let max_run_time = p
        .max_run_time
        .clone()
        .unwrap_or_else(|| render::DEFAULT_MAX_RUN_TIME.into());
    parse_go_duration("idle timeout", &idle_timeout)
        .map_err(|e| bad("runner.idle_timeout", e.to_string()))?;
    parse_go_duration("max run time", &max_run_time)
        .map_err(|e| bad("runner.max_run_time", e.to_string()))?;
    let setup_script = p
        .setup_script
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path).map_err(|e| {
                bad(
                    "runner.setup_script",
                    format!("cannot read the setup script {}: {e}", path.display()),
                )
            })
        })
        .transpose()?;
    Ok(RunnerSettings {
        idle_timeout,
        max_run_time,
        working_directory: p
            .working_directory
            .clone()
            .unwrap_or_else(|| render::DEFAULT_WORKING_DIRECTORY.into()),
        setup_script,
        setup_script_path: p.setup_script.clone(),
        apt_packages: p.apt_packages.clone().unwrap_or_default(),
        job_sudo: p.job_sudo.unwrap_or(false),
    })
}

/// The key a user-data rendering error is about.
pub(super) fn render_error(e: render::RenderError) -> ConfigError {
    let key = match &e {
        render::RenderError::Invalid { field, .. } => match *field {
            "working directory" => "runner.working_directory",
            "apt package" => "runner.apt_packages",
            "idle timeout" => "runner.idle_timeout",
            "max run time" => "runner.max_run_time",
            "resource class" => "resource_class",
            "stack name" | "group name" | "runner-token secret id" => "stack",
            _ => "runner",
        },
        _ => "runner.setup_script",
    };
    ConfigError::invalid(key, e.to_string())
}
