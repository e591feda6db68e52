//! The small engine behind `init`, `teardown` and `status`: one ordered list of
//! resource kinds, walked forward to create or converge (`init`, or one step
//! of it), in reverse to remove (`teardown`), and read-only for `status` and
//! `--dry-run`. Each kind lives in its own file and implements [`Resource`];
//! adding a kind means one new file and one entry in [`resources`].

use super::artifact::Artifact;
use super::common::*;
use crate::render::render_user_data;

/// The context of one pool: the same connections, the pool's names.
fn pool_ctx<'a>(ctx: &Ctx<'a>, pool: Option<&str>) -> Ctx<'a> {
    Ctx {
        names: ctx.names.for_pool(pool),
        ..ctx.clone()
    }
}

/// Every kind, in dependency order (a resource only needs those before it).
/// The scaler secret comes first: it records the resource class before
/// anything is made at CircleCI, and goes last, so a stack that exists in any
/// part can always be found and removed by its name alone.
fn resources(artifact: Option<&Artifact>) -> Vec<Box<dyn Resource + '_>> {
    vec![
        Box::new(super::scaler_secret::ScalerSecret),
        Box::new(super::resource_class::ResourceClass),
        Box::new(super::runner_token::RunnerToken),
        Box::new(super::security_group::SecurityGroup),
        Box::new(super::runner_role::SharedRunnerRole),
        Box::new(super::runner_role::RunnerRole),
        Box::new(super::instance_profile::InstanceProfile),
        Box::new(super::image::BakedImages),
        Box::new(super::launch_template::LaunchTemplate),
        Box::new(super::group::Group),
        Box::new(super::scaler_role::ScalerRole),
        Box::new(super::oidc_provider::OidcProvider),
        Box::new(super::job_role::JobRole),
        Box::new(super::log_group::LogGroup),
        Box::new(super::demand_record::DemandRecord),
        Box::new(super::demand_record::UsageRecord),
        Box::new(super::function::Function { artifact }),
        Box::new(super::schedule::Schedule),
        Box::new(super::topic::Topic),
        Box::new(super::alarms::Alarms),
        Box::new(super::dashboard::Dashboard),
    ]
}

fn need(have: &Option<String>, step: StepName, what: &str, prereq: StepName) -> R<()> {
    match have {
        Some(v) if v != PENDING => Ok(()),
        _ => Err(ProvisionError::Invalid(format!(
            "step {} needs the {what}: run `cci-scaler step {}` (or `cci-scaler init`) first",
            step.flag(),
            prereq.flag()
        ))),
    }
}

/// A step run alone needs what earlier steps made: say which step to run first.
async fn requires(ctx: &Ctx<'_>, step: StepName, f: &mut Found) -> R<()> {
    match step {
        StepName::Iam => {
            need(
                &f.scaler_secret_arn,
                step,
                "scaler secret",
                StepName::Secrets,
            )?;
            for i in 0..f.pools.len() {
                f.current = i;
                let pctx = pool_ctx(ctx, f.pool().name.as_deref());
                need(
                    &f.pool().runner_token_secret_arn,
                    step,
                    "runner token secret",
                    StepName::ResourceClass,
                )?;
                // The group comes after the roles in the walk; its ARN is
                // known here only when it exists.
                f.pool_mut().group_arn = super::group::find(&pctx)
                    .await?
                    .and_then(|g| g.it.auto_scaling_group_arn().map(String::from));
                need(
                    &f.pool().group_arn,
                    step,
                    "Auto Scaling group",
                    StepName::Group,
                )?;
            }
            Ok(())
        }
        StepName::Group => {
            for p in &f.pools {
                need(
                    &p.launch_template_id,
                    step,
                    "launch template",
                    StepName::LaunchTemplate,
                )?;
            }
            Ok(())
        }
        StepName::Lambda => {
            need(&f.scaler_role_arn, step, "scaler role", StepName::Iam)?;
            need(
                &f.scaler_secret_arn,
                step,
                "scaler secret",
                StepName::Secrets,
            )
        }
        StepName::Schedule | StepName::Alarms => {
            need(&f.function_arn, step, "Lambda function", StepName::Lambda)
        }
        _ => Ok(()),
    }
}

/// Create or converge the whole stack (`only: None`), or one step of it: the
/// other steps then only read, to find what the step builds on. `pools`: the
/// stack's pools (at least one; the stack-wide settings are the same in
/// each). `removing`: pools the stack had and the settings no longer list;
/// they stay recorded (so a run cut short can still find them) until
/// [`remove_pools`] has removed them. Returns one item per resource touched.
pub async fn init(
    ctx: &Ctx<'_>,
    pools: &[StackSettings],
    removing: &[PoolRecord],
    artifact: &Artifact,
    only: Option<StepName>,
    bake: Option<super::image::BuildOptions>,
) -> R<Vec<Item>> {
    let s0 = pools
        .first()
        .ok_or_else(|| ProvisionError::Invalid("the stack has no pool".into()))?;
    let mut f = Found {
        removing: removing.to_vec(),
        bake,
        ..Found::default()
    };
    let reader = Ctx {
        dry_run: true,
        ..ctx.clone()
    };

    // Reads that fail fast on bad settings, before anything is written.
    ctx.progress.start("checking settings against AWS");
    f.account = step("account", super::checks::account(ctx).await)?;
    step("subnets", super::checks::subnets(ctx, s0, &mut f).await)?;
    for s in pools {
        let pctx = pool_ctx(ctx, s.pool.as_deref());
        let mut p = PoolFound {
            name: s.pool.clone(),
            resource_class: s.resource_class.clone(),
            group: pctx.names.group(),
            headroom: s.headroom.clone(),
            auto: s.auto_scale(),
            warm_pool: s.warm_pool,
            spot: s.spot.is_some(),
            key_pair: s.key_pair.clone(),
            ..PoolFound::default()
        };
        step(
            "instance types",
            super::checks::instance_types(&pctx, s, &mut p).await,
        )?;
        step("image", super::checks::base_image(&pctx, s, &mut p).await)?;
        let input = super::image::user_data_input(&pctx, s, false);
        // The newest runner-ready image baked from this base with the same
        // install inputs, if there is one.
        let (baked, all) = super::image::newest(&pctx, &p.image, &input.install_hash()).await?;
        match baked {
            Some(id) => {
                ctx.progress.note(&format!(
                    "{}: launching from the baked image {id}",
                    pctx.names.group()
                ));
                p.image = id;
            }
            None => {
                p.needs_bake = true;
                let why = if all > 0 {
                    format!(
                        "its {all} baked image(s) are from another base image or other install inputs (setup script, packages, runner)"
                    )
                } else {
                    "no runner-ready image yet".to_string()
                };
                if f.bake.is_some() {
                    ctx.progress
                        .note(&format!("{}: {why}: init bakes one", pctx.names.group()));
                } else {
                    ctx.progress.note(&format!(
                        "{}: {why}; --no-bake: instances install at boot (run `cci-scaler image build` to bake one)",
                        pctx.names.group()
                    ));
                }
            }
        }
        // With usage_org, the Lambda replays each day's runs beside the
        // real waits: the pool as the simulator needs it.
        if s.usage_org.is_some() {
            let idle = crate::render::parse_go_duration("idle timeout", &s.runner.idle_timeout)
                .map(|d| d.as_secs())
                .unwrap_or(60);
            p.model = Some(crate::scale::real_waits::SimModel {
                max_instances: s.max_instances,
                boot_s: if p.needs_bake && f.bake.is_none() {
                    crate::scale::real_waits::STOCK_BOOT_S
                } else {
                    crate::simulate::BAKED_BOOT_S
                },
                idle_timeout_s: idle,
                warm_pool: s.warm_pool,
                spot: s.spot.is_some(),
            });
        }
        p.user_data = render_user_data(&input)?;
        p.class = step(
            "resource class",
            cci::find_resource_class(ctx.circleci, &s.resource_class)
                .await
                .map_err(Into::into),
        )?;
        f.pools.push(p);
    }

    let mut items = Vec::new();
    let mut checked = None;
    for r in resources(Some(artifact))
        .into_iter()
        .filter(|r| r.converges())
    {
        let selected = only.is_none_or(|o| o == r.step());
        if only == Some(r.step()) && checked.is_none() {
            requires(ctx, r.step(), &mut f).await?;
            checked = Some(r.step());
        }
        let c: &Ctx<'_> = if selected { ctx } else { &reader };
        let targets: Vec<(usize, &StackSettings)> = if r.per_pool() {
            pools.iter().enumerate().collect()
        } else {
            vec![(0, s0)]
        };
        for (i, s) in targets {
            f.current = i;
            let pctx;
            let c = if r.per_pool() {
                pctx = pool_ctx(c, s.pool.as_deref());
                &pctx
            } else {
                c
            };
            if selected {
                ctx.progress.start(r.label());
            }
            if !r.wanted(s) {
                let t = Teardown {
                    resource_class: None,
                    keep_resource_class: true,
                    stack_has_pools: s0.pool.is_some(),
                    in_use_check: true,
                };
                for item in step(r.label(), r.delete(c, &t).await)? {
                    if selected && item.action != Action::Absent {
                        ctx.progress.done(&item);
                        items.push(item);
                    }
                }
                continue;
            }
            let item = step(r.label(), r.converge(c, s, &mut f).await)?;
            // Absent: nothing to do, nothing to say (a pool with its image).
            if selected && item.action != Action::Absent {
                ctx.progress.done(&item);
                items.push(item);
            }
        }
    }
    Ok(items)
}

/// Remove pools the stack no longer has (their launch template, group,
/// runner token and secret, resource class), in reverse order; nothing
/// shared. Then record them as gone (in the scaler secret, which `init`
/// converged with them still listed).
pub async fn remove_pools(
    ctx: &Ctx<'_>,
    removing: &[PoolRecord],
    keep_resource_class: bool,
) -> R<Vec<Item>> {
    let mut items = Vec::new();
    // The Lambda first, so nothing scales a pool while it goes (after
    // `init` it already has; `teardown --pool` needs it).
    if let Some(item) = super::function::forget(ctx, removing).await? {
        ctx.progress.done(&item);
        items.push(item);
    }
    for r in resources(None).iter().rev().filter(|r| r.per_pool()) {
        for pool in removing {
            items.extend(delete_for_pool(ctx, r.as_ref(), pool, keep_resource_class).await?);
        }
    }
    if let Some(item) = super::scaler_secret::forget(ctx, removing).await? {
        ctx.progress.done(&item);
        items.push(item);
    }
    Ok(items)
}

/// The pools the stack recorded: in its scaler secret, else in its Lambda's
/// environment. Empty when neither is there (a stack removed, or
/// interrupted before either was made).
pub async fn recorded_pools(ctx: &Ctx<'_>) -> R<Vec<PoolRecord>> {
    super::scaler_secret::recorded_pools(ctx).await
}

/// Remove the stack, in the reverse of the order `init` builds it (the
/// schedule first, so nothing raises capacity while it goes), every pool in
/// `pools`. Resources without our tag are reported and left alone.
pub async fn teardown(
    ctx: &Ctx<'_>,
    pools: &[PoolRecord],
    keep_resource_class: bool,
) -> R<Vec<Item>> {
    let shared = Teardown {
        resource_class: None,
        keep_resource_class,
        stack_has_pools: pools.iter().any(|p| p.name.is_some()),
        in_use_check: false,
    };
    let mut items = Vec::new();
    for r in resources(None).iter().rev() {
        if !r.per_pool() {
            ctx.progress.start(r.label());
            for item in r.delete(ctx, &shared).await? {
                ctx.progress.done(&item);
                items.push(item);
            }
            continue;
        }
        for pool in pools {
            items.extend(delete_for_pool(ctx, r.as_ref(), pool, keep_resource_class).await?);
        }
    }
    Ok(items)
}

/// Remove one per-pool kind of one pool, with progress.
async fn delete_for_pool(
    ctx: &Ctx<'_>,
    r: &dyn Resource,
    pool: &PoolRecord,
    keep_resource_class: bool,
) -> R<Vec<Item>> {
    let pctx = pool_ctx(ctx, pool.name.as_deref());
    let t = Teardown {
        resource_class: pool.resource_class.clone(),
        keep_resource_class,
        stack_has_pools: pool.name.is_some(),
        in_use_check: false,
    };
    ctx.progress.start(r.label());
    let items = r.delete(&pctx, &t).await?;
    for item in &items {
        ctx.progress.done(item);
    }
    Ok(items)
}
