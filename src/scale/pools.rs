//! Several pools (an Auto Scaling group and its resource class each) in one
//! poll. Everything is read at once: each namespace's registered runners once
//! (all pages), each class's queue depth, and every group in one describe
//! call; then one EC2 call for the launch times of all unregistered
//! instances. So a poll of 50 pools costs about what a poll of one does. Each
//! pool is decided (the same pure `decide`) and applied on its own: one pool's
//! failure (its group missing, its class unknown) is reported for that pool
//! and the others are still scaled.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::SystemTime;

use futures::future::join_all;

use super::decide::{self, Policy};
use super::headroom::{HeadroomSpec, Schedule};
use super::{ApiError, GroupApi, Round, RunnerQueue, ScaleError, ScaleSettings, apply, round};

/// One pool to scale.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Pool {
    pub name: String,
    pub asg: String,
    pub resource_class: String,
    /// Spare runners by schedule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headroom: Vec<HeadroomSpec>,
    /// Spare runners sized from the pool's own demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<super::AutoHeadroom>,
    /// Its settings as the simulator needs them (`usage_org`: the real
    /// waits are reported beside the simulated ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<super::real_waits::SimModel>,
}

/// One poll of every pool; the results are in the pools' order.
pub async fn run_pools<Q: RunnerQueue + Sync, G: GroupApi + Sync>(
    queue: &Q,
    group_api: &G,
    pools: &[Pool],
    policy: &Policy,
    dry_run: bool,
) -> Vec<Result<Round, ScaleError>> {
    let namespace = |p: &Pool| {
        p.resource_class
            .split_once('/')
            .map(|(ns, _)| ns.to_string())
            .unwrap_or_default()
    };
    let namespaces: BTreeSet<String> = pools.iter().map(namespace).collect();
    let names: Vec<String> = pools.iter().map(|p| p.asg.clone()).collect();

    // One round trip to each side, each timed.
    let ((registered, depths), circleci_ms, (groups, aws_ms)) = {
        let started = std::time::Instant::now();
        let (cci, groups) = tokio::join!(
            async {
                let out = tokio::join!(
                    join_all(
                        namespaces
                            .iter()
                            .map(|ns| async move { (ns.clone(), queue.registered(ns).await) })
                    ),
                    join_all(pools.iter().map(|p| queue.depth(&p.resource_class))),
                );
                (out, started.elapsed().as_millis() as u64)
            },
            async {
                let g = group_api.describe_many(&names).await;
                (g, started.elapsed().as_millis() as u64)
            },
        );
        (cci.0, cci.1, groups)
    };
    let latency = super::Latency {
        circleci_ms,
        aws_ms,
    };
    let registered: HashMap<String, _> = registered.into_iter().collect();
    let empty = HashSet::new();

    // What each pool read, or why it could not.
    let mut read: Vec<Result<_, ScaleError>> = pools
        .iter()
        .zip(depths)
        .map(|(p, depth)| {
            let runners = match &registered[&namespace(p)] {
                Ok(by_class) => by_class.get(&p.resource_class).unwrap_or(&empty),
                Err(e) => return Err(ScaleError::from(e.clone())),
            };
            let depth = depth?;
            let group = match &groups {
                Ok(g) => g.get(&p.asg).cloned().ok_or_else(|| {
                    ScaleError::Call(ApiError::GroupNotFound {
                        name: p.asg.clone(),
                        region: group_api.region(),
                    })
                })?,
                Err(e) => return Err(ScaleError::from(e.clone())),
            };
            Ok((depth, runners, group))
        })
        .collect();

    // Launch times, in one call, for every instance that could be reaped.
    let unregistered: Vec<String> = read
        .iter()
        .flatten()
        .flat_map(|(_, runners, group)| {
            group
                .instances
                .iter()
                .filter(|i| i.lifecycle.counted_live() && !runners.contains(&i.id))
                .map(|i| i.id.clone())
        })
        .collect();
    if !unregistered.is_empty() {
        match group_api.launch_times(&unregistered).await {
            Ok(times) => {
                for (_, _, group) in read.iter_mut().flatten() {
                    for inst in &mut group.instances {
                        if let Some(t) = times.get(&inst.id) {
                            inst.launch_time = Some(*t);
                        }
                    }
                }
            }
            // Without launch times nothing can be reaped, and a pool that
            // needed them is not decided on half its facts.
            Err(e) => {
                for r in read.iter_mut() {
                    let needed = r.as_ref().is_ok_and(|(_, runners, group)| {
                        group
                            .instances
                            .iter()
                            .any(|i| i.lifecycle.counted_live() && !runners.contains(&i.id))
                    });
                    if needed {
                        *r = Err(ScaleError::from(e.clone()));
                    }
                }
            }
        }
    }

    // Decide and apply each pool on its own, all at once.
    let now = SystemTime::now();
    join_all(pools.iter().zip(read).map(|(p, r)| async move {
        let (depth, runners, mut group) = r?;
        super::read_spot_failures(group_api, &p.asg, &mut group).await?;
        let schedule = Schedule::new(&p.headroom)?;
        let (policy, active, auto) = super::spares(
            group_api,
            policy,
            &schedule,
            p.auto.as_ref(),
            (depth, &group, runners),
            now,
            dry_run,
        )
        .await?;
        let decision = decide::decide(depth, &group, runners, &policy, now)?;
        if !dry_run {
            apply(
                group_api,
                &p.asg,
                &decision,
                super::spare_tag(&group, active, auto, now),
            )
            .await?;
        }
        let settings = ScaleSettings {
            asg: p.asg.clone(),
            resource_class: p.resource_class.clone(),
            policy,
            headroom: schedule,
            auto: p.auto.clone(),
            dry_run,
        };
        let mut round = round(now, &settings, depth, runners.len(), &group, decision);
        round.pool = Some(p.name.clone());
        round.headroom = active;
        round.auto_spares = auto;
        round.latency = latency;
        round.interrupted_last_hour =
            super::interrupted_count(group_api, &p.asg, &group, now).await?;
        Ok(round)
    }))
    .await
}
