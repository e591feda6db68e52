//! IAM roles: the helpers shared by the runner role and the scaler role.

use super::common::*;

pub(crate) async fn find(ctx: &Ctx<'_>, name: &str) -> R<Option<Owned<aws_sdk_iam::types::Role>>> {
    let iam = &ctx.aws.iam;
    let role = match iam.get_role().role_name(name).send().await {
        Ok(r) => r.role().cloned(),
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(aws_err("iam:GetRole", name)(e)),
    };
    let Some(role) = role else { return Ok(None) };
    let tags = iam
        .list_role_tags()
        .role_name(name)
        .send()
        .await
        .map_err(aws_err("iam:ListRoleTags", name))?;
    let ours = tagged(
        tags.tags().iter().map(|t| (t.key(), t.value())),
        &ctx.names.stack,
    );
    Ok(Some(Owned { it: role, ours }))
}

/// A trust policy that lets an AWS service assume the role.
pub(crate) fn trust(service: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]
    })
}

/// An IAM policy document as IAM returns it (URL-encoded JSON).
pub(crate) fn decode_policy(doc: &str) -> Option<Value> {
    let doc = percent_encoding::percent_decode_str(doc).decode_utf8_lossy();
    serde_json::from_str::<Value>(&doc).ok()
}

pub(crate) fn group_arn_pattern(ctx: &Ctx<'_>, account: &str, group: &str) -> String {
    format!(
        "arn:aws:autoscaling:{}:{account}:autoScalingGroup:*:autoScalingGroupName/{group}",
        ctx.region,
    )
}

/// Ensure a role (ours) with a trust policy and one inline policy; the item
/// is of `kind`. Returns the role as found or created (`None` in a dry run
/// that would create it).
pub(crate) async fn converge(
    ctx: &Ctx<'_>,
    kind: &'static str,
    name: &str,
    trust: Value,
    policy: Option<Value>,
) -> R<(Item, Option<aws_sdk_iam::types::Role>)> {
    let iam = &ctx.aws.iam;
    let mut action = Action::Keep;
    let role = match find(ctx, name).await? {
        Some(Owned { ours: false, .. }) => return Err(not_ours("IAM role", name, ctx)),
        Some(Owned { it: r, .. }) => {
            // Who may assume it: converged too (the job role's projects).
            let current = r.assume_role_policy_document().and_then(decode_policy);
            if current.as_ref() != Some(&trust) {
                action = Action::Update;
                if !ctx.dry_run {
                    iam.update_assume_role_policy()
                        .role_name(name)
                        .policy_document(trust.to_string())
                        .send()
                        .await
                        .map_err(aws_err("iam:UpdateAssumeRolePolicy", name))?;
                }
            }
            Some(r)
        }
        None => {
            action = Action::Create;
            if ctx.dry_run {
                None
            } else {
                let out = iam
                    .create_role()
                    .role_name(name)
                    .assume_role_policy_document(trust.to_string())
                    .description(format!("cci-scaler stack {}", ctx.names.stack))
                    .tags(iam_tag(ctx))
                    .send()
                    .await
                    .map_err(aws_err("iam:CreateRole", name))?;
                out.role().cloned()
            }
        }
    };
    if let Some(policy) = policy {
        let current = match iam
            .get_role_policy()
            .role_name(name)
            .policy_name("cci-scaler")
            .send()
            .await
        {
            Ok(p) => decode_policy(p.policy_document()),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(aws_err("iam:GetRolePolicy", name)(e)),
        };
        if current.as_ref() != Some(&policy) {
            if action == Action::Keep {
                action = Action::Update;
            }
            if !ctx.dry_run {
                iam.put_role_policy()
                    .role_name(name)
                    .policy_name("cci-scaler")
                    .policy_document(policy.to_string())
                    .send()
                    .await
                    .map_err(aws_err("iam:PutRolePolicy", name))?;
            }
        }
    }
    let mut item = Item::new(kind, name, action);
    if let Some(r) = &role {
        item = item.id(r.arn());
    }
    Ok((item, role))
}

pub(crate) async fn delete(ctx: &Ctx<'_>, name: String) -> R<Item> {
    let iam = &ctx.aws.iam;
    let Some(Owned { it: role, ours }) = find(ctx, &name).await? else {
        return Ok(Item::new("IAM role", &name, Action::Absent));
    };
    let arn = role.arn().to_string();
    if !ours {
        return Ok(Item::new("IAM role", &name, Action::Foreign).id(arn));
    }
    if !ctx.dry_run {
        let policies = iam
            .list_role_policies()
            .role_name(&name)
            .send()
            .await
            .map_err(aws_err("iam:ListRolePolicies", &name))?;
        for p in policies.policy_names() {
            iam.delete_role_policy()
                .role_name(&name)
                .policy_name(p)
                .send()
                .await
                .map_err(aws_err("iam:DeleteRolePolicy", &name))?;
        }
        let attached = iam
            .list_attached_role_policies()
            .role_name(&name)
            .send()
            .await
            .map_err(aws_err("iam:ListAttachedRolePolicies", &name))?;
        for p in attached.attached_policies() {
            iam.detach_role_policy()
                .role_name(&name)
                .set_policy_arn(p.policy_arn().map(String::from))
                .send()
                .await
                .map_err(aws_err("iam:DetachRolePolicy", &name))?;
        }
        iam.delete_role()
            .role_name(&name)
            .send()
            .await
            .map_err(aws_err("iam:DeleteRole", &name))?;
    }
    Ok(Item::new("IAM role", &name, Action::Delete).id(arn))
}
