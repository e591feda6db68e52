//! The model: a clock of one-second ticks, the group's instances and the
//! jobs (see the module's documentation for the order of a tick). The two
//! policies' polls are in [`policy`].

mod policy;

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::fleet::{Fleet, MONTH_S, Policy, SimError, TUTORIAL_INTERVAL_S};
use super::report::{Report, Sample, waits_of};
use super::workload::Job;
use crate::scale::headroom::Schedule;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Booting { ready_at: u64, fails: bool },
    Idle { since: u64 },
    Busy { until: u64, job: usize },
    Gone,
}

struct Inst {
    id: String,
    launched: u64,
    state: State,
    busy_s: u64,
    gone_at: u64,
    /// The group's spare-until tag when it was launched.
    spare_until: u64,
    /// Its runner's idle timeout, set when it registers.
    idle_limit: u64,
    /// Launched as a spot instance.
    spot: bool,
}

struct Sim<'a> {
    jobs: &'a [Job],
    fleet: &'a Fleet,
    policy: Policy,
    rng: ChaCha8Rng,
    insts: Vec<Inst>,
    /// Indices into `insts` of instances not gone.
    live: Vec<usize>,
    desired: u32,
    /// Desired capacity before the scaler's raise this tick (after its reaps).
    floor: u32,
    queue: VecDeque<usize>,
    started: Vec<Option<u64>>,
    boots: u64,
    failed_boots: u64,
    replaced: u64,
    killed: u64,
    schedule: Schedule,
    /// The active period and until when it holds (see `active_period`).
    active_cache: Option<(u64, Option<crate::scale::headroom::Active>)>,
    /// Headroom now (as of the last poll) and the group's spare-until tag.
    headroom_now: u32,
    spare_tag: u64,
    spare_s: u64,
    warm_s: u64,
    /// A sized warm pool: stopped instances ready, and refills warming up
    /// (when each will be stopped and ready).
    warm_ready: u32,
    warm_filling: VecDeque<u64>,
    /// Seconds refills ran while warming up (billed as running).
    warm_up_s: u64,
    cancel_at: Vec<Option<u64>>,
    cancelled: usize,
    /// Spot: the on-demand fallback, failed launches, interruptions.
    fallback_until: Option<u64>,
    launch_failures: VecDeque<u64>,
    interrupted: u64,
    retried: u64,
    failed_by_interruption: u64,
    fallback_s: u64,
    rng_spot: ChaCha8Rng,
    /// `headroom = "auto"`: what the scaler has recorded of the demand.
    demand: crate::scale::auto_headroom::DemandRecord,
}

impl Sim<'_> {
    /// Whether the next launch is a spot one (ours on spot, beyond the
    /// on-demand base, outside a fallback).
    fn next_is_spot(&self, t: u64) -> bool {
        if !(self.fleet.spot && self.policy == Policy::Ours) {
            return false;
        }
        if self.fallback_until.is_some_and(|u| u > t) {
            return false;
        }
        let on_demand = self.live.iter().filter(|&&i| !self.insts[i].spot).count() as u32;
        on_demand >= self.fleet.on_demand_base
    }

    /// One launch, unless it is a spot one during an outage: then the
    /// group records a failed launch (at most one each 10 s) and stays short.
    fn try_launch(&mut self, t: u64) -> bool {
        let spot = self.next_is_spot(t);
        if spot
            && self
                .fleet
                .spot_outage
                .is_some_and(|(a, b)| (a..b).contains(&t))
        {
            if self.launch_failures.back().is_none_or(|&l| t >= l + 10) {
                self.launch_failures.push_back(t);
                if self.launch_failures.len() > 100 {
                    self.launch_failures.pop_front();
                }
            }
            return false;
        }
        self.launch(t);
        if let Some(&i) = self.live.last() {
            self.insts[i].spot = spot;
        }
        true
    }

    fn launch(&mut self, t: u64) {
        let (lo, hi) = match self.policy {
            Policy::Ours => (self.fleet.boot_min_s, self.fleet.boot_max_s),
            Policy::Tutorial => (
                self.fleet.tutorial_boot_min_s,
                self.fleet.tutorial_boot_max_s,
            ),
        };
        let mut boot = self.rng.random_range(lo..=hi);
        let mut warm = false;
        // From the warm pool: a stopped instance starts; a refill (a launch
        // that installs and stops) takes its place.
        if self.warm_ready > 0 {
            self.warm_ready -= 1;
            boot = self
                .rng
                .random_range(self.fleet.warm_start_min_s..=self.fleet.warm_start_max_s);
            let warm_up = self.rng.random_range(lo..=hi);
            self.warm_filling.push_back(t + warm_up);
            self.warm_up_s += warm_up;
            // The refill is the launch; the start is not.
            self.boots += 1;
            warm = true;
        }
        let fails = self.boots < self.fleet.fail_first_launches
            || (self.fleet.launch_failure_rate > 0.0
                && self.rng.random_bool(self.fleet.launch_failure_rate));
        if !warm {
            self.boots += 1;
        }
        if fails {
            self.failed_boots += 1;
        }
        self.live.push(self.insts.len());
        self.insts.push(Inst {
            id: format!("i-{:08x}", self.boots),
            launched: t,
            state: State::Booting {
                ready_at: t + boot,
                fails,
            },
            busy_s: 0,
            gone_at: 0,
            spare_until: self.spare_tag,
            idle_limit: self.fleet.idle_timeout_s,
            spot: false,
        });
    }

    /// An instance leaves the group at `t`, with decrement where allowed.
    fn leave(&mut self, idx: usize, t: u64, decrement: bool) {
        let inst = &mut self.insts[idx];
        if let State::Busy { until, .. } = inst.state {
            // Terminated under a running job.
            self.killed += 1;
            inst.busy_s -= until.saturating_sub(t);
        }
        inst.state = State::Gone;
        inst.gone_at = t;
        if decrement && self.desired > self.fleet.min {
            self.desired -= 1;
        }
    }

    fn running(&self) -> u32 {
        self.live
            .iter()
            .filter(|&&i| matches!(self.insts[i].state, State::Busy { .. }))
            .count() as u32
    }

    /// Spot interruptions this second: the watcher stops the runner at the
    /// notice; its job is retried from the beginning (unsafe retries) or
    /// fails; the instance leaves with decrement.
    fn interruptions(&mut self, t: u64) {
        if !(self.fleet.spot && self.policy == Policy::Ours) || self.fleet.interruption_rate <= 0.0
        {
            return;
        }
        let p = (self.fleet.interruption_rate / 3600.0).min(1.0);
        let mut hit = Vec::new();
        for &i in &self.live {
            if self.insts[i].spot && self.rng_spot.random_bool(p) {
                hit.push(i);
            }
        }
        if hit.is_empty() {
            return;
        }
        self.live.retain(|i| !hit.contains(i));
        for i in hit {
            if let State::Busy { until, job } = self.insts[i].state {
                self.interrupted += 1;
                let inst = &mut self.insts[i];
                inst.busy_s -= until.saturating_sub(t);
                if self.fleet.retry_interrupted_jobs {
                    self.retried += 1;
                    self.started[job] = None;
                    self.queue.push_front(job);
                } else {
                    self.failed_by_interruption += 1;
                }
                // Not killed silently: handed back or failed, and counted.
                inst.state = State::Idle { since: t };
            }
            self.leave(i, t, true);
        }
    }

    fn tick(&mut self, t: u64, next_job: &mut usize) -> Result<(), SimError> {
        // 1-2: boots, job ends, idle timeouts.
        let mut leaving = Vec::new();
        for &i in &self.live {
            let inst = &mut self.insts[i];
            match inst.state {
                State::Booting {
                    ready_at,
                    fails: false,
                } if ready_at <= t => {
                    inst.state = State::Idle { since: t };
                    // A spare's runner stays idle to the period's end, then
                    // the usual idle timeout (the user data's rule).
                    inst.idle_limit = if inst.spare_until > t && !self.fleet.without_spare_rule {
                        inst.spare_until - t + self.fleet.idle_timeout_s
                    } else {
                        self.fleet.idle_timeout_s
                    };
                }
                // Ours: the boot script sees its failure and gives the
                // capacity back (the exit hook, with decrement).
                State::Booting {
                    ready_at,
                    fails: true,
                } if ready_at <= t
                    && self.policy == Policy::Ours
                    && !self.fleet.silent_boot_failures =>
                {
                    leaving.push(i);
                }
                State::Busy { until, .. } if until <= t => {
                    // The job is done: single-task, the runner exits.
                    inst.state = State::Idle { since: t };
                    leaving.push(i);
                }
                State::Idle { since } if since + inst.idle_limit <= t => leaving.push(i),
                _ => {}
            }
        }
        if !leaving.is_empty() {
            self.live.retain(|i| !leaving.contains(i));
            let decrement = self.policy == Policy::Ours;
            for i in leaving {
                self.leave(i, t, decrement);
            }
        }
        self.interruptions(t);
        if self.fallback_until.is_some() {
            self.fallback_s += 1;
        }
        // 3: arrivals and claims.
        while *next_job < self.jobs.len() && self.jobs[*next_job].arrival_s <= t {
            self.queue.push_back(*next_job);
            *next_job += 1;
        }
        // Cancelled while still queued.
        if !self.queue.is_empty() && self.fleet.cancel_rate > 0.0 {
            let before = self.queue.len();
            let cancel_at = &self.cancel_at;
            self.queue.retain(|&j| cancel_at[j].is_none_or(|c| c > t));
            self.cancelled += before - self.queue.len();
        }
        if !self.queue.is_empty() {
            for &i in &self.live {
                let Some(&job) = self.queue.front() else {
                    break;
                };
                let inst = &mut self.insts[i];
                if let State::Idle { .. } = inst.state {
                    let d = self.jobs[job].duration_s;
                    inst.state = State::Busy { until: t + d, job };
                    inst.busy_s += d;
                    self.started[job] = Some(t);
                    self.queue.pop_front();
                }
            }
        }
        // 4: the scaler.
        self.floor = self.desired;
        match self.policy {
            Policy::Ours if t.is_multiple_of(self.fleet.interval_s) => self.poll_ours(t)?,
            Policy::Tutorial if t.is_multiple_of(TUTORIAL_INTERVAL_S) => self.poll_tutorial(),
            _ => {}
        }
        // Spares (idle while a period is active) and the warm pool's stopped
        // instances (up to max, beside the live ones).
        if self.headroom_now > 0 {
            self.spare_s += self
                .live
                .iter()
                .filter(|&&i| matches!(self.insts[i].state, State::Idle { .. }))
                .count() as u64;
        }
        if self.fleet.warm_pool && self.policy == Policy::Ours {
            self.warm_s += u64::from(self.fleet.max.saturating_sub(self.live.len() as u32));
        }
        while self.warm_filling.front().is_some_and(|&at| at <= t) {
            self.warm_filling.pop_front();
            self.warm_ready += 1;
        }
        self.warm_s += u64::from(self.warm_ready);
        // 5: the group fills up to desired; launches beyond what the scaler
        // just asked for replace instances that left while counted.
        let live = self.live.len() as u32;
        if live < self.desired {
            let n = self.desired - live;
            let asked = self.desired.saturating_sub(self.floor.max(live));
            self.replaced += u64::from(n - asked.min(n));
            for _ in 0..n {
                if !self.try_launch(t) {
                    break;
                }
            }
        }
        Ok(())
    }
}

fn at(t: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t)
}

/// When each job is cancelled if still queued (`None`: never), drawn from
/// their own stream so that the same seed cancels the same jobs under both
/// policies and any setting.
fn cancellations(jobs: &[Job], fleet: &Fleet, seed: u64) -> Vec<Option<u64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6361_6e63_656c);
    jobs.iter()
        .map(|j| {
            (fleet.cancel_rate > 0.0 && rng.random_bool(fleet.cancel_rate))
                .then(|| j.arrival_s + rng.random_range(0..=fleet.cancel_within_s))
        })
        .collect()
}

/// Replay `jobs` (sorted by arrival) under `policy`. Runs until the last job is
/// done and the fleet has had time to drain, or two days past the last arrival.
pub fn simulate(
    jobs: &[Job],
    fleet: &Fleet,
    policy: Policy,
    seed: u64,
) -> Result<Report, SimError> {
    fleet.validate()?;
    let mut sim = Sim {
        jobs,
        fleet,
        policy,
        rng: ChaCha8Rng::seed_from_u64(seed),
        insts: Vec::new(),
        live: Vec::new(),
        desired: fleet.min,
        floor: fleet.min,
        queue: VecDeque::new(),
        started: vec![None; jobs.len()],
        boots: 0,
        failed_boots: 0,
        replaced: 0,
        killed: 0,
        schedule: match policy {
            Policy::Ours => Schedule::new(&fleet.headroom)?,
            Policy::Tutorial => Schedule::default(),
        },
        active_cache: None,
        headroom_now: 0,
        spare_tag: 0,
        spare_s: 0,
        warm_s: 0,
        warm_ready: if policy == Policy::Ours {
            fleet.warm_pool_size
        } else {
            0
        },
        warm_filling: VecDeque::new(),
        warm_up_s: 0,
        cancel_at: cancellations(jobs, fleet, seed),
        cancelled: 0,
        fallback_until: None,
        launch_failures: VecDeque::new(),
        interrupted: 0,
        retried: 0,
        failed_by_interruption: 0,
        fallback_s: 0,
        rng_spot: ChaCha8Rng::seed_from_u64(seed ^ 0x7370_6f74),
        demand: crate::scale::auto_headroom::DemandRecord::with_history(
            policy::HISTORY_OFFSET_S,
            &fleet.learned,
        ),
    };
    let last_arrival = jobs.iter().map(|j| j.arrival_s).max().unwrap_or(0);
    let drain = fleet.boot_max_s
        + fleet.idle_timeout_s
        + fleet.interval_s.max(TUTORIAL_INTERVAL_S) * 2
        + fleet.boot_timeout_s
        // Auto spares wait out their hold after the last job.
        + if fleet.auto_headroom && policy == Policy::Ours {
            super::fleet::AUTO_SPARE_HOLD_S
        } else {
            0
        };
    let hard_end = last_arrival + 2 * 86_400;
    let mut next_job = 0;
    let mut timeline = Vec::new();
    let mut t = 0;
    let mut quiet_since: Option<u64> = None;
    let mut peak_desired = sim.desired;
    loop {
        sim.tick(t, &mut next_job)?;
        peak_desired = peak_desired.max(sim.desired);
        if t % 60 == 0 {
            timeline.push(Sample {
                t_s: t,
                queued: sim.queue.len() as u32,
                desired: sim.desired,
                in_service: sim.live.len() as u32,
                spare: sim.headroom_now > 0,
                fallback: sim.fallback_until.is_some(),
            });
        }
        let all_done = next_job == jobs.len() && sim.queue.is_empty() && sim.running() == 0;
        match (all_done, quiet_since) {
            (true, None) => quiet_since = Some(t),
            (false, _) => quiet_since = None,
            _ => {}
        }
        if quiet_since.is_some_and(|q| t >= q + drain) || t >= hard_end {
            break;
        }
        t += 1;
    }
    let end = t;

    // Waits, overall and split by whether a headroom period (ours) was active
    // at arrival.
    let periods = Schedule::new(&fleet.headroom)?;
    let mut waits: Vec<u64> = Vec::new();
    let mut inside: Vec<u64> = Vec::new();
    let mut outside: Vec<u64> = Vec::new();
    for (j, s) in jobs.iter().zip(&sim.started) {
        let Some(s) = s else { continue };
        let w = s - j.arrival_s;
        waits.push(w);
        if !periods.is_empty() && periods.active(at(j.arrival_s)).is_some() {
            inside.push(w);
        } else {
            outside.push(w);
        }
    }
    waits.sort_unstable();
    inside.sort_unstable();
    outside.sort_unstable();
    let run = waits.len();
    let mut total_s = 0u64;
    let mut busy_s = 0u64;
    let mut spot_s = 0u64;
    for inst in &sim.insts {
        let until = if inst.state == State::Gone {
            inst.gone_at
        } else {
            end
        };
        total_s += until - inst.launched;
        busy_s += inst.busy_s.min(until - inst.launched);
        if inst.spot {
            spot_s += until - inst.launched;
        }
    }
    let spot_instance_hours = spot_s as f64 / 3600.0;
    let on_demand_instance_hours = (total_s - spot_s) as f64 / 3600.0;
    let instance_hours = total_s as f64 / 3600.0;
    let warm_pool_hours = sim.warm_s as f64 / 3600.0;
    // Stopped: the disk; warming up: the instance.
    let warm_pool_cost = warm_pool_hours * fleet.stopped_price_per_hour
        + sim.warm_up_s as f64 / 3600.0 * fleet.price_per_hour;
    // The control plane runs all the time: its share of a month.
    let control_plane_cost = match policy {
        Policy::Ours => fleet.control_plane_per_month,
        Policy::Tutorial => fleet.tutorial_control_plane_per_month,
    } * end as f64
        / MONTH_S;
    Ok(Report {
        policy,
        jobs: jobs.len(),
        waits: waits_of(&waits),
        waited_over_threshold: waits
            .iter()
            .filter(|w| **w > fleet.wait_threshold_s)
            .count(),
        jobs_not_run: jobs.len() - run - sim.cancelled,
        instance_hours,
        idle_instance_hours: (total_s - busy_s) as f64 / 3600.0,
        boots: sim.boots,
        boots_per_job: if jobs.is_empty() {
            0.0
        } else {
            sim.boots as f64 / jobs.len() as f64
        },
        replaced: sim.replaced,
        failed_boots: sim.failed_boots,
        jobs_killed: sim.killed,
        left_running: sim.live.len() as u32,
        peak_desired,
        cost: (on_demand_instance_hours + spot_instance_hours * fleet.spot_price_ratio)
            * fleet.price_per_hour
            + warm_pool_cost
            + control_plane_cost,
        control_plane_cost,
        jobs_cancelled: sim.cancelled,
        waits_in_headroom: waits_of(&inside),
        jobs_in_headroom: inside.len(),
        waits_outside_headroom: waits_of(&outside),
        spare_instance_hours: sim.spare_s as f64 / 3600.0,
        warm_pool_hours,
        warm_pool_cost,
        spot_instance_hours,
        on_demand_instance_hours,
        jobs_interrupted: sim.interrupted,
        jobs_retried: sim.retried,
        jobs_failed_by_interruption: sim.failed_by_interruption,
        fallback_hours: sim.fallback_s as f64 / 3600.0,
        simulated_s: end,
        timeline,
        wait_list: waits,
    })
}
