//! The stack's settings: one validated struct from the stack file
//! (`cci-scaler.toml`) and flags, flags winning. Everything is checked here,
//! before any call is made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::circleci::validate_resource_class;
use crate::render::{self, parse_go_duration, validate_stack};

/// Canonical's Ubuntu 22.04 LTS (amd64), through its public SSM parameter.
pub const DEFAULT_IMAGE: &str =
    "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id";
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.medium";
pub const DEFAULT_STACK_FILE: &str = "cci-scaler.toml";

/// The stack file. Every key is optional; flags override it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StackFile {
    pub stack: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
    pub resource_class: Option<String>,
    pub description: Option<String>,
    pub max_instances: Option<u32>,
    pub instance_type: Option<String>,
    pub image: Option<String>,
    pub subnets: Option<Vec<String>>,
    pub key_pair: Option<String>,
    pub root_volume_gb: Option<u32>,
    pub imds_hop_limit: Option<u32>,
    pub poll_interval: Option<String>,
    pub poll_window: Option<String>,
    pub boot_timeout: Option<String>,
    #[serde(default)]
    pub runner: RunnerFile,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunnerFile {
    pub idle_timeout: Option<String>,
    pub max_run_time: Option<String>,
    pub working_directory: Option<String>,
    /// Relative to the stack file's folder.
    pub setup_script: Option<PathBuf>,
    pub apt_packages: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the stack file {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("the stack file {path} is not valid: {detail}")]
    Parse { path: String, detail: String },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageSource {
    Ami(String),
    SsmParameter(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunnerSettings {
    pub idle_timeout: String,
    pub max_run_time: String,
    pub working_directory: String,
    #[serde(skip)]
    pub setup_script: Option<String>,
    pub setup_script_path: Option<PathBuf>,
    pub apt_packages: Vec<String>,
}

/// Validated settings of one stack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackSettings {
    pub stack: String,
    pub resource_class: String,
    pub description: String,
    pub max_instances: u32,
    pub instance_type: String,
    pub image: ImageSource,
    /// Empty: the default VPC's default subnets.
    pub subnets: Vec<String>,
    pub key_pair: Option<String>,
    pub root_volume_gb: u32,
    pub imds_hop_limit: u32,
    pub poll_interval: Duration,
    pub poll_window: Duration,
    pub boot_timeout: Duration,
    pub runner: RunnerSettings,
}

impl StackFile {
    pub fn load(path: &Path) -> Result<StackFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        let mut file: StackFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            detail: e.to_string().replace('\n', " "),
        })?;
        if let (Some(script), Some(dir)) = (&file.runner.setup_script, path.parent()) {
            if script.is_relative() {
                file.runner.setup_script = Some(dir.join(script));
            }
        }
        Ok(file)
    }

    /// Flags (given as another `StackFile`) win over the file.
    pub fn merged(self, flags: StackFile) -> StackFile {
        macro_rules! pick {
            ($($f:ident),*) => { StackFile { $($f: flags.$f.or(self.$f),)* runner: RunnerFile {
                idle_timeout: flags.runner.idle_timeout.or(self.runner.idle_timeout),
                max_run_time: flags.runner.max_run_time.or(self.runner.max_run_time),
                working_directory: flags.runner.working_directory.or(self.runner.working_directory),
                setup_script: flags.runner.setup_script.or(self.runner.setup_script),
                apt_packages: flags.runner.apt_packages.or(self.runner.apt_packages),
            } } };
        }
        pick!(
            stack,
            region,
            profile,
            resource_class,
            description,
            max_instances,
            instance_type,
            image,
            subnets,
            key_pair,
            root_volume_gb,
            imds_hop_limit,
            poll_interval,
            poll_window,
            boot_timeout
        )
    }

    /// Check every value; read the setup script.
    pub fn settings(&self) -> Result<StackSettings, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(m);
        let stack = self.stack.clone().ok_or_else(|| {
            bad("no stack name: pass --stack or set `stack` in the stack file".into())
        })?;
        validate_stack(&stack).map_err(|e| bad(e.to_string()))?;
        let resource_class = self.resource_class.clone().ok_or_else(|| {
            bad(
                "no resource class: pass --resource-class NAMESPACE/NAME or set `resource_class`"
                    .into(),
            )
        })?;
        validate_resource_class(&resource_class).map_err(bad)?;
        let max_instances = self.max_instances.unwrap_or(10);
        if !(1..=1000).contains(&max_instances) {
            return Err(bad(format!(
                "max instances {max_instances}: must be 1 to 1000"
            )));
        }
        let instance_type = self
            .instance_type
            .clone()
            .unwrap_or_else(|| DEFAULT_INSTANCE_TYPE.into());
        let it_ok = instance_type.split_once('.').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && instance_type
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        });
        if !it_ok {
            return Err(bad(format!(
                "instance type {instance_type:?}: expected a name such as t3.medium"
            )));
        }
        let image = match self.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into()) {
            i if i.starts_with("ami-")
                && i.len() >= 12
                && i[4..].chars().all(|c| c.is_ascii_hexdigit()) =>
            {
                ImageSource::Ami(i)
            }
            i if i.starts_with('/') && i.len() <= 2048 && !i.contains(char::is_whitespace) => {
                ImageSource::SsmParameter(i)
            }
            i => {
                return Err(bad(format!(
                    "image {i:?}: expected an AMI id (ami-...) or an SSM parameter name (/...)"
                )));
            }
        };
        let subnets = self.subnets.clone().unwrap_or_default();
        for s in &subnets {
            if !(s.starts_with("subnet-")
                && s.len() > 7
                && s[7..].chars().all(|c| c.is_ascii_hexdigit()))
            {
                return Err(bad(format!(
                    "subnet {s:?}: expected a subnet id (subnet-...)"
                )));
            }
        }
        if let Some(k) = &self.key_pair {
            if k.is_empty() || k.len() > 255 || k.chars().any(|c| c.is_control() || c == '\'') {
                return Err(bad(format!("key pair {k:?}: not a key pair name")));
            }
        }
        let root_volume_gb = self.root_volume_gb.unwrap_or(30);
        if !(8..=16384).contains(&root_volume_gb) {
            return Err(bad(format!(
                "root volume {root_volume_gb} GB: must be 8 to 16384"
            )));
        }
        let imds_hop_limit = self.imds_hop_limit.unwrap_or(1);
        if !(1..=64).contains(&imds_hop_limit) {
            return Err(bad(format!(
                "IMDS hop limit {imds_hop_limit}: must be 1 to 64"
            )));
        }
        let dur =
            |name: &str, v: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
                match v {
                    None => Ok(default),
                    Some(s) => humantime::parse_duration(s)
                        .map_err(|e| bad(format!("{name} {s:?}: {e} (examples: 10s, 50s, 10m)"))),
                }
            };
        let poll_interval = dur(
            "poll interval",
            &self.poll_interval,
            Duration::from_secs(10),
        )?;
        let poll_window = dur("poll window", &self.poll_window, Duration::from_secs(50))?;
        let boot_timeout = dur("boot timeout", &self.boot_timeout, Duration::from_secs(600))?;
        if poll_interval < Duration::from_secs(1)
            || poll_interval > poll_window.max(Duration::from_secs(60))
        {
            return Err(bad(
                "poll interval must be at least 1s and at most the poll window".into(),
            ));
        }
        if poll_window > Duration::from_secs(840) {
            return Err(bad(
                "poll window must be at most 14m (the Lambda timeout is 15m)".into(),
            ));
        }
        if boot_timeout < Duration::from_secs(60) {
            return Err(bad("boot timeout must be at least 1m".into()));
        }
        let r = &self.runner;
        let idle_timeout = r
            .idle_timeout
            .clone()
            .unwrap_or_else(|| render::DEFAULT_IDLE_TIMEOUT.into());
        let max_run_time = r
            .max_run_time
            .clone()
            .unwrap_or_else(|| render::DEFAULT_MAX_RUN_TIME.into());
        parse_go_duration("idle timeout", &idle_timeout).map_err(|e| bad(e.to_string()))?;
        parse_go_duration("max run time", &max_run_time).map_err(|e| bad(e.to_string()))?;
        let setup_script = r
            .setup_script
            .as_ref()
            .map(|p| {
                std::fs::read_to_string(p)
                    .map_err(|e| bad(format!("cannot read the setup script {}: {e}", p.display())))
            })
            .transpose()?;
        Ok(StackSettings {
            description: self
                .description
                .clone()
                .unwrap_or_else(|| format!("cci-scaler stack {stack}")),
            stack,
            resource_class,
            max_instances,
            instance_type,
            image,
            subnets,
            key_pair: self.key_pair.clone(),
            root_volume_gb,
            imds_hop_limit,
            poll_interval,
            poll_window,
            boot_timeout,
            runner: RunnerSettings {
                idle_timeout,
                max_run_time,
                working_directory: r
                    .working_directory
                    .clone()
                    .unwrap_or_else(|| render::DEFAULT_WORKING_DIRECTORY.into()),
                setup_script,
                setup_script_path: r.setup_script.clone(),
                apt_packages: r.apt_packages.clone().unwrap_or_default(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> StackFile {
        StackFile {
            stack: Some("demo".into()),
            resource_class: Some("acme/linux".into()),
            ..StackFile::default()
        }
    }

    #[test]
    fn defaults_and_flags_win() {
        let file: StackFile = toml::from_str(
            "stack = \"demo\"\nresource_class = \"acme/linux\"\nmax_instances = 4\n[runner]\nidle_timeout = \"5m\"\n",
        )
        .unwrap();
        let flags = StackFile {
            max_instances: Some(7),
            ..StackFile::default()
        };
        let s = file.merged(flags).settings().unwrap();
        assert_eq!(s.max_instances, 7);
        assert_eq!(s.runner.idle_timeout, "5m");
        assert_eq!(s.image, ImageSource::SsmParameter(DEFAULT_IMAGE.into()));
        assert_eq!(s.instance_type, DEFAULT_INSTANCE_TYPE);
        assert_eq!(s.imds_hop_limit, 1);
    }

    #[test]
    fn bad_values_are_refused() {
        let cases: Vec<(StackFile, &str)> = vec![
            (
                StackFile {
                    stack: None,
                    ..base()
                },
                "no stack name",
            ),
            (
                StackFile {
                    max_instances: Some(0),
                    ..base()
                },
                "max instances 0",
            ),
            (
                StackFile {
                    instance_type: Some("big".into()),
                    ..base()
                },
                "instance type",
            ),
            (
                StackFile {
                    image: Some("ubuntu".into()),
                    ..base()
                },
                "image",
            ),
            (
                StackFile {
                    subnets: Some(vec!["sn-1".into()]),
                    ..base()
                },
                "subnet",
            ),
            (
                StackFile {
                    root_volume_gb: Some(2),
                    ..base()
                },
                "root volume",
            ),
            (
                StackFile {
                    imds_hop_limit: Some(0),
                    ..base()
                },
                "hop limit",
            ),
            (
                StackFile {
                    poll_interval: Some("0s".into()),
                    ..base()
                },
                "poll interval",
            ),
            (
                StackFile {
                    resource_class: Some("x".into()),
                    ..base()
                },
                "invalid resource class",
            ),
        ];
        for (f, want) in cases {
            let e = f.settings().unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        assert!(
            toml::from_str::<StackFile>("stak = \"x\"").is_err(),
            "unknown keys are refused"
        );
    }
}
