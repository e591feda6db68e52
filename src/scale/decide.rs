//! The scaling decision: a pure function of the queue, the group, the registered
//! runners, the policy and the clock. No I/O, no clock reads, no logging.
//!
//! Rules (see the README's "Scaling rules"):
//! - `demand = unclaimed + running`, `target = clamp(demand + headroom, min, max)`
//!   where `headroom` is the spare runners the active scheduled period wants
//!   (an input: the clock is not read here).
//! - Raise only: desired capacity goes up to `target`, never down because the
//!   queue shrank. Instances remove themselves (with decrement) when their runner
//!   exits, so the decrement has exactly one owner.
//! - Compare against desired capacity, not the in-service count, so booting
//!   instances are not ordered twice.
//! - Reap instances that never registered as a runner within the boot timeout
//!   (runners are named after their instance id), with decrement unless that
//!   would take desired capacity below the group's minimum.
//! - Never ask for more than the group's max.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Serialize;

pub use super::spot::{Fallback, LaunchFailure, SpotState};

/// Tasks waiting for and running on one resource class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct QueueDepth {
    pub unclaimed: u32,
    pub running: u32,
}

impl QueueDepth {
    pub fn demand(&self) -> u32 {
        self.unclaimed.saturating_add(self.running)
    }
}

/// An instance's Auto Scaling lifecycle state, as far as the scaler cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    /// `Pending`, `Pending:Wait`, `Pending:Proceed`: booting, counted in desired.
    Pending,
    InService,
    /// Anything else (`Terminating*`, `Detaching`, `Standby`, warm pool, ...):
    /// already on its way out or parked; never reaped by the scaler.
    Other(String),
}

impl Lifecycle {
    pub fn parse(state: &str) -> Self {
        match state {
            "InService" => Lifecycle::InService,
            s if s == "Pending" || s.starts_with("Pending:") => Lifecycle::Pending,
            s => Lifecycle::Other(s.to_string()),
        }
    }

    /// Booting or in service: counted in desired capacity, and reapable.
    pub fn counted_live(&self) -> bool {
        matches!(self, Lifecycle::Pending | Lifecycle::InService)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub lifecycle: Lifecycle,
    /// When EC2 launched it; `None` when unknown (then it is never reaped).
    pub launch_time: Option<SystemTime>,
    pub protected_from_scale_in: bool,
}

/// The Auto Scaling group as read just before the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    pub name: String,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    pub instances: Vec<Instance>,
    /// The group's `cci-scaler:spare-until` tag (seconds since the epoch):
    /// instances launched while it is in the future stay up as spares until
    /// then. Not used by the decision.
    pub spare_until: Option<u64>,
    /// A spot pool's state (`None`: on demand only).
    pub spot: Option<SpotState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// An instance older than this whose id matches no registered runner is
    /// taken to have failed its boot.
    pub boot_timeout: Duration,
    /// Spare idle runners wanted now, on top of the demand (the active
    /// headroom period's count; 0 outside any).
    pub headroom: u32,
    /// A spot pool short of its desired capacity, with spot launches failing
    /// for at least this long, falls back to on demand...
    pub spot_grace: Duration,
    /// ...for this long, then goes back to spot.
    pub spot_cooldown: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            boot_timeout: Duration::from_secs(600),
            headroom: 0,
            spot_grace: Duration::from_secs(180),
            spot_cooldown: Duration::from_secs(1800),
        }
    }
}

/// One instance to terminate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reap {
    pub instance_id: String,
    /// Terminate with `ShouldDecrementDesiredCapacity`; false only where the
    /// decrement would take desired below the group's minimum (the group then
    /// launches a replacement, which the minimum asks for anyway).
    pub decrement: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    None,
    ScaleOut,
    Reap,
    ReapAndScaleOut,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::None => "none",
            Action::ScaleOut => "scale-out",
            Action::Reap => "reap",
            Action::ReapAndScaleOut => "reap+scale-out",
        })
    }
}

/// What to do, in order: terminate `reap`, then set desired to `set_desired`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub demand: u32,
    pub target: u32,
    pub desired_before: u32,
    /// Desired capacity once the decision is applied.
    pub desired_after: u32,
    pub reap: Vec<Reap>,
    pub set_desired: Option<u32>,
    /// Spot pools: fall back to on demand, or back to spot.
    pub fallback: Fallback,
    pub reason: String,
}

impl Decision {
    pub fn action(&self) -> Action {
        match (self.reap.is_empty(), self.set_desired.is_some()) {
            (true, false) => Action::None,
            (true, true) => Action::ScaleOut,
            (false, false) => Action::Reap,
            (false, true) => Action::ReapAndScaleOut,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error(
        "Auto Scaling group '{group}' has min size {min} above max size {max}; fix the group's sizes"
    )]
    MinAboveMax { group: String, min: u32, max: u32 },
}

/// Decide what to do for one poll. Pure: same inputs, same decision.
pub fn decide(
    queue: QueueDepth,
    group: &GroupState,
    registered: &HashSet<String>,
    policy: &Policy,
    now: SystemTime,
) -> Result<Decision, DecideError> {
    if group.min > group.max {
        return Err(DecideError::MinAboveMax {
            group: group.name.clone(),
            min: group.min,
            max: group.max,
        });
    }
    let demand = queue.demand();
    let wanted = demand.saturating_add(policy.headroom);
    let target = wanted.clamp(group.min, group.max);
    let mut reasons = Vec::new();

    // Instances that never registered within the boot timeout.
    let stale: Vec<&Instance> = group
        .instances
        .iter()
        .filter(|i| i.lifecycle.counted_live() && !registered.contains(&i.id))
        .filter(|i| match i.launch_time {
            Some(t) => now
                .duration_since(t)
                .is_ok_and(|age| age > policy.boot_timeout),
            None => false,
        })
        .collect();
    let live = group
        .instances
        .iter()
        .filter(|i| i.lifecycle.counted_live())
        .count() as u32;

    let mut reap = Vec::new();
    if !stale.is_empty() {
        // Tasks run only on registered runners. If reaping would leave fewer
        // live instances than running tasks, the runner list cannot be right
        // (empty page, wrong filter): never risk a running job on it.
        let remaining = live - stale.len() as u32;
        if remaining < queue.running {
            reasons.push(format!(
                "{} instance(s) look unregistered but only {} would remain for {} running task(s): \
                 runner list looks incomplete, nothing reaped",
                stale.len(),
                remaining,
                queue.running
            ));
        } else {
            let mut desired = group.desired;
            for inst in stale {
                let decrement = desired > group.min;
                if decrement {
                    desired -= 1;
                }
                reap.push(Reap {
                    instance_id: inst.id.clone(),
                    decrement,
                });
            }
            let ids: Vec<&str> = reap.iter().map(|r| r.instance_id.as_str()).collect();
            reasons.push(format!(
                "{} never registered as a runner within {}: terminate{}",
                ids.join(", "),
                humantime::format_duration(policy.boot_timeout),
                if reap.iter().all(|r| r.decrement) {
                    " with decrement"
                } else {
                    " (without decrement where desired is at min)"
                }
            ));
        }
    }
    let decremented = reap.iter().filter(|r| r.decrement).count() as u32;
    let desired_after_reap = group.desired - decremented;

    let queue_text = if policy.headroom > 0 {
        format!(
            "demand {demand} ({} unclaimed + {} running) + {} spare",
            queue.unclaimed, queue.running, policy.headroom
        )
    } else {
        format!(
            "demand {demand} ({} unclaimed + {} running)",
            queue.unclaimed, queue.running
        )
    };
    let set_desired = if target > desired_after_reap {
        let why = if wanted > group.max {
            format!(
                "{queue_text} above max {}: raise desired to {target}",
                group.max
            )
        } else if wanted < group.min {
            format!(
                "group min {} above desired {desired_after_reap}: raise desired to {target}",
                group.min
            )
        } else {
            format!("{queue_text} above desired {desired_after_reap}: raise desired to {target}")
        };
        reasons.push(why);
        Some(target)
    } else {
        if group.desired > group.max {
            reasons.push(format!(
                "desired {} is already above max {}; left alone",
                group.desired, group.max
            ));
        } else if reap.is_empty() || demand > 0 {
            reasons.push(format!(
                "{queue_text} within desired {desired_after_reap}; instances leave on their own when idle"
            ));
        }
        None
    };

    let fallback = spot_fallback(group, live, policy, now, &mut reasons);
    Ok(Decision {
        demand,
        target,
        desired_before: group.desired,
        desired_after: set_desired.unwrap_or(desired_after_reap),
        reap,
        set_desired,
        fallback,
        reason: reasons.join("; "),
    })
}

/// A spot pool short of capacity falls back to on demand when spot launches
/// have been failing for the grace period; after the cool-down it goes back.
fn spot_fallback(
    group: &GroupState,
    live: u32,
    policy: &Policy,
    now: SystemTime,
    reasons: &mut Vec<String>,
) -> Fallback {
    let Some(sp) = &group.spot else {
        return Fallback::None;
    };
    match sp.fallback_until {
        Some(until) if until > now => Fallback::None,
        Some(_) => {
            reasons.push("on-demand fallback over: back to spot".into());
            Fallback::End
        }
        None => {
            if group.desired <= live || sp.on_demand_percentage >= 100 {
                return Fallback::None;
            }
            // Failures of the recent past only: those from before an
            // earlier fallback do not count again.
            let window = policy.spot_grace + Duration::from_secs(120);
            let recent: Vec<&LaunchFailure> = sp
                .failures
                .iter()
                .filter(|f| {
                    f.time <= now && now.duration_since(f.time).is_ok_and(|age| age <= window)
                })
                .collect();
            let Some(first) = recent.iter().map(|f| f.time).min() else {
                return Fallback::None;
            };
            let failing = now.duration_since(first).unwrap_or_default();
            if failing < policy.spot_grace {
                reasons.push(format!(
                    "spot launches failing for {}s (fall back after {}s)",
                    failing.as_secs(),
                    policy.spot_grace.as_secs()
                ));
                return Fallback::None;
            }
            let last = recent
                .iter()
                .max_by_key(|f| f.time)
                .map(|f| f.reason.as_str());
            let why = format!(
                "{} of {} instances up and spot launches failing for {}s ({}): on demand for {}",
                live,
                group.desired,
                failing.as_secs(),
                last.unwrap_or("").chars().take(120).collect::<String>(),
                humantime::format_duration(policy.spot_cooldown)
            );
            reasons.push(why.clone());
            Fallback::Start {
                until: now + policy.spot_cooldown,
                reason: why,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    /// An instance launched `age` ago.
    fn inst(id: &str, state: &str, age: Duration) -> Instance {
        Instance {
            id: id.to_string(),
            lifecycle: Lifecycle::parse(state),
            launch_time: Some(now() - age),
            protected_from_scale_in: true,
        }
    }

    fn group(min: u32, max: u32, desired: u32, instances: Vec<Instance>) -> GroupState {
        GroupState {
            name: "runners".into(),
            min,
            max,
            desired,
            instances,
            spare_until: None,
            spot: None,
        }
    }

    fn q(unclaimed: u32, running: u32) -> QueueDepth {
        QueueDepth { unclaimed, running }
    }

    fn names(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    struct Case {
        name: &'static str,
        queue: QueueDepth,
        group: GroupState,
        registered: HashSet<String>,
        set_desired: Option<u32>,
        reap: Vec<(&'static str, bool)>,
        desired_after: u32,
        reason_has: &'static str,
    }

    fn cases() -> Vec<Case> {
        vec![
            Case {
                name: "empty queue, empty group: nothing to do",
                queue: q(0, 0),
                group: group(0, 10, 0, vec![]),
                registered: names(&[]),
                set_desired: None,
                reap: vec![],
                desired_after: 0,
                reason_has: "within desired 0",
            },
            Case {
                name: "3 unclaimed + 2 running with max 10 sets desired 5",
                queue: q(3, 2),
                group: group(0, 10, 0, vec![]),
                registered: names(&[]),
                set_desired: Some(5),
                reap: vec![],
                desired_after: 5,
                reason_has: "demand 5 (3 unclaimed + 2 running) above desired 0",
            },
            Case {
                name: "queue above max sets max",
                queue: q(40, 2),
                group: group(0, 10, 3, vec![]),
                registered: names(&[]),
                set_desired: Some(10),
                reap: vec![],
                desired_after: 10,
                reason_has: "above max 10",
            },
            Case {
                name: "shrinking queue never lowers desired",
                queue: q(0, 1),
                group: group(0, 10, 6, vec![]),
                registered: names(&[]),
                set_desired: None,
                reap: vec![],
                desired_after: 6,
                reason_has: "leave on their own",
            },
            Case {
                name: "booting instances are counted: desired already covers demand",
                queue: q(4, 0),
                group: group(
                    0,
                    10,
                    4,
                    vec![
                        inst("i-1", "Pending", MIN),
                        inst("i-2", "Pending", MIN),
                        inst("i-3", "Pending:Wait", MIN),
                        inst("i-4", "InService", MIN),
                    ],
                ),
                registered: names(&[]),
                set_desired: None,
                reap: vec![],
                desired_after: 4,
                reason_has: "within desired 4",
            },
            Case {
                name: "group min above demand raises to min",
                queue: q(0, 0),
                group: group(2, 10, 0, vec![]),
                registered: names(&[]),
                set_desired: Some(2),
                reap: vec![],
                desired_after: 2,
                reason_has: "group min 2",
            },
            Case {
                name: "desired already above max (bad group) is neither raised nor lowered",
                queue: q(30, 0),
                group: group(0, 10, 12, vec![]),
                registered: names(&[]),
                set_desired: None,
                reap: vec![],
                desired_after: 12,
                reason_has: "already above max",
            },
            Case {
                name: "max 0 never scales",
                queue: q(5, 0),
                group: group(0, 0, 0, vec![]),
                registered: names(&[]),
                set_desired: None,
                reap: vec![],
                desired_after: 0,
                reason_has: "within desired 0",
            },
            Case {
                name: "unregistered old instance is reaped with decrement, registered one kept",
                queue: q(0, 1),
                group: group(
                    0,
                    10,
                    2,
                    vec![
                        inst("i-old", "InService", 11 * MIN),
                        inst("i-reg", "InService", 30 * MIN),
                    ],
                ),
                registered: names(&["i-reg"]),
                set_desired: None,
                reap: vec![("i-old", true)],
                desired_after: 1,
                reason_has: "i-old never registered as a runner within 10m",
            },
            Case {
                name: "young unregistered instance is still booting: kept",
                queue: q(1, 0),
                group: group(0, 10, 1, vec![inst("i-young", "Pending", 9 * MIN)]),
                registered: names(&[]),
                set_desired: None,
                reap: vec![],
                desired_after: 1,
                reason_has: "within desired 1",
            },
            Case {
                name: "unknown launch time is never reaped",
                queue: q(0, 0),
                group: group(
                    0,
                    10,
                    1,
                    vec![Instance {
                        id: "i-x".into(),
                        lifecycle: Lifecycle::InService,
                        launch_time: None,
                        protected_from_scale_in: true,
                    }],
                ),
                registered: names(&[]),
                set_desired: None,
                reap: vec![],
                desired_after: 1,
                reason_has: "within desired 1",
            },
            Case {
                name: "terminating instances are not reaped again",
                queue: q(0, 0),
                group: group(0, 10, 0, vec![inst("i-t", "Terminating:Wait", 20 * MIN)]),
                registered: names(&[]),
                set_desired: None,
                reap: vec![],
                desired_after: 0,
                reason_has: "within desired 0",
            },
            Case {
                name: "reaped instance is replaced when the queue still needs it",
                queue: q(2, 0),
                group: group(
                    0,
                    10,
                    2,
                    vec![
                        inst("i-stuck", "InService", 15 * MIN),
                        inst("i-ok", "InService", 15 * MIN),
                    ],
                ),
                registered: names(&["i-ok"]),
                set_desired: Some(2),
                reap: vec![("i-stuck", true)],
                desired_after: 2,
                reason_has: "above desired 1: raise desired to 2",
            },
            Case {
                name: "reap at min terminates without decrement",
                queue: q(0, 0),
                group: group(
                    1,
                    10,
                    2,
                    vec![
                        inst("i-a", "InService", 15 * MIN),
                        inst("i-b", "InService", 15 * MIN),
                    ],
                ),
                registered: names(&[]),
                set_desired: None,
                reap: vec![("i-a", true), ("i-b", false)],
                desired_after: 1,
                reason_has: "without decrement where desired is at min",
            },
            Case {
                name: "runner list inconsistent with running tasks: nothing reaped",
                queue: q(0, 2),
                group: group(
                    0,
                    10,
                    2,
                    vec![
                        inst("i-a", "InService", 15 * MIN),
                        inst("i-b", "InService", 15 * MIN),
                    ],
                ),
                registered: names(&[]),
                set_desired: None,
                reap: vec![],
                desired_after: 2,
                reason_has: "runner list looks incomplete",
            },
            Case {
                name: "boot timeout boundary: exactly the timeout is not yet stale",
                queue: q(0, 0),
                group: group(0, 10, 1, vec![inst("i-edge", "InService", 10 * MIN)]),
                registered: names(&[]),
                set_desired: None,
                reap: vec![],
                desired_after: 1,
                reason_has: "within desired 1",
            },
            Case {
                name: "launch time in the future (clock skew) is not stale",
                queue: q(0, 0),
                group: group(
                    0,
                    10,
                    1,
                    vec![Instance {
                        launch_time: Some(now() + MIN),
                        ..inst("i-f", "InService", MIN)
                    }],
                ),
                registered: names(&[]),
                set_desired: None,
                reap: vec![],
                desired_after: 1,
                reason_has: "within desired 1",
            },
            Case {
                name: "huge counts saturate instead of overflowing",
                queue: q(u32::MAX, u32::MAX),
                group: group(0, 10, 0, vec![]),
                registered: names(&[]),
                set_desired: Some(10),
                reap: vec![],
                desired_after: 10,
                reason_has: "above max 10",
            },
        ]
    }

    /// Spot pools: fall back to on demand when short of capacity and spot
    /// launches have failed for the grace period (3 min); back after the
    /// cool-down (30 min).
    #[test]
    fn spot_fallback_table() {
        let mins = |m: u64| Duration::from_secs(60 * m);
        let fail = |ago: Duration| LaunchFailure {
            time: now() - ago,
            reason: "Could not launch Spot Instances. InsufficientInstanceCapacity".into(),
        };
        let spot = |pct, until: Option<SystemTime>, failures| SpotState {
            on_demand_percentage: pct,
            fallback_until: until,
            failures,
        };
        // (name, desired, live instances, spot state, expected)
        enum Want {
            No,
            Start,
            End,
        }
        let live = |n: usize| -> Vec<Instance> {
            (0..n)
                .map(|i| inst(&format!("i-{i}"), "InService", MIN))
                .collect()
        };
        let rows: Vec<(&str, u32, usize, Option<SpotState>, Want)> = vec![
            ("on demand pool: never", 3, 0, None, Want::No),
            (
                "spot, not short: nothing",
                2,
                2,
                Some(spot(0, None, vec![fail(mins(4))])),
                Want::No,
            ),
            (
                "short, no failures (still launching): wait",
                3,
                1,
                Some(spot(0, None, vec![])),
                Want::No,
            ),
            (
                "short, failing for 1 min: within grace",
                3,
                1,
                Some(spot(0, None, vec![fail(mins(1))])),
                Want::No,
            ),
            (
                "short, failing for 4 min: fall back",
                3,
                1,
                Some(spot(0, None, vec![fail(mins(4)), fail(mins(1))])),
                Want::Start,
            ),
            (
                "short, only old failures (before a fallback): not again",
                3,
                1,
                Some(spot(0, None, vec![fail(mins(40))])),
                Want::No,
            ),
            (
                "fallback active: keep",
                3,
                1,
                Some(spot(100, Some(now() + mins(10)), vec![fail(mins(4))])),
                Want::No,
            ),
            (
                "cool-down over: back to spot",
                3,
                3,
                Some(spot(100, Some(now() - mins(1)), vec![])),
                Want::End,
            ),
            (
                "already on demand by hand: no fallback",
                3,
                1,
                Some(spot(100, None, vec![fail(mins(4))])),
                Want::No,
            ),
        ];
        for (name, desired, n, sp, want) in rows {
            let g = GroupState {
                spot: sp,
                ..group(0, 10, desired, live(n))
            };
            let d = decide(q(0, 0), &g, &names(&[]), &Policy::default(), now()).unwrap();
            match (want, &d.fallback) {
                (Want::No, Fallback::None) | (Want::End, Fallback::End) => {}
                (Want::Start, Fallback::Start { until, reason }) => {
                    assert_eq!(*until, now() + mins(30), "{name}");
                    assert!(
                        reason.contains("InsufficientInstanceCapacity"),
                        "{name}: {reason}"
                    );
                    assert!(reason.contains("1 of 3 instances up"), "{name}: {reason}");
                }
                (_, other) => panic!("{name}: {other:?} ({})", d.reason),
            }
        }
    }

    /// Headroom: spares on top of the demand, clamped to max, raise only.
    #[test]
    fn headroom_table() {
        // (name, queue, group, headroom, set_desired, desired_after, reason)
        let rows = [
            (
                "2 spares on an empty queue",
                q(0, 0),
                group(0, 10, 0, vec![]),
                2,
                Some(2),
                2,
                "+ 2 spare",
            ),
            (
                "2 spares beside 3 jobs",
                q(1, 2),
                group(0, 10, 0, vec![]),
                2,
                Some(5),
                5,
                "demand 3 (1 unclaimed + 2 running) + 2 spare",
            ),
            (
                "spares up already: nothing to do",
                q(0, 0),
                group(0, 10, 2, vec![]),
                2,
                None,
                2,
                "within desired 2",
            ),
            (
                "spares clamp to max",
                q(4, 0),
                group(0, 5, 0, vec![]),
                3,
                Some(5),
                5,
                "above max 5",
            ),
            (
                "period over: desired is not lowered",
                q(0, 0),
                group(0, 10, 3, vec![]),
                0,
                None,
                3,
                "within desired 3",
            ),
            (
                "fewer spares wanted: not lowered either",
                q(0, 0),
                group(0, 10, 4, vec![]),
                1,
                None,
                4,
                "within desired 4",
            ),
        ];
        for (name, queue, g, headroom, set, after, reason) in rows {
            let policy = Policy {
                headroom,
                ..Policy::default()
            };
            let d = decide(queue, &g, &names(&[]), &policy, now()).unwrap();
            assert_eq!(d.set_desired, set, "{name}");
            assert_eq!(d.desired_after, after, "{name}");
            assert!(d.reason.contains(reason), "{name}: {}", d.reason);
        }
    }

    #[test]
    fn decision_table() {
        let policy = Policy::default();
        for case in cases() {
            let d = decide(case.queue, &case.group, &case.registered, &policy, now())
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(
                d.set_desired, case.set_desired,
                "{}: set_desired",
                case.name
            );
            let reap: Vec<(String, bool)> = d
                .reap
                .iter()
                .map(|r| (r.instance_id.clone(), r.decrement))
                .collect();
            let want: Vec<(String, bool)> =
                case.reap.iter().map(|(i, d)| (i.to_string(), *d)).collect();
            assert_eq!(reap, want, "{}: reap", case.name);
            assert_eq!(
                d.desired_after, case.desired_after,
                "{}: desired_after",
                case.name
            );
            assert!(
                d.reason.contains(case.reason_has),
                "{}: reason {:?} lacks {:?}",
                case.name,
                d.reason,
                case.reason_has
            );
            // Invariants that hold for every case.
            if let Some(s) = d.set_desired {
                assert!(s <= case.group.max, "{}: above max", case.name);
                assert!(
                    s > d.desired_before - d.reap.iter().filter(|r| r.decrement).count() as u32
                );
            }
            assert!(d.desired_after >= case.group.min.min(case.group.desired));
        }
    }

    #[test]
    fn min_above_max_is_an_error() {
        let err = decide(
            q(1, 0),
            &group(5, 3, 0, vec![]),
            &names(&[]),
            &Policy::default(),
            now(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("min size 5 above max size 3"));
    }

    #[test]
    fn actions() {
        let mut d = decide(
            q(0, 0),
            &group(0, 1, 0, vec![]),
            &names(&[]),
            &Policy::default(),
            now(),
        )
        .unwrap();
        assert_eq!(d.action(), Action::None);
        d.set_desired = Some(1);
        assert_eq!(d.action(), Action::ScaleOut);
        d.reap.push(Reap {
            instance_id: "i".into(),
            decrement: true,
        });
        assert_eq!(d.action(), Action::ReapAndScaleOut);
        d.set_desired = None;
        assert_eq!(d.action(), Action::Reap);
    }

    #[test]
    fn lifecycle_parsing() {
        assert_eq!(Lifecycle::parse("Pending:Proceed"), Lifecycle::Pending);
        assert_eq!(Lifecycle::parse("InService"), Lifecycle::InService);
        assert_eq!(
            Lifecycle::parse("Standby"),
            Lifecycle::Other("Standby".into())
        );
    }
}

/// Properties that hold for any queue, group and runner list (proptest).
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000;

    fn state() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "Pending",
            "Pending:Wait",
            "InService",
            "Terminating",
            "Terminating:Wait",
            "Standby",
            "Detaching",
        ])
    }

    /// Up to 12 instances `i-0..`: state, age (or unknown), registered or not.
    fn instances() -> impl Strategy<Value = Vec<(Instance, bool)>> {
        prop::collection::vec(
            (
                state(),
                prop::option::weighted(0.9, 0u64..3_600),
                any::<bool>(),
            ),
            0..12,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(n, (st, age, reg))| {
                    (
                        Instance {
                            id: format!("i-{n:04}"),
                            lifecycle: Lifecycle::parse(st),
                            launch_time: age
                                .map(|a| SystemTime::UNIX_EPOCH + Duration::from_secs(NOW - a)),
                            protected_from_scale_in: true,
                        },
                        reg,
                    )
                })
                .collect()
        })
    }

    fn case() -> impl Strategy<Value = (QueueDepth, GroupState, HashSet<String>, Policy)> {
        (
            (0u32..40, 0u32..40),
            (0u32..6, 0u32..25, 0u32..30),
            instances(),
            prop::collection::vec((0u32..1000).prop_map(|n| format!("other-{n}")), 0..4),
            (60u64..1_200, prop_oneof![3 => Just(0u32), 1 => 1u32..6]),
        )
            .prop_map(
                |((unclaimed, running), (min, max, desired), inst, other, (boot, headroom))| {
                    let mut registered: HashSet<String> = other.into_iter().collect();
                    let mut instances = Vec::new();
                    for (i, reg) in inst {
                        if reg {
                            registered.insert(i.id.clone());
                        }
                        instances.push(i);
                    }
                    (
                        QueueDepth { unclaimed, running },
                        GroupState {
                            name: "g".into(),
                            min,
                            max,
                            desired,
                            instances,
                            spare_until: None,
                            spot: None,
                        },
                        registered,
                        Policy {
                            boot_timeout: Duration::from_secs(boot),
                            headroom,
                            ..Policy::default()
                        },
                    )
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn decision_invariants((queue, group, registered, policy) in case()) {
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW);
            let d = match decide(queue, &group, &registered, &policy, now) {
                Err(DecideError::MinAboveMax { .. }) => {
                    prop_assert!(group.min > group.max);
                    return Ok(());
                }
                Ok(d) => d,
            };
            prop_assert!(group.min <= group.max);
            // Pure: the same inputs give the same decision.
            prop_assert_eq!(&d, &decide(queue, &group, &registered, &policy, now).unwrap());

            // Never below what it was, but for instances reaped with decrement
            // (each leaves the group and takes its slot with it).
            let decremented = d.reap.iter().filter(|r| r.decrement).count() as u32;
            // Desired never goes above max (a group already above it is left
            // alone), and a set only ever raises it (after the reaps).
            if let Some(n) = d.set_desired {
                prop_assert!(n <= group.max, "{d:?}");
                prop_assert!(n > group.desired - decremented, "raise only: {d:?}");
            }
            prop_assert!(d.desired_after <= group.max.max(group.desired), "{d:?}");
            prop_assert!(d.desired_after + decremented >= group.desired, "{d:?}");
            // A decrement never takes desired below the group's minimum.
            if decremented > 0 {
                prop_assert!(group.desired - decremented >= group.min, "{d:?}");
            }
            // Demand plus headroom, up to max, is always met.
            let wanted = queue.demand().saturating_add(policy.headroom);
            prop_assert!(d.desired_after >= wanted.clamp(group.min, group.max), "{d:?}");

            // A registered instance is never reaped; only live, old enough,
            // known-age instances are, each once.
            let mut seen = HashSet::new();
            for r in &d.reap {
                prop_assert!(!registered.contains(&r.instance_id), "{d:?}");
                prop_assert!(seen.insert(r.instance_id.clone()), "reaped twice: {d:?}");
                let i = group.instances.iter().find(|i| i.id == r.instance_id).unwrap();
                prop_assert!(i.lifecycle.counted_live(), "{i:?}");
                let age = now.duration_since(i.launch_time.unwrap()).unwrap();
                prop_assert!(age > policy.boot_timeout, "{i:?}");
            }
            // Reaping never leaves fewer live instances than running tasks.
            if !d.reap.is_empty() {
                let live = group.instances.iter().filter(|i| i.lifecycle.counted_live()).count();
                prop_assert!(live - d.reap.len() >= queue.running as usize, "{d:?}");
            }
            // The action matches what is applied.
            prop_assert_eq!(
                d.action() == Action::None,
                d.reap.is_empty() && d.set_desired.is_none()
            );
        }
    }
}
