//! The scaling core shared by `cci-scaler scale` and the Lambda: read the queue
//! and the group at once, decide (pure), apply (or only report, in a dry run).

pub mod auto_headroom;
pub mod decide;
pub mod headroom;
pub mod metrics;
pub mod pools;
pub mod real_waits;
pub mod spot;

use std::collections::HashMap;
use std::future::Future;
use std::time::SystemTime;

use serde::Serialize;

use std::collections::HashSet;

use decide::{Action, DecideError, GroupState, Policy, QueueDepth, Reap};
use headroom::{Active, HeadroomError, Schedule};

/// The group tag (propagated at launch) that tells an instance launched
/// during a headroom period until when it is a spare: seconds since the
/// epoch. Its runner's idle timeout then runs to that time plus the usual
/// idle timeout, so spares do not idle out and get launched again while the
/// period lasts, and leave within one idle timeout after it ends.
pub const SPARE_UNTIL_TAG: &str = "cci-scaler:spare-until";

/// The Auto Scaling group as the scaling core uses it.
pub trait GroupApi {
    /// The region the groups are in, for messages.
    fn region(&self) -> String;
    /// The group's sizes and instances (launch times not filled in).
    fn describe(&self, name: &str) -> impl Future<Output = Result<GroupState, ApiError>> + Send;
    /// Several groups in as few calls as the API allows; a name that is not
    /// found is left out of the map.
    fn describe_many(
        &self,
        names: &[String],
    ) -> impl Future<Output = Result<HashMap<String, GroupState>, ApiError>> + Send;
    /// Launch times of the given instances; ids not found are left out.
    fn launch_times(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<HashMap<String, SystemTime>, ApiError>> + Send;
    fn set_desired(
        &self,
        name: &str,
        desired: u32,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
    fn terminate(
        &self,
        instance_id: &str,
        decrement: bool,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// Recent launches that failed for want of spot capacity.
    fn launch_failures(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Vec<decide::LaunchFailure>, ApiError>> + Send;
    /// Set the mixed-instances policy's on-demand percentage above the base
    /// (the whole policy sent again), and the fallback tag (`None`: removed).
    fn set_on_demand(
        &self,
        name: &str,
        percentage: u32,
        until: Option<u64>,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// How many of the group's instances were tagged interrupted (by their
    /// spot watcher) since `since`; terminated instances stay visible for
    /// about an hour.
    fn interrupted(
        &self,
        name: &str,
        since: SystemTime,
    ) -> impl Future<Output = Result<Vec<(String, SystemTime)>, ApiError>> + Send;
    /// Set a tag on the group, propagated to the instances it launches.
    fn tag(
        &self,
        name: &str,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// `headroom = "auto"`: the pool's demand record as last saved (`None`:
    /// none yet). A side that keeps none has none.
    fn load_record(
        &self,
        _name: &str,
    ) -> impl Future<Output = Result<Option<String>, ApiError>> + Send {
        async { Ok(None) }
    }
    /// Save the pool's demand record.
    fn save_record(
        &self,
        _name: &str,
        _text: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        async { Ok(()) }
    }
}

/// A pool's `headroom = "auto"`, as the scaler runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AutoHeadroom {
    /// At most this many spares.
    pub max_spares: u32,
    /// Where the pool's demand record is kept (an SSM parameter name).
    pub record: String,
    /// The scaler's poll interval, seconds.
    pub poll_s: u64,
}

/// Launch to registered runner assumed until the pool has seen a boot (a
/// stock image's install; a baked image's boots soon bring it down).
pub const DEFAULT_LEAD_S: u64 = 240;

#[derive(Debug, Clone)]
pub struct ScaleSettings {
    pub asg: String,
    pub resource_class: String,
    pub policy: Policy,
    /// Spare runners by schedule (empty: none).
    pub headroom: Schedule,
    /// Spare runners sized from the pool's own demand.
    pub auto: Option<AutoHeadroom>,
    pub dry_run: bool,
}

/// A call to the group's or the queue's API that failed, as the adapter
/// (AWS, CircleCI) tells it: the core owns this type and the adapters
/// convert their errors into it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("Auto Scaling group '{name}' not found in {region}: check --asg and --region")]
    GroupNotFound { name: String, region: String },
    /// Any other failure, in the adapter's words (what, and what to check).
    #[error("{0}")]
    Failed(String),
}

/// Everything one decision needs from CircleCI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSnapshot {
    pub depth: QueueDepth,
    /// Names of the registered runner agents of the resource class.
    pub runners: HashSet<String>,
}

/// The queue as the scaling core sees it.
pub trait RunnerQueue {
    /// Queue depth and registered runners of one resource class.
    fn snapshot(
        &self,
        resource_class: &str,
    ) -> impl Future<Output = Result<QueueSnapshot, ApiError>> + Send;
    /// Queue depth of one resource class.
    fn depth(
        &self,
        resource_class: &str,
    ) -> impl Future<Output = Result<QueueDepth, ApiError>> + Send;
    /// The registered runners of a whole namespace, by resource class.
    fn registered(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<HashMap<String, HashSet<String>>, ApiError>> + Send;
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ScaleError {
    #[error(transparent)]
    Call(#[from] ApiError),
    #[error(transparent)]
    Decide(#[from] DecideError),
    #[error(transparent)]
    Headroom(#[from] HeadroomError),
    #[error("{done}{source}")]
    Apply {
        /// What was already changed before the failure, as a sentence prefix.
        done: String,
        source: ApiError,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupSummary {
    pub min: u32,
    pub max: u32,
    pub desired_before: u32,
    pub desired_after: u32,
    pub instances: usize,
    /// Instances in service (booting ones not counted).
    pub in_service: usize,
}

/// How long the poll's reads took, each side.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub circleci_ms: u64,
    pub aws_ms: u64,
}

/// One decision, as printed (human line or one JSON object) and logged.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub time: String,
    /// The pool, when several are scaled at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    pub asg: String,
    pub resource_class: String,
    pub queue: QueueDepth,
    pub registered_runners: usize,
    pub group: GroupSummary,
    pub action: Action,
    pub reaped: Vec<Reap>,
    /// The headroom period active at this poll, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headroom: Option<Active>,
    /// `headroom = "auto"`: the spares it wants at this poll.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_spares: Option<u32>,
    pub latency: Latency,
    /// Spot pools: instances interrupted in the last hour.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted_last_hour: Option<usize>,
    /// A spot pool's fallback to on demand, or back to spot.
    #[serde(skip_serializing_if = "is_no_fallback")]
    pub spot: decide::Fallback,
    pub dry_run: bool,
    pub reason: String,
}

impl Round {
    /// One line for a terminal or a log file.
    pub fn human(&self) -> String {
        let verb = if self.dry_run { "would " } else { "" };
        let pool = self
            .pool
            .as_deref()
            .map(|p| format!("[{p}] "))
            .unwrap_or_default();
        let action = match self.action {
            Action::None => "no change".to_string(),
            a => format!("{verb}{a}"),
        };
        let reaped = if self.reaped.is_empty() {
            String::new()
        } else {
            let ids: Vec<&str> = self.reaped.iter().map(|r| r.instance_id.as_str()).collect();
            format!(" [{}]", ids.join(", "))
        };
        format!(
            "{pool}{time} {rc}: queue {u} unclaimed + {r} running | {asg}: desired {b} -> {a} (min {min}, max {max}, {n} instance(s)) | {action}{reaped} | {reason}",
            time = self.time,
            rc = self.resource_class,
            u = self.queue.unclaimed,
            r = self.queue.running,
            asg = self.asg,
            b = self.group.desired_before,
            a = self.group.desired_after,
            min = self.group.min,
            max = self.group.max,
            n = self.group.instances,
            reason = self.reason,
        )
    }
}

/// One poll: read, decide, apply. On any error before applying, nothing changes.
pub async fn run_once<Q: RunnerQueue, G: GroupApi>(
    queue: &Q,
    group_api: &G,
    settings: &ScaleSettings,
) -> Result<Round, ScaleError> {
    // Queue and group at once: one round trip to each side, each timed.
    let started = std::time::Instant::now();
    let ((snapshot, circleci_ms), (mut group, aws_ms)) = tokio::try_join!(
        async {
            queue
                .snapshot(&settings.resource_class)
                .await
                .map(|s| (s, started.elapsed().as_millis() as u64))
                .map_err(ScaleError::from)
        },
        async {
            group_api
                .describe(&settings.asg)
                .await
                .map(|g| (g, started.elapsed().as_millis() as u64))
                .map_err(ScaleError::from)
        },
    )?;

    // Launch times only for the instances that could be reaped.
    let unregistered: Vec<String> = group
        .instances
        .iter()
        .filter(|i| i.lifecycle.counted_live() && !snapshot.runners.contains(&i.id))
        .map(|i| i.id.clone())
        .collect();
    if !unregistered.is_empty() {
        let times = group_api.launch_times(&unregistered).await?;
        for inst in &mut group.instances {
            if let Some(t) = times.get(&inst.id) {
                inst.launch_time = Some(*t);
            }
        }
    }

    read_spot_failures(group_api, &settings.asg, &mut group).await?;
    let now = SystemTime::now();
    let (policy, active, auto) = spares(
        group_api,
        &settings.policy,
        &settings.headroom,
        settings.auto.as_ref(),
        (snapshot.depth, &group, &snapshot.runners),
        now,
        settings.dry_run,
    )
    .await?;
    let decision = decide::decide(snapshot.depth, &group, &snapshot.runners, &policy, now)?;

    if !settings.dry_run {
        apply(
            group_api,
            &settings.asg,
            &decision,
            spare_tag(&group, active, auto, now),
        )
        .await?;
    }
    let mut round = round(
        now,
        settings,
        snapshot.depth,
        snapshot.runners.len(),
        &group,
        decision,
    );
    round.headroom = active;
    round.auto_spares = auto;
    round.latency = Latency {
        circleci_ms,
        aws_ms,
    };
    round.interrupted_last_hour = interrupted_count(group_api, &settings.asg, &group, now).await?;
    Ok(round)
}

/// Spot pools: how many instances were interrupted in the last hour.
pub(crate) async fn interrupted_count<G: GroupApi>(
    group_api: &G,
    asg: &str,
    group: &GroupState,
    now: SystemTime,
) -> Result<Option<usize>, ScaleError> {
    if group.spot.is_none() {
        return Ok(None);
    }
    let since = now - std::time::Duration::from_secs(3600);
    Ok(Some(group_api.interrupted(asg, since).await?.len()))
}

/// A spot pool short of its desired capacity: its recent failed launches
/// (one call, only then).
pub(crate) async fn read_spot_failures<G: GroupApi>(
    group_api: &G,
    asg: &str,
    group: &mut GroupState,
) -> Result<(), ScaleError> {
    let live = group
        .instances
        .iter()
        .filter(|i| i.lifecycle.counted_live())
        .count() as u32;
    if let Some(sp) = &mut group.spot
        && sp.fallback_until.is_none()
        && group.desired > live
    {
        sp.failures = group_api.launch_failures(asg).await?;
    }
    Ok(())
}

/// The policy with the spares wanted at `now`: the active headroom period's
/// and auto's (the larger), with each (auto's record noted, and saved
/// unless a dry run).
pub(crate) async fn spares<G: GroupApi>(
    group_api: &G,
    policy: &Policy,
    schedule: &Schedule,
    auto: Option<&AutoHeadroom>,
    (depth, group, runners): (QueueDepth, &GroupState, &HashSet<String>),
    now: SystemTime,
    dry_run: bool,
) -> Result<(Policy, Option<Active>, Option<u32>), ScaleError> {
    let (mut policy, active) = with_headroom(policy, schedule, now);
    let auto = match auto {
        Some(a) => Some(auto_spares(group_api, a, depth, group, runners, now, dry_run).await?),
        None => None,
    };
    policy.headroom = policy.headroom.max(auto.unwrap_or(0));
    Ok((policy, active, auto))
}

/// The policy with the spares the active headroom period wants at `now`.
fn with_headroom(
    policy: &Policy,
    schedule: &Schedule,
    now: SystemTime,
) -> (Policy, Option<Active>) {
    let active = schedule.active(now);
    let policy = Policy {
        headroom: active.map(|a| a.count).unwrap_or(0),
        ..*policy
    };
    (policy, active)
}

/// The spare-until tag to set before raising capacity: while a period is
/// active, when the group's tag is older than the period's end; while auto
/// spares are wanted, [`auto_headroom::SPARE_HOLD_S`] from now, renewed
/// when less than [`auto_headroom::SPARE_RENEW_S`] of it is left.
pub(crate) fn spare_tag(
    group: &GroupState,
    active: Option<Active>,
    auto: Option<u32>,
    now: SystemTime,
) -> Option<u64> {
    let tag = group.spare_until.unwrap_or(0);
    let period = active.map(|a| headroom::secs(a.until)).unwrap_or(0);
    let auto_until = match auto {
        Some(n) if n > 0 => {
            let now = headroom::secs(now);
            let renew = now + auto_headroom::SPARE_HOLD_S - auto_headroom::SPARE_RENEW_S;
            if tag < renew {
                now + auto_headroom::SPARE_HOLD_S
            } else {
                0
            }
        }
        _ => 0,
    };
    let until = period.max(auto_until);
    (until > tag).then_some(until)
}

/// `headroom = "auto"`: note this poll in the pool's demand record (saved
/// unless a dry run) and say how many spares it wants.
async fn auto_spares<G: GroupApi>(
    group_api: &G,
    auto: &AutoHeadroom,
    depth: QueueDepth,
    group: &GroupState,
    runners: &HashSet<String>,
    now: SystemTime,
    dry_run: bool,
) -> Result<u32, ScaleError> {
    let saved = group_api
        .load_record(&auto.record)
        .await?
        .map(|t| auto_headroom::DemandRecord::parse(&t));
    let mut record = saved.clone().unwrap_or_default();
    let instances: Vec<(String, Option<u64>, bool)> = group
        .instances
        .iter()
        .filter(|i| i.lifecycle.counted_live())
        .map(|i| {
            (
                i.id.clone(),
                i.launch_time.map(headroom::secs),
                runners.contains(&i.id),
            )
        })
        .collect();
    let now_s = headroom::secs(now);
    record.observe(&auto_headroom::Observation {
        now: now_s,
        demand: depth.unclaimed + depth.running,
        running: depth.running,
        instances: &instances,
    });
    if !dry_run && record.worth_saving(saved.as_ref()) {
        group_api
            .save_record(&auto.record, &record.to_text())
            .await?;
    }
    Ok(record.spares(
        now_s,
        DEFAULT_LEAD_S,
        auto.poll_s,
        auto.max_spares.min(group.max),
    ))
}

/// Terminate, then set desired; what was done before a failure is named.
pub(crate) async fn apply<G: GroupApi>(
    group_api: &G,
    asg: &str,
    decision: &decide::Decision,
    spare_until: Option<u64>,
) -> Result<(), ScaleError> {
    let mut done: Vec<String> = Vec::new();
    // First, so the instances the raise launches carry it.
    if let Some(until) = spare_until {
        if let Err(source) = group_api
            .tag(asg, SPARE_UNTIL_TAG, &until.to_string())
            .await
        {
            return Err(apply_error(&done, source));
        }
        done.push(format!("tagged {asg} {SPARE_UNTIL_TAG}={until}"));
    }
    for r in &decision.reap {
        if let Err(source) = group_api.terminate(&r.instance_id, r.decrement).await {
            return Err(apply_error(&done, source));
        }
        done.push(format!("terminated {}", r.instance_id));
    }
    match &decision.fallback {
        decide::Fallback::None => {}
        decide::Fallback::Start { until, .. } => {
            let until = spot::epoch(*until);
            if let Err(source) = group_api.set_on_demand(asg, 100, Some(until)).await {
                return Err(apply_error(&done, source));
            }
            done.push(format!("switched {asg} to on demand until {until}"));
        }
        decide::Fallback::End => {
            if let Err(source) = group_api.set_on_demand(asg, 0, None).await {
                return Err(apply_error(&done, source));
            }
            done.push(format!("switched {asg} back to spot"));
        }
    }
    if let Some(n) = decision.set_desired
        && let Err(source) = group_api.set_desired(asg, n).await
    {
        return Err(apply_error(&done, source));
    }
    Ok(())
}

fn is_no_fallback(f: &decide::Fallback) -> bool {
    *f == decide::Fallback::None
}

pub(crate) fn round(
    now: SystemTime,
    settings: &ScaleSettings,
    queue: QueueDepth,
    registered_runners: usize,
    group: &GroupState,
    decision: decide::Decision,
) -> Round {
    Round {
        time: humantime::format_rfc3339_millis(now).to_string(),
        pool: None,
        asg: settings.asg.clone(),
        resource_class: settings.resource_class.clone(),
        queue,
        registered_runners,
        group: GroupSummary {
            min: group.min,
            max: group.max,
            desired_before: decision.desired_before,
            desired_after: decision.desired_after,
            instances: group.instances.len(),
            in_service: group
                .instances
                .iter()
                .filter(|i| i.lifecycle == decide::Lifecycle::InService)
                .count(),
        },
        latency: Latency::default(),
        action: decision.action(),
        reaped: decision.reap.clone(),
        headroom: None,
        auto_spares: None,
        interrupted_last_hour: None,
        spot: decision.fallback.clone(),
        dry_run: settings.dry_run,
        reason: decision.reason,
    }
}

fn apply_error(done: &[String], source: ApiError) -> ScaleError {
    let done = if done.is_empty() {
        String::new()
    } else {
        format!("after {}: ", done.join(", "))
    };
    ScaleError::Apply { done, source }
}
