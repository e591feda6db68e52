//! One pool's keys: a `[[pool]]` table, `[defaults]`, or the top level of a
//! stack without `[[pool]]` tables. Each key is declared once, here; its
//! check is in [`PoolFile::check`] (or the table's own file it calls).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::bad;
use super::headroom::HeadroomFile;
use super::stack::StackWide;
use super::{ConfigError, StackSettings, headroom, overlay, runner, spot};
use crate::circleci::validate_resource_class;
use crate::render;

/// Canonical's Ubuntu 22.04 LTS (amd64), through its public SSM parameter.
pub const DEFAULT_IMAGE: &str =
    "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id";
/// The same release for arm64 (Graviton) instance types.
pub const DEFAULT_IMAGE_ARM64: &str =
    "/aws/service/canonical/ubuntu/server/22.04/stable/current/arm64/hvm/ebs-gp2/ami-id";
/// At most this many instance types in one pool.
pub const MAX_INSTANCE_TYPES: usize = 20;
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.medium";

/// The keys that may differ between pools. In `[[pool]]` and `[defaults]`
/// the runner keys sit directly in the table; at the top level of a
/// one-pool stack they sit in `[runner]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// Short name used in the pool's resource names [default: the resource
    /// class's name part]. `[[pool]]` only.
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
    /// Spare runners: by schedule (`[[headroom]]`, `[[pool.headroom]]`,
    /// `[[defaults.headroom]]`), `"auto"`, or both in one array.
    pub headroom: Option<HeadroomFile>,
    /// With `headroom = "auto"`: at most this many spares [default: 5].
    pub max_spares: Option<u32>,
    /// An EC2 Auto Scaling warm pool of this many stopped, pre-initialised
    /// instances [default: 0, none]. On-demand pools only.
    pub warm_pool: Option<u32>,
    /// `on-demand` (default) or `spot`.
    pub market: Option<String>,
    pub on_demand_base: Option<u32>,
    pub spot_allocation: Option<String>,
    pub retry_interrupted_jobs: Option<bool>,
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

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageSource {
    /// Ubuntu LTS for the pool's architecture ([`DEFAULT_IMAGE`] or
    /// [`DEFAULT_IMAGE_ARM64`]).
    Default,
    Ami(String),
    SsmParameter(String),
}

impl PoolFile {
    /// The keys this table sets, by name.
    pub(super) fn keys_set(&self) -> Vec<String> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(o)) => o
                .into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, _)| k)
                .collect(),
            _ => vec![],
        }
    }

    /// Whether this table sets `key`.
    pub(super) fn sets(&self, key: &str) -> bool {
        self.keys_set().iter().any(|k| k == key)
    }

    /// This pool's values, else `[defaults]`'s. A pool that names its
    /// instance types in one form does not inherit the other form.
    pub(super) fn with_defaults(&self, d: &PoolFile) -> PoolFile {
        let mut d = d.clone();
        if self.instance_types.is_some() {
            d.instance_type = None;
        }
        if self.instance_type.is_some() {
            d.instance_types = None;
        }
        overlay(&d, self)
    }

    /// Check every key of a resolved pool; read its setup script. An error
    /// names the key (runner keys as `runner.KEY`).
    pub(super) fn check(
        &self,
        wide: &StackWide,
        pool: Option<String>,
    ) -> Result<StackSettings, ConfigError> {
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
        let instance_types = self.instance_types()?;
        let image = self.image()?;
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
        let (headroom, auto_headroom) = headroom::check(self, max_instances)?;
        let market = spot::check(self, max_instances)?;
        let warm_pool = self.warm_pool.unwrap_or(0);
        if warm_pool > max_instances {
            return Err(bad(
                "warm_pool",
                format!(
                    "{warm_pool} is out of range: must be 0 to max_instances ({max_instances})"
                ),
            ));
        }
        if warm_pool > 0 && market.spot.is_some() {
            return Err(bad(
                "warm_pool",
                "a spot pool cannot have a warm pool: EC2 Auto Scaling refuses warm pools for groups that launch Spot Instances (warmed instances are stopped, and its spot instances cannot be); use market = \"on-demand\" for this pool, or remove warm_pool",
            ));
        }
        let runner = runner::check(self)?;
        let stack = wide.stack.clone();
        // The runner's user data must render with these values (the region is
        // checked where it is known): every runner key is checked here,
        // before any call, rather than at launch-template time.
        render::render_user_data(&render::UserDataInput {
            stack: stack.clone(),
            group: crate::names::group(&stack, pool.as_deref()),
            region: "us-east-1".into(),
            resource_class: resource_class.clone(),
            token_secret_id: crate::names::runner_token_secret(&stack, pool.as_deref()),
            idle_timeout: runner.idle_timeout.clone(),
            max_run_time: runner.max_run_time.clone(),
            working_directory: runner.working_directory.clone(),
            setup_script: runner.setup_script.clone(),
            apt_packages: runner.apt_packages.clone(),
            embedded_token: None,
            spares: !headroom.is_empty() || auto_headroom.is_some(),
            bake: false,
            spot: market.spot.is_some(),
            unsafe_retries: market.retry_interrupted_jobs,
            job_sudo: runner.job_sudo,
            warm_pool: self.warm_pool.unwrap_or(0) > 0,
        })
        .map_err(runner::render_error)?;
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
            auto_headroom,
            warm_pool,
            spot: market.spot,
            retry_interrupted_jobs: market.retry_interrupted_jobs,
            alarms: wide.alarms.clone(),
            job_role: wide.job_role.clone(),
            image,
            subnets: wide.subnets.clone(),
            key_pair: self.key_pair.clone(),
            root_volume_gb,
            imds_hop_limit,
            poll_interval: wide.poll_interval,
            poll_window: wide.poll_window,
            boot_timeout: wide.boot_timeout,
            log_retention_days: wide.log_retention_days,
            circleci_concurrency: wide.circleci_concurrency,
            usage_org: wide.usage_org.clone(),
            runner,
            warnings: market.warnings,
        })
    }

    fn instance_types(&self) -> Result<Vec<String>, ConfigError> {
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
        let key = if self.instance_type.is_some() {
            "instance_type"
        } else {
            "instance_types"
        };
        if instance_types.is_empty() || instance_types.len() > MAX_INSTANCE_TYPES {
            return Err(bad(
                key,
                format!("give 1 to {MAX_INSTANCE_TYPES} instance types"),
            ));
        }
        for (i, t) in instance_types.iter().enumerate() {
            let ok = t.len() <= 64
                && t.split_once('.').is_some_and(|(a, b)| {
                    !a.is_empty()
                        && !b.is_empty()
                        && t.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'
                        })
                });
            if !ok {
                return Err(bad(
                    key,
                    format!("instance type {t:?}: expected a name such as t3.medium"),
                ));
            }
            if instance_types[..i].contains(t) {
                return Err(bad(key, format!("instance type {t} is listed twice")));
            }
        }
        Ok(instance_types)
    }

    fn image(&self) -> Result<ImageSource, ConfigError> {
        Ok(match self.image.clone() {
            None => ImageSource::Default,
            Some(i)
                if i.starts_with("ami-")
                    && (12..=21).contains(&i.len())
                    && i[4..].chars().all(|c| c.is_ascii_hexdigit()) =>
            {
                ImageSource::Ami(i)
            }
            Some(i)
                if i.starts_with('/')
                    && i.len() <= 2048
                    && !i.contains(|c: char| c.is_whitespace() || c.is_control()) =>
            {
                ImageSource::SsmParameter(i)
            }
            Some(i) => {
                return Err(ConfigError::invalid(
                    "image",
                    format!(
                        "image {i:?}: expected an AMI id (ami-...) or an SSM parameter name (/...)"
                    ),
                ));
            }
        })
    }
}
