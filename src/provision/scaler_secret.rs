//! The scaler's secret: the CircleCI personal token and the resource class,
//! read by the Lambda. Never printed.

use secrecy::ExposeSecret;

use super::common::*;

/// The scaler secret.
pub(crate) struct ScalerSecret;

impl Resource for ScalerSecret {
    fn step(&self) -> StepName {
        StepName::Secrets
    }
    fn label(&self) -> &'static str {
        "scaler secret"
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
            Ok(vec![
                super::secret::delete(ctx, ctx.names.scaler_secret()).await?,
            ])
        })
    }
}

async fn converge(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<Item> {
    let name = ctx.names.scaler_secret();
    let want = json!({"resource_class": s.resource_class, "circle_token": ctx.personal_token.expose_secret()});
    let state = super::secret::find(ctx, &name)
        .await?
        .map(|Owned { it, ours }| (it, ours));
    let action = match &state {
        Some((_, false)) => return Err(not_ours("secret", &name, ctx)),
        Some((arn, true)) => {
            let current = super::secret::secret_value(ctx, &name).await?;
            let same = current
                .and_then(|c| serde_json::from_str::<Value>(&c).ok())
                .is_some_and(|c| c == want);
            f.scaler_secret_arn = Some(arn.clone());
            if same {
                return Ok(Item::new("scaler secret", &name, Action::Keep).id(arn));
            }
            Action::Update
        }
        None => Action::Create,
    };
    if ctx.dry_run {
        return Ok(Item::new("scaler secret", &name, action));
    }
    let arn = super::secret::write_secret(
        ctx,
        &name,
        state.is_some(),
        &want.to_string(),
        &format!(
            "CircleCI personal token for scaling {} (cci-scaler stack {})",
            s.resource_class, s.stack
        ),
    )
    .await?;
    f.scaler_secret_arn = Some(arn.clone());
    Ok(Item::new("scaler secret", &name, action).id(arn))
}

/// The resource class a stack was created for, as it recorded it: in its
/// scaler secret, else in its Lambda's environment. `None` when neither is
/// there (a stack removed, or interrupted before either was made).
pub async fn recorded_resource_class(ctx: &Ctx<'_>) -> R<Option<String>> {
    let name = ctx.names.scaler_secret();
    if let Some(Owned { ours: true, .. }) = super::secret::find(ctx, &name).await? {
        use crate::aws::secrets::{SecretError, read_scaler_secret};
        match read_scaler_secret(&ctx.aws.secrets, &name).await {
            Ok(secret) if secret.resource_class.is_some() => return Ok(secret.resource_class),
            Ok(_) | Err(SecretError::NotFound(_)) => {}
            Err(SecretError::Aws(e)) => return Err(e.into()),
            Err(e) => return Err(ProvisionError::Invalid(e.to_string())),
        }
    }
    if let Some(Owned { it, ours: true }) = super::function::find(ctx).await?
        && let Some(rc) = it
            .configuration()
            .and_then(|c| c.environment())
            .and_then(|e| e.variables())
            .and_then(|v| v.get("CCI_SCALER_RESOURCE_CLASS"))
    {
        return Ok(Some(rc.clone()));
    }
    Ok(None)
}
