//! Runner-ready images (`cci-scaler image build`): a builder instance from the
//! pool's base image runs the install half of the user data (bake mode: no
//! token, no runner), then stops itself; the stopped builder is imaged, the
//! image tagged with the stack, the pool's group, the install hash and the
//! base image, and the builder terminated whatever happened. `init` then
//! launches from the newest such image of the pool (same base image, same
//! install hash); `image prune` keeps the newest two; teardown removes all.

use base64::Engine;

use super::common::*;
use crate::render::{UserDataInput, render_user_data};

/// Tag: the group whose pool the image is for.
pub const IMAGE_OF_TAG: &str = "cci-scaler:image-of";
/// Tag: the hash of what the install half installed.
pub const INSTALL_HASH_TAG: &str = "cci-scaler:install-hash";
/// Tag: the image the builder started from.
pub const BASE_IMAGE_TAG: &str = "cci-scaler:base-image";
/// Tag on the builder instance.
pub const ROLE_TAG: &str = "cci-scaler:role";

/// The baked images: `init` bakes one for a pool when none matches its install
/// inputs (unless `--no-bake`); `image build` bakes on demand; teardown
/// removes them.
pub(crate) struct BakedImages;

impl Resource for BakedImages {
    fn step(&self) -> StepName {
        StepName::LaunchTemplate
    }
    fn label(&self) -> &'static str {
        "baked images"
    }
    fn per_pool(&self) -> bool {
        true
    }
    /// `init` bakes one when none matches the pool's install inputs (unless
    /// `--no-bake`); the launch template then launches from it.
    fn converge<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        s: &'a StackSettings,
        f: &'a mut Found,
    ) -> BoxFuture<'a, R<Item>> {
        Box::pin(async move {
            let nothing = Item::new("baked image", ctx.names.group(), Action::Absent);
            let Some(opts) = f.bake.clone() else {
                return Ok(nothing);
            };
            if !f.pool().needs_bake {
                return Ok(nothing);
            }
            if ctx.dry_run {
                let hash = user_data_input(ctx, s, true).install_hash();
                return Ok(
                    Item::new("baked image", ctx.names.group(), Action::Create).detail(format!(
                        "a builder from {} installs (install hash {hash}), then the image is made",
                        f.pool().image
                    )),
                );
            }
            let items = build(ctx, s, &opts).await?;
            let baked = items
                .into_iter()
                .find(|i| i.kind == "baked image")
                .ok_or_else(|| ProvisionError::Invalid("the bake made no image".into()))?;
            if let Some(id) = &baked.id {
                f.pool_mut().image = id.clone();
                f.pool_mut().needs_bake = false;
            }
            Ok(baked)
        })
    }
    fn delete<'a>(&'a self, ctx: &'a Ctx<'a>, _t: &'a Teardown) -> BoxFuture<'a, R<Vec<Item>>> {
        Box::pin(prune(ctx, 0))
    }
}

/// One baked image of a pool.
#[derive(Debug, Clone)]
pub(crate) struct Baked {
    pub id: String,
    pub created: String,
    pub install_hash: String,
    pub base_image: String,
    pub snapshots: Vec<String>,
}

/// The pool's baked images, newest first.
pub(crate) async fn list(ctx: &Ctx<'_>) -> R<Vec<Baked>> {
    let group = ctx.names.group();
    let out = ctx
        .aws
        .ec2
        .describe_images()
        .owners("self")
        .filters(
            ec2t::Filter::builder()
                .name(format!("tag:{STACK_TAG}"))
                .values(&ctx.names.stack)
                .build(),
        )
        .filters(
            ec2t::Filter::builder()
                .name(format!("tag:{IMAGE_OF_TAG}"))
                .values(&group)
                .build(),
        )
        .send()
        .await
        .map_err(aws_err("ec2:DescribeImages", "the pool's baked images"))?;
    let tag = |i: &ec2t::Image, k: &str| {
        i.tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
            .unwrap_or_default()
            .to_string()
    };
    let mut images: Vec<Baked> = out
        .images()
        .iter()
        .filter(|i| ec2_tagged(i.tags(), &ctx.names.stack))
        .map(|i| Baked {
            id: i.image_id().unwrap_or_default().to_string(),
            created: i.creation_date().unwrap_or_default().to_string(),
            install_hash: tag(i, INSTALL_HASH_TAG),
            base_image: tag(i, BASE_IMAGE_TAG),
            snapshots: i
                .block_device_mappings()
                .iter()
                .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(String::from))
                .collect(),
        })
        .collect();
    images.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
    Ok(images)
}

/// Deregister all but the newest `keep` baked images of the pool, with their
/// snapshots.
pub async fn prune(ctx: &Ctx<'_>, keep: usize) -> R<Vec<Item>> {
    let images = list(ctx).await?;
    let mut items = Vec::new();
    for img in images.iter().skip(keep) {
        if !ctx.dry_run {
            ctx.aws
                .ec2
                .deregister_image()
                .image_id(&img.id)
                .send()
                .await
                .map_err(aws_err("ec2:DeregisterImage", &img.id))?;
            for s in &img.snapshots {
                ctx.aws
                    .ec2
                    .delete_snapshot()
                    .snapshot_id(s)
                    .send()
                    .await
                    .map_err(aws_err("ec2:DeleteSnapshot", s))?;
            }
        }
        items.push(
            Item::new("baked image", ctx.names.group(), Action::Delete)
                .id(&img.id)
                .detail(format!(
                    "created {}, {} snapshot(s)",
                    img.created,
                    img.snapshots.len()
                )),
        );
    }
    Ok(items)
}

/// The newest baked image made from `base` with the same install hash.
pub(crate) async fn newest(ctx: &Ctx<'_>, base: &str, hash: &str) -> R<(Option<String>, usize)> {
    let images = list(ctx).await?;
    let stale = images.len();
    Ok((
        images
            .into_iter()
            .find(|i| i.base_image == base && i.install_hash == hash)
            .map(|i| i.id),
        stale,
    ))
}

/// How long to wait, and how often to look.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub timeout: Duration,
    pub poll: Duration,
}

/// The user data's install inputs for a pool.
pub(crate) fn user_data_input(ctx: &Ctx<'_>, s: &StackSettings, bake: bool) -> UserDataInput {
    UserDataInput {
        stack: s.stack.clone(),
        group: ctx.names.group(),
        region: ctx.region.clone(),
        resource_class: s.resource_class.clone(),
        token_secret_id: ctx.names.runner_token_secret(),
        idle_timeout: s.runner.idle_timeout.clone(),
        max_run_time: s.runner.max_run_time.clone(),
        working_directory: s.runner.working_directory.clone(),
        setup_script: s.runner.setup_script.clone(),
        apt_packages: s.runner.apt_packages.clone(),
        embedded_token: None,
        spares: s.has_spares(),
        bake,
        spot: s.spot.is_some(),
        unsafe_retries: s.retry_interrupted_jobs,
        job_sudo: s.runner.job_sudo,
        warm_pool: !bake && s.warm_pool > 0,
    }
}

/// Bake a runner-ready image for one pool (`ctx` has the pool's names).
pub async fn build(ctx: &Ctx<'_>, s: &StackSettings, opts: &BuildOptions) -> R<Vec<Item>> {
    let mut f = Found::default();
    ctx.progress.start("checking settings against AWS");
    step("subnets", super::checks::subnets(ctx, s, &mut f).await)?;
    let mut p = PoolFound::default();
    step(
        "instance types",
        super::checks::instance_types(ctx, s, &mut p).await,
    )?;
    step("image", super::checks::base_image(ctx, s, &mut p).await)?;
    let sg = match super::security_group::find(ctx, Some(&f.vpc)).await? {
        Some(Owned { it, ours: true }) => it.group_id().unwrap_or_default().to_string(),
        _ => {
            return Err(ProvisionError::Invalid(format!(
                "the stack's security group {} does not exist: run `cci-scaler init` first (the builder uses it)",
                ctx.names.security_group()
            )));
        }
    };
    let input = user_data_input(ctx, s, true);
    let hash = input.install_hash();
    let script = render_user_data(&input)?;
    let name = format!("{}-builder", ctx.names.launch_template());
    ctx.progress
        .done(&Item::new("builder", &name, Action::Keep).detail(format!(
            "from {} ({}), install hash {hash}",
            p.image, p.architecture
        )));
    if ctx.dry_run {
        return Ok(vec![
            Item::new("builder instance", &name, Action::Create).detail(format!(
                "{} from {}, stopped when the install is done",
                s.instance_types[0], p.image
            )),
            Item::new("baked image", ctx.names.group(), Action::Create)
                .detail(format!("install hash {hash}")),
        ]);
    }

    ctx.progress.start("launching the builder");
    let tags = |rt: ec2t::ResourceType| {
        let mut t = ec2_tags(ctx, &name);
        t.push(ec2t::Tag::builder().key(ROLE_TAG).value("builder").build());
        t.push(
            ec2t::Tag::builder()
                .key(IMAGE_OF_TAG)
                .value(ctx.names.group())
                .build(),
        );
        ec2t::TagSpecification::builder()
            .resource_type(rt)
            .set_tags(Some(t))
            .build()
    };
    let run = ctx
        .aws
        .ec2
        .run_instances()
        .image_id(&p.image)
        .instance_type(ec2t::InstanceType::from(s.instance_types[0].as_str()))
        .min_count(1)
        .max_count(1)
        .subnet_id(&f.subnets[0])
        .security_group_ids(&sg)
        .user_data(
            base64::engine::general_purpose::STANDARD
                .encode(crate::render::pack_user_data(&script)?),
        )
        .instance_initiated_shutdown_behavior(ec2t::ShutdownBehavior::Stop)
        .metadata_options(
            ec2t::InstanceMetadataOptionsRequest::builder()
                .http_tokens(ec2t::HttpTokensState::Required)
                .http_endpoint(ec2t::InstanceMetadataEndpointState::Enabled)
                .build(),
        )
        .block_device_mappings(
            ec2t::BlockDeviceMapping::builder()
                .device_name(&p.root_device)
                .ebs(
                    ec2t::EbsBlockDevice::builder()
                        .volume_size(s.root_volume_gb as i32)
                        .volume_type(ec2t::VolumeType::Gp3)
                        .encrypted(true)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .tag_specifications(tags(ec2t::ResourceType::Instance))
        .tag_specifications(tags(ec2t::ResourceType::Volume))
        .send()
        .await
        .map_err(aws_err("ec2:RunInstances", &name))?;
    let id = run
        .instances()
        .first()
        .and_then(|i| i.instance_id())
        .unwrap_or_default()
        .to_string();
    ctx.progress
        .done(&Item::new("builder instance", &name, Action::Create).id(&id));

    // Whatever happens from here, the builder goes.
    let result = bake(ctx, s, opts, &id, &hash, &p.image).await;
    ctx.progress.start("terminating the builder");
    let terminated = ctx
        .aws
        .ec2
        .terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .map_err(aws_err("ec2:TerminateInstances", &id));
    let gone = Item::new("builder instance", &name, Action::Delete).id(&id);
    ctx.progress.done(&gone);
    let image = result?;
    terminated?;
    Ok(vec![
        Item::new("builder instance", &name, Action::Create).id(&id),
        image,
        gone,
    ])
}

/// Wait for the builder to stop itself, then image it.
async fn bake(
    ctx: &Ctx<'_>,
    s: &StackSettings,
    opts: &BuildOptions,
    id: &str,
    hash: &str,
    base: &str,
) -> R<Item> {
    ctx.progress.start("installing on the builder");
    let start = std::time::Instant::now();
    loop {
        let out = ctx
            .aws
            .ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(aws_err("ec2:DescribeInstances", id))?;
        let state = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| i.state().and_then(|s| s.name()).cloned());
        match state {
            Some(ec2t::InstanceStateName::Stopped) => break,
            Some(ec2t::InstanceStateName::Terminated | ec2t::InstanceStateName::ShuttingDown) => {
                return Err(builder_failed(ctx, id, "the builder was terminated").await);
            }
            _ => {}
        }
        if start.elapsed() >= opts.timeout {
            return Err(builder_failed(
                ctx,
                id,
                &format!(
                    "the builder did not finish within {}",
                    humantime::format_duration(opts.timeout)
                ),
            )
            .await);
        }
        ctx.progress.note(&format!(
            "installing on the builder {id} ({}s so far)",
            start.elapsed().as_secs()
        ));
        tokio::time::sleep(opts.poll).await;
    }
    ctx.progress.done(
        &Item::new("builder instance", id, Action::Keep)
            .detail(format!("install done in {}s", start.elapsed().as_secs())),
    );

    ctx.progress.start("creating the image");
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    let image_name = format!("{}-{stamp}", ctx.names.launch_template());
    let mut tags = ec2_tags(ctx, &image_name);
    for (k, v) in [
        (IMAGE_OF_TAG, ctx.names.group()),
        (INSTALL_HASH_TAG, hash.to_string()),
        (BASE_IMAGE_TAG, base.to_string()),
    ] {
        tags.push(ec2t::Tag::builder().key(k).value(v).build());
    }
    let spec = |rt| {
        ec2t::TagSpecification::builder()
            .resource_type(rt)
            .set_tags(Some(tags.clone()))
            .build()
    };
    let out = ctx
        .aws
        .ec2
        .create_image()
        .instance_id(id)
        .name(&image_name)
        .description(format!(
            "cci-scaler runner-ready image for {} ({})",
            s.resource_class,
            ctx.names.group()
        ))
        .tag_specifications(spec(ec2t::ResourceType::Image))
        .send()
        .await
        .map_err(aws_err("ec2:CreateImage", &image_name))?;
    let image = out.image_id().unwrap_or_default().to_string();
    let start = std::time::Instant::now();
    loop {
        let out = ctx
            .aws
            .ec2
            .describe_images()
            .image_ids(&image)
            .send()
            .await
            .map_err(aws_err("ec2:DescribeImages", &image))?;
        match out.images().first().and_then(|i| i.state()) {
            Some(ec2t::ImageState::Available) => {
                // Its snapshots carry the same tags (tagged once the image
                // exists, the same on every EC2 implementation).
                let snapshots: Vec<String> = out.images()[0]
                    .block_device_mappings()
                    .iter()
                    .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(String::from))
                    .collect();
                if !snapshots.is_empty() {
                    ctx.aws
                        .ec2
                        .create_tags()
                        .set_resources(Some(snapshots))
                        .set_tags(Some(tags.clone()))
                        .send()
                        .await
                        .map_err(aws_err("ec2:CreateTags", &image))?;
                }
                break;
            }
            Some(ec2t::ImageState::Failed | ec2t::ImageState::Error) => {
                return Err(ProvisionError::Invalid(format!(
                    "image {image} failed to be created"
                )));
            }
            _ => {}
        }
        if start.elapsed() >= opts.timeout {
            return Err(ProvisionError::Invalid(format!(
                "image {image} not available within {}; it is left to finish (run `image prune` to remove it)",
                humantime::format_duration(opts.timeout)
            )));
        }
        ctx.progress.note(&format!(
            "waiting for {image} ({}s so far)",
            start.elapsed().as_secs()
        ));
        tokio::time::sleep(opts.poll).await;
    }
    let item = Item::new("baked image", &image_name, Action::Create)
        .id(&image)
        .detail(format!("install hash {hash}"));
    ctx.progress.done(&item);
    Ok(item)
}

/// The failure, with the tail of the builder's console output.
async fn builder_failed(ctx: &Ctx<'_>, id: &str, why: &str) -> ProvisionError {
    let tail = match ctx
        .aws
        .ec2
        .get_console_output()
        .instance_id(id)
        .latest(true)
        .send()
        .await
    {
        Ok(out) => out
            .output()
            .and_then(|o| base64::engine::general_purpose::STANDARD.decode(o).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map(|text| {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(15)..].join("\n")
            })
            .unwrap_or_else(|| "(empty)".into()),
        Err(e) => format!("(unreadable: {})", code(&e)),
    };
    ProvisionError::Invalid(format!(
        "{why}; the builder {id} is terminated. Its console output ends:\n{tail}"
    ))
}
