//! The role jobs assume with CircleCI OIDC tokens (only with `[job_role]`):
//! its trust accepts only tokens of the organisation (audience and subject),
//! and of the listed projects if any; it carries the listed managed policies.
//! Jobs reach AWS through it, never through the instance's role.

use super::common::*;
use super::oidc_provider::{arn as provider_arn, issuer};
use crate::config::JobRoleSettings;

/// The job role.
pub(crate) struct JobRole;

impl Resource for JobRole {
    fn step(&self) -> StepName {
        StepName::Iam
    }
    fn label(&self) -> &'static str {
        "job role"
    }
    fn wanted(&self, s: &StackSettings) -> bool {
        s.job_role.is_some()
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
        Box::pin(async move {
            let mut item = super::role::delete(ctx, ctx.names.job_role()).await?;
            item.kind = "job role";
            Ok(unless_absent(item))
        })
    }
}

/// Who may assume the role: CircleCI OIDC tokens whose audience is the
/// organisation and whose subject is one of its (listed) projects'.
pub(crate) fn trust_policy(account: &str, j: &JobRoleSettings) -> Value {
    let iss = issuer(&j.org_id);
    let org = &j.org_id;
    // The subject: org/<org>/project/<project>/user/<user>[/vcs-origin/...].
    let subjects: Vec<String> = if j.projects.is_empty() {
        vec![format!("org/{org}/project/*")]
    } else {
        j.projects
            .iter()
            .map(|p| format!("org/{org}/project/{p}/user/*"))
            .collect()
    };
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "CircleCiJobsOfTheOrganisation",
            "Effect": "Allow",
            "Principal": {"Federated": provider_arn(account, org)},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {format!("{iss}:aud"): org},
                "StringLike": {format!("{iss}:sub"): subjects}
            }
        }]
    })
}

async fn converge(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<Item> {
    let Some(j) = &s.job_role else {
        return Err(ProvisionError::Invalid("no [job_role] settings".into()));
    };
    let name = ctx.names.job_role();
    let (mut item, role) =
        super::role::converge(ctx, "job role", &name, trust_policy(&f.account, j), None).await?;
    let iam = &ctx.aws.iam;
    let want_session = j.max_session_seconds as i32;
    if let Some(r) = &role
        && r.max_session_duration() != Some(want_session)
    {
        if !ctx.dry_run {
            iam.update_role()
                .role_name(&name)
                .max_session_duration(want_session)
                .send()
                .await
                .map_err(aws_err("iam:UpdateRole", &name))?;
        }
        item.changed();
    }
    // The managed policies: exactly the listed ones.
    let attached: Vec<String> = if role.is_some() {
        let mut pages = iam
            .list_attached_role_policies()
            .role_name(&name)
            .into_paginator()
            .send();
        let mut out = vec![];
        while let Some(page) = pages.next().await {
            let page = page.map_err(aws_err("iam:ListAttachedRolePolicies", &name))?;
            out.extend(
                page.attached_policies()
                    .iter()
                    .filter_map(|p| p.policy_arn().map(String::from)),
            );
        }
        out
    } else {
        vec![]
    };
    for p in j.policy_arns.iter().filter(|p| !attached.contains(p)) {
        if !ctx.dry_run {
            iam.attach_role_policy()
                .role_name(&name)
                .policy_arn(p)
                .send()
                .await
                .map_err(|e| {
                    if is_not_found(&e) {
                        ProvisionError::Invalid(format!(
                            "job_role.policy_arns: the policy {p} does not exist (or is not visible to this account)"
                        ))
                    } else {
                        aws_err("iam:AttachRolePolicy", &name)(e)
                    }
                })?;
        }
        item.changed();
    }
    for p in attached.iter().filter(|p| !j.policy_arns.contains(p)) {
        if !ctx.dry_run {
            iam.detach_role_policy()
                .role_name(&name)
                .policy_arn(p)
                .send()
                .await
                .map_err(aws_err("iam:DetachRolePolicy", &name))?;
        }
        item.changed();
    }
    let who = if j.projects.is_empty() {
        "every project of the organisation".to_string()
    } else {
        format!("{} project(s)", j.projects.len())
    };
    Ok(item.detail(format!(
        "for jobs of {who}; {} policy(ies)",
        j.policy_arns.len()
    )))
}
