//! What every resource file uses: the result type, SDK error mapping, the
//! ownership tags, and what earlier resources found for later ones.

pub(crate) use std::collections::HashMap;
pub(crate) use std::time::Duration;

pub(crate) use aws_sdk_ec2::types as ec2t;
pub(crate) use aws_sdk_iam::error::ProvideErrorMetadata;
pub(crate) use futures::future::BoxFuture;
pub(crate) use serde_json::{Value, json};

pub(crate) use super::circleci_admin as cci;
pub(crate) use super::{Action, Ctx, Item, POOL_TAG, ProvisionError, STACK_TAG, with_patience};
pub(crate) use crate::aws::AwsError;
pub(crate) use crate::config::StackSettings;

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

pub(crate) fn not_ours(kind: &'static str, name: &str, ctx: &Ctx) -> ProvisionError {
    ProvisionError::NotOurs {
        kind,
        name: name.to_string(),
        stack: ctx.names.stack.clone(),
    }
}

/// The removal of an optional resource: nothing to say when there is none.
pub(crate) fn unless_absent(item: Item) -> Vec<Item> {
    if item.action == Action::Absent {
        vec![]
    } else {
        vec![item]
    }
}

pub(crate) fn step<T>(name: &'static str, r: R<T>) -> R<T> {
    r.map_err(|e| match e {
        e @ ProvisionError::NotOurs { .. } => e,
        e => ProvisionError::Step {
            step: name,
            source: Box::new(e),
        },
    })
}

pub(crate) fn tagged<'a>(mut tags: impl Iterator<Item = (&'a str, &'a str)>, stack: &str) -> bool {
    tags.any(|(k, v)| k == STACK_TAG && v == stack)
}

pub(crate) fn ec2_tagged(tags: &[ec2t::Tag], stack: &str) -> bool {
    tagged(
        tags.iter()
            .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or(""))),
        stack,
    )
}

pub(crate) fn group_tagged(g: &aws_sdk_autoscaling::types::AutoScalingGroup, stack: &str) -> bool {
    tagged(
        g.tags()
            .iter()
            .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or(""))),
        stack,
    )
}

/// A resource found by name, and whether it carries our stack tag.
pub(crate) struct Owned<T> {
    pub it: T,
    pub ours: bool,
}

pub(crate) const PENDING: &str = "(pending)";

/// The ownership tags of a resource: the stack, and the pool for a pool's
/// resources in a stack with `[[pool]]` tables.
pub(crate) fn tags(ctx: &Ctx<'_>) -> Vec<(&'static str, String)> {
    let mut t = vec![(STACK_TAG, ctx.names.stack.clone())];
    if let Some(p) = &ctx.names.pool {
        t.push((POOL_TAG, p.clone()));
    }
    t
}

pub(crate) fn ec2_tags(ctx: &Ctx<'_>, name: &str) -> Vec<ec2t::Tag> {
    let mut t: Vec<ec2t::Tag> = tags(ctx)
        .into_iter()
        .map(|(k, v)| ec2t::Tag::builder().key(k).value(v).build())
        .collect();
    t.push(ec2t::Tag::builder().key("Name").value(name).build());
    t
}

pub(crate) fn iam_tag(ctx: &Ctx<'_>) -> aws_sdk_iam::types::Tag {
    aws_sdk_iam::types::Tag::builder()
        .key(STACK_TAG)
        .value(&ctx.names.stack)
        .build()
        .expect("key and value are set")
}

/// What earlier resources found or made, for later ones (and the reads that
/// run before any write).
#[derive(Default)]
pub(crate) struct Found {
    pub account: String,
    pub subnets: Vec<String>,
    pub vpc: String,
    pub security_group: Option<String>,
    pub scaler_secret_arn: Option<String>,
    pub scaler_role_arn: Option<String>,
    pub function_arn: Option<String>,
    /// The alarms' SNS topic, when there is one.
    pub topic_arn: Option<String>,
    /// Every pool, in the stack file's order.
    pub pools: Vec<PoolFound>,
    /// Pools being removed: still recorded until they are gone.
    pub removing: Vec<PoolRecord>,
    /// The pool a per-pool resource is being worked on for.
    pub current: usize,
    /// `init` bakes a pool's runner-ready image when none matches its
    /// install inputs (`None`: `--no-bake`).
    pub bake: Option<super::image::BuildOptions>,
}

impl Found {
    pub fn pool(&self) -> &PoolFound {
        &self.pools[self.current]
    }
    pub fn pool_mut(&mut self) -> &mut PoolFound {
        &mut self.pools[self.current]
    }
}

/// What is known of one pool.
#[derive(Default, Clone)]
pub(crate) struct PoolFound {
    /// `None`: the one pool of a stack without `[[pool]]` tables.
    pub name: Option<String>,
    pub resource_class: String,
    pub group: String,
    /// Spare runners by schedule.
    pub headroom: Vec<crate::scale::headroom::HeadroomSpec>,
    /// Spare runners sized from the pool's own demand.
    pub auto: Option<crate::scale::AutoHeadroom>,
    /// A spot pool.
    pub spot: bool,
    /// Stopped instances in the group's warm pool (0: none).
    pub warm_pool: u32,
    /// No baked image matches the pool's base image and install inputs.
    pub needs_bake: bool,
    /// Its settings for the simulator, given to the Lambda with
    /// `usage_org` (real waits reported beside simulated ones).
    pub model: Option<crate::scale::real_waits::SimModel>,
    /// The key pair its launch template names, if any.
    pub key_pair: Option<String>,
    pub architecture: String,
    pub image: String,
    pub root_device: String,
    pub user_data: String,
    /// The resource class as CircleCI has it (`None`: not created yet).
    pub class: Option<cci::ResourceClass>,
    pub runner_token_secret_arn: Option<String>,
    pub launch_template_id: Option<String>,
    pub group_arn: Option<String>,
}

/// An item of the CircleCI side when the resource class is not known.
pub(crate) fn unknown_class(kind: &'static str, name: &str) -> Item {
    Item::new(kind, name, Action::Keep)
        .detail("not looked at: the resource class is unknown, pass --resource-class")
}

/// One kind of resource of the stack, with the few operations every kind has.
/// Finding it by name and ownership tag, and comparing it with the wanted
/// settings, happen inside both operations.
pub(crate) trait Resource: Sync {
    /// The step of `init` it belongs to (`cci-scaler step NAME`).
    fn step(&self) -> StepName;
    /// What progress shows while it is worked on.
    fn label(&self) -> &'static str;
    /// Create it, or update what differs from the settings, or nothing (the
    /// returned item says which). In a dry run, only read and say.
    /// Kinds `init` only removes (`converges` or `wanted` false) keep the
    /// default, which `init` never calls.
    fn converge<'a>(
        &'a self,
        _ctx: &'a Ctx<'a>,
        _s: &'a StackSettings,
        _f: &'a mut Found,
    ) -> BoxFuture<'a, R<Item>> {
        let what = self.label();
        Box::pin(async move {
            Err(ProvisionError::Invalid(format!(
                "{what}: init does not make these, it only removes them"
            )))
        })
    }
    /// Remove it if it is ours (a dry run only says). A resource with our name
    /// but without our tag is reported as foreign and left alone.
    fn delete<'a>(&'a self, ctx: &'a Ctx<'a>, t: &'a Teardown) -> BoxFuture<'a, R<Vec<Item>>>;
    /// One per pool (it is then given the pool's names and settings), rather
    /// than one per stack.
    fn per_pool(&self) -> bool {
        false
    }
    /// `init` makes and converges it (`false`: made elsewhere, such as baked
    /// images; `init` skips it, teardown still removes it).
    fn converges(&self) -> bool {
        true
    }
    /// Whether the settings want it at all (`false`: `init` removes one
    /// left from earlier settings, and reports only that).
    fn wanted(&self, _s: &StackSettings) -> bool {
        true
    }
}

/// What a teardown needs beyond the stack's names (for a per-pool kind: of
/// the pool).
pub(crate) struct Teardown {
    /// `None`: unknown (the stack recorded none); its CircleCI side is then
    /// reported, not touched.
    pub resource_class: Option<String>,
    pub keep_resource_class: bool,
    /// The stack has `[[pool]]` tables (its pools have names).
    pub stack_has_pools: bool,
    /// Leave what instances still use (init's clean-up of replaced
    /// resources), rather than remove it all (teardown).
    pub in_use_check: bool,
}

/// A pool as the stack recorded it (in its scaler secret, else its Lambda).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolRecord {
    /// `None`: the one pool of a stack without `[[pool]]` tables.
    pub name: Option<String>,
    pub resource_class: Option<String>,
}

/// A piece of `init` that can be run (or repeated) on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepName {
    /// The CircleCI resource class and its runner token (stored in its secret).
    ResourceClass,
    /// The scaler's secret (CircleCI personal token and resource class).
    Secrets,
    /// The runner role, its instance profile, the scaler's role; the job
    /// role and its OIDC provider (`[job_role]`).
    Iam,
    /// The runners' security group and launch template.
    LaunchTemplate,
    /// The Auto Scaling group.
    Group,
    /// The scaling Lambda.
    Lambda,
    /// The EventBridge schedule that runs the Lambda.
    Schedule,
    /// The CloudWatch alarms, their SNS topic, the dashboard.
    Alarms,
}

impl StepName {
    pub(crate) fn flag(&self) -> &'static str {
        match self {
            StepName::ResourceClass => "resource-class",
            StepName::Secrets => "secrets",
            StepName::Iam => "iam",
            StepName::LaunchTemplate => "launch-template",
            StepName::Group => "group",
            StepName::Lambda => "lambda",
            StepName::Schedule => "schedule",
            StepName::Alarms => "alarms",
        }
    }
}
