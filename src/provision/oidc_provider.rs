//! The IAM OIDC identity provider for the CircleCI organisation (only with
//! `[job_role]`): jobs exchange their CircleCI OIDC token for the job role's
//! credentials through it, instead of using the instance's role.
//!
//! There is one provider per organisation and account, so it may be shared:
//! a provider cci-scaler did not make is used as it is and never changed or
//! removed; ours is removed only when no other role still trusts it.

use super::common::*;

/// CircleCI's OIDC issuer host; the issuer is `https://HOST/org/<org-id>`.
pub(crate) const ISSUER_HOST: &str = "oidc.circleci.com";

/// The provider.
pub(crate) struct OidcProvider;

impl Resource for OidcProvider {
    fn step(&self) -> StepName {
        StepName::Iam
    }
    fn label(&self) -> &'static str {
        "OIDC provider"
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
        Box::pin(delete(ctx))
    }
}

/// The issuer path (the provider's URL without `https://`) of an organisation.
pub(crate) fn issuer(org_id: &str) -> String {
    format!("{ISSUER_HOST}/org/{org_id}")
}

pub(crate) fn arn(account: &str, org_id: &str) -> String {
    format!("arn:aws:iam::{account}:oidc-provider/{}", issuer(org_id))
}

/// The provider's audiences and whether it is ours, if it exists.
async fn find(ctx: &Ctx<'_>, arn: &str) -> R<Option<Owned<Vec<String>>>> {
    let out = match ctx
        .aws
        .iam
        .get_open_id_connect_provider()
        .open_id_connect_provider_arn(arn)
        .send()
        .await
    {
        Ok(o) => o,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(aws_err("iam:GetOpenIDConnectProvider", arn)(e)),
    };
    let ours = tagged(
        out.tags().iter().map(|t| (t.key(), t.value())),
        &ctx.names.stack,
    );
    Ok(Some(Owned {
        it: out.client_id_list().to_vec(),
        ours,
    }))
}

async fn converge(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<Item> {
    let Some(j) = &s.job_role else {
        return Err(ProvisionError::Invalid("no [job_role] settings".into()));
    };
    let arn = arn(&f.account, &j.org_id);
    let url = format!("https://{}", issuer(&j.org_id));
    let iam = &ctx.aws.iam;
    let item = |action| Item::new("OIDC provider", &url, action).id(&arn);
    let action = match find(ctx, &arn).await? {
        None => {
            if !ctx.dry_run {
                // No thumbprint: IAM trusts the issuer's certificate through
                // its own store of root authorities.
                iam.create_open_id_connect_provider()
                    .url(&url)
                    .client_id_list(&j.org_id)
                    .tags(iam_tag(ctx))
                    .send()
                    .await
                    .map_err(aws_err("iam:CreateOpenIDConnectProvider", &url))?;
            }
            Action::Create
        }
        Some(Owned { it, ours: true }) if it.contains(&j.org_id) => Action::Keep,
        Some(Owned { it, ours: false }) if it.contains(&j.org_id) => {
            return Ok(item(Action::Foreign).detail("made elsewhere: used as it is, never removed"));
        }
        Some(Owned { ours: true, .. }) => {
            if !ctx.dry_run {
                iam.add_client_id_to_open_id_connect_provider()
                    .open_id_connect_provider_arn(&arn)
                    .client_id(&j.org_id)
                    .send()
                    .await
                    .map_err(aws_err("iam:AddClientIDToOpenIDConnectProvider", &url))?;
            }
            Action::Update
        }
        Some(Owned { ours: false, .. }) => {
            return Err(ProvisionError::Invalid(format!(
                "the IAM OIDC provider {url} exists (not made by this stack) but does not accept the audience {org}: \
                 add it (aws iam add-client-id-to-open-id-connect-provider --open-id-connect-provider-arn {arn} --client-id {org}), \
                 or remove that provider",
                org = j.org_id
            )));
        }
    };
    Ok(item(action).detail(format!("audience {}", j.org_id)))
}

fn denied<E: ProvideErrorMetadata>(e: &E) -> bool {
    matches!(code(e), "AccessDenied" | "AccessDeniedException")
}

/// The CircleCI providers tagged as this stack's. A caller not allowed to
/// list providers (a stack that never had a job role, made with narrow
/// permissions) is told so, and nothing is removed.
async fn ours(ctx: &Ctx<'_>) -> R<Vec<String>> {
    let list = match ctx.aws.iam.list_open_id_connect_providers().send().await {
        Ok(l) => l,
        Err(e) if denied(&e) => {
            ctx.progress.note(
                "not allowed to list IAM OIDC providers (iam:ListOpenIDConnectProviders): a job role's provider, if any, is left in place",
            );
            return Ok(vec![]);
        }
        Err(e) => return Err(aws_err("iam:ListOpenIDConnectProviders", ISSUER_HOST)(e)),
    };
    let mut out = vec![];
    for p in list.open_id_connect_provider_list() {
        let Some(arn) = p.arn() else { continue };
        if !arn.contains(&format!(":oidc-provider/{ISSUER_HOST}/org/")) {
            continue;
        }
        if find(ctx, arn).await?.is_some_and(|o| o.ours) {
            out.push(arn.to_string());
        }
    }
    Ok(out)
}

/// Roles other than this stack's job role whose trust policy names `arn`;
/// `None`: the caller may not list roles, so cannot tell.
async fn trusted_by(ctx: &Ctx<'_>, arn: &str) -> R<Option<Vec<String>>> {
    let own = ctx.names.job_role();
    let mut pages = ctx.aws.iam.list_roles().into_paginator().send();
    let mut out = vec![];
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(p) => p,
            Err(e) if denied(&e) => return Ok(None),
            Err(e) => return Err(aws_err("iam:ListRoles", arn)(e)),
        };
        for r in page.roles() {
            let names_it = r
                .assume_role_policy_document()
                .and_then(super::role::decode_policy)
                .is_some_and(|d| d.to_string().contains(arn));
            if names_it && r.role_name() != own {
                out.push(r.role_name().to_string());
            }
        }
    }
    Ok(Some(out))
}

/// The cci-scaler stack a role belongs to (its stack tag), if any.
async fn stack_of_role(ctx: &Ctx<'_>, role: &str) -> R<Option<String>> {
    let tags = match ctx.aws.iam.list_role_tags().role_name(role).send().await {
        Ok(t) => t,
        Err(e) if is_not_found(&e) || denied(&e) => return Ok(None),
        Err(e) => return Err(aws_err("iam:ListRoleTags", role)(e)),
    };
    Ok(tags
        .tags()
        .iter()
        .find(|t| t.key() == STACK_TAG)
        .map(|t| t.value().to_string()))
}

async fn delete(ctx: &Ctx<'_>) -> R<Vec<Item>> {
    let mut items = vec![];
    for arn in ours(ctx).await? {
        let url = format!(
            "https://{}",
            arn.split_once(":oidc-provider/").map_or("", |(_, u)| u)
        );
        let Some(others) = trusted_by(ctx, &arn).await? else {
            items.push(
                Item::new("OIDC provider", &url, Action::Keep)
                    .id(&arn)
                    .detail("not allowed to list roles (iam:ListRoles), so cannot tell whether others trust it: kept"),
            );
            continue;
        };
        if !others.is_empty() {
            // Another stack's job role (same organisation and account) uses
            // it: hand it over, so that stack's teardown removes it.
            let mut heir = None;
            for role in &others {
                if let Some(stack) = stack_of_role(ctx, role).await? {
                    heir = Some(stack);
                    break;
                }
            }
            let detail = match &heir {
                Some(stack) => {
                    if !ctx.dry_run {
                        ctx.aws
                            .iam
                            .tag_open_id_connect_provider()
                            .open_id_connect_provider_arn(&arn)
                            .tags(
                                aws_sdk_iam::types::Tag::builder()
                                    .key(STACK_TAG)
                                    .value(stack)
                                    .build()
                                    .expect("key and value are set"),
                            )
                            .send()
                            .await
                            .map_err(aws_err("iam:TagOpenIDConnectProvider", &url))?;
                    }
                    format!(
                        "still trusted by {}: handed to stack {stack}",
                        others.join(", ")
                    )
                }
                None => format!(
                    "still trusted by {}: kept (remove it when they no longer need it)",
                    others.join(", ")
                ),
            };
            items.push(
                Item::new("OIDC provider", &url, Action::Keep)
                    .id(&arn)
                    .detail(detail),
            );
            continue;
        }
        if !ctx.dry_run {
            ctx.aws
                .iam
                .delete_open_id_connect_provider()
                .open_id_connect_provider_arn(&arn)
                .send()
                .await
                .map_err(aws_err("iam:DeleteOpenIDConnectProvider", &url))?;
        }
        items.push(Item::new("OIDC provider", &url, Action::Delete).id(&arn));
    }
    Ok(items)
}
