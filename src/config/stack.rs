//! The stack file's top level: the stack-wide keys, the one pool of a stack
//! without `[[pool]]` tables (its keys at the top level, its runner keys in
//! `[runner]`), and reading the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::alarms::{self, AlarmSettings, AlarmsFile};
use super::bad;
use super::job_role::{JobRoleFile, JobRoleSettings};
use super::pool::PoolFile;
use super::runner::RUNNER_KEYS;
use super::{ConfigError, overlay};
use crate::render::validate_stack;

/// The retentions (days) CloudWatch Logs accepts (PutRetentionPolicy).
pub const LOG_RETENTION_DAYS: &[u32] = &[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// The stack file. Every key is optional; flags override it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct StackFile {
    pub stack: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
    pub subnets: Option<Vec<String>>,
    pub poll_interval: Option<String>,
    pub poll_window: Option<String>,
    pub boot_timeout: Option<String>,
    /// How long the Lambda's log group keeps its logs, in days [30].
    pub log_retention_days: Option<u32>,
    /// CircleCI requests the scaler has in flight at once, over all pools [16].
    pub circleci_concurrency: Option<u32>,
    /// `status` warns about a pool whose image is older than this [30d].
    pub image_max_age: Option<String>,
    /// The CircleCI organisation's id: the scaler reports the queue waits
    /// jobs really had, day by day, from its usage export (none unless set).
    pub usage_org: Option<String>,
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
    /// The one pool of a stack without `[[pool]]` tables: its keys sit at
    /// the top level (its runner keys in `[runner]`).
    #[serde(flatten)]
    pub pool: PoolFile,
    /// `[runner]` as read; [`StackFile::parse`] folds it into `pool`.
    #[serde(default, skip_serializing)]
    pub runner: Option<toml::Table>,
    /// Keys no table above took; [`StackFile::parse`] refuses them.
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// The checked stack-wide values, the same in every pool's settings.
pub(super) struct StackWide {
    pub stack: String,
    pub subnets: Vec<String>,
    pub poll_interval: Duration,
    pub poll_window: Duration,
    pub boot_timeout: Duration,
    pub log_retention_days: u32,
    pub circleci_concurrency: Option<u32>,
    pub usage_org: Option<String>,
    pub alarms: AlarmSettings,
    pub job_role: Option<JobRoleSettings>,
}

/// `image_max_age` unless set.
pub const DEFAULT_IMAGE_MAX_AGE: Duration = Duration::from_secs(30 * 86_400);

impl StackFile {
    /// How old a pool's image may get before `status` warns.
    pub fn image_max_age(&self) -> Result<Duration, ConfigError> {
        let Some(s) = &self.image_max_age else {
            return Ok(DEFAULT_IMAGE_MAX_AGE);
        };
        let d = humantime::parse_duration(s).map_err(|e| {
            bad(
                "image_max_age",
                format!("{s:?}: {e} (examples: 30d, 14days)"),
            )
        })?;
        if d < Duration::from_secs(86_400) {
            return Err(bad("image_max_age", format!("{s:?}: at least 1 day")));
        }
        Ok(d)
    }

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
        let parse_error = |detail: String| ConfigError::Parse {
            path: path.display().to_string(),
            detail: detail.replace('\n', " "),
        };
        let mut file: StackFile = toml::from_str(text).map_err(|e| {
            // A key the flattened pool table refused names no key: find it.
            parse_error(name_the_key(text, e))
        })?;
        if let Some((key, _)) = file.unknown.iter().next() {
            let known = serde_json::to_value(StackFile::default())
                .ok()
                .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()))
                .unwrap_or_default();
            return Err(parse_error(format!(
                "unknown field `{key}`, expected one of {}, `runner`",
                quoted(&known)
            )));
        }
        if let Some(runner) = file.runner.take() {
            for (key, value) in runner {
                if !RUNNER_KEYS.contains(&key.as_str()) {
                    return Err(parse_error(format!(
                        "unknown field `{key}` in [runner], expected one of {}",
                        quoted(RUNNER_KEYS)
                    )));
                }
                let one = toml::Table::from_iter([(key.clone(), value)]);
                let part: PoolFile = one
                    .try_into()
                    .map_err(|e| parse_error(format!("runner.{key}: {e}")))?;
                file.pool = overlay(&file.pool, &part);
            }
        }
        if let Some(dir) = path.parent() {
            let anchor = |script: &mut Option<PathBuf>| {
                if let Some(s) = script
                    && s.is_relative()
                {
                    *s = dir.join(&*s);
                }
            };
            anchor(&mut file.pool.setup_script);
            if let Some(d) = &mut file.defaults {
                anchor(&mut d.setup_script);
            }
            for p in file.pools.iter_mut().flatten() {
                anchor(&mut p.setup_script);
            }
        }
        Ok(file)
    }

    /// Flags (given as another `StackFile`) win over the file, key by key.
    pub fn merged(self, flags: StackFile) -> StackFile {
        overlay(&self, &flags)
    }

    /// Check the stack-wide keys.
    pub(super) fn stack_wide(&self) -> Result<StackWide, ConfigError> {
        let stack = self.stack.clone().ok_or_else(|| {
            bad(
                "stack",
                "no stack name: pass --stack or set `stack` in the stack file",
            )
        })?;
        validate_stack(&stack).map_err(|e| bad("stack", e.to_string()))?;
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
        let alarms = alarms::check(self.alarms.as_ref(), self.alarm_email.as_ref())?;
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
        self.image_max_age()?;
        if let Some(org) = &self.usage_org
            && (org.trim().is_empty()
                || org.len() > 64
                || !org
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(bad(
                "usage_org",
                format!(
                    "{org:?} is not an organisation id (CircleCI: Organization Settings, Overview)"
                ),
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
        Ok(StackWide {
            stack,
            subnets,
            poll_interval,
            poll_window,
            boot_timeout,
            log_retention_days,
            circleci_concurrency: self.circleci_concurrency,
            usage_org: self.usage_org.clone(),
            alarms,
            job_role,
        })
    }
}

/// Keys as serde lists them in its errors: `a`, `b`.
fn quoted(keys: &[impl AsRef<str>]) -> String {
    keys.iter()
        .map(|k| format!("`{}`", k.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// toml reports a value of the wrong type inside the flattened pool keys
/// without its key or line: find the top-level key whose value alone fails.
fn name_the_key(text: &str, e: toml::de::Error) -> String {
    let message = e.to_string();
    if e.span().is_some_and(|s| s.start > 0) {
        return message;
    }
    let Ok(table) = text.parse::<toml::Table>() else {
        return message;
    };
    for (key, value) in &table {
        if value.is_table() || matches!(key.as_str(), "pool" | "runner") {
            continue;
        }
        let one = toml::Table::from_iter([(key.clone(), value.clone())]);
        if let Err(e) = toml::from_str::<StackFile>(&one.to_string()) {
            let line = text
                .lines()
                .position(|l| {
                    l.trim_start()
                        .strip_prefix(key.as_str())
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                })
                .map(|i| format!(" (line {})", i + 1))
                .unwrap_or_default();
            return format!("{key}{line}: {}", e.message());
        }
    }
    message
}
