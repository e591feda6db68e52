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
