//! `init`: create or converge every resource of the stack, in dependency order.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_ec2::types as ec2t;
use aws_sdk_iam::error::ProvideErrorMetadata;
use base64::Engine;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::artifact::Artifact;
use super::circleci_admin as cci;
use super::find::{self, Owned};
use super::{Action, Ctx, Item, ProvisionError, STACK_TAG, with_patience};
use crate::aws::AwsError;
use crate::config::{ImageSource, StackSettings};
use crate::render::{UserDataInput, render_user_data};

pub(crate) type R<T> = Result<T, ProvisionError>;

/// Map an SDK error into ours, naming the operation and the resource.
pub(crate) fn aws_err<'a, E>(
    op: &'static str,
    target: &'a str,
) -> impl FnOnce(E) -> ProvisionError + 'a
where
    E: std::error::Error + 'static,
{
    move |e| ProvisionError::Aws(AwsError::call(op, target, &e))
}

/// The error code of an SDK error (`NoSuchEntity`, `ResourceNotFoundException`...).
pub(crate) fn code<E: ProvideErrorMetadata>(e: &E) -> &str {
    e.code().unwrap_or("")
}

pub(crate) fn is_not_found<E: ProvideErrorMetadata>(e: &E) -> bool {
    let c = code(e);
    c.contains("NotFound") || c == "NoSuchEntity" || c.contains("ResourceNotFound")
}

fn not_ours(kind: &'static str, name: &str, ctx: &Ctx) -> ProvisionError {
    ProvisionError::NotOurs {
        kind,
        name: name.to_string(),
        stack: ctx.names.stack.clone(),
    }
}

fn step<T>(name: &'static str, r: R<T>) -> R<T> {
    r.map_err(|e| match e {
        e @ ProvisionError::NotOurs { .. } => e,
        e => ProvisionError::Step {
            step: name,
            source: Box::new(e),
        },
    })
}

/// What earlier steps found or made, for later ones.
#[derive(Default)]
struct Found {
    account: String,
    subnets: Vec<String>,
    vpc: String,
    security_group: Option<String>,
    image: String,
    root_device: String,
    runner_token_secret_arn: Option<String>,
    scaler_secret_arn: Option<String>,
    launch_template_id: Option<String>,
    group_arn: Option<String>,
    scaler_role_arn: Option<String>,
    function_arn: Option<String>,
}

const PENDING: &str = "(pending)";

/// A piece of `init` that can be run (or repeated) on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepName {
    /// The CircleCI resource class and its runner token (stored in its secret).
    ResourceClass,
    /// The scaler's secret (CircleCI personal token and resource class).
    Secrets,
    /// The runner role, its instance profile and the scaler's role.
    Iam,
    /// The runners' security group and launch template.
    LaunchTemplate,
    /// The Auto Scaling group.
    Group,
    /// The scaling Lambda.
    Lambda,
    /// The EventBridge schedule that runs the Lambda.
    Schedule,
}

impl StepName {
    fn flag(&self) -> &'static str {
        match self {
            StepName::ResourceClass => "resource-class",
            StepName::Secrets => "secrets",
            StepName::Iam => "iam",
            StepName::LaunchTemplate => "launch-template",
            StepName::Group => "group",
            StepName::Lambda => "lambda",
            StepName::Schedule => "schedule",
        }
    }
}

fn need(have: &Option<String>, step: StepName, what: &str, prereq: StepName) -> R<()> {
    match have {
        Some(v) if v != PENDING => Ok(()),
        _ => Err(ProvisionError::Invalid(format!(
            "step {} needs the {what}: run `cci-scaler step {}` (or `cci-scaler init`) first",
            step.flag(),
            prereq.flag()
        ))),
    }
}

/// Create or converge the whole stack (`only: None`), or one step of it: the
/// other steps then only read, to find what the step builds on. Returns one
/// item per resource touched.
pub async fn init(
    ctx: &Ctx<'_>,
    s: &StackSettings,
    artifact: &Artifact,
    only: Option<StepName>,
) -> R<Vec<Item>> {
    let mut items = Vec::new();
    let mut f = Found::default();
    let reader = Ctx {
        dry_run: true,
        ..ctx.clone()
    };
    macro_rules! run {
        ($group:expr, $name:literal, |$c:ident| $e:expr) => {{
            let selected = only.is_none_or(|o| o == $group);
            let $c: &Ctx<'_> = if selected { ctx } else { &reader };
            if selected {
                ctx.progress.start($name);
            }
            let item = step($name, $e.await)?;
            if selected {
                ctx.progress.done(&item);
                items.push(item);
            }
        }};
    }
    let requires = |step: StepName, f: &Found| -> R<()> {
        if only != Some(step) {
            return Ok(());
        }
        match step {
            StepName::Iam => {
                need(
                    &f.runner_token_secret_arn,
                    step,
                    "runner token secret",
                    StepName::ResourceClass,
                )?;
                need(
                    &f.scaler_secret_arn,
                    step,
                    "scaler secret",
                    StepName::Secrets,
                )?;
                need(&f.group_arn, step, "Auto Scaling group", StepName::Group)
            }
            StepName::Group => need(
                &f.launch_template_id,
                step,
                "launch template",
                StepName::LaunchTemplate,
            ),
            StepName::Lambda => {
                need(&f.scaler_role_arn, step, "scaler role", StepName::Iam)?;
                need(
                    &f.scaler_secret_arn,
                    step,
                    "scaler secret",
                    StepName::Secrets,
                )
            }
            StepName::Schedule => need(&f.function_arn, step, "Lambda function", StepName::Lambda),
            _ => Ok(()),
        }
    };

    // Reads that fail fast on bad settings, before anything is written.
    ctx.progress.start("checking settings against AWS");
    f.account = step("account", account(ctx).await)?;
    step("subnets", subnets(ctx, s, &mut f).await)?;
    step("image", image(ctx, s, &mut f).await)?;
    let user_data = render_user_data(&UserDataInput {
        stack: s.stack.clone(),
        group: ctx.names.group(),
        region: ctx.region.clone(),
        resource_class: s.resource_class.clone(),
        token_secret_id: ctx.names.runner_token_secret(),
        idle_timeout: s.runner.idle_timeout.clone(),
        max_run_time: s.runner.max_run_time.clone(),
        working_directory: s.runner.working_directory.clone(),
        setup_script: s.runner.setup_script.clone(),
        apt_packages: s.runner.apt_packages.clone(),
        embedded_token: None,
    })?;
    let class = step(
        "resource class",
        cci::find_resource_class(ctx.circleci, &s.resource_class)
            .await
            .map_err(Into::into),
    )?;

    use StepName as S;
    run!(S::ResourceClass, "resource class", |c| resource_class(
        c, s, class
    ));
    run!(S::ResourceClass, "runner token", |c| runner_token(
        c, s, &mut f
    ));
    run!(S::Secrets, "scaler secret", |c| scaler_secret(c, s, &mut f));
    run!(S::LaunchTemplate, "security group", |c| security_group(
        c, &mut f
    ));
    // The group's ARN is known before IAM runs only when the group exists.
    if only == Some(S::Iam) {
        f.group_arn = find::group(ctx)
            .await?
            .and_then(|g| g.it.auto_scaling_group_arn().map(String::from));
    }
    requires(S::Iam, &f)?;
    run!(S::Iam, "runner role", |c| runner_role(c, &f));
    run!(S::Iam, "instance profile", |c| instance_profile(c));
    run!(S::LaunchTemplate, "launch template", |c| launch_template(
        c, s, &user_data, &mut f
    ));
    requires(S::Group, &f)?;
    run!(S::Group, "auto scaling group", |c| group(c, s, &mut f));
    run!(S::Iam, "scaler role", |c| scaler_role(c, &mut f));
    requires(S::Lambda, &f)?;
    run!(S::Lambda, "scaling lambda", |c| function(
        c, s, artifact, &mut f
    ));
    requires(S::Schedule, &f)?;
    run!(S::Schedule, "schedule", |c| schedule(c, &f));
    Ok(items)
}

async fn account(ctx: &Ctx<'_>) -> R<String> {
    let out = ctx
        .aws
        .sts
        .get_caller_identity()
        .send()
        .await
        .map_err(aws_err("sts:GetCallerIdentity", "the caller"))?;
    Ok(out.account().unwrap_or_default().to_string())
}

async fn subnets(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<()> {
    let ec2 = &ctx.aws.ec2;
    let found = if s.subnets.is_empty() {
        let vpcs = ec2
            .describe_vpcs()
            .filters(
                ec2t::Filter::builder()
                    .name("isDefault")
                    .values("true")
                    .build(),
            )
            .send()
            .await
            .map_err(aws_err("ec2:DescribeVpcs", "the default VPC"))?;
        let vpc = vpcs
            .vpcs()
            .first()
            .and_then(|v| v.vpc_id())
            .ok_or_else(|| {
                ProvisionError::Invalid(format!(
                    "no default VPC in {}: pass --subnet (repeatable) or set `subnets`",
                    ctx.region
                ))
            })?
            .to_string();
        ec2.describe_subnets()
            .filters(ec2t::Filter::builder().name("vpc-id").values(&vpc).build())
            .filters(
                ec2t::Filter::builder()
                    .name("default-for-az")
                    .values("true")
                    .build(),
            )
            .send()
            .await
            .map_err(aws_err("ec2:DescribeSubnets", "the default subnets"))?
            .subnets()
            .to_vec()
    } else {
        ec2.describe_subnets()
            .filters(
                ec2t::Filter::builder()
                    .name("subnet-id")
                    .set_values(Some(s.subnets.clone()))
                    .build(),
            )
            .send()
            .await
            .map_err(aws_err("ec2:DescribeSubnets", "the given subnets"))?
            .subnets()
            .to_vec()
    };
    for want in &s.subnets {
        if !found.iter().any(|sn| sn.subnet_id() == Some(want.as_str())) {
            return Err(ProvisionError::Invalid(format!(
                "subnet {want} not found in {}: check --subnet and --region",
                ctx.region
            )));
        }
    }
    let mut ids: Vec<String> = found
        .iter()
        .filter_map(|sn| sn.subnet_id().map(String::from))
        .collect();
    ids.sort();
    let vpcs: std::collections::BTreeSet<&str> =
        found.iter().filter_map(|sn| sn.vpc_id()).collect();
    if ids.is_empty() {
        return Err(ProvisionError::Invalid(format!(
            "no subnets to launch into in {}",
            ctx.region
        )));
    }
    if vpcs.len() > 1 {
        return Err(ProvisionError::Invalid(format!(
            "the subnets are in {} VPCs; give subnets of one VPC",
            vpcs.len()
        )));
    }
    f.vpc = vpcs.into_iter().next().unwrap_or_default().to_string();
    f.subnets = ids;
    Ok(())
}

async fn image(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<()> {
    f.image = match &s.image {
        ImageSource::Ami(id) => id.clone(),
        ImageSource::SsmParameter(name) => ctx
            .aws
            .ssm
            .get_parameter()
            .name(name)
            .send()
            .await
            .map_err(|e| {
                if is_not_found(&e) || code(&e) == "ParameterNotFound" {
                    ProvisionError::Invalid(format!(
                        "image parameter {name} not found in {}: pass --image with an AMI id or another parameter",
                        ctx.region
                    ))
                } else {
                    ProvisionError::Aws(AwsError::call("ssm:GetParameter", name, &e))
                }
            })?
            .parameter()
            .and_then(|p| p.value())
            .unwrap_or_default()
            .to_string(),
    };
    let images = ctx
        .aws
        .ec2
        .describe_images()
        .image_ids(&f.image)
        .send()
        .await
        .map_err(|e| {
            if code(&e).starts_with("InvalidAMIID") {
                ProvisionError::Invalid(format!("image {} not found in {}", f.image, ctx.region))
            } else {
                ProvisionError::Aws(AwsError::call("ec2:DescribeImages", &f.image, &e))
            }
        })?;
    let img = images.images().first().ok_or_else(|| {
        ProvisionError::Invalid(format!("image {} not found in {}", f.image, ctx.region))
    })?;
    f.root_device = img.root_device_name().unwrap_or("/dev/sda1").to_string();
    Ok(())
}

async fn resource_class(
    ctx: &Ctx<'_>,
    s: &StackSettings,
    class: Option<cci::ResourceClass>,
) -> R<Item> {
    if let Some(c) = class {
        return Ok(Item::new("resource class", &s.resource_class, Action::Keep).id(c.id));
    }
    if ctx.dry_run {
        return Ok(Item::new(
            "resource class",
            &s.resource_class,
            Action::Create,
        ));
    }
    let c = cci::create_resource_class(ctx.circleci, &s.resource_class, &s.description).await?;
    Ok(Item::new("resource class", &s.resource_class, Action::Create).id(c.id))
}

async fn secret_value(ctx: &Ctx<'_>, name: &str) -> R<Option<String>> {
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
async fn write_secret(
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
            .tags(
                aws_sdk_secretsmanager::types::Tag::builder()
                    .key(STACK_TAG)
                    .value(&ctx.names.stack)
                    .build(),
            )
            .send()
            .await
            .map_err(aws_err("secretsmanager:CreateSecret", name))?;
        Ok(out.arn().unwrap_or_default().to_string())
    }
}

async fn runner_token(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<Item> {
    let name = ctx.names.runner_token_secret();
    let state = find::secret(ctx, &name)
        .await?
        .map(|Owned { it, ours }| (it, ours));
    if let Some((_, false)) = &state {
        return Err(not_ours("secret", &name, ctx));
    }
    if let Some((arn, true)) = &state
        && secret_value(ctx, &name)
            .await?
            .is_some_and(|v| !v.trim().is_empty())
    {
        f.runner_token_secret_arn = Some(arn.clone());
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
    let arn = write_secret(
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
    f.runner_token_secret_arn = Some(arn.clone());
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

async fn scaler_secret(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<Item> {
    let name = ctx.names.scaler_secret();
    let want = json!({"resource_class": s.resource_class, "circle_token": ctx.personal_token.expose_secret()});
    let state = find::secret(ctx, &name)
        .await?
        .map(|Owned { it, ours }| (it, ours));
    let action = match &state {
        Some((_, false)) => return Err(not_ours("secret", &name, ctx)),
        Some((arn, true)) => {
            let current = secret_value(ctx, &name).await?;
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
    let arn = write_secret(
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

fn ec2_tags(ctx: &Ctx<'_>, name: &str) -> Vec<ec2t::Tag> {
    vec![
        ec2t::Tag::builder()
            .key(STACK_TAG)
            .value(&ctx.names.stack)
            .build(),
        ec2t::Tag::builder().key("Name").value(name).build(),
    ]
}

async fn security_group(ctx: &Ctx<'_>, f: &mut Found) -> R<Item> {
    let name = ctx.names.security_group();
    if let Some(Owned { it: sg, ours }) = find::security_group(ctx, Some(&f.vpc)).await? {
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

fn iam_tag(ctx: &Ctx<'_>) -> aws_sdk_iam::types::Tag {
    aws_sdk_iam::types::Tag::builder()
        .key(STACK_TAG)
        .value(&ctx.names.stack)
        .build()
        .expect("key and value are set")
}

fn trust(service: &str) -> String {
    json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]
    })
    .to_string()
}

fn group_arn_pattern(ctx: &Ctx<'_>, account: &str) -> String {
    format!(
        "arn:aws:autoscaling:{}:{account}:autoScalingGroup:*:autoScalingGroupName/{}",
        ctx.region,
        ctx.names.group()
    )
}

/// The runner instances: read their own token; terminate themselves and set
/// their own health, within their own group.
pub(crate) fn runner_policy(ctx: &Ctx<'_>, account: &str, token_secret_arn: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ReadOwnRunnerToken", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
             "Resource": token_secret_arn},
            {"Sid": "LeaveOwnGroup", "Effect": "Allow",
             "Action": ["autoscaling:TerminateInstanceInAutoScalingGroup", "autoscaling:SetInstanceHealth"],
             "Resource": group_arn_pattern(ctx, account)}
        ]
    })
}

/// The scaling Lambda: describe (read-only, cannot be scoped), size its group,
/// read its secret, write its own logs.
pub(crate) fn scaler_policy(
    ctx: &Ctx<'_>,
    account: &str,
    group_arn: &str,
    secret_arn: &str,
) -> Value {
    let log_group = format!(
        "arn:aws:logs:{}:{account}:log-group:/aws/lambda/{}",
        ctx.region,
        ctx.names.function()
    );
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "DescribeReadOnly", "Effect": "Allow",
             "Action": ["autoscaling:DescribeAutoScalingGroups", "ec2:DescribeInstances"], "Resource": "*"},
            {"Sid": "SizeOwnGroup", "Effect": "Allow",
             "Action": ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"],
             "Resource": group_arn},
            {"Sid": "ReadScalerSecret", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
             "Resource": secret_arn},
            {"Sid": "OwnLogs", "Effect": "Allow", "Action": "logs:CreateLogGroup", "Resource": log_group},
            {"Sid": "OwnLogStreams", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": format!("{log_group}:*")}
        ]
    })
}

/// Ensure a role (ours) with a trust policy and one inline policy.
async fn role(
    ctx: &Ctx<'_>,
    name: &str,
    service: &str,
    policy: Option<Value>,
) -> R<(Item, Option<String>)> {
    let iam = &ctx.aws.iam;
    let mut action = Action::Keep;
    let arn = match find::role(ctx, name).await? {
        Some(Owned { ours: false, .. }) => return Err(not_ours("IAM role", name, ctx)),
        Some(Owned { it: r, .. }) => Some(r.arn().to_string()),
        None => {
            action = Action::Create;
            if ctx.dry_run {
                None
            } else {
                let out = iam
                    .create_role()
                    .role_name(name)
                    .assume_role_policy_document(trust(service))
                    .description(format!("cci-scaler stack {}", ctx.names.stack))
                    .tags(iam_tag(ctx))
                    .send()
                    .await
                    .map_err(aws_err("iam:CreateRole", name))?;
                out.role().map(|r| r.arn().to_string())
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
            Ok(p) => {
                let doc =
                    percent_encoding::percent_decode_str(p.policy_document()).decode_utf8_lossy();
                serde_json::from_str::<Value>(&doc).ok()
            }
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
    let mut item = Item::new("IAM role", name, action);
    if let Some(a) = &arn {
        item = item.id(a);
    }
    Ok((item, arn))
}

async fn runner_role(ctx: &Ctx<'_>, f: &Found) -> R<Item> {
    let secret = f
        .runner_token_secret_arn
        .clone()
        .unwrap_or_else(|| PENDING.into());
    let policy = runner_policy(ctx, &f.account, &secret);
    Ok(role(
        ctx,
        &ctx.names.runner_role(),
        "ec2.amazonaws.com",
        Some(policy),
    )
    .await?
    .0)
}

async fn instance_profile(ctx: &Ctx<'_>) -> R<Item> {
    let iam = &ctx.aws.iam;
    let name = ctx.names.runner_role();
    let (mut action, arn, has_role) = match find::instance_profile(ctx).await? {
        Some(Owned { ours: false, .. }) => return Err(not_ours("instance profile", &name, ctx)),
        Some(Owned { it: p, .. }) => {
            let has = p.roles().iter().any(|r| r.role_name() == name);
            (Action::Keep, Some(p.arn().to_string()), has)
        }
        None => {
            if ctx.dry_run {
                (Action::Create, None, false)
            } else {
                let out = iam
                    .create_instance_profile()
                    .instance_profile_name(&name)
                    .tags(iam_tag(ctx))
                    .send()
                    .await
                    .map_err(aws_err("iam:CreateInstanceProfile", &name))?;
                (
                    Action::Create,
                    out.instance_profile().map(|p| p.arn().to_string()),
                    false,
                )
            }
        }
    };
    if !has_role {
        if action == Action::Keep {
            action = Action::Update;
        }
        if !ctx.dry_run {
            iam.add_role_to_instance_profile()
                .instance_profile_name(&name)
                .role_name(&name)
                .send()
                .await
                .map_err(aws_err("iam:AddRoleToInstanceProfile", &name))?;
        }
    }
    let mut item = Item::new("instance profile", &name, action);
    if let Some(a) = arn {
        item = item.id(a);
    }
    Ok(item)
}

/// The launch template data, complete (every version carries all of it).
fn template_data(
    ctx: &Ctx<'_>,
    s: &StackSettings,
    user_data: &str,
    f: &Found,
) -> ec2t::RequestLaunchTemplateData {
    let name = ctx.names.launch_template();
    let spec = |rt: ec2t::ResourceType| {
        ec2t::LaunchTemplateTagSpecificationRequest::builder()
            .resource_type(rt)
            .set_tags(Some(ec2_tags(ctx, &name)))
            .build()
    };
    ec2t::RequestLaunchTemplateData::builder()
        .image_id(&f.image)
        .instance_type(ec2t::InstanceType::from(s.instance_type.as_str()))
        .set_key_name(s.key_pair.clone())
        .user_data(base64::engine::general_purpose::STANDARD.encode(user_data))
        .iam_instance_profile(
            ec2t::LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                .name(ctx.names.runner_role())
                .build(),
        )
        .set_security_group_ids(f.security_group.clone().map(|g| vec![g]))
        .metadata_options(
            ec2t::LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .http_tokens(ec2t::LaunchTemplateHttpTokensState::Required)
                .http_endpoint(ec2t::LaunchTemplateInstanceMetadataEndpointState::Enabled)
                .http_put_response_hop_limit(s.imds_hop_limit as i32)
                .build(),
        )
        .instance_initiated_shutdown_behavior(ec2t::ShutdownBehavior::Terminate)
        .block_device_mappings(
            ec2t::LaunchTemplateBlockDeviceMappingRequest::builder()
                .device_name(&f.root_device)
                .ebs(
                    ec2t::LaunchTemplateEbsBlockDeviceRequest::builder()
                        .volume_size(s.root_volume_gb as i32)
                        .volume_type(ec2t::VolumeType::Gp3)
                        .encrypted(true)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .tag_specifications(spec(ec2t::ResourceType::Instance))
        .tag_specifications(spec(ec2t::ResourceType::Volume))
        .build()
}

/// What we compare between the wanted data and the template's latest version.
/// The request and response types differ but share their accessors.
macro_rules! fingerprint {
    ($d:expr) => {{
        let d = $d;
        let m = d.metadata_options();
        let ebs = d.block_device_mappings().first().and_then(|b| b.ebs());
        json!({
            "image": d.image_id(), "type": d.instance_type().map(|t| t.as_str()), "key": d.key_name(),
            "user_data": d.user_data(), "profile": d.iam_instance_profile().and_then(|p| p.name()),
            "sg": d.security_group_ids(), "tokens": m.and_then(|m| m.http_tokens()).map(|t| t.as_str()),
            "hops": m.and_then(|m| m.http_put_response_hop_limit()),
            "shutdown": d.instance_initiated_shutdown_behavior().map(|b| b.as_str()),
            "volume": ebs.and_then(|e| e.volume_size()), "encrypted": ebs.and_then(|e| e.encrypted()),
        })
    }};
}

async fn launch_template(
    ctx: &Ctx<'_>,
    s: &StackSettings,
    user_data: &str,
    f: &mut Found,
) -> R<Item> {
    let name = ctx.names.launch_template();
    let ec2 = &ctx.aws.ec2;
    let data = template_data(ctx, s, user_data, f);
    match find::launch_template(ctx).await? {
        Some(Owned { ours: false, .. }) => Err(not_ours("launch template", &name, ctx)),
        Some(Owned { it: t, .. }) => {
            let id = t.launch_template_id().unwrap_or_default().to_string();
            f.launch_template_id = Some(id.clone());
            let latest = ec2
                .describe_launch_template_versions()
                .launch_template_id(&id)
                .versions("$Latest")
                .send()
                .await
                .map_err(aws_err("ec2:DescribeLaunchTemplateVersions", &name))?;
            let current = latest
                .launch_template_versions()
                .first()
                .and_then(|v| v.launch_template_data())
                .map(|d| fingerprint!(d));
            if current.as_ref() == Some(&fingerprint!(&data)) {
                let v = t.latest_version_number().unwrap_or(1);
                return Ok(Item::new("launch template", &name, Action::Keep)
                    .id(id)
                    .detail(format!("version {v}")));
            }
            if ctx.dry_run {
                return Ok(Item::new("launch template", &name, Action::Update)
                    .id(id)
                    .detail("a new version"));
            }
            // The full data in every version (never a partial one on a source).
            let out = ec2
                .create_launch_template_version()
                .launch_template_id(&id)
                .launch_template_data(data)
                .version_description(format!("cci-scaler {}", env!("CARGO_PKG_VERSION")))
                .send()
                .await
                .map_err(aws_err("ec2:CreateLaunchTemplateVersion", &name))?;
            let v = out
                .launch_template_version()
                .and_then(|v| v.version_number())
                .unwrap_or_default();
            ec2.modify_launch_template()
                .launch_template_id(&id)
                .default_version(v.to_string())
                .send()
                .await
                .map_err(aws_err("ec2:ModifyLaunchTemplate", &name))?;
            Ok(Item::new("launch template", &name, Action::Update)
                .id(id)
                .detail(format!("version {v}")))
        }
        None => {
            if ctx.dry_run {
                return Ok(Item::new("launch template", &name, Action::Create));
            }
            let out = ec2
                .create_launch_template()
                .launch_template_name(&name)
                .version_description(format!("cci-scaler {}", env!("CARGO_PKG_VERSION")))
                .launch_template_data(data)
                .tag_specifications(
                    ec2t::TagSpecification::builder()
                        .resource_type(ec2t::ResourceType::LaunchTemplate)
                        .set_tags(Some(ec2_tags(ctx, &name)))
                        .build(),
                )
                .send()
                .await
                .map_err(aws_err("ec2:CreateLaunchTemplate", &name))?;
            let id = out
                .launch_template()
                .and_then(|t| t.launch_template_id())
                .unwrap_or_default()
                .to_string();
            f.launch_template_id = Some(id.clone());
            Ok(Item::new("launch template", &name, Action::Create)
                .id(id)
                .detail("version 1"))
        }
    }
}

async fn group(ctx: &Ctx<'_>, s: &StackSettings, f: &mut Found) -> R<Item> {
    use aws_sdk_autoscaling::types as at;
    let name = ctx.names.group();
    let asg = &ctx.aws.asg;
    let subnets = f.subnets.join(",");
    let lt = at::LaunchTemplateSpecification::builder()
        .set_launch_template_id(f.launch_template_id.clone())
        .version("$Latest")
        .build();
    let max = s.max_instances as i32;
    let item = match find::group(ctx).await? {
        Some(Owned { ours: false, .. }) => return Err(not_ours("Auto Scaling group", &name, ctx)),
        Some(Owned { it: g, .. }) => {
            f.group_arn = g.auto_scaling_group_arn().map(String::from);
            let mut current_subnets: Vec<&str> =
                g.vpc_zone_identifier().unwrap_or("").split(',').collect();
            current_subnets.sort();
            let lt_ok = g.launch_template().is_some_and(|l| {
                l.launch_template_id() == f.launch_template_id.as_deref()
                    && l.version() == Some("$Latest")
            });
            let suspended = g
                .suspended_processes()
                .iter()
                .any(|p| p.process_name() == Some("AZRebalance"));
            let same = g.max_size() == Some(max)
                && g.min_size() == Some(0)
                && current_subnets.join(",") == subnets
                && lt_ok
                && g.new_instances_protected_from_scale_in() == Some(true);
            if same && suspended {
                Item::new("Auto Scaling group", &name, Action::Keep)
            } else {
                if !ctx.dry_run {
                    if !same {
                        asg.update_auto_scaling_group()
                            .auto_scaling_group_name(&name)
                            .min_size(0)
                            .max_size(max)
                            .vpc_zone_identifier(&subnets)
                            .launch_template(lt)
                            .new_instances_protected_from_scale_in(true)
                            .send()
                            .await
                            .map_err(aws_err("autoscaling:UpdateAutoScalingGroup", &name))?;
                    }
                    suspend_rebalance(ctx, &name).await?;
                }
                Item::new("Auto Scaling group", &name, Action::Update)
            }
        }
        None => {
            if ctx.dry_run {
                return Ok(Item::new("Auto Scaling group", &name, Action::Create)
                    .detail(format!("min 0, max {max}, desired 0")));
            }
            let tag = |k: &str, v: &str| {
                at::Tag::builder()
                    .key(k)
                    .value(v)
                    .propagate_at_launch(true)
                    .resource_id(&name)
                    .resource_type("auto-scaling-group")
                    .build()
            };
            asg.create_auto_scaling_group()
                .auto_scaling_group_name(&name)
                .launch_template(lt)
                .min_size(0)
                .max_size(max)
                .desired_capacity(0)
                .vpc_zone_identifier(&subnets)
                .new_instances_protected_from_scale_in(true)
                .tags(tag(STACK_TAG, &ctx.names.stack))
                .tags(tag("Name", &name))
                .send()
                .await
                .map_err(aws_err("autoscaling:CreateAutoScalingGroup", &name))?;
            suspend_rebalance(ctx, &name).await?;
            f.group_arn = find::group(ctx)
                .await?
                .and_then(|g| g.it.auto_scaling_group_arn().map(String::from));
            Item::new("Auto Scaling group", &name, Action::Create)
        }
    };
    let mut item = item.detail(format!("min 0, max {max}"));
    if let Some(a) = &f.group_arn {
        item = item.id(a);
    }
    Ok(item)
}

async fn suspend_rebalance(ctx: &Ctx<'_>, name: &str) -> R<()> {
    ctx.aws
        .asg
        .suspend_processes()
        .auto_scaling_group_name(name)
        .scaling_processes("AZRebalance")
        .send()
        .await
        .map_err(aws_err("autoscaling:SuspendProcesses", name))?;
    Ok(())
}

async fn scaler_role(ctx: &Ctx<'_>, f: &mut Found) -> R<Item> {
    let group = f.group_arn.clone().unwrap_or_else(|| PENDING.into());
    let secret = f
        .scaler_secret_arn
        .clone()
        .unwrap_or_else(|| PENDING.into());
    let policy = scaler_policy(ctx, &f.account, &group, &secret);
    let (item, arn) = role(
        ctx,
        &ctx.names.scaler_role(),
        "lambda.amazonaws.com",
        Some(policy),
    )
    .await?;
    f.scaler_role_arn = arn;
    Ok(item)
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
    env.insert("CCI_SCALER_ASG".into(), ctx.names.group());
    env.insert("CCI_SCALER_RESOURCE_CLASS".into(), s.resource_class.clone());
    env.insert("CCI_SCALER_POLL_INTERVAL".into(), secs(s.poll_interval));
    env.insert("CCI_SCALER_POLL_WINDOW".into(), secs(s.poll_window));
    env.insert("CCI_SCALER_BOOT_TIMEOUT".into(), secs(s.boot_timeout));
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

async fn function(ctx: &Ctx<'_>, s: &StackSettings, artifact: &Artifact, f: &mut Found) -> R<Item> {
    use aws_sdk_lambda::types as lt;
    let name = ctx.names.function();
    let lambda = &ctx.aws.lambda;
    let env = lambda_env(ctx, s, f);
    let timeout = lambda_timeout(s);
    let item = match find::function(ctx).await? {
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
                    .description(format!(
                        "cci-scaler: sizes {} to the CircleCI queue",
                        ctx.names.group()
                    ))
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

pub(crate) const SCHEDULE: &str = "rate(1 minute)";
pub(crate) const TARGET_ID: &str = "cci-scaler";
pub(crate) const PERMISSION_ID: &str = "cci-scaler-schedule";

async fn schedule(ctx: &Ctx<'_>, f: &Found) -> R<Item> {
    use aws_sdk_eventbridge::types as et;
    let name = ctx.names.rule();
    let events = &ctx.aws.events;
    let mut action = Action::Keep;
    let rule_arn = match find::rule(ctx).await? {
        Some(Owned { ours: false, .. }) => return Err(not_ours("EventBridge rule", &name, ctx)),
        Some(Owned { it: r, .. }) => {
            let arn = r.arn().unwrap_or_default().to_string();
            if r.schedule_expression() != Some(SCHEDULE)
                || r.state() != Some(&et::RuleState::Enabled)
            {
                action = Action::Update;
            }
            Some(arn)
        }
        None => {
            action = Action::Create;
            None
        }
    };
    if ctx.dry_run {
        let mut item = Item::new("EventBridge rule", &name, action).detail(SCHEDULE);
        if let Some(a) = rule_arn {
            item = item.id(a);
        }
        return Ok(item);
    }
    let rule_arn = if action == Action::Keep {
        rule_arn.unwrap_or_default()
    } else {
        events
            .put_rule()
            .name(&name)
            .schedule_expression(SCHEDULE)
            .state(et::RuleState::Enabled)
            .description(format!(
                "cci-scaler {}: run the scaler every minute",
                ctx.names.stack
            ))
            .tags(
                et::Tag::builder()
                    .key(STACK_TAG)
                    .value(&ctx.names.stack)
                    .build()
                    .expect("set"),
            )
            .send()
            .await
            .map_err(aws_err("events:PutRule", &name))?
            .rule_arn()
            .unwrap_or_default()
            .to_string()
    };
    let function_arn = f.function_arn.clone().unwrap_or_default();
    let targets = events
        .list_targets_by_rule()
        .rule(&name)
        .send()
        .await
        .map_err(aws_err("events:ListTargetsByRule", &name))?;
    if !targets
        .targets()
        .iter()
        .any(|t| t.id() == TARGET_ID && t.arn() == function_arn)
    {
        if action == Action::Keep {
            action = Action::Update;
        }
        events
            .put_targets()
            .rule(&name)
            .targets(
                et::Target::builder()
                    .id(TARGET_ID)
                    .arn(&function_arn)
                    .build()
                    .expect("set"),
            )
            .send()
            .await
            .map_err(aws_err("events:PutTargets", &name))?;
    }
    let policy = match ctx
        .aws
        .lambda
        .get_policy()
        .function_name(ctx.names.function())
        .send()
        .await
    {
        Ok(p) => p.policy().unwrap_or_default().to_string(),
        Err(e) if is_not_found(&e) => String::new(),
        Err(e) => return Err(aws_err("lambda:GetPolicy", &ctx.names.function())(e)),
    };
    if !policy.contains(PERMISSION_ID) {
        if action == Action::Keep {
            action = Action::Update;
        }
        ctx.aws
            .lambda
            .add_permission()
            .function_name(ctx.names.function())
            .statement_id(PERMISSION_ID)
            .action("lambda:InvokeFunction")
            .principal("events.amazonaws.com")
            .source_arn(&rule_arn)
            .send()
            .await
            .map_err(aws_err("lambda:AddPermission", &ctx.names.function()))?;
    }
    Ok(Item::new("EventBridge rule", &name, action)
        .id(rule_arn)
        .detail(SCHEDULE))
}
