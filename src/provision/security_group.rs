//! The runners' security group: no ingress (runners poll out).

use super::common::*;

/// The security group.
pub(crate) struct SecurityGroup;

impl Resource for SecurityGroup {
    fn step(&self) -> StepName {
        StepName::LaunchTemplate
    }
    fn label(&self) -> &'static str {
        "security group"
    }
    fn converge<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        _s: &'a StackSettings,
        f: &'a mut Found,
    ) -> BoxFuture<'a, R<Item>> {
        Box::pin(converge(ctx, f))
    }
    fn delete<'a>(&'a self, ctx: &'a Ctx<'a>, _t: &'a Teardown) -> BoxFuture<'a, R<Vec<Item>>> {
        Box::pin(async move { Ok(vec![delete(ctx).await?]) })
    }
}

pub(crate) async fn find(
    ctx: &Ctx<'_>,
    vpc: Option<&str>,
) -> R<Option<Owned<ec2t::SecurityGroup>>> {
    Ok(find_all(ctx, vpc).await?.into_iter().next())
}

/// Every group with our name (in `vpc`, else in every VPC: a name is unique
/// only within a VPC), and whether each is ours.
async fn find_all(ctx: &Ctx<'_>, vpc: Option<&str>) -> R<Vec<Owned<ec2t::SecurityGroup>>> {
    let name = ctx.names.security_group();
    let mut req = ctx.aws.ec2.describe_security_groups().filters(
        ec2t::Filter::builder()
            .name("group-name")
            .values(&name)
            .build(),
    );
    if let Some(v) = vpc {
        req = req.filters(ec2t::Filter::builder().name("vpc-id").values(v).build());
    }
    let out = req
        .send()
        .await
        .map_err(aws_err("ec2:DescribeSecurityGroups", &name))?;
    Ok(out
        .security_groups()
        .iter()
        .map(|sg| Owned {
            ours: ec2_tagged(sg.tags(), &ctx.names.stack),
            it: sg.clone(),
        })
        .collect())
}

async fn converge(ctx: &Ctx<'_>, f: &mut Found) -> R<Item> {
    let name = ctx.names.security_group();
    if let Some(Owned { it: sg, ours }) = find(ctx, Some(&f.vpc)).await? {
        if !ours {
            return Err(not_ours("security group", &name, ctx));
        }
        let id = sg.group_id().unwrap_or_default().to_string();
        f.security_group = Some(id.clone());
        return Ok(Item::new("security group", &name, Action::Keep).id(id));
    }
    if ctx.dry_run {
        f.security_group = Some(PENDING.into());
        return Ok(Item::new("security group", &name, Action::Create).detail("no ingress"));
    }
    let out = ctx
        .aws
        .ec2
        .create_security_group()
        .group_name(&name)
        .description(format!(
            "cci-scaler {} runners: no ingress (runners poll out)",
            ctx.names.stack
        ))
        .vpc_id(&f.vpc)
        .tag_specifications(
            ec2t::TagSpecification::builder()
                .resource_type(ec2t::ResourceType::SecurityGroup)
                .set_tags(Some(ec2_tags(ctx, &name)))
                .build(),
        )
        .send()
        .await
        .map_err(aws_err("ec2:CreateSecurityGroup", &name))?;
    let id = out.group_id().unwrap_or_default().to_string();
    f.security_group = Some(id.clone());
    Ok(Item::new("security group", &name, Action::Create)
        .id(id)
        .detail("no ingress"))
}

async fn delete(ctx: &Ctx<'_>) -> R<Item> {
    let name = ctx.names.security_group();
    // By name in every VPC: init made ours in the subnets' VPC, and a group of
    // the same name elsewhere (untagged, or another stack's) is not ours and
    // must neither be touched nor hide ours.
    let (ours, foreign): (Vec<_>, Vec<_>) =
        find_all(ctx, None).await?.into_iter().partition(|g| g.ours);
    let id = |g: &Owned<ec2t::SecurityGroup>| g.it.group_id().unwrap_or_default().to_string();
    if ours.is_empty() {
        return Ok(match foreign.first() {
            Some(g) => Item::new("security group", &name, Action::Foreign).id(id(g)),
            None => Item::new("security group", &name, Action::Absent),
        });
    }
    let ids: Vec<String> = ours.iter().map(id).collect();
    if !ctx.dry_run {
        for id in &ids {
            // Network interfaces of terminated instances can hold it a little while.
            with_patience(
                ctx.progress,
                "the security group to be free of network interfaces",
                Duration::from_secs(300),
                |e: &aws_sdk_ec2::error::SdkError<_, _>| code(e) == "DependencyViolation",
                || ctx.aws.ec2.delete_security_group().group_id(id).send(),
            )
            .await
            .map_err(aws_err("ec2:DeleteSecurityGroup", &name))?;
        }
    }
    Ok(Item::new("security group", &name, Action::Delete).id(ids.join(", ")))
}
