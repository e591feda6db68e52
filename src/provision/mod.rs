//! `init`, `teardown` and `status`: the stack's resources, found by name and
//! owned only when tagged `cci-scaler:stack = <stack>`. Never linked into the
//! scaling path.
//!
//! Every step reads first, compares, and writes only what differs; in a dry run
//! it only reads and reports the action it would take.

mod alarms;
pub mod artifact;
mod checks;
pub mod circleci_admin;
mod common;
mod dashboard;
mod demand_record;
mod function;
mod group;
pub mod image;
mod instance_profile;
mod job_role;
mod launch_template;
mod log_group;
mod oidc_provider;
mod resource_class;
mod role;
mod runner;
mod runner_role;
mod runner_token;
mod scaler_role;
mod scaler_secret;
mod schedule;
mod secret;
mod security_group;
mod status;
mod topic;

use std::future::Future;
use std::time::Duration;

use aws_config::SdkConfig;
use secrecy::SecretString;
use serde::Serialize;

use crate::aws::AwsError;
use crate::circleci::{CircleCiError, RunnerApi};
use crate::config::StackSettings;

pub use common::{PoolRecord, StepName};
pub use runner::{init, recorded_pools, remove_pools, teardown};
pub use status::{
    Fleet, FleetInstance, LambdaRuns, PoolHistory, PoolStatus, StackStatus, WarmPool, history,
    status,
};

/// The tag that marks a resource as this stack's.
pub const STACK_TAG: &str = "cci-scaler:stack";

/// The tag that names the pool a per-pool resource belongs to (stacks with
/// `[[pool]]` tables only).
pub const POOL_TAG: &str = "cci-scaler:pool";

/// Resource names, all derived from the stack name and, for the per-pool
/// ones, the pool's name (`None`: the one pool of a stack without
/// `[[pool]]` tables, named as before pools existed).
#[derive(Debug, Clone)]
pub struct Names {
    pub stack: String,
    pub pool: Option<String>,
}

impl Names {
    pub fn new(stack: &str) -> Names {
        Names {
            stack: stack.to_string(),
            pool: None,
        }
    }
    /// The names of one pool of the stack.
    pub fn for_pool(&self, pool: Option<&str>) -> Names {
        Names {
            stack: self.stack.clone(),
            pool: pool.map(String::from),
        }
    }
    fn pool_part(&self) -> String {
        self.pool
            .as_ref()
            .map(|p| format!("-{p}"))
            .unwrap_or_default()
    }
    pub fn group(&self) -> String {
        crate::names::group(&self.stack, self.pool.as_deref())
    }
    pub fn runner_token_secret(&self) -> String {
        crate::names::runner_token_secret(&self.stack, self.pool.as_deref())
    }
    pub fn scaler_secret(&self) -> String {
        crate::names::scaler_secret(&self.stack)
    }
    pub fn prefixed(&self, what: &str) -> String {
        format!("cci-scaler-{}{what}", self.stack)
    }
    pub fn launch_template(&self) -> String {
        self.prefixed(&format!("{}-runner", self.pool_part()))
    }
    pub fn security_group(&self) -> String {
        self.prefixed("-runner")
    }
    /// The runners' role and instance profile: one per pool, so a pool's
    /// instances reach only their own group and token. A stack without
    /// `[[pool]]` tables keeps the name it always had.
    pub fn runner_role(&self) -> String {
        self.prefixed(&format!("{}-runner", self.pool_part()))
    }
    /// The one runner role all pools shared before each pool had its own.
    pub fn shared_runner_role(&self) -> String {
        self.prefixed("-runner")
    }
    pub fn scaler_role(&self) -> String {
        self.prefixed("-scaler")
    }
    /// The role jobs assume with CircleCI OIDC tokens (`[job_role]`).
    pub fn job_role(&self) -> String {
        self.prefixed("-job")
    }
    pub fn function(&self) -> String {
        self.prefixed("-scaler")
    }
    pub fn rule(&self) -> String {
        self.prefixed("-schedule")
    }
    pub fn token_nickname(&self) -> String {
        self.prefixed(&self.pool_part())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Create,
    Update,
    Keep,
    Delete,
    /// Nothing there (teardown, status).
    Absent,
    /// There, but not tagged as this stack's: left alone.
    Foreign,
}

impl Action {
    pub fn verb(&self, dry_run: bool) -> &'static str {
        match (self, dry_run) {
            (Action::Create, false) => "created",
            (Action::Create, true) => "would create",
            (Action::Update, false) => "updated",
            (Action::Update, true) => "would update",
            (Action::Keep, _) => "unchanged",
            (Action::Delete, false) => "deleted",
            (Action::Delete, true) => "would delete",
            (Action::Absent, _) => "absent",
            (Action::Foreign, _) => "not ours, left alone",
        }
    }
    pub fn changes(&self) -> bool {
        matches!(self, Action::Create | Action::Update | Action::Delete)
    }
}

/// One resource and what was (or would be) done to it.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub kind: &'static str,
    pub name: String,
    pub id: Option<String>,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Item {
    pub fn new(kind: &'static str, name: impl Into<String>, action: Action) -> Item {
        Item {
            kind,
            name: name.into(),
            id: None,
            action,
            detail: None,
        }
    }
    pub fn id(mut self, id: impl Into<String>) -> Item {
        self.id = Some(id.into());
        self
    }
    pub fn detail(mut self, d: impl Into<String>) -> Item {
        self.detail = Some(d.into());
        self
    }
    /// A change found after the item was made: an unchanged item becomes an
    /// update (a created one stays created).
    pub fn changed(&mut self) {
        if self.action == Action::Keep {
            self.action = Action::Update;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(
        "{kind} '{name}' exists but is not tagged {STACK_TAG}={stack}; refusing to adopt or change it (rename the stack, or remove that resource)"
    )]
    NotOurs {
        kind: &'static str,
        name: String,
        stack: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    CircleCi(#[from] CircleCiError),
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    #[error(transparent)]
    Artifact(#[from] artifact::ArtifactError),
    #[error("{step}: {source}")]
    Step {
        step: &'static str,
        #[source]
        source: Box<ProvisionError>,
    },
}

/// Progress of the steps, shown by the command line (spinners or lines).
pub trait Progress: Sync {
    fn start(&self, step: &str);
    fn note(&self, message: &str);
    fn done(&self, item: &Item);
}

/// No progress display.
pub struct Quiet;
impl Progress for Quiet {
    fn start(&self, _: &str) {}
    fn note(&self, _: &str) {}
    fn done(&self, _: &Item) {}
}

#[derive(Clone)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub asg: aws_sdk_autoscaling::Client,
    pub iam: aws_sdk_iam::Client,
    pub lambda: aws_sdk_lambda::Client,
    pub events: aws_sdk_eventbridge::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub sts: aws_sdk_sts::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub sns: aws_sdk_sns::Client,
}

impl Clients {
    pub fn new(config: &SdkConfig) -> Clients {
        Clients {
            ec2: aws_sdk_ec2::Client::new(config),
            asg: aws_sdk_autoscaling::Client::new(config),
            iam: aws_sdk_iam::Client::new(config),
            lambda: aws_sdk_lambda::Client::new(config),
            events: aws_sdk_eventbridge::Client::new(config),
            secrets: aws_sdk_secretsmanager::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
            sts: aws_sdk_sts::Client::new(config),
            logs: aws_sdk_cloudwatchlogs::Client::new(config),
            cloudwatch: aws_sdk_cloudwatch::Client::new(config),
            sns: aws_sdk_sns::Client::new(config),
        }
    }
}

/// What every step needs.
#[derive(Clone)]
pub struct Ctx<'a> {
    pub aws: Clients,
    pub region: String,
    pub names: Names,
    pub circleci: &'a RunnerApi,
    /// The personal token that runs `init` (an organisation admin's:
    /// creating resource classes and runner tokens needs one).
    pub personal_token: SecretString,
    /// The token to store into the scaler's secret, for reading the queue
    /// (CIRCLECI_SCALER_TOKEN: a dedicated user's). `None`: keep the
    /// dedicated token the secret has, else store `personal_token`.
    pub scaler_token: Option<SecretString>,
    pub dry_run: bool,
    pub progress: &'a dyn Progress,
}

/// Retry `f` while `retryable` says so, for up to `budget`, telling the user why.
pub(crate) async fn with_patience<T, E, F, Fut>(
    progress: &dyn Progress,
    waiting_for: &str,
    budget: Duration,
    retryable: impl Fn(&E) -> bool,
    mut f: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = std::time::Instant::now();
    let mut delay = Duration::from_secs(1);
    loop {
        match f().await {
            Err(e) if retryable(&e) && start.elapsed() + delay < budget => {
                progress.note(&format!(
                    "waiting for {waiting_for} ({}s so far)",
                    start.elapsed().as_secs()
                ));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
            }
            other => return other,
        }
    }
}

/// The settings a stack was created with, for the JSON summary.
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    pub stack: &'a str,
    pub region: &'a str,
    pub dry_run: bool,
    pub changed: bool,
    pub resources: &'a [Item],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<&'a StackSettings>,
}
