//! The stack's settings: one validated struct from the stack file
//! (`cci-scaler.toml`) and flags, flags winning. Everything is checked here,
//! before any call is made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::circleci::validate_resource_class;
use crate::render::{self, parse_go_duration, validate_stack};
use crate::scale::headroom::{HeadroomSpec, Schedule};

/// Canonical's Ubuntu 22.04 LTS (amd64), through its public SSM parameter.
pub const DEFAULT_IMAGE: &str =
    "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id";
/// The same release for arm64 (Graviton) instance types.
pub const DEFAULT_IMAGE_ARM64: &str =
    "/aws/service/canonical/ubuntu/server/22.04/stable/current/arm64/hvm/ebs-gp2/ami-id";
/// At most this many instance types in one pool.
pub const MAX_INSTANCE_TYPES: usize = 20;
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.medium";
pub const DEFAULT_STACK_FILE: &str = "cci-scaler.toml";
/// The retentions (days) CloudWatch Logs accepts (PutRetentionPolicy).
pub const LOG_RETENTION_DAYS: &[u32] = &[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

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
    pub instance_types: Option<Vec<String>>,
    pub image: Option<String>,
    pub subnets: Option<Vec<String>>,
    pub key_pair: Option<String>,
    pub root_volume_gb: Option<u32>,
    pub imds_hop_limit: Option<u32>,
    pub poll_interval: Option<String>,
    pub poll_window: Option<String>,
    pub boot_timeout: Option<String>,
    /// How long the Lambda's log group keeps its logs, in days [30].
    pub log_retention_days: Option<u32>,
    /// CircleCI requests the scaler has in flight at once, over all pools [16].
    pub circleci_concurrency: Option<u32>,
    #[serde(default)]
    pub runner: RunnerFile,
    /// Spare runners by schedule (`[[headroom]]`), for a stack without pools.
    pub headroom: Option<Vec<HeadroomSpec>>,
    /// `on-demand` (default) or `spot`.
    pub market: Option<String>,
    pub on_demand_base: Option<u32>,
    pub spot_allocation: Option<String>,
    pub retry_interrupted_jobs: Option<bool>,
    /// CloudWatch alarms (`[alarms]`), for the whole stack.
    pub alarms: Option<AlarmsFile>,
    /// Shorthand for `[alarms] email`.
    pub alarm_email: Option<String>,
    /// An IAM role jobs assume with CircleCI's OIDC tokens (`[job_role]`),
    /// for the whole stack.
    pub job_role: Option<JobRoleFile>,
    /// Values every `[[pool]]` takes unless it sets its own.
    pub defaults: Option<PoolFile>,
    /// Several runner pools (`[[pool]]` tables); without them the top-level
    /// keys describe the stack's one pool.
    #[serde(rename = "pool")]
    pub pools: Option<Vec<PoolFile>>,
}

/// `[alarms]`: what pages, and when.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlarmsFile {
    /// Create the alarms [default: true].
    pub enabled: Option<bool>,
    /// An email address subscribed to the alarms' SNS topic.
    pub email: Option<String>,
    /// The scaler is failing: Lambda errors in this many of the last 5 minutes [3].
    pub scaler_errors: Option<u32>,
    /// Jobs starved: unclaimed while desired is at max for this many minutes [10].
    pub starved_minutes: Option<u32>,
    /// Boots failing: instances reaped within this many minutes [30].
    pub reaped_window_minutes: Option<u32>,
}

/// `[job_role]`: an IAM OIDC provider for the CircleCI organisation and a
/// role that only its jobs (and, if given, only these projects') may assume.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobRoleFile {
    /// The CircleCI organisation's id (Organization Settings, Overview).
    pub org_id: Option<String>,
    /// Managed policies the role gets (at least one).
    pub policy_arns: Option<Vec<String>>,
    /// Project ids whose jobs may assume it [default: every project of the
    /// organisation].
    pub projects: Option<Vec<String>>,
    /// The longest session, in seconds (3600 to 43200) [default: 3600].
    pub max_session_seconds: Option<u32>,
}

/// Checked job-role settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRoleSettings {
    pub org_id: String,
    pub policy_arns: Vec<String>,
    /// Empty: every project of the organisation.
    pub projects: Vec<String>,
    pub max_session_seconds: u32,
}

/// At most this many projects in a job role's trust policy (whose size IAM
/// limits to 2,048 characters by default).
pub const MAX_JOB_ROLE_PROJECTS: usize = 12;
/// IAM attaches at most 10 managed policies to a role by default.
pub const MAX_JOB_ROLE_POLICIES: usize = 10;

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

impl JobRoleFile {
    fn check(&self) -> Result<JobRoleSettings, ConfigError> {
        fn bad(key: &str, detail: impl Into<String>) -> ConfigError {
            ConfigError::invalid(key, detail)
        }
        let org_id = self.org_id.clone().ok_or_else(|| {
            bad(
                "job_role.org_id",
                "the CircleCI organisation id is needed (Organization Settings > Overview > Organization ID)",
            )
        })?;
        if !is_uuid(&org_id) {
            return Err(bad(
                "job_role.org_id",
                format!(
                    "{org_id:?} is not an organisation id (a UUID, as Organization Settings > Overview shows it)"
                ),
            ));
        }
        let org_id = org_id.to_ascii_lowercase();
        let policy_arns = self.policy_arns.clone().unwrap_or_default();
        if policy_arns.is_empty() || policy_arns.len() > MAX_JOB_ROLE_POLICIES {
            return Err(bad(
                "job_role.policy_arns",
                format!(
                    "give 1 to {MAX_JOB_ROLE_POLICIES} managed policy ARNs the role gets (e.g. arn:aws:iam::aws:policy/ReadOnlyAccess)"
                ),
            ));
        }
        for a in &policy_arns {
            let parts: Vec<&str> = a.split(':').collect();
            let ok = matches!(parts.as_slice(),
                [arn, partition, "iam", "", _, resource]
                    if *arn == "arn" && partition.starts_with("aws")
                        && resource.len() > 7 && resource.starts_with("policy/"));
            if !ok {
                return Err(bad(
                    "job_role.policy_arns",
                    format!("{a:?} is not a managed policy ARN (arn:aws:iam::ACCOUNT:policy/NAME)"),
                ));
            }
        }
        if policy_arns
            .iter()
            .enumerate()
            .any(|(i, a)| policy_arns[..i].contains(a))
        {
            return Err(bad("job_role.policy_arns", "a policy is listed twice"));
        }
        let projects: Vec<String> = self
            .projects
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.to_ascii_lowercase())
            .collect();
        if projects.len() > MAX_JOB_ROLE_PROJECTS {
            return Err(bad(
                "job_role.projects",
                format!(
                    "at most {MAX_JOB_ROLE_PROJECTS} projects (IAM limits the trust policy's size); leave it out to trust every project of the organisation"
                ),
            ));
        }
        if let Some(p) = projects.iter().find(|p| !is_uuid(p)) {
            return Err(bad(
                "job_role.projects",
                format!(
                    "{p:?} is not a project id (a UUID, as Project Settings > Overview shows it)"
                ),
            ));
        }
        if projects
            .iter()
            .enumerate()
            .any(|(i, p)| projects[..i].contains(p))
        {
            return Err(bad("job_role.projects", "a project is listed twice"));
        }
        let max_session_seconds = self.max_session_seconds.unwrap_or(3600);
        if !(3600..=43200).contains(&max_session_seconds) {
            return Err(bad("job_role.max_session_seconds", "3600 to 43200"));
        }
        Ok(JobRoleSettings {
            org_id,
            policy_arns,
            projects,
            max_session_seconds,
        })
    }
}

/// Checked alarm settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmSettings {
    pub enabled: bool,
    pub email: Option<String>,
    pub scaler_errors: u32,
    pub starved_minutes: u32,
    pub reaped_window_minutes: u32,
}

/// One `[[pool]]` table (or `[defaults]`): the keys that may differ between
/// pools. The runner keys sit directly in it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// Short name used in the pool's resource names [default: the resource
    /// class's name part].
    pub name: Option<String>,
    pub resource_class: Option<String>,
    pub description: Option<String>,
    pub max_instances: Option<u32>,
    pub instance_type: Option<String>,
    pub instance_types: Option<Vec<String>>,
    pub image: Option<String>,
    pub key_pair: Option<String>,
    pub root_volume_gb: Option<u32>,
    pub imds_hop_limit: Option<u32>,
    pub idle_timeout: Option<String>,
    pub max_run_time: Option<String>,
    pub working_directory: Option<String>,
    pub setup_script: Option<PathBuf>,
    pub apt_packages: Option<Vec<String>>,
    /// Spare runners by schedule (`[[pool.headroom]]`, `[[defaults.headroom]]`).
    pub headroom: Option<Vec<HeadroomSpec>>,
    pub market: Option<String>,
    pub on_demand_base: Option<u32>,
    pub spot_allocation: Option<String>,
    pub retry_interrupted_jobs: Option<bool>,
    pub job_sudo: Option<bool>,
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
    /// Password-less sudo for jobs [default: false]; it makes the
    /// instance-metadata rule advisory.
    pub job_sudo: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the stack file {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("the stack file {path} is not valid: {detail}")]
    Parse { path: String, detail: String },
    /// A value that is missing or not valid, named by its stack-file key
    /// (flags carry the same name with dashes: `max_instances`, `--max-instances`).
    #[error("{key}: {detail}")]
    Invalid { key: String, detail: String },
}

impl ConfigError {
    fn invalid(key: &str, detail: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            detail: detail.into(),
        }
    }

    /// The stack-file key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageSource {
    /// Ubuntu LTS for the pool's architecture ([`DEFAULT_IMAGE`] or
    /// [`DEFAULT_IMAGE_ARM64`]).
    Default,
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
    /// Jobs get password-less sudo (so they could lift the metadata rule).
    pub job_sudo: bool,
}

/// A spot pool's settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpotSettings {
    /// Instances always on demand.
    pub on_demand_base: u32,
    /// EC2's spot allocation strategy.
    pub allocation: String,
}

/// The spot allocation strategies Auto Scaling takes.
pub const SPOT_ALLOCATIONS: &[&str] = &[
    "price-capacity-optimized",
    "capacity-optimized",
    "capacity-optimized-prioritized",
    "lowest-price",
];

/// Validated settings of one stack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackSettings {
    pub stack: String,
    /// The pool's short name; `None` for a stack file without `[[pool]]`
    /// tables, whose resources keep the names of a one-pool stack.
    pub pool: Option<String>,
    pub resource_class: String,
    pub description: String,
    pub max_instances: u32,
    /// One or more; the first is the launch template's.
    pub instance_types: Vec<String>,
    /// Spare runners by schedule (checked).
    pub headroom: Vec<HeadroomSpec>,
    /// Spot capacity (with on-demand fallback), or on demand only.
    pub spot: Option<SpotSettings>,
    /// The runner's unsafe retries: a job on an interrupted instance starts
    /// again from the beginning on another runner.
    pub retry_interrupted_jobs: bool,
    /// The stack's alarms (the same in every pool's settings).
    pub alarms: AlarmSettings,
    /// The role jobs assume through CircleCI OIDC (the same in every pool's
    /// settings).
    pub job_role: Option<JobRoleSettings>,
    pub image: ImageSource,
    /// Empty: the default VPC's default subnets.
    pub subnets: Vec<String>,
    pub key_pair: Option<String>,
    pub root_volume_gb: u32,
    pub imds_hop_limit: u32,
    pub poll_interval: Duration,
    pub poll_window: Duration,
    pub boot_timeout: Duration,
    /// The Lambda's log group's retention (one of CloudWatch Logs' values).
    pub log_retention_days: u32,
    /// CircleCI requests in flight at once (`None`: the default).
    pub circleci_concurrency: Option<u32>,
    pub runner: RunnerSettings,
}

impl StackFile {
    pub fn load(path: &Path) -> Result<StackFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// A stack file's text; `path` names it in errors and anchors relative
    /// paths (the setup script).
    pub fn parse(text: &str, path: &Path) -> Result<StackFile, ConfigError> {
        let mut file: StackFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            detail: e.to_string().replace('\n', " "),
        })?;
        if let Some(dir) = path.parent() {
            let anchor = |script: &mut Option<PathBuf>| {
                if let Some(s) = script
                    && s.is_relative()
                {
                    *s = dir.join(&*s);
                }
            };
            anchor(&mut file.runner.setup_script);
            if let Some(d) = &mut file.defaults {
                anchor(&mut d.setup_script);
            }
            for p in file.pools.iter_mut().flatten() {
                anchor(&mut p.setup_script);
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
                job_sudo: flags.runner.job_sudo.or(self.runner.job_sudo),
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
            instance_types,
            headroom,
            market,
            on_demand_base,
            spot_allocation,
            retry_interrupted_jobs,
            alarms,
            alarm_email,
            job_role,
            defaults,
            pools,
            image,
            subnets,
            key_pair,
            root_volume_gb,
            imds_hop_limit,
            poll_interval,
            poll_window,
            boot_timeout,
            log_retention_days,
            circleci_concurrency
        )
    }

    /// Check every value; read the setup script. An error names the key.
    /// `pool`: the pool's name when the file has `[[pool]]` tables (`self`
    /// is then that pool's values, resolved by [`StackFile::pools`]).
    fn pool_settings(&self, pool: Option<String>) -> Result<StackSettings, ConfigError> {
        fn bad(key: &str, detail: impl Into<String>) -> ConfigError {
            ConfigError::invalid(key, detail)
        }
        let stack = self.stack.clone().ok_or_else(|| {
            bad(
                "stack",
                "no stack name: pass --stack or set `stack` in the stack file",
            )
        })?;
        validate_stack(&stack).map_err(|e| bad("stack", e.to_string()))?;
        let resource_class = self.resource_class.clone().ok_or_else(|| {
            bad(
                "resource_class",
                "no resource class: pass --resource-class NAMESPACE/NAME or set `resource_class`",
            )
        })?;
        validate_resource_class(&resource_class).map_err(|e| bad("resource_class", e))?;
        if let Some(d) = &self.description
            && (d.len() > 255 || d.chars().any(char::is_control))
        {
            return Err(bad(
                "description",
                "at most 255 characters, no control characters",
            ));
        }
        let max_instances = self.max_instances.unwrap_or(10);
        if !(1..=1000).contains(&max_instances) {
            return Err(bad(
                "max_instances",
                format!("{max_instances} is out of range: must be 1 to 1000"),
            ));
        }
        let instance_types = match (&self.instance_type, &self.instance_types) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "instance_types",
                    "set instance_type or instance_types, not both",
                ));
            }
            (Some(t), None) => vec![t.clone()],
            (None, Some(ts)) => ts.clone(),
            (None, None) => vec![DEFAULT_INSTANCE_TYPE.into()],
        };
        let types_key = if self.instance_type.is_some() {
            "instance_type"
        } else {
            "instance_types"
        };
        if instance_types.is_empty() || instance_types.len() > MAX_INSTANCE_TYPES {
            return Err(bad(
                types_key,
                format!("give 1 to {MAX_INSTANCE_TYPES} instance types"),
            ));
        }
        for (i, instance_type) in instance_types.iter().enumerate() {
            let it_ok = instance_type.len() <= 64
                && instance_type.split_once('.').is_some_and(|(a, b)| {
                    !a.is_empty()
                        && !b.is_empty()
                        && instance_type.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'
                        })
                });
            if !it_ok {
                return Err(bad(
                    types_key,
                    format!("instance type {instance_type:?}: expected a name such as t3.medium"),
                ));
            }
            if instance_types[..i].contains(instance_type) {
                return Err(bad(
                    types_key,
                    format!("instance type {instance_type} is listed twice"),
                ));
            }
        }
        let image = match self.image.clone().unwrap_or_default() {
            i if i.is_empty() && self.image.is_none() => ImageSource::Default,
            i if i.starts_with("ami-")
                && (12..=21).contains(&i.len())
                && i[4..].chars().all(|c| c.is_ascii_hexdigit()) =>
            {
                ImageSource::Ami(i)
            }
            i if i.starts_with('/')
                && i.len() <= 2048
                && !i.contains(|c: char| c.is_whitespace() || c.is_control()) =>
            {
                ImageSource::SsmParameter(i)
            }
            i => {
                return Err(bad(
                    "image",
                    format!(
                        "image {i:?}: expected an AMI id (ami-...) or an SSM parameter name (/...)"
                    ),
                ));
            }
        };
        let subnets = self.subnets.clone().unwrap_or_default();
        for s in &subnets {
            if !(s.starts_with("subnet-")
                && (15..=24).contains(&s.len())
                && s[7..].chars().all(|c| c.is_ascii_hexdigit()))
            {
                return Err(bad(
                    "subnets",
                    format!("subnet {s:?}: expected a subnet id (subnet-...)"),
                ));
            }
        }
        if let Some(k) = &self.key_pair
            && (k.is_empty() || k.len() > 255 || k.chars().any(|c| c.is_control() || c == '\''))
        {
            return Err(bad(
                "key_pair",
                format!("key pair {k:?}: not a key pair name"),
            ));
        }
        let root_volume_gb = self.root_volume_gb.unwrap_or(30);
        if !(8..=16384).contains(&root_volume_gb) {
            return Err(bad(
                "root_volume_gb",
                format!("root volume {root_volume_gb} GB: must be 8 to 16384"),
            ));
        }
        let imds_hop_limit = self.imds_hop_limit.unwrap_or(1);
        if !(1..=64).contains(&imds_hop_limit) {
            return Err(bad(
                "imds_hop_limit",
                format!("IMDS hop limit {imds_hop_limit}: must be 1 to 64"),
            ));
        }
        let headroom = self.headroom.clone().unwrap_or_default();
        Schedule::new(&headroom).map_err(|e| bad("headroom", e.to_string()))?;
        if let Some(h) = headroom.iter().find(|h| h.count > max_instances) {
            return Err(bad(
                "headroom",
                format!(
                    "a period wants {} spare runners, above max_instances {max_instances}",
                    h.count
                ),
            ));
        }
        let spot = match self.market.as_deref().unwrap_or("on-demand") {
            "on-demand" => {
                for (key, set) in [
                    ("on_demand_base", self.on_demand_base.is_some()),
                    ("spot_allocation", self.spot_allocation.is_some()),
                ] {
                    if set {
                        return Err(bad(key, "applies to market = \"spot\" only"));
                    }
                }
                None
            }
            "spot" => {
                let allocation = self
                    .spot_allocation
                    .clone()
                    .unwrap_or_else(|| SPOT_ALLOCATIONS[0].into());
                if !SPOT_ALLOCATIONS.contains(&allocation.as_str()) {
                    return Err(bad(
                        "spot_allocation",
                        format!("{allocation:?}: one of {}", SPOT_ALLOCATIONS.join(", ")),
                    ));
                }
                let on_demand_base = self.on_demand_base.unwrap_or(0);
                if on_demand_base > max_instances {
                    return Err(bad(
                        "on_demand_base",
                        format!("{on_demand_base} is above max_instances {max_instances}"),
                    ));
                }
                Some(SpotSettings {
                    on_demand_base,
                    allocation,
                })
            }
            other => {
                return Err(bad(
                    "market",
                    format!("{other:?}: \"on-demand\" or \"spot\""),
                ));
            }
        };
        let mut a = self.alarms.clone().unwrap_or_default();
        match (&a.email, &self.alarm_email) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "alarm_email",
                    "set alarm_email or [alarms] email, not both",
                ));
            }
            (None, Some(e)) => a.email = Some(e.clone()),
            _ => {}
        }
        if let Some(e) = &a.email
            && !(e.len() <= 254
                && e.split_once('@').is_some_and(|(l, d)| {
                    !l.is_empty() && d.contains('.') && !e.contains(char::is_whitespace)
                }))
        {
            return Err(bad(
                "alarms.email",
                format!("{e:?} is not an email address"),
            ));
        }
        let alarms = AlarmSettings {
            enabled: a.enabled.unwrap_or(true),
            email: a.email.clone(),
            scaler_errors: a.scaler_errors.unwrap_or(3),
            starved_minutes: a.starved_minutes.unwrap_or(10),
            reaped_window_minutes: a.reaped_window_minutes.unwrap_or(30),
        };
        if !(1..=5).contains(&alarms.scaler_errors) {
            return Err(bad(
                "alarms.scaler_errors",
                "1 to 5 (of the last 5 minutes)",
            ));
        }
        if !(1..=1440).contains(&alarms.starved_minutes) {
            return Err(bad("alarms.starved_minutes", "1 to 1440"));
        }
        if !(5..=1440).contains(&alarms.reaped_window_minutes) {
            return Err(bad("alarms.reaped_window_minutes", "5 to 1440"));
        }
        let job_role = self.job_role.as_ref().map(JobRoleFile::check).transpose()?;
        let dur = |key: &str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => humantime::parse_duration(s)
                .map_err(|e| bad(key, format!("{s:?}: {e} (examples: 10s, 50s, 10m)"))),
        };
        let poll_interval = dur(
            "poll_interval",
            &self.poll_interval,
            Duration::from_secs(10),
        )?;
        let poll_window = dur("poll_window", &self.poll_window, Duration::from_secs(50))?;
        let boot_timeout = dur("boot_timeout", &self.boot_timeout, Duration::from_secs(600))?;
        if poll_window > Duration::from_secs(840) {
            return Err(bad(
                "poll_window",
                "poll window must be at most 14m (the Lambda timeout is 15m)",
            ));
        }
        if poll_interval < Duration::from_secs(1) {
            return Err(bad("poll_interval", "poll interval must be at least 1s"));
        }
        if poll_interval > poll_window.max(Duration::from_secs(60)) {
            // Name the key the file (or a flag) set: the other is a default.
            let key = if self.poll_interval.is_none() {
                "poll_window"
            } else {
                "poll_interval"
            };
            return Err(bad(
                key,
                format!(
                    "the poll interval ({}) must be at most the poll window ({})",
                    humantime::format_duration(poll_interval),
                    humantime::format_duration(poll_window)
                ),
            ));
        }
        let most = crate::circleci::MAX_IN_FLIGHT_LIMIT as u32;
        if let Some(n) = self.circleci_concurrency
            && !(1..=most).contains(&n)
        {
            return Err(bad(
                "circleci_concurrency",
                format!("{n} is out of range: must be 1 to {most}"),
            ));
        }
        let log_retention_days = self.log_retention_days.unwrap_or(30);
        if !LOG_RETENTION_DAYS.contains(&log_retention_days) {
            return Err(bad(
                "log_retention_days",
                format!(
                    "{log_retention_days} is not a retention CloudWatch Logs offers: one of {}",
                    LOG_RETENTION_DAYS
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if boot_timeout < Duration::from_secs(60) || boot_timeout > Duration::from_secs(86_400) {
            return Err(bad(
                "boot_timeout",
                "boot timeout must be at least 1m and at most 24h",
            ));
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
        parse_go_duration("idle timeout", &idle_timeout)
            .map_err(|e| bad("runner.idle_timeout", e.to_string()))?;
        parse_go_duration("max run time", &max_run_time)
            .map_err(|e| bad("runner.max_run_time", e.to_string()))?;
        let setup_script = r
            .setup_script
            .as_ref()
            .map(|p| {
                std::fs::read_to_string(p).map_err(|e| {
                    bad(
                        "runner.setup_script",
                        format!("cannot read the setup script {}: {e}", p.display()),
                    )
                })
            })
            .transpose()?;
        let working_directory = r
            .working_directory
            .clone()
            .unwrap_or_else(|| render::DEFAULT_WORKING_DIRECTORY.into());
        let apt_packages = r.apt_packages.clone().unwrap_or_default();
        // The runner's user data must render with these values (the region is
        // checked where it is known): every runner key is checked here, before
        // any call, rather than at launch-template time.
        render::render_user_data(&render::UserDataInput {
            stack: stack.clone(),
            group: crate::names::group(&stack, pool.as_deref()),
            region: "us-east-1".into(),
            resource_class: resource_class.clone(),
            token_secret_id: crate::names::runner_token_secret(&stack, pool.as_deref()),
            idle_timeout: idle_timeout.clone(),
            max_run_time: max_run_time.clone(),
            working_directory: working_directory.clone(),
            setup_script: setup_script.clone(),
            apt_packages: apt_packages.clone(),
            embedded_token: None,
            spares: !headroom.is_empty(),
            bake: false,
            spot: spot.is_some(),
            unsafe_retries: self.retry_interrupted_jobs.unwrap_or(false),
            job_sudo: r.job_sudo.unwrap_or(false),
        })
        .map_err(|e| {
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
            bad(key, e.to_string())
        })?;
        Ok(StackSettings {
            description: self
                .description
                .clone()
                .unwrap_or_else(|| format!("cci-scaler stack {stack}")),
            stack,
            pool,
            resource_class,
            max_instances,
            instance_types,
            headroom,
            spot,
            retry_interrupted_jobs: self.retry_interrupted_jobs.unwrap_or(false),
            alarms,
            job_role,
            image,
            subnets,
            key_pair: self.key_pair.clone(),
            root_volume_gb,
            imds_hop_limit,
            poll_interval,
            poll_window,
            boot_timeout,
            log_retention_days,
            circleci_concurrency: self.circleci_concurrency,
            runner: RunnerSettings {
                idle_timeout,
                max_run_time,
                working_directory,
                setup_script,
                setup_script_path: r.setup_script.clone(),
                apt_packages,
                job_sudo: r.job_sudo.unwrap_or(false),
            },
        })
    }

    /// The top-level keys that describe a pool (set in a stack file without
    /// `[[pool]]` tables, or by flags), by name.
    fn top_pool_keys(&self) -> Vec<&'static str> {
        let r = &self.runner;
        [
            ("resource_class", self.resource_class.is_some()),
            ("description", self.description.is_some()),
            ("max_instances", self.max_instances.is_some()),
            ("instance_type", self.instance_type.is_some()),
            ("instance_types", self.instance_types.is_some()),
            ("image", self.image.is_some()),
            ("key_pair", self.key_pair.is_some()),
            ("root_volume_gb", self.root_volume_gb.is_some()),
            ("imds_hop_limit", self.imds_hop_limit.is_some()),
            ("headroom", self.headroom.is_some()),
            ("market", self.market.is_some()),
            ("on_demand_base", self.on_demand_base.is_some()),
            ("spot_allocation", self.spot_allocation.is_some()),
            (
                "retry_interrupted_jobs",
                self.retry_interrupted_jobs.is_some(),
            ),
            ("runner.idle_timeout", r.idle_timeout.is_some()),
            ("runner.max_run_time", r.max_run_time.is_some()),
            ("runner.working_directory", r.working_directory.is_some()),
            ("runner.setup_script", r.setup_script.is_some()),
            ("runner.apt_packages", r.apt_packages.is_some()),
            ("runner.job_sudo", r.job_sudo.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }

    /// Every pool of the stack, checked: one (named `None`) for a stack file
    /// without `[[pool]]` tables, else one per table, each resolved as its
    /// own value, else `[defaults]`, else the built-in default. An error
    /// names the key (`pool[2].max_instances`, `defaults.image`).
    pub fn pools(&self) -> Result<Vec<StackSettings>, ConfigError> {
        let Some(tables) = &self.pools else {
            if let Some(d) = &self.defaults
                && d != &PoolFile::default()
            {
                return Err(ConfigError::invalid(
                    "defaults",
                    "[defaults] applies to [[pool]] tables, and the stack file has none",
                ));
            }
            return Ok(vec![self.pool_settings(None)?]);
        };
        if let Some(key) = self.top_pool_keys().first() {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "the stack file has [[pool]] tables: set {} in [defaults] or in a [[pool]] (not at the top level, nor as a flag)",
                    key.trim_start_matches("runner.")
                ),
            ));
        }
        if tables.is_empty() {
            return Err(ConfigError::invalid("pool", "no [[pool]] table"));
        }
        let defaults = self.defaults.clone().unwrap_or_default();
        if defaults.name.is_some() || defaults.resource_class.is_some() {
            let key = if defaults.name.is_some() {
                "defaults.name"
            } else {
                "defaults.resource_class"
            };
            return Err(ConfigError::invalid(
                key,
                "set it in each [[pool]], not in [defaults]",
            ));
        }
        let mut out: Vec<StackSettings> = Vec::new();
        for (i, p) in tables.iter().enumerate() {
            let at = format!("pool[{}]", i + 1);
            let rc = p.resource_class.clone().ok_or_else(|| {
                ConfigError::invalid(
                    &format!("{at}.resource_class"),
                    "every [[pool]] needs a resource_class",
                )
            })?;
            let (name, name_key) = match &p.name {
                Some(n) => (n.clone(), format!("{at}.name")),
                None => (
                    rc.rsplit('/').next().unwrap_or_default().to_string(),
                    format!("{at}.resource_class"),
                ),
            };
            crate::names::validate_pool(&name).map_err(|e| {
                let hint = if p.name.is_none() {
                    " (the name part of its resource class): set `name`"
                } else {
                    ""
                };
                ConfigError::invalid(&name_key, format!("{e}{hint}"))
            })?;
            if let Some(other) = out.iter().find(|o| o.pool.as_deref() == Some(&name)) {
                return Err(ConfigError::invalid(
                    &name_key,
                    format!(
                        "two pools are named {name} ({} and {rc}): give one a `name`",
                        other.resource_class
                    ),
                ));
            }
            if out.iter().any(|o| o.resource_class == rc) {
                return Err(ConfigError::invalid(
                    &format!("{at}.resource_class"),
                    format!("{rc} is served by another pool already"),
                ));
            }
            // The pool's own value, else the default.
            let d = &defaults;
            let one = StackFile {
                resource_class: Some(rc),
                description: p.description.clone().or(d.description.clone()),
                max_instances: p.max_instances.or(d.max_instances),
                // A pool that names its types does not inherit the other form.
                instance_type: if p.instance_types.is_some() {
                    p.instance_type.clone()
                } else {
                    p.instance_type.clone().or(d.instance_type.clone())
                },
                instance_types: if p.instance_type.is_some() {
                    p.instance_types.clone()
                } else {
                    p.instance_types.clone().or(d.instance_types.clone())
                },
                image: p.image.clone().or(d.image.clone()),
                key_pair: p.key_pair.clone().or(d.key_pair.clone()),
                root_volume_gb: p.root_volume_gb.or(d.root_volume_gb),
                imds_hop_limit: p.imds_hop_limit.or(d.imds_hop_limit),
                headroom: p.headroom.clone().or(d.headroom.clone()),
                market: p.market.clone().or(d.market.clone()),
                on_demand_base: p.on_demand_base.or(d.on_demand_base),
                spot_allocation: p.spot_allocation.clone().or(d.spot_allocation.clone()),
                retry_interrupted_jobs: p.retry_interrupted_jobs.or(d.retry_interrupted_jobs),
                runner: RunnerFile {
                    idle_timeout: p.idle_timeout.clone().or(d.idle_timeout.clone()),
                    max_run_time: p.max_run_time.clone().or(d.max_run_time.clone()),
                    working_directory: p.working_directory.clone().or(d.working_directory.clone()),
                    setup_script: p.setup_script.clone().or(d.setup_script.clone()),
                    apt_packages: p.apt_packages.clone().or(d.apt_packages.clone()),
                    job_sudo: p.job_sudo.or(d.job_sudo),
                },
                defaults: None,
                pools: None,
                ..self.clone()
            };
            let s = one.pool_settings(Some(name)).map_err(|e| match e {
                ConfigError::Invalid { key, detail } => {
                    let short = key.trim_start_matches("runner.");
                    let from_pool = serde_json::to_value(p)
                        .ok()
                        .is_some_and(|v| !v[short].is_null());
                    let from_defaults = serde_json::to_value(d)
                        .ok()
                        .is_some_and(|v| !v[short].is_null());
                    let key = if from_pool || short == "resource_class" {
                        format!("{at}.{short}")
                    } else if from_defaults {
                        format!("defaults.{short}")
                    } else {
                        key
                    };
                    ConfigError::Invalid { key, detail }
                }
                e => e,
            })?;
            out.push(s);
        }
        Ok(out)
    }
}

/// The pools `--pool NAME` selects (all of them without it).
pub fn select_pools(
    pools: Vec<StackSettings>,
    pool: Option<&str>,
) -> Result<Vec<StackSettings>, ConfigError> {
    let Some(want) = pool else { return Ok(pools) };
    let names: Vec<String> = pools
        .iter()
        .map(|p| p.pool.clone().unwrap_or_else(|| "(none)".into()))
        .collect();
    let picked: Vec<StackSettings> = pools
        .into_iter()
        .filter(|p| p.pool.as_deref() == Some(want))
        .collect();
    if picked.is_empty() {
        return Err(ConfigError::invalid(
            "pool",
            format!(
                "no pool named {want} in the stack file (its pools: {})",
                names.join(", ")
            ),
        ));
    }
    Ok(picked)
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
        let s = file.merged(flags).pools().unwrap().remove(0);
        assert_eq!(s.max_instances, 7);
        assert_eq!(s.runner.idle_timeout, "5m");
        assert_eq!(s.image, ImageSource::Default);
        assert_eq!(s.instance_types, [DEFAULT_INSTANCE_TYPE]);
        assert_eq!(s.imds_hop_limit, 1);
        assert_eq!(s.pool, None);
        assert!(!s.runner.job_sudo, "jobs get no sudo unless asked");
    }

    #[test]
    fn pools_take_defaults_and_their_own_values() {
        let text = r#"
stack = "ci"
region = "eu-west-1"

[defaults]
max_instances = 10
idle_timeout = "1m"
job_sudo = true

[[pool]]
resource_class = "acme/linux-x64"
instance_types = ["c7i.large"]
job_sudo = false

[[pool]]
resource_class = "acme/linux-arm64"
instance_types = ["c7g.large", "m7g.large"]
max_instances = 4

[[pool]]
name = "big"
resource_class = "acme/linux_large"
instance_type = "c7i.4xlarge"
"#;
        let pools = StackFile::parse(text, Path::new("x.toml"))
            .unwrap()
            .pools()
            .unwrap();
        let names: Vec<_> = pools.iter().map(|p| p.pool.clone().unwrap()).collect();
        assert_eq!(names, ["linux-x64", "linux-arm64", "big"]);
        assert_eq!(pools[0].max_instances, 10);
        assert_eq!(pools[1].max_instances, 4);
        assert_eq!(pools[1].instance_types, ["c7g.large", "m7g.large"]);
        assert_eq!(pools[2].instance_types, ["c7i.4xlarge"]);
        assert!(pools.iter().all(|p| p.runner.idle_timeout == "1m"));
        let sudo: Vec<bool> = pools.iter().map(|p| p.runner.job_sudo).collect();
        assert_eq!(sudo, [false, true, true]);
        assert_eq!(select_pools(pools.clone(), Some("big")).unwrap().len(), 1);
        let e = select_pools(pools, Some("nope")).unwrap_err().to_string();
        assert!(
            e.contains("no pool named nope") && e.contains("linux-x64, linux-arm64, big"),
            "{e}"
        );
    }

    #[test]
    fn job_role_is_checked() {
        const ORG: &str = "8A1C3F0E-2B4D-4E6F-9A8B-7C6D5E4F3A2B";
        const POLICY: &str = "arn:aws:iam::aws:policy/ReadOnlyAccess";
        let load = |job: &str| {
            let text = format!("stack = \"ci\"\nresource_class = \"acme/x\"\n[job_role]\n{job}");
            StackFile::parse(&text, Path::new("x.toml"))
                .and_then(|f| f.pools())
                .map(|mut p| p.remove(0).job_role.unwrap())
        };
        let ok = load(&format!(
            "org_id = \"{ORG}\"\npolicy_arns = [\"{POLICY}\"]\nprojects = [\"{ORG}\"]\n"
        ))
        .unwrap();
        assert_eq!(ok.org_id, ORG.to_ascii_lowercase());
        assert_eq!(ok.projects, [ORG.to_ascii_lowercase()]);
        assert_eq!(ok.max_session_seconds, 3600);
        let many: Vec<String> = (0..13)
            .map(|i| format!("\"{:08x}-0000-4000-8000-000000000000\"", i))
            .collect();
        let cases = [
            (
                format!("policy_arns = [\"{POLICY}\"]\n"),
                "job_role.org_id: the CircleCI organisation id is needed",
            ),
            (
                format!("org_id = \"acme\"\npolicy_arns = [\"{POLICY}\"]\n"),
                "job_role.org_id: \"acme\" is not an organisation id",
            ),
            (
                format!("org_id = \"{ORG}\"\n"),
                "job_role.policy_arns: give 1 to 10",
            ),
            (
                format!("org_id = \"{ORG}\"\npolicy_arns = [\"ReadOnlyAccess\"]\n"),
                "is not a managed policy ARN",
            ),
            (
                format!("org_id = \"{ORG}\"\npolicy_arns = [\"{POLICY}\", \"{POLICY}\"]\n"),
                "listed twice",
            ),
            (
                format!("org_id = \"{ORG}\"\npolicy_arns = [\"{POLICY}\"]\nprojects = [\"web\"]\n"),
                "job_role.projects: \"web\" is not a project id",
            ),
            (
                format!(
                    "org_id = \"{ORG}\"\npolicy_arns = [\"{POLICY}\"]\nprojects = [{}]\n",
                    many.join(", ")
                ),
                "job_role.projects: at most 12",
            ),
            (
                format!(
                    "org_id = \"{ORG}\"\npolicy_arns = [\"{POLICY}\"]\nmax_session_seconds = 60\n"
                ),
                "job_role.max_session_seconds",
            ),
            (
                format!("org_id = \"{ORG}\"\npolicy_arns = [\"{POLICY}\"]\nrole = \"x\"\n"),
                "unknown field `role`",
            ),
        ];
        for (job, want) in cases {
            let e = load(&job).unwrap_err().to_string();
            assert!(e.contains(want), "{job}: {e}");
        }
    }

    #[test]
    fn bad_pools_are_refused_by_key() {
        let cases = [
            (
                "[[pool]]\nresource_class = \"a/b\"\n[[pool]]\nresource_class = \"c/b\"\n",
                "pool[2].resource_class: two pools are named b",
            ),
            (
                "[[pool]]\nresource_class = \"a/b\"\n[[pool]]\nname = \"c\"\nresource_class = \"a/b\"\n",
                "pool[2].resource_class: a/b is served by another pool",
            ),
            (
                "[[pool]]\nmax_instances = 3\n",
                "pool[1].resource_class: every [[pool]] needs",
            ),
            (
                "[[pool]]\nresource_class = \"a/B_x\"\n",
                "pool[1].resource_class: pool name \"B_x\"",
            ),
            (
                "[defaults]\nmax_instances = 0\n[[pool]]\nresource_class = \"a/b\"\n",
                "defaults.max_instances",
            ),
            (
                "[[pool]]\nresource_class = \"a/b\"\nimage = \"x\"\n",
                "pool[1].image",
            ),
            (
                "[[pool]]\nresource_class = \"a/b\"\ninstance_types = []\n",
                "pool[1].instance_types: give 1 to 20",
            ),
            (
                "[[pool]]\nresource_class = \"a/b\"\ninstance_types = [\"c7g.large\", \"c7g.large\"]\n",
                "listed twice",
            ),
            (
                "max_instances = 3\n[[pool]]\nresource_class = \"a/b\"\n",
                "max_instances: the stack file has [[pool]] tables",
            ),
            (
                "resource_class = \"a/b\"\n[defaults]\nmax_instances = 3\n",
                "defaults: [defaults] applies to [[pool]] tables",
            ),
        ];
        for (body, want) in cases {
            let text = format!("stack = \"ci\"\n{body}");
            let e = StackFile::parse(&text, Path::new("x.toml"))
                .and_then(|f| f.pools())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
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
                "max_instances: 0 is out of range",
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
            let e = f.pools().unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        assert!(
            toml::from_str::<StackFile>("stak = \"x\"").is_err(),
            "unknown keys are refused"
        );
    }
}

/// Any stack file either loads into valid settings or gives an error that
/// names one of its keys (or the required key it lacks).
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Key, how many of its candidate values (the first ones) are valid, and
    /// candidate TOML values: valid, invalid, of the wrong type.
    type Candidates = (&'static str, usize, &'static [&'static str]);

    const TOP: &[Candidates] = &[
        (
            "stack",
            2,
            &[
                "\"demo\"",
                "\"ci-2\"",
                "\"\"",
                "\"1st\"",
                "\"a b\"",
                "\"a-name-that-is-far-too-long-for-a-stack\"",
                "7",
            ],
        ),
        ("region", 1, &["\"eu-west-1\"", "3"]),
        (
            "job_role",
            1,
            &[
                "{ org_id = \"8a1c3f0e-2b4d-4e6f-9a8b-7c6d5e4f3a2b\", policy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"] }",
                "{ org_id = \"acme\", policy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"] }",
                "{ policy_arns = [] }",
                "{ org_id = \"8a1c3f0e-2b4d-4e6f-9a8b-7c6d5e4f3a2b\", policy_arns = [\"x\"], projects = [\"p\"] }",
                "{ role = 1 }",
                "3",
            ],
        ),
        ("profile", 1, &["\"ops\"", "[1]"]),
        (
            "resource_class",
            2,
            &[
                "\"acme/linux\"",
                "\"acme/linux-arm64\"",
                "\"acme\"",
                "\"a/b/c\"",
                "\"acme/li nux\"",
                "[]",
            ],
        ),
        ("description", 1, &["\"CI fleet\"", "\"tab\\there\"", "1"]),
        (
            "max_instances",
            3,
            &["1", "10", "1000", "0", "1001", "-3", "\"10\"", "4294967296"],
        ),
        (
            "instance_type",
            2,
            &[
                "\"t3.medium\"",
                "\"c7g.large\"",
                "\"big\"",
                "\"T3.LARGE\"",
                "\".x\"",
                "5",
            ],
        ),
        (
            "image",
            2,
            &[
                "\"ami-0123456789abcdef0\"",
                "\"/aws/service/x\"",
                "\"ubuntu\"",
                "\"ami-xyz\"",
                "\"/a b\"",
                "true",
            ],
        ),
        (
            "subnets",
            2,
            &[
                "[]",
                "[\"subnet-0123abcd\"]",
                "[\"sn-1\"]",
                "\"subnet-0123abcd\"",
                "[1]",
            ],
        ),
        ("key_pair", 1, &["\"ops\"", "\"\"", "\"a'b\""]),
        ("root_volume_gb", 2, &["30", "8", "7", "16385", "\"30\""]),
        ("imds_hop_limit", 2, &["1", "2", "0", "65"]),
        (
            "poll_interval",
            2,
            &["\"10s\"", "\"1s\"", "\"0s\"", "\"soon\"", "\"2h\"", "10"],
        ),
        (
            "poll_window",
            2,
            &["\"50s\"", "\"14m\"", "\"5s\"", "\"15m\"", "\"x\""],
        ),
        (
            "boot_timeout",
            1,
            &["\"10m\"", "\"30s\"", "\"2d\"", "\"never\""],
        ),
        ("log_retention_days", 2, &["30", "7", "31", "0", "\"30\""]),
        ("circleci_concurrency", 2, &["16", "1", "0", "257", "\"8\""]),
        ("stak", 0, &["\"typo\""]),
    ];
    const RUNNER: &[Candidates] = &[
        (
            "idle_timeout",
            3,
            &[
                "\"1m\"",
                "\"90s\"",
                "\"1h30m\"",
                "\"soon\"",
                "\"1 m\"",
                "\"\"",
                "60",
            ],
        ),
        ("max_run_time", 1, &["\"5h\"", "\"5x\""]),
        ("job_sudo", 2, &["true", "false", "\"yes\""]),
        (
            "working_directory",
            1,
            &[
                "\"/var/opt/w\"",
                "\"relative\"",
                "\"/a/../b\"",
                "\"/\"",
                "\"/a b\"",
            ],
        ),
        ("setup_script", 0, &["\"missing-setup.sh\""]),
        (
            "apt_packages",
            2,
            &[
                "[\"jq\"]",
                "[]",
                "[\"Bad\"]",
                "[\"a\"]",
                "[\"jq; rm\"]",
                "\"jq\"",
            ],
        ),
        ("idle", 0, &["\"1m\""]),
    ];

    /// Per key: absent, or the index of one of its values (valid ones likelier).
    fn picks(table: &'static [Candidates]) -> Vec<BoxedStrategy<Option<usize>>> {
        table
            .iter()
            .map(|(key, valid, values)| {
                let any = 0..values.len();
                let value = if *valid > 0 {
                    prop_oneof![3 => 0..*valid, 1 => any].boxed()
                } else {
                    any.boxed()
                };
                let present = match (*key, *valid) {
                    ("stack" | "resource_class", _) => 0.9,
                    ("name", _) => 0.3,
                    (_, 0) => 0.03,
                    _ => 0.5,
                };
                prop::option::weighted(present, value).boxed()
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn any_stack_file_loads_or_names_a_key(top in picks(TOP), runner in picks(RUNNER)) {
            let mut text = String::new();
            let mut keys: Vec<String> = Vec::new();
            for ((key, _, values), pick) in TOP.iter().zip(&top) {
                if let Some(i) = pick {
                    text.push_str(&format!("{key} = {}\n", values[*i]));
                    keys.push(key.to_string());
                }
            }
            if runner.iter().any(Option::is_some) {
                text.push_str("[runner]\n");
            }
            for ((key, _, values), pick) in RUNNER.iter().zip(&runner) {
                if let Some(i) = pick {
                    text.push_str(&format!("{key} = {}\n", values[*i]));
                    keys.push(format!("runner.{key}"));
                }
            }
            let path = Path::new("/nonexistent-folder/cci-scaler.toml");
            match StackFile::parse(&text, path).and_then(|f| f.pools()).map(|mut p| p.remove(0)) {
                Ok(s) => {
                    prop_assert!(keys.iter().any(|k| k == "stack"));
                    prop_assert!(keys.iter().any(|k| k == "resource_class"));
                    prop_assert!((1..=1000).contains(&s.max_instances));
                    prop_assert!((8..=16384).contains(&s.root_volume_gb));
                    prop_assert!((1..=64).contains(&s.imds_hop_limit));
                    prop_assert!(s.poll_interval >= Duration::from_secs(1));
                    prop_assert!(s.poll_interval <= s.poll_window.max(Duration::from_secs(60)));
                    prop_assert!(s.poll_window <= Duration::from_secs(840));
                    prop_assert!(s.boot_timeout >= Duration::from_secs(60));
                }
                Err(ConfigError::Invalid { key, detail }) => {
                    let required_missing =
                        matches!(key.as_str(), "stack" | "resource_class") && !keys.contains(&key);
                    // A key inside a table that was given (`job_role.org_id`).
                    let in_table = keys.iter().any(|k| key.starts_with(&format!("{k}.")));
                    prop_assert!(
                        keys.contains(&key) || required_missing || in_table,
                        "error names {key:?} ({detail}), not a key of:\n{text}"
                    );
                }
                Err(ConfigError::Parse { detail, .. }) => {
                    prop_assert!(
                        keys.iter().any(|k| detail.contains(k.rsplit('.').next().unwrap())),
                        "parse error names no key ({detail}):\n{text}"
                    );
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }

        #[test]
        fn any_pool_file_loads_or_names_a_key(
            top in picks(POOL_TOP),
            defaults in prop::option::weighted(0.5, picks(POOL)),
            pools in prop::collection::vec(picks(POOL), 1..4),
        ) {
            let mut text = String::new();
            let mut keys: Vec<String> = Vec::new();
            let mut table = |text: &mut String, prefix: &str, cand: &[Candidates], picks: &[Option<usize>]| {
                for ((key, _, values), pick) in cand.iter().zip(picks) {
                    if let Some(i) = pick {
                        text.push_str(&format!("{key} = {}\n", values[*i]));
                        keys.push(format!("{prefix}{key}"));
                    }
                }
            };
            table(&mut text, "", POOL_TOP, &top);
            if let Some(d) = &defaults {
                text.push_str("[defaults]\n");
                table(&mut text, "defaults.", POOL, d);
            }
            for (i, p) in pools.iter().enumerate() {
                text.push_str("[[pool]]\n");
                table(&mut text, &format!("pool[{}].", i + 1), POOL, p);
            }
            let path = Path::new("/nonexistent-folder/cci-scaler.toml");
            match StackFile::parse(&text, path).and_then(|f| f.pools()) {
                Ok(all) => {
                    prop_assert_eq!(all.len(), pools.len());
                    for (i, s) in all.iter().enumerate() {
                        let rc_key = format!("pool[{}].resource_class", i + 1);
                        prop_assert!(keys.contains(&rc_key));
                        prop_assert!(s.pool.is_some());
                        prop_assert!((1..=1000).contains(&s.max_instances));
                        prop_assert!(!s.instance_types.is_empty());
                    }
                    let mut names: Vec<_> = all.iter().map(|s| s.pool.clone()).collect();
                    names.dedup();
                    prop_assert_eq!(names.len(), all.len());
                }
                Err(ConfigError::Invalid { key, detail }) => {
                    let required_missing = (key == "stack"
                        || (key.starts_with("pool[") && key.ends_with(".resource_class")))
                        && !keys.contains(&key);
                    prop_assert!(
                        keys.contains(&key) || required_missing,
                        "error names {key:?} ({detail}), not a key of:\n{text}"
                    );
                }
                Err(ConfigError::Parse { detail, .. }) => {
                    prop_assert!(
                        keys.iter().any(|k| detail.contains(k.rsplit('.').next().unwrap())),
                        "parse error names no key ({detail}):\n{text}"
                    );
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }

    /// Top-level keys of a stack file with pools: stack-wide ones, and a
    /// pool key that belongs in [defaults] instead.
    const POOL_TOP: &[Candidates] = &[
        ("stack", 1, &["\"ci\"", "\"1st\""]),
        ("poll_interval", 1, &["\"10s\"", "\"0s\""]),
        ("max_instances", 0, &["5"]),
    ];
    /// Keys of a [[pool]] table (and [defaults]).
    const POOL: &[Candidates] = &[
        (
            "name",
            2,
            &["\"small\"", "\"arm\"", "\"Big\"", "\"a_b\"", "3"],
        ),
        (
            "resource_class",
            3,
            &[
                "\"acme/linux-x64\"",
                "\"acme/linux-arm64\"",
                "\"acme/linux-large\"",
                "\"acme/Linux_X\"",
                "\"acme\"",
            ],
        ),
        ("max_instances", 2, &["4", "10", "0", "\"4\""]),
        (
            "instance_types",
            2,
            &[
                "[\"c7g.large\"]",
                "[\"c7i.large\", \"m7i.large\"]",
                "[]",
                "[\"big\"]",
                "[\"c7g.large\", \"c7g.large\"]",
                "\"c7g.large\"",
            ],
        ),
        ("instance_type", 1, &["\"t3.medium\"", "\"x\""]),
        ("image", 1, &["\"ami-0123456789abcdef0\"", "\"ubuntu\""]),
        ("idle_timeout", 1, &["\"1m\"", "\"soon\""]),
        ("apt_packages", 1, &["[\"jq\"]", "[\"Bad\"]"]),
        ("typo", 0, &["1"]),
    ];
}
