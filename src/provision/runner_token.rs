//! The runner (resource-class) token: created at CircleCI and stored straight
//! into its secret, which the instances read at boot. Never printed.

use secrecy::ExposeSecret;

use super::common::*;

/// The runner token and its secret.
pub(crate) struct RunnerToken;

impl Resource for RunnerToken {
    fn step(&self) -> StepName {
        StepName::ResourceClass
    }
    fn label(&self) -> &'static str {
        "runner token"
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
    fn delete<'a>(&'a self, ctx: &'a Ctx<'a>, t: &'a Teardown) -> BoxFuture<'a, R<Vec<Item>>> {
        Box::pin(async move {
            Ok(vec![
                super::secret::delete(ctx, ctx.names.runner_token_secret()).await?,
                match &t.resource_class {
                    Some(rc) => delete_tokens(ctx, rc).await?,
                    None => unknown_class("runner tokens", &ctx.names.token_nickname()),
                },
            ])
        })
    }
}

async fn converge(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<Item> {
    let name = ctx.names.runner_token_secret();
    let state = super::secret::find(ctx, &name)
        .await?
        .map(|Owned { it, ours }| (it, ours));
    if let Some((_, false)) = &state {
        return Err(not_ours("secret", &name, ctx));
    }
    if let Some((arn, true)) = &state
        && super::secret::secret_value(ctx, &name)
            .await?
            .is_some_and(|v| !v.trim().is_empty())
    {
        f.pool_mut().runner_token_secret_arn = Some(arn.clone());
        return Ok(Item::new("runner token secret", &name, Action::Keep).id(arn));
    }
    let action = if state.is_some() {
        Action::Update
    } else {
        Action::Create
    };
    if ctx.dry_run {
        return Ok(Item::new("runner token secret", &name, action).detail("a new runner token"));
    }
    // The token value is returned once: straight into the secret.
    let (token_id, token) =
        cci::create_token(ctx.circleci, &s.resource_class, &ctx.names.token_nickname()).await?;
    let arn = super::secret::write_secret(
        ctx,
        &name,
        state.is_some(),
        token.expose_secret(),
        &format!(
            "CircleCI runner token of {} (cci-scaler stack {})",
            s.resource_class, s.stack
        ),
    )
    .await?;
    f.pool_mut().runner_token_secret_arn = Some(arn.clone());
    // Tokens of ours that never reached the secret (an interrupted run) can no
    // longer be used by anyone: revoke them now that the new one is stored.
    let stale: Vec<_> = cci::list_tokens(ctx.circleci, &s.resource_class)
        .await?
        .into_iter()
        .filter(|t| t.nickname == ctx.names.token_nickname() && t.id != token_id)
        .collect();
    for t in &stale {
        cci::delete_token(ctx.circleci, &t.id).await?;
    }
    let mut detail = format!("runner token {token_id}");
    if !stale.is_empty() {
        detail.push_str(&format!(", {} stale token(s) revoked", stale.len()));
    }
    Ok(Item::new("runner token secret", &name, action)
        .id(arn)
        .detail(detail))
}

async fn delete_tokens(ctx: &Ctx<'_>, rc: &str) -> R<Item> {
    let nickname = ctx.names.token_nickname();
    let tokens = match cci::list_tokens(ctx.circleci, rc).await {
        Ok(t) => t,
        Err(crate::circleci::CircleCiError::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let ours: Vec<_> = tokens
        .into_iter()
        .filter(|t| t.nickname == nickname)
        .collect();
    if ours.is_empty() {
        return Ok(Item::new("runner tokens", &nickname, Action::Absent));
    }
    if !ctx.dry_run {
        for t in &ours {
            cci::delete_token(ctx.circleci, &t.id).await?;
        }
    }
    Ok(Item::new("runner tokens", &nickname, Action::Delete)
        .detail(format!("{} token(s)", ours.len())))
}
