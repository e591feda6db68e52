//! Secrets Manager helpers shared by the runner-token and scaler secrets.

use super::common::*;

/// A secret's ARN.
pub(crate) async fn find(ctx: &Ctx<'_>, name: &str) -> R<Option<Owned<String>>> {
    match ctx
        .aws
        .secrets
        .describe_secret()
        .secret_id(name)
        .send()
        .await
    {
        Ok(d) => {
            let ours = tagged(
                d.tags()
                    .iter()
                    .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or(""))),
                &ctx.names.stack,
            );
            Ok(Some(Owned {
                it: d.arn().unwrap_or_default().to_string(),
                ours,
            }))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(aws_err("secretsmanager:DescribeSecret", name)(e)),
    }
}

pub(crate) async fn secret_value(ctx: &Ctx<'_>, name: &str) -> R<Option<String>> {
    match ctx
        .aws
        .secrets
        .get_secret_value()
        .secret_id(name)
        .send()
        .await
    {
        Ok(v) => Ok(v.secret_string().map(String::from)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(aws_err("secretsmanager:GetSecretValue", name)(e)),
    }
}

/// Create the secret with `value`, or put `value` into our existing one.
pub(crate) async fn write_secret(
    ctx: &Ctx<'_>,
    name: &str,
    exists: bool,
    value: &str,
    description: &str,
) -> R<String> {
    let sm = &ctx.aws.secrets;
    if exists {
        let out = sm
            .put_secret_value()
            .secret_id(name)
            .secret_string(value)
            .send()
            .await
            .map_err(aws_err("secretsmanager:PutSecretValue", name))?;
        Ok(out.arn().unwrap_or_default().to_string())
    } else {
        let out = sm
            .create_secret()
            .name(name)
            .description(description)
            .secret_string(value)
            .set_tags(Some(
                tags(ctx)
                    .into_iter()
                    .map(|(k, v)| {
                        aws_sdk_secretsmanager::types::Tag::builder()
                            .key(k)
                            .value(v)
                            .build()
                    })
                    .collect(),
            ))
            .send()
            .await
            .map_err(aws_err("secretsmanager:CreateSecret", name))?;
        Ok(out.arn().unwrap_or_default().to_string())
    }
}

pub(crate) async fn delete(ctx: &Ctx<'_>, name: String) -> R<Item> {
    let sm = &ctx.aws.secrets;
    let Some(Owned { it: arn, ours }) = find(ctx, &name).await? else {
        return Ok(Item::new("secret", &name, Action::Absent));
    };
    if !ours {
        return Ok(Item::new("secret", &name, Action::Foreign).id(arn));
    }
    if !ctx.dry_run {
        sm.delete_secret()
            .secret_id(&name)
            .force_delete_without_recovery(true)
            .send()
            .await
            .map_err(aws_err("secretsmanager:DeleteSecret", &name))?;
    }
    Ok(Item::new("secret", &name, Action::Delete).id(arn))
}
