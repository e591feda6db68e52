//! The Auto Scaling group: min 0, max N, desired 0, `$Latest` template, new
//! instances protected from scale-in, AZ rebalancing suspended. Teardown
//! terminates its instances (protection does not stop that) before deleting it.

use super::common::*;

/// The Auto Scaling group.
pub(crate) struct Group;

impl Resource for Group {
    fn step(&self) -> StepName {
        StepName::Group
    }
    fn label(&self) -> &'static str {
        "auto scaling group"
    }
    fn per_pool(&self) -> bool {
        true
    }
    fn converge<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        s: &'a StackSettings,
        f: &'a mut Found,
    ) -> BoxFuture<'a, R<Item>> {
        Box::pin(converge(ctx, s, f))
    }
    fn delete<'a>(&'a self, ctx: &'a Ctx<'a>, _t: &'a Teardown) -> BoxFuture<'a, R<Vec<Item>>> {
        Box::pin(async move { Ok(vec![delete(ctx).await?]) })
    }
}

pub(crate) async fn find(
    ctx: &Ctx<'_>,
) -> R<Option<Owned<aws_sdk_autoscaling::types::AutoScalingGroup>>> {
    let name = ctx.names.group();
    let out = ctx
        .aws
        .asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&name)
        .send()
        .await
        .map_err(aws_err("autoscaling:DescribeAutoScalingGroups", &name))?;
    Ok(out
        .auto_scaling_groups()
        .iter()
        .find(|g| g.auto_scaling_group_name() == Some(name.as_str()))
        .cloned()
        .map(|g| Owned {
            ours: group_tagged(&g, &ctx.names.stack),
            it: g,
        }))
}

async fn converge(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<Item> {
    use aws_sdk_autoscaling::types as at;
    let name = ctx.names.group();
    let asg = &ctx.aws.asg;
    let subnets = f.subnets.join(",");
    let lt = at::LaunchTemplateSpecification::builder()
        .set_launch_template_id(f.pool().launch_template_id.clone())
        .version("$Latest")
        .build();
    let found = find(ctx).await?;
    // A spot pool falling back to on demand (the scaler's tag) stays so until
    // the scaler switches it back.
    let fallback = found
        .as_ref()
        .is_some_and(|g| crate::scale::spot::fallback_active(&g.it, std::time::SystemTime::now()));
    // Several types or spot: a mixed-instances policy over the types, so one
    // type's shortage does not stop the pool. Always the whole policy.
    let mixed = (s.instance_types.len() > 1 || s.spot.is_some())
        .then(|| mixed_policy(lt.clone(), &s.instance_types, s.spot.as_ref(), fallback));
    let want_distribution = mixed
        .as_ref()
        .and_then(|m| m.instances_distribution().cloned());
    let max = s.max_instances as i32;
    let item = match found {
        Some(Owned { ours: false, .. }) => return Err(not_ours("Auto Scaling group", &name, ctx)),
        Some(Owned { it: g, .. }) => {
            f.pool_mut().group_arn = g.auto_scaling_group_arn().map(String::from);
            let mut current_subnets: Vec<&str> =
                g.vpc_zone_identifier().unwrap_or("").split(',').collect();
            current_subnets.sort();
            let template_ok = |l: &at::LaunchTemplateSpecification| {
                l.launch_template_id() == f.pool().launch_template_id.as_deref()
                    && l.version() == Some("$Latest")
            };
            let lt_ok = match (&mixed, g.mixed_instances_policy()) {
                (None, None) => g.launch_template().is_some_and(template_ok),
                (Some(_), Some(m)) => {
                    let l = m.launch_template();
                    let types: Vec<&str> = l
                        .map(|l| {
                            l.overrides()
                                .iter()
                                .filter_map(|o| o.instance_type())
                                .collect()
                        })
                        .unwrap_or_default();
                    let d = m.instances_distribution();
                    l.and_then(|l| l.launch_template_specification())
                        .is_some_and(template_ok)
                        && types
                            == s.instance_types
                                .iter()
                                .map(String::as_str)
                                .collect::<Vec<_>>()
                        && d.map(|d| {
                            (
                                d.on_demand_base_capacity(),
                                d.on_demand_percentage_above_base_capacity(),
                                d.spot_allocation_strategy().map(String::from),
                            )
                        }) == want_distribution.as_ref().map(|w| {
                            (
                                w.on_demand_base_capacity(),
                                w.on_demand_percentage_above_base_capacity(),
                                w.spot_allocation_strategy().map(String::from),
                            )
                        })
                }
                _ => false,
            };
            let suspended = g
                .suspended_processes()
                .iter()
                .any(|p| p.process_name() == Some("AZRebalance"));
            let same = g.max_size() == Some(max)
                && g.min_size() == Some(0)
                && current_subnets.join(",") == subnets
                && lt_ok
                && g.new_instances_protected_from_scale_in() == Some(true);
            if same && suspended {
                Item::new("Auto Scaling group", &name, Action::Keep)
            } else {
                if !ctx.dry_run {
                    if !same {
                        let update = asg
                            .update_auto_scaling_group()
                            .auto_scaling_group_name(&name)
                            .min_size(0)
                            .max_size(max)
                            .vpc_zone_identifier(&subnets)
                            .new_instances_protected_from_scale_in(true);
                        match mixed {
                            Some(m) => update.mixed_instances_policy(m),
                            None => update.launch_template(lt),
                        }
                        .send()
                        .await
                        .map_err(aws_err("autoscaling:UpdateAutoScalingGroup", &name))?;
                    }
                    suspend_rebalance(ctx, &name).await?;
                }
                Item::new("Auto Scaling group", &name, Action::Update)
            }
        }
        None => {
            if ctx.dry_run {
                return Ok(Item::new("Auto Scaling group", &name, Action::Create)
                    .detail(format!("min 0, max {max}, desired 0")));
            }
            let tag = |k: &str, v: &str| {
                at::Tag::builder()
                    .key(k)
                    .value(v)
                    .propagate_at_launch(true)
                    .resource_id(&name)
                    .resource_type("auto-scaling-group")
                    .build()
            };
            let create = asg
                .create_auto_scaling_group()
                .auto_scaling_group_name(&name);
            let create = match mixed {
                Some(m) => create.mixed_instances_policy(m),
                None => create.launch_template(lt),
            };
            create
                .set_tags(Some(tags(ctx).iter().map(|(k, v)| tag(k, v)).collect()))
                .min_size(0)
                .max_size(max)
                .desired_capacity(0)
                .vpc_zone_identifier(&subnets)
                .new_instances_protected_from_scale_in(true)
                .tags(tag("Name", &name))
                .send()
                .await
                .map_err(aws_err("autoscaling:CreateAutoScalingGroup", &name))?;
            suspend_rebalance(ctx, &name).await?;
            f.pool_mut().group_arn = find(ctx)
                .await?
                .and_then(|g| g.it.auto_scaling_group_arn().map(String::from));
            Item::new("Auto Scaling group", &name, Action::Create)
        }
    };
    let group_exists = !(ctx.dry_run && item.action == Action::Create);
    let (warm_changed, warm_detail) = warm_pool(ctx, s, &name, group_exists).await?;
    let mut item = item;
    if warm_changed && item.action == Action::Keep {
        item.action = Action::Update;
    }
    let mut detail = format!("min 0, max {max}");
    if let Some(w) = warm_detail {
        detail.push_str(&format!(", {w}"));
    }
    if s.instance_types.len() > 1 {
        detail.push_str(&format!(", types {}", s.instance_types.join(" ")));
    }
    if let Some(sp) = &s.spot {
        detail.push_str(&format!(
            ", spot ({}, {} on demand){}",
            sp.allocation,
            sp.on_demand_base,
            if fallback {
                ", on-demand fallback active"
            } else {
                ""
            }
        ));
    }
    let mut item = item.detail(detail);
    if let Some(a) = &f.pool().group_arn {
        item = item.id(a);
    }
    Ok(item)
}

/// The launch hook a warm pool needs: every launch waits in Pending:Wait
/// until its user data completes it (after installing, for a launch into the
/// pool; before starting the runner, for one into service).
pub const LAUNCH_HOOK: &str = "cci-scaler-launch";

/// The group's warm pool (and its launch hook) as the settings want: N
/// stopped instances, no more (`MinSize` = `MaxGroupPreparedCapacity` = N,
/// so instances that leave with decrement never grow it), none reused on
/// scale-in; or none. Returns whether anything changed, and what to say.
async fn warm_pool(
    ctx: &Ctx<'_>,
    s: &StackSettings,
    name: &str,
    group_exists: bool,
) -> R<(bool, Option<String>)> {
    use aws_sdk_autoscaling::types as at;
    let asg = &ctx.aws.asg;
    let current = if group_exists {
        asg.describe_warm_pool()
            .auto_scaling_group_name(name)
            .send()
            .await
            .map_err(aws_err("autoscaling:DescribeWarmPool", name))?
            .warm_pool_configuration()
            .cloned()
    } else {
        None
    };
    let want = s.warm_pool as i32;
    if want == 0 {
        if current.is_none() {
            return Ok((false, None));
        }
        if !ctx.dry_run {
            asg.delete_warm_pool()
                .auto_scaling_group_name(name)
                .force_delete(true)
                .send()
                .await
                .map_err(aws_err("autoscaling:DeleteWarmPool", name))?;
            delete_launch_hook(ctx, name).await?;
        }
        return Ok((true, Some("warm pool removed".into())));
    }
    let pool_ok = current.as_ref().is_some_and(|c| {
        c.min_size() == Some(want)
            && c.max_group_prepared_capacity() == Some(want)
            && c.pool_state()
                .is_none_or(|p| *p == at::WarmPoolState::Stopped)
            && c.instance_reuse_policy()
                .and_then(|r| r.reuse_on_scale_in())
                != Some(true)
    });
    let timeout = s.boot_timeout.as_secs().clamp(30, 7200) as i32;
    let hook_ok = group_exists && {
        let hooks = asg
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(name)
            .lifecycle_hook_names(LAUNCH_HOOK)
            .send()
            .await
            .map_err(aws_err("autoscaling:DescribeLifecycleHooks", name))?;
        hooks.lifecycle_hooks().iter().any(|h| {
            h.lifecycle_transition() == Some("autoscaling:EC2_INSTANCE_LAUNCHING")
                && h.heartbeat_timeout() == Some(timeout)
                && h.default_result() == Some("ABANDON")
        })
    };
    let changed = !(pool_ok && hook_ok);
    if changed && !ctx.dry_run {
        // The hook first, so no instance warms up without it.
        asg.put_lifecycle_hook()
            .auto_scaling_group_name(name)
            .lifecycle_hook_name(LAUNCH_HOOK)
            .lifecycle_transition("autoscaling:EC2_INSTANCE_LAUNCHING")
            .heartbeat_timeout(timeout)
            .default_result("ABANDON")
            .send()
            .await
            .map_err(aws_err("autoscaling:PutLifecycleHook", name))?;
        asg.put_warm_pool()
            .auto_scaling_group_name(name)
            .min_size(want)
            .max_group_prepared_capacity(want)
            .pool_state(at::WarmPoolState::Stopped)
            .instance_reuse_policy(
                at::InstanceReusePolicy::builder()
                    .reuse_on_scale_in(false)
                    .build(),
            )
            .send()
            .await
            .map_err(aws_err("autoscaling:PutWarmPool", name))?;
    }
    Ok((changed, Some(format!("warm pool of {want} stopped"))))
}

async fn delete_launch_hook(ctx: &Ctx<'_>, name: &str) -> R<()> {
    match ctx
        .aws
        .asg
        .delete_lifecycle_hook()
        .auto_scaling_group_name(name)
        .lifecycle_hook_name(LAUNCH_HOOK)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if code(&e) == "ValidationError" => Ok(()),
        Err(e) => Err(aws_err("autoscaling:DeleteLifecycleHook", name)(e)),
    }
}

pub(crate) fn mixed_policy(
    lt: aws_sdk_autoscaling::types::LaunchTemplateSpecification,
    types: &[String],
    spot: Option<&crate::config::SpotSettings>,
    fallback: bool,
) -> aws_sdk_autoscaling::types::MixedInstancesPolicy {
    use aws_sdk_autoscaling::types as at;
    let distribution = match spot {
        None => at::InstancesDistribution::builder()
            .on_demand_allocation_strategy("prioritized")
            .on_demand_base_capacity(0)
            .on_demand_percentage_above_base_capacity(100),
        Some(sp) => at::InstancesDistribution::builder()
            .on_demand_allocation_strategy("prioritized")
            .on_demand_base_capacity(sp.on_demand_base as i32)
            .on_demand_percentage_above_base_capacity(if fallback { 100 } else { 0 })
            .spot_allocation_strategy(&sp.allocation),
    };
    at::MixedInstancesPolicy::builder()
        .launch_template(
            at::LaunchTemplate::builder()
                .launch_template_specification(lt)
                .set_overrides(Some(
                    types
                        .iter()
                        .map(|t| {
                            at::LaunchTemplateOverrides::builder()
                                .instance_type(t)
                                .build()
                        })
                        .collect(),
                ))
                .build(),
        )
        .instances_distribution(distribution.build())
        .build()
}

async fn suspend_rebalance(ctx: &Ctx<'_>, name: &str) -> R<()> {
    ctx.aws
        .asg
        .suspend_processes()
        .auto_scaling_group_name(name)
        .scaling_processes("AZRebalance")
        .send()
        .await
        .map_err(aws_err("autoscaling:SuspendProcesses", name))?;
    Ok(())
}

/// Capacity to 0, terminate what is left (protection does not stop an explicit
/// terminate), wait for it, delete the group.
async fn delete(ctx: &Ctx<'_>) -> R<Item> {
    let name = ctx.names.group();
    let Some(Owned { it: g, ours }) = find(ctx).await? else {
        return Ok(Item::new("Auto Scaling group", &name, Action::Absent));
    };
    if !ours {
        return Ok(Item::new("Auto Scaling group", &name, Action::Foreign));
    }
    let ids: Vec<String> = g
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(String::from))
        .collect();
    let detail = format!("{} instance(s) terminated", ids.len());
    if ctx.dry_run {
        return Ok(Item::new("Auto Scaling group", &name, Action::Delete)
            .detail(format!("{} instance(s) to terminate", ids.len())));
    }
    let asg = &ctx.aws.asg;
    // A warm pool's stopped instances go with it.
    let warm = asg
        .describe_warm_pool()
        .auto_scaling_group_name(&name)
        .send()
        .await
        .map_err(aws_err("autoscaling:DescribeWarmPool", &name))?;
    if warm.warm_pool_configuration().is_some() {
        asg.delete_warm_pool()
            .auto_scaling_group_name(&name)
            .force_delete(true)
            .send()
            .await
            .map_err(aws_err("autoscaling:DeleteWarmPool", &name))?;
    }
    // Each instance leaves with decrement (protection does not stop an explicit
    // terminate); one that cannot (already leaving, or a race at min) is
    // terminated through EC2 once the group is at 0.
    let mut fallback = Vec::new();
    for id in &ids {
        if let Err(e) = asg
            .terminate_instance_in_auto_scaling_group()
            .instance_id(id)
            .should_decrement_desired_capacity(true)
            .send()
            .await
        {
            tracing::debug!("terminate {id} in group: {}", code(&e));
            fallback.push(id.clone());
        }
    }
    asg.update_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .min_size(0)
        .max_size(0)
        .desired_capacity(0)
        .send()
        .await
        .map_err(aws_err("autoscaling:UpdateAutoScalingGroup", &name))?;
    if !fallback.is_empty() {
        ctx.aws
            .ec2
            .terminate_instances()
            .set_instance_ids(Some(fallback))
            .send()
            .await
            .map_err(aws_err("ec2:TerminateInstances", &name))?;
    }
    if !ids.is_empty() {
        wait_terminated(ctx, &ids).await?;
    }
    asg.delete_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .force_delete(true)
        .send()
        .await
        .map_err(aws_err("autoscaling:DeleteAutoScalingGroup", &name))?;
    Ok(Item::new("Auto Scaling group", &name, Action::Delete).detail(detail))
}

async fn wait_terminated(ctx: &Ctx<'_>, ids: &[String]) -> R<()> {
    let start = std::time::Instant::now();
    loop {
        let out = ctx
            .aws
            .ec2
            .describe_instances()
            .filters(
                ec2t::Filter::builder()
                    .name("instance-id")
                    .set_values(Some(ids.to_vec()))
                    .build(),
            )
            .send()
            .await
            .map_err(aws_err("ec2:DescribeInstances", "the group's instances"))?;
        let left = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| {
                !matches!(
                    i.state().and_then(|s| s.name()),
                    Some(ec2t::InstanceStateName::Terminated)
                )
            })
            .count();
        if left == 0 {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(600) {
            return Err(ProvisionError::Invalid(format!(
                "{left} instance(s) still not terminated after 10 minutes; run teardown again later"
            )));
        }
        ctx.progress
            .note(&format!("waiting for {left} instance(s) to terminate"));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
