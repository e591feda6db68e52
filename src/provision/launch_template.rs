//! The runners' launch template: image, type, encrypted root volume, IMDSv2,
//! the instance profile and security group, the rendered user data. A changed
//! setting makes a new version carrying the full data.

use base64::Engine;

use super::common::*;

/// The launch template.
pub(crate) struct LaunchTemplate;

impl Resource for LaunchTemplate {
    fn step(&self) -> StepName {
        StepName::LaunchTemplate
    }
    fn label(&self) -> &'static str {
        "launch template"
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

pub(crate) async fn find(ctx: &Ctx<'_>) -> R<Option<Owned<ec2t::LaunchTemplate>>> {
    let name = ctx.names.launch_template();
    let out = ctx
        .aws
        .ec2
        .describe_launch_templates()
        .filters(
            ec2t::Filter::builder()
                .name("launch-template-name")
                .values(&name)
                .build(),
        )
        .send()
        .await
        .map_err(aws_err("ec2:DescribeLaunchTemplates", &name))?;
    Ok(out
        .launch_templates()
        .iter()
        .find(|t| t.launch_template_name() == Some(name.as_str()))
        .cloned()
        .map(|t| Owned {
            ours: ec2_tagged(t.tags(), &ctx.names.stack),
            it: t,
        }))
}

/// The launch template data, complete (every version carries all of it).
fn template_data(
    ctx: &Ctx<'_>,
    s: &StackSettings,
    user_data: &[u8],
    f: &Found,
) -> ec2t::RequestLaunchTemplateData {
    let name = ctx.names.launch_template();
    let spec = |rt: ec2t::ResourceType| {
        ec2t::LaunchTemplateTagSpecificationRequest::builder()
            .resource_type(rt)
            .set_tags(Some(ec2_tags(ctx, &name)))
            .build()
    };
    ec2t::RequestLaunchTemplateData::builder()
        .image_id(&f.pool().image)
        .instance_type(ec2t::InstanceType::from(s.instance_types[0].as_str()))
        .set_key_name(s.key_pair.clone())
        .user_data(base64::engine::general_purpose::STANDARD.encode(user_data))
        .iam_instance_profile(
            ec2t::LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                .name(ctx.names.runner_role())
                .build(),
        )
        .set_security_group_ids(f.security_group.clone().map(|g| vec![g]))
        .metadata_options(
            ec2t::LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .http_tokens(ec2t::LaunchTemplateHttpTokensState::Required)
                .http_endpoint(ec2t::LaunchTemplateInstanceMetadataEndpointState::Enabled)
                .http_put_response_hop_limit(s.imds_hop_limit as i32)
                // Spares read their cci-scaler:spare-until tag at boot.
                .set_instance_metadata_tags(
                    s.has_spares()
                        .then_some(ec2t::LaunchTemplateInstanceMetadataTagsState::Enabled),
                )
                .build(),
        )
        .instance_initiated_shutdown_behavior(ec2t::ShutdownBehavior::Terminate)
        .block_device_mappings(
            ec2t::LaunchTemplateBlockDeviceMappingRequest::builder()
                .device_name(&f.pool().root_device)
                .ebs(
                    ec2t::LaunchTemplateEbsBlockDeviceRequest::builder()
                        .volume_size(s.root_volume_gb as i32)
                        .volume_type(ec2t::VolumeType::Gp3)
                        .encrypted(true)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .tag_specifications(spec(ec2t::ResourceType::Instance))
        .tag_specifications(spec(ec2t::ResourceType::Volume))
        .build()
}

/// What we compare between the wanted data and the template's latest version.
/// The request and response types differ but share their accessors.
macro_rules! fingerprint {
    ($d:expr) => {{
        let d = $d;
        let m = d.metadata_options();
        let ebs = d.block_device_mappings().first().and_then(|b| b.ebs());
        json!({
            "image": d.image_id(), "type": d.instance_type().map(|t| t.as_str()), "key": d.key_name(),
            "user_data": d.user_data(), "profile": d.iam_instance_profile().and_then(|p| p.name()),
            "sg": d.security_group_ids(), "tokens": m.and_then(|m| m.http_tokens()).map(|t| t.as_str()),
            "hops": m.and_then(|m| m.http_put_response_hop_limit()),
            "metadata_tags": m.and_then(|m| m.instance_metadata_tags()).map(|t| t.as_str()),
            "shutdown": d.instance_initiated_shutdown_behavior().map(|b| b.as_str()),
            "volume": ebs.and_then(|e| e.volume_size()), "encrypted": ebs.and_then(|e| e.encrypted()),
        })
    }};
}

async fn converge(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<Item> {
    let name = ctx.names.launch_template();
    let ec2 = &ctx.aws.ec2;
    // The script, or gzip-compressed when it is over EC2's limit.
    let user_data = crate::render::pack_user_data(&f.pool().user_data)?;
    let data = template_data(ctx, s, &user_data, f);
    match find(ctx).await? {
        Some(Owned { ours: false, .. }) => Err(not_ours("launch template", &name, ctx)),
        Some(Owned { it: t, .. }) => {
            let id = t.launch_template_id().unwrap_or_default().to_string();
            f.pool_mut().launch_template_id = Some(id.clone());
            let latest = ec2
                .describe_launch_template_versions()
                .launch_template_id(&id)
                .versions("$Latest")
                .send()
                .await
                .map_err(aws_err("ec2:DescribeLaunchTemplateVersions", &name))?;
            let current = latest
                .launch_template_versions()
                .first()
                .and_then(|v| v.launch_template_data())
                .map(|d| fingerprint!(d));
            if current.as_ref() == Some(&fingerprint!(&data)) {
                let v = t.latest_version_number().unwrap_or(1);
                return Ok(Item::new("launch template", &name, Action::Keep)
                    .id(id)
                    .detail(format!("version {v}")));
            }
            if ctx.dry_run {
                return Ok(Item::new("launch template", &name, Action::Update)
                    .id(id)
                    .detail("a new version"));
            }
            // The full data in every version (never a partial one on a source).
            let out = ec2
                .create_launch_template_version()
                .launch_template_id(&id)
                .launch_template_data(data)
                .version_description(format!("cci-scaler {}", env!("CARGO_PKG_VERSION")))
                .send()
                .await
                .map_err(aws_err("ec2:CreateLaunchTemplateVersion", &name))?;
            let v = out
                .launch_template_version()
                .and_then(|v| v.version_number())
                .unwrap_or_default();
            ec2.modify_launch_template()
                .launch_template_id(&id)
                .default_version(v.to_string())
                .send()
                .await
                .map_err(aws_err("ec2:ModifyLaunchTemplate", &name))?;
            Ok(Item::new("launch template", &name, Action::Update)
                .id(id)
                .detail(format!("version {v}")))
        }
        None => {
            if ctx.dry_run {
                return Ok(Item::new("launch template", &name, Action::Create));
            }
            let out = ec2
                .create_launch_template()
                .launch_template_name(&name)
                .version_description(format!("cci-scaler {}", env!("CARGO_PKG_VERSION")))
                .launch_template_data(data)
                .tag_specifications(
                    ec2t::TagSpecification::builder()
                        .resource_type(ec2t::ResourceType::LaunchTemplate)
                        .set_tags(Some(ec2_tags(ctx, &name)))
                        .build(),
                )
                .send()
                .await
                .map_err(aws_err("ec2:CreateLaunchTemplate", &name))?;
            let id = out
                .launch_template()
                .and_then(|t| t.launch_template_id())
                .unwrap_or_default()
                .to_string();
            f.pool_mut().launch_template_id = Some(id.clone());
            Ok(Item::new("launch template", &name, Action::Create)
                .id(id)
                .detail("version 1"))
        }
    }
}

async fn delete(ctx: &Ctx<'_>) -> R<Item> {
    let name = ctx.names.launch_template();
    let Some(Owned { it: t, ours }) = find(ctx).await? else {
        return Ok(Item::new("launch template", &name, Action::Absent));
    };
    let id = t.launch_template_id().unwrap_or_default().to_string();
    if !ours {
        return Ok(Item::new("launch template", &name, Action::Foreign).id(id));
    }
    if !ctx.dry_run {
        ctx.aws
            .ec2
            .delete_launch_template()
            .launch_template_id(&id)
            .send()
            .await
            .map_err(aws_err("ec2:DeleteLaunchTemplate", &name))?;
    }
    Ok(Item::new("launch template", &name, Action::Delete).id(id))
}

/// The pools whose launch templates carry the stack's tag (a pool of a stack
/// with `[[pool]]` tables also carries `cci-scaler:pool`): how a pool is
/// still found when the stack's record of it is gone.
pub(crate) async fn tagged_pools(ctx: &Ctx<'_>) -> R<Vec<String>> {
    let mut pools = Vec::new();
    let mut pages = ctx
        .aws
        .ec2
        .describe_launch_templates()
        .filters(
            ec2t::Filter::builder()
                .name(format!("tag:{STACK_TAG}"))
                .values(&ctx.names.stack)
                .build(),
        )
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(aws_err(
            "ec2:DescribeLaunchTemplates",
            "the stack's templates",
        ))?;
        for t in page.launch_templates() {
            if let Some(p) = t
                .tags()
                .iter()
                .find(|t| t.key() == Some(POOL_TAG))
                .and_then(|t| t.value())
                && !pools.iter().any(|x| x == p)
            {
                pools.push(p.to_string());
            }
        }
    }
    Ok(pools)
}
