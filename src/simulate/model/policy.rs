//! The two policies' polls: ours runs the real [`decide::decide`]; the
//! tutorial sets desired to the demand, capped, every 60 s.

use super::*;
use crate::scale::auto_headroom;
pub(super) use crate::scale::auto_headroom::HISTORY_OFFSET_S;
use crate::scale::decide::{self, GroupState, Instance, Lifecycle, QueueDepth};

impl Sim<'_> {
    pub(super) fn poll_ours(&mut self, t: u64) -> Result<(), SimError> {
        let group = GroupState {
            name: "simulated".into(),
            min: self.fleet.min,
            max: self.fleet.max,
            desired: self.desired,
            instances: self
                .live
                .iter()
                .map(|&i| Instance {
                    id: self.insts[i].id.clone(),
                    lifecycle: Lifecycle::InService,
                    launch_time: Some(at(self.insts[i].launched)),
                    protected_from_scale_in: true,
                })
                .collect(),
            spare_until: (self.spare_tag > 0).then_some(self.spare_tag),
            spot: (self.fleet.spot && self.policy == Policy::Ours).then(|| decide::SpotState {
                on_demand_percentage: if self.fallback_until.is_some() {
                    100
                } else {
                    0
                },
                fallback_until: self.fallback_until.map(at),
                failures: self
                    .launch_failures
                    .iter()
                    .map(|&f| decide::LaunchFailure {
                        time: at(f),
                        reason: "InsufficientInstanceCapacity (simulated outage)".into(),
                    })
                    .collect(),
            }),
        };
        let registered: HashSet<String> = self
            .live
            .iter()
            .filter(|&&i| matches!(self.insts[i].state, State::Idle { .. } | State::Busy { .. }))
            .map(|&i| self.insts[i].id.clone())
            .collect();
        let queue = QueueDepth {
            unclaimed: self.queue.len() as u32,
            running: self.running(),
        };
        // The same rule as the Lambda: the active period's spares and
        // auto's (the larger), and the group's spare-until tag set by the
        // scaler's own rule before the raise.
        let active = self.active_period(t);
        let auto = self.auto_spares(t, queue);
        self.headroom_now = active.map(|a| a.count).unwrap_or(0).max(auto);
        let wanted = self.fleet.auto_headroom.then_some(auto);
        if let Some(until) = crate::scale::spare_tag(&group, active, wanted, at(t)) {
            self.spare_tag = until;
        }
        let policy = decide::Policy {
            boot_timeout: Duration::from_secs(self.fleet.boot_timeout_s),
            headroom: self.headroom_now,
            spot_grace: Duration::from_secs(self.fleet.spot_grace_s),
            spot_cooldown: Duration::from_secs(self.fleet.spot_cooldown_s),
        };
        let d = decide::decide(queue, &group, &registered, &policy, at(t))?;
        for r in &d.reap {
            if let Some(pos) = self
                .live
                .iter()
                .position(|&i| self.insts[i].id == r.instance_id)
            {
                let idx = self.live.remove(pos);
                self.leave(idx, t, r.decrement);
            }
        }
        self.floor = self.desired;
        if let Some(n) = d.set_desired {
            self.desired = n;
        }
        match d.fallback {
            decide::Fallback::Start { until, .. } => {
                self.fallback_until = Some(crate::scale::spot::epoch(until));
            }
            decide::Fallback::End => {
                self.fallback_until = None;
                self.launch_failures.clear();
            }
            decide::Fallback::None => {}
        }
        Ok(())
    }

    /// The schedule's active period at `t`, evaluated again only when a
    /// period starts or the active one ends (cron arithmetic at every poll
    /// of a month dominated the replay).
    fn active_period(&mut self, t: u64) -> Option<crate::scale::headroom::Active> {
        if let Some((until, active)) = self.active_cache
            && t < until
        {
            return active;
        }
        let active = self.schedule.active(at(t));
        let next = self
            .schedule
            .next_start(at(t))
            .map_or(u64::MAX, crate::scale::spot::epoch);
        let until = active.map_or(next, |a| next.min(crate::scale::spot::epoch(a.until)));
        self.active_cache = Some((until.max(t + 1), active));
        active
    }

    /// `headroom = "auto"`: the scaler's record of this pool's demand (the
    /// same [`auto_headroom::DemandRecord`] the Lambda keeps) notes this
    /// poll, and says how many spares it wants (0 without auto). The
    /// record's clock runs [`HISTORY_OFFSET_S`] ahead, so the weeks learned
    /// before the simulated day sit before it.
    fn auto_spares(&mut self, t: u64, queue: QueueDepth) -> u32 {
        if !self.fleet.auto_headroom {
            return 0;
        }
        let now = t + HISTORY_OFFSET_S;
        let instances: Vec<(String, Option<u64>, bool)> = self
            .live
            .iter()
            .map(|&i| {
                let inst = &self.insts[i];
                let registered = matches!(inst.state, State::Idle { .. } | State::Busy { .. });
                (
                    inst.id.clone(),
                    Some(inst.launched + HISTORY_OFFSET_S),
                    registered,
                )
            })
            .collect();
        self.demand.observe(&auto_headroom::Observation {
            now,
            demand: queue.unclaimed + queue.running,
            running: queue.running,
            instances: &instances,
        });
        self.demand.spares(
            now,
            self.fleet.boot_max_s,
            self.fleet.interval_s,
            self.fleet.max_spares.min(self.fleet.max),
        )
    }

    pub(super) fn poll_tutorial(&mut self) {
        let demand = self.queue.len() as u32 + self.running();
        self.desired = demand.min(self.fleet.max).max(self.fleet.min);
    }
}
