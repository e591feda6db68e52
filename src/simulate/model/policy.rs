//! The two policies' polls: ours runs the real [`decide::decide`]; the
//! tutorial sets desired to the demand, capped, every 60 s.

use super::super::fleet::AUTO_SPARE_HOLD_S;
use super::*;
use crate::scale::auto_headroom;
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
            spare_until: None,
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
        // The same rule as the Lambda: the active period's spares, and the
        // group tagged with its end before the raise.
        let active = self.schedule.active(at(t));
        self.headroom_now = active.map(|a| a.count).unwrap_or(0);
        if let Some(a) = active {
            self.spare_tag = self.spare_tag.max(crate::scale::headroom::secs(a.until));
        }
        let auto = self.auto_spares(t, queue);
        if auto > 0 {
            self.headroom_now = self.headroom_now.max(auto);
            self.spare_tag = self.spare_tag.max(t + AUTO_SPARE_HOLD_S);
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

    /// `headroom = "auto"`: record what this poll sees (arrivals: the rise
    /// of the demand plus the jobs that ended since the last poll), and the
    /// spares it wants (0 without auto).
    fn auto_spares(&mut self, t: u64, queue: QueueDepth) -> u32 {
        if !self.fleet.auto_headroom {
            return 0;
        }
        let demand = queue.unclaimed + queue.running;
        let arrived = (demand + self.ended_since_poll).saturating_sub(self.last_demand);
        self.last_demand = demand;
        self.ended_since_poll = 0;
        self.arrivals.push_back((t, arrived));
        while self
            .arrivals
            .front()
            .is_some_and(|(at, _)| *at + auto_headroom::MEMORY_S < t)
        {
            self.arrivals.pop_front();
        }
        let recent: Vec<(u64, u32)> = self.arrivals.iter().copied().collect();
        let hour = (t / 3600) as usize;
        if self.hourly.len() <= hour {
            self.hourly.resize(hour + 1, 0);
        }
        let burst = auto_headroom::arrivals(&recent, t, auto_headroom::BURST_WINDOW_S);
        self.hourly[hour] = self.hourly[hour].max(burst);
        // The peak burst of this hour of the week and the next, in each of
        // the last 4 weeks simulated (the Lambda would read the same from
        // its metrics).
        const WEEK_H: usize = 168;
        let history: Vec<f64> = (1..=4)
            .filter_map(|w| hour.checked_sub(w * WEEK_H))
            .map(|h| {
                let next = self.hourly.get(h + 1).copied().unwrap_or(0);
                f64::from(self.hourly[h].max(next)) * 60.0 / auto_headroom::BURST_WINDOW_S as f64
            })
            .collect();
        auto_headroom::spares(&auto_headroom::AutoInputs {
            recent: &recent,
            now: t,
            history: &history,
            lead_s: self.fleet.boot_max_s,
            poll_s: self.fleet.interval_s,
            max_spares: self.fleet.max_spares.min(self.fleet.max),
        })
    }

    pub(super) fn poll_tutorial(&mut self) {
        let demand = self.queue.len() as u32 + self.running();
        self.desired = demand.min(self.fleet.max).max(self.fleet.min);
    }
}
