//! The stack's settings: one validated struct per pool from the stack file
//! (`cci-scaler.toml`) and flags, flags winning. Everything is checked here,
//! before any call is made. One file per table: [`stack`] (the top level and
//! the stack-wide keys), [`pool`] (`[[pool]]`, `[defaults]`, the one-pool
//! top level), [`runner`], [`headroom`], [`spot`], [`alarms`], [`job_role`].

mod alarms;
mod headroom;
mod job_role;
mod pool;
mod runner;
mod spot;
mod stack;

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use alarms::{AlarmSettings, AlarmsFile};
pub use job_role::{JobRoleFile, JobRoleSettings, MAX_JOB_ROLE_POLICIES, MAX_JOB_ROLE_PROJECTS};
pub use pool::{
    DEFAULT_IMAGE, DEFAULT_IMAGE_ARM64, DEFAULT_INSTANCE_TYPE, ImageSource, MAX_INSTANCE_TYPES,
    PoolFile,
};
pub use runner::{RUNNER_KEYS, RunnerSettings};
pub use spot::{SPOT_ALLOCATIONS, SpotSettings};
pub use stack::{LOG_RETENTION_DAYS, StackFile};

use crate::scale::auto_headroom::AutoSpares;
use crate::scale::headroom::HeadroomSpec;

pub const DEFAULT_STACK_FILE: &str = "cci-scaler.toml";

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
    pub(crate) fn invalid(key: &str, detail: impl Into<String>) -> ConfigError {
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
    /// `headroom = "auto"`: spares sized from the pool's own demand.
    pub auto_headroom: Option<AutoSpares>,
    /// Stopped, pre-initialised instances in the group's warm pool (0: none).
    pub warm_pool: u32,
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
    /// `usage_org`: the organisation whose usage export gives the real
    /// queue waits the scaler reports (the same in every pool's settings).
    pub usage_org: Option<String>,
    pub runner: RunnerSettings,
    /// Keys that were set but do not apply (named), for the CLI to print.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl StackSettings {
    /// Whether the pool has spares (headroom periods or auto): its instances
    /// read their spare-until tag at boot.
    pub fn has_spares(&self) -> bool {
        !self.headroom.is_empty() || self.auto_headroom.is_some()
    }

    /// The pool's `headroom = "auto"`, as its scaler runs it.
    pub fn auto_scale(&self) -> Option<crate::scale::AutoHeadroom> {
        self.auto_headroom.map(|a| crate::scale::AutoHeadroom {
            max_spares: a.max_spares,
            record: crate::names::demand_record(&self.stack, self.pool.as_deref()),
            poll_s: self.poll_interval.as_secs().max(1),
        })
    }
}

impl StackFile {
    /// Every pool of the stack, checked: one (named `None`) for a stack file
    /// without `[[pool]]` tables, else one per table, each resolved as its
    /// own value, else `[defaults]`, else the built-in default. An error
    /// names the key (`pool[2].max_instances`, `defaults.image`).
    pub fn pools(&self) -> Result<Vec<StackSettings>, ConfigError> {
        let wide = self.stack_wide()?;
        let Some(tables) = &self.pools else {
            if let Some(d) = &self.defaults
                && d != &PoolFile::default()
            {
                return Err(ConfigError::invalid(
                    "defaults",
                    "[defaults] applies to [[pool]] tables, and the stack file has none",
                ));
            }
            if self.pool.name.is_some() {
                return Err(ConfigError::invalid(
                    "name",
                    "names a [[pool]] table; a stack file without them has one pool, named after its stack",
                ));
            }
            return self.pool.check(&wide, None).map(|s| vec![s]);
        };
        if let Some(key) = self.pool.keys_set().first() {
            let key = if RUNNER_KEYS.contains(&key.as_str()) {
                format!("runner.{key}")
            } else {
                key.clone()
            };
            return Err(ConfigError::invalid(
                &key,
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
        for key in ["name", "resource_class"] {
            if defaults.sets(key) {
                return Err(ConfigError::invalid(
                    &format!("defaults.{key}"),
                    "set it in each [[pool]], not in [defaults]",
                ));
            }
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
            let s = p
                .with_defaults(&defaults)
                .check(&wide, Some(name))
                .map_err(|e| match e {
                    // Name the table the value came from.
                    ConfigError::Invalid { key, detail } => {
                        let short = key.trim_start_matches("runner.");
                        let key = if p.sets(short) || short == "resource_class" {
                            format!("{at}.{short}")
                        } else if defaults.sets(short) {
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

/// A value that is missing or not valid, named by its key.
fn bad(key: &str, detail: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, detail)
}

/// `top`'s keys that are set, over `base`'s: both as their serialised
/// tables (a key left out, or `None`, is not set).
fn overlay<T: Serialize + DeserializeOwned + Clone>(base: &T, top: &T) -> T {
    let merged = match (serde_json::to_value(base), serde_json::to_value(top)) {
        (Ok(serde_json::Value::Object(mut b)), Ok(serde_json::Value::Object(t))) => {
            for (k, v) in t {
                if !v.is_null() {
                    b.insert(k, v);
                }
            }
            serde_json::from_value(serde_json::Value::Object(b)).ok()
        }
        _ => None,
    };
    // Both came from values of T: the merge reads back.
    merged.unwrap_or_else(|| base.clone())
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
mod props;
#[cfg(test)]
mod tests;
