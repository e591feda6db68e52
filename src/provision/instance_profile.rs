//! The runner role's instance profile, named after the role.

use super::common::*;

/// The instance profile.
pub(crate) struct InstanceProfile;

impl Resource for InstanceProfile {
    fn step(&self) -> StepName {
        StepName::Iam
    }
    fn label(&self) -> &'static str {
        "instance profile"
    }
    fn per_pool(&self) -> bool {
        true
    }
    fn converge<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        _s: &'a StackSettings,
        _f: &'a mut Found,
    ) -> BoxFuture<'a, R<Item>> {
        Box::pin(converge(ctx))
    }
    fn delete<'a>(&'a self, ctx: &'a Ctx<'a>, _t: &'a Teardown) -> BoxFuture<'a, R<Vec<Item>>> {
        Box::pin(async move { Ok(vec![delete(ctx).await?]) })
    }
}

pub(crate) async fn find(ctx: &Ctx<'_>) -> R<Option<Owned<aws_sdk_iam::types::InstanceProfile>>> {
    find_named(ctx, &ctx.names.runner_role()).await
}

pub(crate) async fn find_named(
    ctx: &Ctx<'_>,
    name: &str,
) -> R<Option<Owned<aws_sdk_iam::types::InstanceProfile>>> {
    let p = match ctx
        .aws
        .iam
        .get_instance_profile()
        .instance_profile_name(name)
        .send()
        .await
    {
        Ok(p) => p.instance_profile().cloned(),
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(aws_err("iam:GetInstanceProfile", name)(e)),
    };
    Ok(p.map(|p| {
        let ours = tagged(
            p.tags().iter().map(|t| (t.key(), t.value())),
            &ctx.names.stack,
        );
        Owned { it: p, ours }
    }))
}

async fn converge(ctx: &Ctx<'_>) -> R<Item> {
    let iam = &ctx.aws.iam;
    let name = ctx.names.runner_role();
    let (mut action, arn, has_role) = match find(ctx).await? {
        Some(Owned { ours: false, .. }) => return Err(not_ours("instance profile", &name, ctx)),
        Some(Owned { it: p, .. }) => {
            let has = p.roles().iter().any(|r| r.role_name() == name);
            (Action::Keep, Some(p.arn().to_string()), has)
        }
        None => {
            if ctx.dry_run {
                (Action::Create, None, false)
            } else {
                let out = iam
                    .create_instance_profile()
                    .instance_profile_name(&name)
                    .tags(iam_tag(ctx))
                    .send()
                    .await
                    .map_err(aws_err("iam:CreateInstanceProfile", &name))?;
                (
                    Action::Create,
                    out.instance_profile().map(|p| p.arn().to_string()),
                    false,
                )
            }
        }
    };
    if !has_role {
        if action == Action::Keep {
            action = Action::Update;
        }
        if !ctx.dry_run {
            iam.add_role_to_instance_profile()
                .instance_profile_name(&name)
                .role_name(&name)
                .send()
                .await
                .map_err(aws_err("iam:AddRoleToInstanceProfile", &name))?;
        }
    }
    let mut item = Item::new("instance profile", &name, action);
    if let Some(a) = arn {
        item = item.id(a);
    }
    Ok(item)
}

async fn delete(ctx: &Ctx<'_>) -> R<Item> {
    delete_named(ctx, &ctx.names.runner_role()).await
}

/// Remove the instance profile `name` if it is ours.
pub(crate) async fn delete_named(ctx: &Ctx<'_>, name: &str) -> R<Item> {
    let iam = &ctx.aws.iam;
    let Some(Owned { it: p, ours }) = find_named(ctx, name).await? else {
        return Ok(Item::new("instance profile", name, Action::Absent));
    };
    if !ours {
        return Ok(Item::new("instance profile", name, Action::Foreign));
    }
    if !ctx.dry_run {
        for r in p.roles() {
            iam.remove_role_from_instance_profile()
                .instance_profile_name(name)
                .role_name(r.role_name())
                .send()
                .await
                .map_err(aws_err("iam:RemoveRoleFromInstanceProfile", name))?;
        }
        iam.delete_instance_profile()
            .instance_profile_name(name)
            .send()
            .await
            .map_err(aws_err("iam:DeleteInstanceProfile", name))?;
    }
    Ok(Item::new("instance profile", name, Action::Delete).id(p.arn()))
}
