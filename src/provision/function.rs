//! The scaling Lambda (`provided.al2023`, the `cci-scaler-lambda` binary as
//! `bootstrap`), reserved concurrency 1; IAM propagation is waited out.

use super::artifact::Artifact;
use super::common::*;

/// The scaling Lambda; converging it needs the artifact.
pub(crate) struct Function<'x> {
    pub artifact: Option<&'x Artifact>,
}

impl Resource for Function<'_> {
    fn step(&self) -> StepName {
        StepName::Lambda
    }
    fn label(&self) -> &'static str {
        "scaling lambda"
    }
    fn converge<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        s: &'a StackSettings,
        f: &'a mut Found,
    ) -> BoxFuture<'a, R<Item>> {
        Box::pin(async move {
            let artifact = self.artifact.ok_or_else(|| {
                ProvisionError::Invalid("no Lambda artifact to converge the function with".into())
            })?;
            converge(ctx, s, artifact, f).await
        })
    }
    fn delete<'a>(&'a self, ctx: &'a Ctx<'a>, _t: &'a Teardown) -> BoxFuture<'a, R<Vec<Item>>> {
        Box::pin(async move { Ok(vec![delete(ctx).await?]) })
    }
}

pub(crate) async fn find(
    ctx: &Ctx<'_>,
) -> R<Option<Owned<aws_sdk_lambda::operation::get_function::GetFunctionOutput>>> {
    let name = ctx.names.function();
    match ctx
        .aws
        .lambda
        .get_function()
        .function_name(&name)
        .send()
        .await
    {
        Ok(out) => {
            let ours = out
                .tags()
                .is_some_and(|t| t.get(STACK_TAG) == Some(&ctx.names.stack));
            Ok(Some(Owned { it: out, ours }))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(aws_err("lambda:GetFunction", &name)(e)),
    }
}

fn lambda_env(ctx: &Ctx<'_>, s: &StackSettings, f: &Found) -> HashMap<String, String> {
    let secs = |d: Duration| format!("{}s", d.as_secs());
    let mut env = HashMap::new();
    env.insert(
        "CCI_SCALER_SECRET_ID".to_string(),
        f.scaler_secret_arn
            .clone()
            .unwrap_or_else(|| PENDING.into()),
    );
    // One pool: the two variables of a stack made before pools (so such a
    // stack's function does not change); several: the list.
    match f.pools.as_slice() {
        [p] => {
            env.insert("CCI_SCALER_ASG".into(), p.group.clone());
            env.insert("CCI_SCALER_RESOURCE_CLASS".into(), s.resource_class.clone());
            if !p.headroom.is_empty() {
                env.insert("CCI_SCALER_HEADROOM".into(), json!(p.headroom).to_string());
            }
            if let Some(a) = &p.auto {
                env.insert("CCI_SCALER_AUTO_HEADROOM".into(), json!(a).to_string());
            }
            if let Some(m) = &p.model {
                env.insert("CCI_SCALER_MODEL".into(), json!(m).to_string());
            }
        }
        pools => {
            let list: Vec<Value> = pools
                .iter()
                .map(|p| {
                    let mut v = json!({
                        "name": p.name.clone().unwrap_or_else(|| "default".into()),
                        "asg": p.group,
                        "resource_class": p.resource_class,
                    });
                    if !p.headroom.is_empty() {
                        v["headroom"] = json!(p.headroom);
                    }
                    if let Some(a) = &p.auto {
                        v["auto"] = json!(a);
                    }
                    if let Some(m) = &p.model {
                        v["model"] = json!(m);
                    }
                    v
                })
                .collect();
            env.insert("CCI_SCALER_POOLS".into(), Value::Array(list).to_string());
        }
    }
    env.insert("CCI_SCALER_STACK".into(), ctx.names.stack.clone());
    env.insert("CCI_SCALER_POLL_INTERVAL".into(), secs(s.poll_interval));
    env.insert("CCI_SCALER_POLL_WINDOW".into(), secs(s.poll_window));
    env.insert("CCI_SCALER_BOOT_TIMEOUT".into(), secs(s.boot_timeout));
    if let Some(n) = s.circleci_concurrency {
        env.insert("CCI_SCALER_CIRCLECI_CONCURRENCY".into(), n.to_string());
    }
    if let Some(org) = &s.usage_org {
        env.insert("CCI_SCALER_USAGE_ORG".into(), org.clone());
        env.insert(
            "CCI_SCALER_USAGE_RECORD".into(),
            crate::names::usage_record(&ctx.names.stack),
        );
    }
    env.insert(
        "CIRCLECI_RUNNER_API_URL".into(),
        ctx.circleci.base_url().trim_end_matches('/').to_string(),
    );
    env
}

/// Above the poll window plus one CircleCI request.
pub(crate) fn lambda_timeout(s: &StackSettings) -> i32 {
    (s.poll_window.as_secs() + 10) as i32
}

async fn converge(ctx: &Ctx<'_>, s: &StackSettings, artifact: &Artifact, f: &mut Found) -> R<Item> {
    use aws_sdk_lambda::types as lt;
    let name = ctx.names.function();
    let lambda = &ctx.aws.lambda;
    let env = lambda_env(ctx, s, f);
    let timeout = lambda_timeout(s);
    let item = match find(ctx).await? {
        Some(Owned { ours: false, .. }) => return Err(not_ours("Lambda function", &name, ctx)),
        Some(Owned { it: out, .. }) => {
            let c = out
                .configuration()
                .cloned()
                .unwrap_or_else(|| lt::FunctionConfiguration::builder().build());
            f.function_arn = c.function_arn().map(String::from);
            let code_same = c.code_sha256() == Some(artifact.sha256.as_str());
            let current_env = c
                .environment()
                .and_then(|e| e.variables())
                .cloned()
                .unwrap_or_default();
            let config_same = current_env == env
                && c.timeout() == Some(timeout)
                && c.role() == f.scaler_role_arn.as_deref()
                && c.handler() == Some("bootstrap");
            let concurrency = lambda
                .get_function_concurrency()
                .function_name(&name)
                .send()
                .await
                .map_err(aws_err("lambda:GetFunctionConcurrency", &name))?
                .reserved_concurrent_executions();
            let mut changed = Vec::new();
            if !code_same {
                changed.push("code");
            }
            if !config_same {
                changed.push("configuration");
            }
            if concurrency != Some(1) {
                changed.push("reserved concurrency");
            }
            if changed.is_empty() {
                Item::new("Lambda function", &name, Action::Keep)
            } else {
                if !ctx.dry_run {
                    if !code_same {
                        lambda
                            .update_function_code()
                            .function_name(&name)
                            .zip_file(aws_sdk_lambda::primitives::Blob::new(artifact.zip.clone()))
                            .send()
                            .await
                            .map_err(aws_err("lambda:UpdateFunctionCode", &name))?;
                    }
                    if !config_same {
                        lambda
                            .update_function_configuration()
                            .function_name(&name)
                            .set_role(f.scaler_role_arn.clone())
                            .handler("bootstrap")
                            .timeout(timeout)
                            .environment(
                                lt::Environment::builder().set_variables(Some(env)).build(),
                            )
                            .send()
                            .await
                            .map_err(aws_err("lambda:UpdateFunctionConfiguration", &name))?;
                    }
                    if concurrency != Some(1) {
                        reserve_one(ctx, &name).await?;
                    }
                }
                Item::new("Lambda function", &name, Action::Update).detail(changed.join(", "))
            }
        }
        None => {
            if ctx.dry_run {
                return Ok(Item::new("Lambda function", &name, Action::Create)
                    .detail(artifact.source.clone()));
            }
            let role = f.scaler_role_arn.clone().unwrap_or_default();
            let create = || async {
                lambda
                    .create_function()
                    .function_name(&name)
                    .runtime(lt::Runtime::Providedal2023)
                    .architectures(lt::Architecture::X8664)
                    .handler("bootstrap")
                    .role(&role)
                    .code(
                        lt::FunctionCode::builder()
                            .zip_file(aws_sdk_lambda::primitives::Blob::new(artifact.zip.clone()))
                            .build(),
                    )
                    .timeout(timeout)
                    .memory_size(128)
                    .description(match f.pools.as_slice() {
                        [p] => format!("cci-scaler: sizes {} to the CircleCI queue", p.group),
                        pools => format!(
                            "cci-scaler: sizes the {} pools of stack {} to their CircleCI queues",
                            pools.len(),
                            ctx.names.stack
                        ),
                    })
                    .environment(
                        lt::Environment::builder()
                            .set_variables(Some(env.clone()))
                            .build(),
                    )
                    .tags(STACK_TAG, &ctx.names.stack)
                    .send()
                    .await
            };
            // IAM is eventually consistent: a new role may not be assumable yet.
            let out = with_patience(
                ctx.progress,
                "the new IAM role to become assumable by Lambda",
                Duration::from_secs(60),
                |e: &aws_sdk_lambda::error::SdkError<_, _>| {
                    e.as_service_error().is_some_and(
                        |s: &aws_sdk_lambda::operation::create_function::CreateFunctionError| {
                            s.message().unwrap_or("").contains("cannot be assumed")
                        },
                    )
                },
                create,
            )
            .await
            .map_err(aws_err("lambda:CreateFunction", &name))?;
            f.function_arn = out.function_arn().map(String::from);
            reserve_one(ctx, &name).await?;
            Item::new("Lambda function", &name, Action::Create)
        }
    };
    let mut item = item;
    if let Some(a) = &f.function_arn {
        item = item.id(a);
    }
    Ok(item)
}

async fn reserve_one(ctx: &Ctx<'_>, name: &str) -> R<()> {
    ctx.aws
        .lambda
        .put_function_concurrency()
        .function_name(name)
        .reserved_concurrent_executions(1)
        .send()
        .await
        .map_err(aws_err("lambda:PutFunctionConcurrency", name))?;
    Ok(())
}

async fn delete(ctx: &Ctx<'_>) -> R<Item> {
    let name = ctx.names.function();
    let Some(f) = find(ctx).await? else {
        return Ok(Item::new("Lambda function", &name, Action::Absent));
    };
    let arn =
        f.it.configuration()
            .and_then(|c| c.function_arn())
            .unwrap_or_default()
            .to_string();
    if !f.ours {
        return Ok(Item::new("Lambda function", &name, Action::Foreign).id(arn));
    }
    if !ctx.dry_run {
        ctx.aws
            .lambda
            .delete_function()
            .function_name(&name)
            .send()
            .await
            .map_err(aws_err("lambda:DeleteFunction", &name))?;
    }
    Ok(Item::new("Lambda function", &name, Action::Delete).id(arn))
}

/// Stop scaling removed pools: drop them from the function's pool list.
pub(crate) async fn forget(ctx: &Ctx<'_>, gone: &[PoolRecord]) -> R<Option<Item>> {
    use aws_sdk_lambda::types as lt;
    let name = ctx.names.function();
    let Some(Owned { it, ours: true }) = find(ctx).await? else {
        return Ok(None);
    };
    let Some(mut env) = it
        .configuration()
        .and_then(|c| c.environment())
        .and_then(|e| e.variables())
        .cloned()
    else {
        return Ok(None);
    };
    let Some(Ok(Value::Array(mut list))) = env
        .get("CCI_SCALER_POOLS")
        .map(|v| serde_json::from_str::<Value>(v))
    else {
        return Ok(None);
    };
    let before = list.len();
    list.retain(|p| !gone.iter().any(|g| g.name.as_deref() == p["name"].as_str()));
    let dropped = before - list.len();
    if dropped == 0 {
        return Ok(None);
    }
    env.insert("CCI_SCALER_POOLS".into(), Value::Array(list).to_string());
    if !ctx.dry_run {
        ctx.aws
            .lambda
            .update_function_configuration()
            .function_name(&name)
            .environment(lt::Environment::builder().set_variables(Some(env)).build())
            .send()
            .await
            .map_err(aws_err("lambda:UpdateFunctionConfiguration", &name))?;
    }
    Ok(Some(
        Item::new("Lambda function", &name, Action::Update)
            .detail(format!("{dropped} removed pool(s) no longer scaled")),
    ))
}
