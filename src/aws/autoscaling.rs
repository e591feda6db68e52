//! The Auto Scaling group as the scaling core needs it: describe, launch times
//! (from EC2, only for the instances that need them), set desired, terminate.

use std::collections::HashMap;
use std::time::SystemTime;

use aws_config::SdkConfig;

use super::AwsError;
use crate::scale::decide::{GroupState, Instance, LaunchFailure, Lifecycle};
use crate::scale::{ApiError, GroupApi};

#[derive(Clone, Debug)]
pub struct AsgClient {
    autoscaling: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
    /// `headroom = "auto"`'s demand records, and the last text of each this
    /// client read or wrote: a scaler polling in one process (the Lambda,
    /// with its reserved concurrency of 1, or `scale`'s loop) reads a
    /// record once, not at every poll.
    ssm: aws_sdk_ssm::Client,
    records: std::sync::Arc<std::sync::Mutex<HashMap<String, String>>>,
    region: String,
}

impl AsgClient {
    pub fn new(config: &SdkConfig) -> Self {
        AsgClient {
            autoscaling: aws_sdk_autoscaling::Client::new(config),
            ec2: aws_sdk_ec2::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
            records: Default::default(),
            region: config
                .region()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "the configured region".into()),
        }
    }
}

fn count(v: Option<i32>) -> u32 {
    v.unwrap_or(0).max(0) as u32
}

/// DescribeAutoScalingGroups takes at most this many names a call.
const NAMES_PER_CALL: usize = 100;

fn group_state(name: &str, group: &aws_sdk_autoscaling::types::AutoScalingGroup) -> GroupState {
    let instances = group
        .instances()
        .iter()
        .filter_map(|i| {
            Some(Instance {
                id: i.instance_id()?.to_string(),
                lifecycle: Lifecycle::parse(i.lifecycle_state()?.as_str()),
                launch_time: None,
                protected_from_scale_in: i.protected_from_scale_in().unwrap_or(false),
            })
        })
        .collect();
    GroupState {
        name: name.to_string(),
        min: count(group.min_size()),
        max: count(group.max_size()),
        desired: count(group.desired_capacity()),
        instances,
        spot: crate::scale::spot::is_spot_group(group).then(|| crate::scale::spot::SpotState {
            on_demand_percentage: count(
                group
                    .mixed_instances_policy()
                    .and_then(|m| m.instances_distribution())
                    .and_then(|d| d.on_demand_percentage_above_base_capacity()),
            ),
            fallback_until: crate::scale::spot::fallback_until(group),
            failures: Vec::new(),
        }),
        spare_until: group
            .tags()
            .iter()
            .find(|t| t.key() == Some(crate::scale::SPARE_UNTIL_TAG))
            .and_then(|t| t.value())
            .and_then(|v| v.parse().ok()),
    }
}

/// The calls, with AWS's errors; [`GroupApi`] gives them to the core.
impl AsgClient {
    pub fn region(&self) -> String {
        self.region.clone()
    }

    pub async fn describe(&self, name: &str) -> Result<GroupState, AwsError> {
        self.describe_many(&[name.to_string()])
            .await?
            .remove(name)
            .ok_or_else(|| AwsError::GroupNotFound {
                name: name.to_string(),
                region: self.region.clone(),
            })
    }

    pub async fn describe_many(
        &self,
        names: &[String],
    ) -> Result<HashMap<String, GroupState>, AwsError> {
        let mut groups = HashMap::new();
        for chunk in names.chunks(NAMES_PER_CALL) {
            let what = if chunk.len() == 1 {
                chunk[0].clone()
            } else {
                format!("{} groups", chunk.len())
            };
            let mut pages = self
                .autoscaling
                .describe_auto_scaling_groups()
                .set_auto_scaling_group_names(Some(chunk.to_vec()))
                .max_records(NAMES_PER_CALL as i32)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| {
                    AwsError::call("autoscaling:DescribeAutoScalingGroups", what.clone(), &e)
                })?;
                for g in page.auto_scaling_groups() {
                    if let Some(name) = g.auto_scaling_group_name()
                        && chunk.iter().any(|n| n == name)
                    {
                        groups.insert(name.to_string(), group_state(name, g));
                    }
                }
            }
        }
        Ok(groups)
    }

    pub async fn launch_times(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, SystemTime>, AwsError> {
        launch_times(&self.ec2, ids).await
    }

    pub async fn set_desired(&self, name: &str, desired: u32) -> Result<(), AwsError> {
        self.autoscaling
            .set_desired_capacity()
            .auto_scaling_group_name(name)
            .desired_capacity(desired as i32)
            .honor_cooldown(false)
            .send()
            .await
            .map_err(|e| AwsError::call("autoscaling:SetDesiredCapacity", name, &e))?;
        Ok(())
    }

    pub async fn launch_failures(&self, name: &str) -> Result<Vec<LaunchFailure>, AwsError> {
        let out = self
            .autoscaling
            .describe_scaling_activities()
            .auto_scaling_group_name(name)
            .max_records(20)
            .send()
            .await
            .map_err(|e| AwsError::call("autoscaling:DescribeScalingActivities", name, &e))?;
        Ok(out
            .activities()
            .iter()
            .filter(|a| {
                crate::scale::spot::is_spot_shortage(
                    a.status_code().map(|s| s.as_str()).unwrap_or(""),
                    a.status_message().unwrap_or(""),
                )
            })
            .filter_map(|a| {
                Some(LaunchFailure {
                    time: SystemTime::try_from(*a.start_time()?).ok()?,
                    reason: a.status_message().unwrap_or("").to_string(),
                })
            })
            .collect())
    }

    pub async fn set_on_demand(
        &self,
        name: &str,
        percentage: u32,
        until: Option<u64>,
    ) -> Result<(), AwsError> {
        use aws_sdk_autoscaling::types as at;
        let out = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .map_err(|e| AwsError::call("autoscaling:DescribeAutoScalingGroups", name, &e))?;
        let policy = out
            .auto_scaling_groups()
            .first()
            .and_then(|g| g.mixed_instances_policy())
            .cloned()
            .ok_or_else(|| AwsError::GroupNotFound {
                name: name.to_string(),
                region: self.region.clone(),
            })?;
        // The whole policy, with the percentage changed.
        let d = policy
            .instances_distribution()
            .cloned()
            .unwrap_or_else(|| at::InstancesDistribution::builder().build());
        let d = at::InstancesDistribution::builder()
            .set_on_demand_allocation_strategy(d.on_demand_allocation_strategy().map(String::from))
            .set_on_demand_base_capacity(d.on_demand_base_capacity())
            .on_demand_percentage_above_base_capacity(percentage as i32)
            .set_spot_allocation_strategy(d.spot_allocation_strategy().map(String::from))
            .set_spot_instance_pools(d.spot_instance_pools())
            .set_spot_max_price(d.spot_max_price().map(String::from))
            .build();
        // The template by id or by name, never both (the API refuses both).
        let template = policy.launch_template().map(|l| {
            let spec = l.launch_template_specification().map(|s| {
                let b = at::LaunchTemplateSpecification::builder()
                    .set_version(s.version().map(String::from));
                match s.launch_template_id() {
                    Some(id) => b.launch_template_id(id).build(),
                    None => b
                        .set_launch_template_name(s.launch_template_name().map(String::from))
                        .build(),
                }
            });
            at::LaunchTemplate::builder()
                .set_launch_template_specification(spec)
                .set_overrides(Some(l.overrides().to_vec()))
                .build()
        });
        let policy = at::MixedInstancesPolicy::builder()
            .set_launch_template(template)
            .instances_distribution(d)
            .build();
        self.autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(name)
            .mixed_instances_policy(policy)
            .send()
            .await
            .map_err(|e| AwsError::call("autoscaling:UpdateAutoScalingGroup", name, &e))?;
        let tag = at::Tag::builder()
            .resource_id(name)
            .resource_type("auto-scaling-group")
            .key(crate::scale::spot::FALLBACK_TAG)
            .value(until.map(|u| u.to_string()).unwrap_or_default())
            .propagate_at_launch(false)
            .build();
        match until {
            Some(_) => self
                .autoscaling
                .create_or_update_tags()
                .tags(tag)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| AwsError::call("autoscaling:CreateOrUpdateTags", name, &e)),
            None => self
                .autoscaling
                .delete_tags()
                .tags(tag)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| AwsError::call("autoscaling:DeleteTags", name, &e)),
        }
    }

    pub async fn interrupted(
        &self,
        name: &str,
        since: SystemTime,
    ) -> Result<Vec<(String, SystemTime)>, AwsError> {
        interrupted_instances(&self.ec2, name, since).await
    }

    pub async fn tag(&self, name: &str, key: &str, value: &str) -> Result<(), AwsError> {
        let tag = aws_sdk_autoscaling::types::Tag::builder()
            .resource_id(name)
            .resource_type("auto-scaling-group")
            .key(key)
            .value(value)
            .propagate_at_launch(true)
            .build();
        self.autoscaling
            .create_or_update_tags()
            .tags(tag)
            .send()
            .await
            .map_err(|e| AwsError::call("autoscaling:CreateOrUpdateTags", name, &e))?;
        Ok(())
    }

    /// A pool's demand record (an SSM parameter); `None`: not written yet.
    pub async fn load_record(&self, name: &str) -> Result<Option<String>, AwsError> {
        if let Some(text) = self.cached_record(name) {
            return Ok(Some(text));
        }
        match self.ssm.get_parameter().name(name).send().await {
            Ok(out) => {
                let text = out.parameter().and_then(|p| p.value()).map(str::to_string);
                if let Some(t) = &text {
                    self.cache_record(name, t);
                }
                Ok(text)
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_not_found()) =>
            {
                Ok(None)
            }
            Err(e) => Err(AwsError::call("ssm:GetParameter", name, &e)),
        }
    }

    /// Save a pool's demand record (standard tier while it fits in 4 KB).
    pub async fn save_record(&self, name: &str, text: &str) -> Result<(), AwsError> {
        self.ssm
            .put_parameter()
            .name(name)
            .value(text)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .tier(aws_sdk_ssm::types::ParameterTier::IntelligentTiering)
            .overwrite(true)
            .send()
            .await
            .map_err(|e| AwsError::call("ssm:PutParameter", name, &e))?;
        self.cache_record(name, text);
        Ok(())
    }

    fn cached_record(&self, name: &str) -> Option<String> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.get(name).cloned()
    }

    fn cache_record(&self, name: &str, text: &str) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.insert(name.to_string(), text.to_string());
    }

    pub async fn terminate(&self, instance_id: &str, decrement: bool) -> Result<(), AwsError> {
        self.autoscaling
            .terminate_instance_in_auto_scaling_group()
            .instance_id(instance_id)
            .should_decrement_desired_capacity(decrement)
            .send()
            .await
            .map_err(|e| {
                AwsError::call(
                    "autoscaling:TerminateInstanceInAutoScalingGroup",
                    instance_id,
                    &e,
                )
            })?;
        Ok(())
    }
}

/// The core's port: the same calls, their errors in the core's terms.
impl GroupApi for AsgClient {
    fn region(&self) -> String {
        AsgClient::region(self)
    }
    async fn describe(&self, name: &str) -> Result<GroupState, ApiError> {
        Ok(AsgClient::describe(self, name).await?)
    }
    async fn describe_many(
        &self,
        names: &[String],
    ) -> Result<HashMap<String, GroupState>, ApiError> {
        Ok(AsgClient::describe_many(self, names).await?)
    }
    async fn launch_times(&self, ids: &[String]) -> Result<HashMap<String, SystemTime>, ApiError> {
        Ok(AsgClient::launch_times(self, ids).await?)
    }
    async fn set_desired(&self, name: &str, desired: u32) -> Result<(), ApiError> {
        Ok(AsgClient::set_desired(self, name, desired).await?)
    }
    async fn terminate(&self, instance_id: &str, decrement: bool) -> Result<(), ApiError> {
        Ok(AsgClient::terminate(self, instance_id, decrement).await?)
    }
    async fn launch_failures(&self, name: &str) -> Result<Vec<LaunchFailure>, ApiError> {
        Ok(AsgClient::launch_failures(self, name).await?)
    }
    async fn set_on_demand(
        &self,
        name: &str,
        percentage: u32,
        until: Option<u64>,
    ) -> Result<(), ApiError> {
        Ok(AsgClient::set_on_demand(self, name, percentage, until).await?)
    }
    async fn interrupted(
        &self,
        name: &str,
        since: SystemTime,
    ) -> Result<Vec<(String, SystemTime)>, ApiError> {
        Ok(AsgClient::interrupted(self, name, since).await?)
    }
    async fn tag(&self, name: &str, key: &str, value: &str) -> Result<(), ApiError> {
        Ok(AsgClient::tag(self, name, key, value).await?)
    }
    async fn load_record(&self, name: &str) -> Result<Option<String>, ApiError> {
        Ok(AsgClient::load_record(self, name).await?)
    }
    async fn save_record(&self, name: &str, text: &str) -> Result<(), ApiError> {
        Ok(AsgClient::save_record(self, name, text).await?)
    }
}

/// Launch times of the given instances; ids not found are left out.
pub async fn launch_times(
    ec2: &aws_sdk_ec2::Client,
    ids: &[String],
) -> Result<HashMap<String, SystemTime>, AwsError> {
    let mut times = HashMap::new();
    // A filter, not InstanceIds: an id that just vanished is no error.
    let filter = aws_sdk_ec2::types::Filter::builder()
        .name("instance-id")
        .set_values(Some(ids.to_vec()))
        .build();
    let mut pages = ec2
        .describe_instances()
        .filters(filter)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            AwsError::call(
                "ec2:DescribeInstances",
                format!("{} instance(s)", ids.len()),
                &e,
            )
        })?;
        for inst in page.reservations().iter().flat_map(|r| r.instances()) {
            if let (Some(id), Some(t)) = (inst.instance_id(), inst.launch_time())
                && let Ok(t) = SystemTime::try_from(*t)
            {
                times.insert(id.to_string(), t);
            }
        }
    }
    Ok(times)
}

/// A group's instances tagged interrupted by their spot watcher since
/// `since` (terminated ones stay visible for about an hour).
pub async fn interrupted_instances(
    ec2: &aws_sdk_ec2::Client,
    name: &str,
    since: SystemTime,
) -> Result<Vec<(String, SystemTime)>, AwsError> {
    use aws_sdk_ec2::types::Filter;
    let out = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:aws:autoscaling:groupName")
                .values(name)
                .build(),
        )
        .filters(
            Filter::builder()
                .name("tag-key")
                .values(crate::scale::spot::INTERRUPTED_TAG)
                .build(),
        )
        .send()
        .await
        .map_err(|e| AwsError::call("ec2:DescribeInstances", name, &e))?;
    let mut found = Vec::new();
    for i in out.reservations().iter().flat_map(|r| r.instances()) {
        let at = i
            .tags()
            .iter()
            .find(|t| t.key() == Some(crate::scale::spot::INTERRUPTED_TAG))
            .and_then(|t| t.value())
            .and_then(|v| v.parse::<u64>().ok())
            .map(crate::scale::spot::from_epoch);
        if let (Some(id), Some(at)) = (i.instance_id(), at)
            && at >= since
        {
            found.push((id.to_string(), at));
        }
    }
    Ok(found)
}
