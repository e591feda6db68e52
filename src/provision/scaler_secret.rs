//! The scaler's secret: the CircleCI personal token and the resource class,
//! read by the Lambda. Never printed.

use secrecy::ExposeSecret;

use super::common::*;

/// The scaler secret.
pub(crate) struct ScalerSecret;

/// Set in the secret when it holds CIRCLECI_SCALER_TOKEN, not init's token.
pub(crate) const DEDICATED_TOKEN: &str = "dedicated_token";

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

/// The secret's value: the tutorial's shape (the first pool's class), and,
/// for a stack with `[[pool]]` tables, every pool (those being removed
/// marked so).
/// `current`: the secret's value now, whose dedicated token is kept unless
/// another is given.
fn wanted(ctx: &Ctx<'_>, s: &StackSettings, f: &Found, current: Option<&Value>) -> Value {
    let kept = current
        .filter(|c| c[DEDICATED_TOKEN] == true)
        .and_then(|c| c["circle_token"].as_str());
    let token = match (&ctx.scaler_token, kept) {
        (Some(t), _) => t.expose_secret(),
        (None, Some(t)) => t,
        (None, None) => ctx.personal_token.expose_secret(),
    };
    let mut want = json!({"resource_class": s.resource_class, "circle_token": token});
    // A token other than the one that ran init (an organisation admin's):
    // recorded, so that `status` need not warn and a later init keeps it.
    if token != ctx.personal_token.expose_secret() {
        want[DEDICATED_TOKEN] = json!(true);
    }
    if f.pools.iter().any(|p| p.name.is_some()) || !f.removing.is_empty() {
        let mut pools: Vec<Value> = f
            .pools
            .iter()
            .map(|p| json!({"name": p.name, "resource_class": p.resource_class}))
            .collect();
        pools.extend(f.removing.iter().map(
            |p| json!({"name": p.name, "resource_class": p.resource_class, "removing": true}),
        ));
        want["pools"] = Value::Array(pools);
    }
    want
}

async fn converge(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<Item> {
    let name = ctx.names.scaler_secret();
    let state = super::secret::find(ctx, &name)
        .await?
        .map(|Owned { it, ours }| (it, ours));
    let current = match &state {
        Some((_, true)) => super::secret::secret_value(ctx, &name)
            .await?
            .and_then(|c| serde_json::from_str::<Value>(&c).ok()),
        _ => None,
    };
    let want = wanted(ctx, s, f, current.as_ref());
    let item = |action| {
        let i = Item::new("scaler secret", &name, action);
        if want[DEDICATED_TOKEN] == true {
            i.detail("a dedicated user's token")
        } else {
            i.detail(format!(
                "init's own token, an organisation admin's: set {} to a dedicated user's (README, Security)",
                crate::token::SCALER_TOKEN_VAR
            ))
        }
    };
    let action = match &state {
        Some((_, false)) => return Err(not_ours("secret", &name, ctx)),
        Some((arn, true)) => {
            let same = current.as_ref() == Some(&want);
            f.scaler_secret_arn = Some(arn.clone());
            if same {
                return Ok(item(Action::Keep).id(arn));
            }
            Action::Update
        }
        None => Action::Create,
    };
    if ctx.dry_run {
        return Ok(item(action));
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
    Ok(item(action).id(arn))
}

/// Whether the scaler secret holds init's own token (an organisation
/// admin's) rather than a dedicated user's; `None`: no readable secret.
pub(crate) async fn holds_init_token(ctx: &Ctx<'_>) -> R<Option<bool>> {
    let value = super::secret::secret_value(ctx, &ctx.names.scaler_secret()).await?;
    Ok(value
        .and_then(|v| serde_json::from_str::<Value>(&v).ok())
        .map(|v| v[DEDICATED_TOKEN] != true))
}

/// The stack's record of its pools, from the scaler secret's value.
fn pools_of(value: &Value) -> Option<Vec<PoolRecord>> {
    if let Some(list) = value.get("pools").and_then(Value::as_array) {
        return Some(
            list.iter()
                .map(|p| PoolRecord {
                    name: p["name"].as_str().map(String::from),
                    resource_class: p["resource_class"].as_str().map(String::from),
                })
                .collect(),
        );
    }
    let rc = value.get("resource_class").and_then(Value::as_str)?;
    Some(vec![PoolRecord {
        name: None,
        resource_class: Some(rc.to_string()),
    }])
}

/// The pools a stack was created with, as it recorded them: in its scaler
/// secret, else in its Lambda's environment. Empty when neither is there (a
/// stack removed, or interrupted before either was made).
pub async fn recorded_pools(ctx: &Ctx<'_>) -> R<Vec<PoolRecord>> {
    let mut pools = recorded(ctx).await?;
    // Pools the record lacks (removed by hand, or a record that is gone) but
    // whose resources are still tagged: found, with their class unknown.
    for name in super::launch_template::tagged_pools(ctx).await? {
        if !pools
            .iter()
            .any(|p| p.name.as_deref() == Some(name.as_str()))
        {
            pools.push(PoolRecord {
                name: Some(name),
                resource_class: None,
            });
        }
    }
    Ok(pools)
}

async fn recorded(ctx: &Ctx<'_>) -> R<Vec<PoolRecord>> {
    let name = ctx.names.scaler_secret();
    if let Some(Owned { ours: true, .. }) = super::secret::find(ctx, &name).await?
        && let Some(text) = super::secret::secret_value(ctx, &name).await?
    {
        let value: Value = serde_json::from_str(&text).map_err(|_| {
            ProvisionError::Invalid(format!(
                "secret '{name}' is malformed: it is not valid JSON (run init again to rewrite it)"
            ))
        })?;
        if let Some(pools) = pools_of(&value) {
            return Ok(pools);
        }
    }
    if let Some(Owned { it, ours: true }) = super::function::find(ctx).await?
        && let Some(vars) = it
            .configuration()
            .and_then(|c| c.environment())
            .and_then(|e| e.variables())
    {
        if let Some(list) = vars.get("CCI_SCALER_POOLS")
            && let Ok(Value::Array(list)) = serde_json::from_str::<Value>(list)
        {
            return Ok(list
                .iter()
                .map(|p| PoolRecord {
                    name: p["name"].as_str().map(String::from),
                    resource_class: p["resource_class"].as_str().map(String::from),
                })
                .collect());
        }
        if let Some(rc) = vars.get("CCI_SCALER_RESOURCE_CLASS") {
            return Ok(vec![PoolRecord {
                name: None,
                resource_class: Some(rc.clone()),
            }]);
        }
    }
    Ok(Vec::new())
}

/// Drop pools from the record once they are removed.
pub(crate) async fn forget(ctx: &Ctx<'_>, gone: &[PoolRecord]) -> R<Option<Item>> {
    let name = ctx.names.scaler_secret();
    let Some(Owned {
        it: arn,
        ours: true,
    }) = super::secret::find(ctx, &name).await?
    else {
        return Ok(None);
    };
    let Some(mut value) = super::secret::secret_value(ctx, &name)
        .await?
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    else {
        return Ok(None);
    };
    let Some(list) = value.get_mut("pools").and_then(Value::as_array_mut) else {
        return Ok(None);
    };
    let before = list.len();
    list.retain(|p| !gone.iter().any(|g| p["name"].as_str() == g.name.as_deref()));
    let dropped = before - list.len();
    if dropped == 0 {
        return Ok(None);
    }
    if !ctx.dry_run {
        super::secret::write_secret(ctx, &name, true, &value.to_string(), "").await?;
    }
    Ok(Some(
        Item::new("scaler secret", &name, Action::Update)
            .id(arn)
            .detail(format!("{dropped} removed pool(s) no longer recorded")),
    ))
}
