//! `cci-scaler simulate`: replay CI jobs through a model fleet on a simulated
//! clock, once with our policy (the real [`crate::scale::decide::decide`]) and
//! once with the tutorial's, and report waits, instance-hours and cost.
//!
//! The model, one tick a second, in this order each tick:
//! 1. booting instances whose boot time has passed register as runners (unless
//!    their launch failed: then they never register);
//! 2. runners whose job ended exit (single-task), idle runners past the idle
//!    timeout exit; an exiting instance leaves the group: ours with decrement
//!    (the exit hook), the tutorial's by shutting down while still counted;
//! 3. jobs arriving now are queued; idle runners claim queued jobs, oldest first;
//! 4. the scaler polls (ours every `interval`, the tutorial every 60 s);
//! 5. the group launches instances until it has `desired` (scale-in protection:
//!    it never terminates one to shrink).

pub mod chart;
pub mod workload;

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::scale::decide::{self, GroupState, Instance, Lifecycle, QueueDepth};
use crate::scale::headroom::{HeadroomSpec, Schedule};
use workload::Job;

/// What the control plane costs a month (us-east-1 list prices, before free
/// tiers; the README's table): ours for a one-pool stack (the Lambda polling
/// 50 s of every minute, its logs, 11 EMF metrics, 3 alarms, a dashboard, 2
/// secrets) and the tutorial's (a 1 s Lambda a minute, its logs, 1 secret).
pub const CONTROL_PLANE_PER_MONTH: f64 = 12.08;
pub const TUTORIAL_CONTROL_PLANE_PER_MONTH: f64 = 0.50;
const MONTH_S: f64 = 30.0 * 86_400.0;

/// The tutorial's Lambda runs once a minute.
pub const TUTORIAL_INTERVAL_S: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// cci-scaler: raise only, instances leave with decrement, failed boots reaped.
    Ours,
    /// The CircleCI tutorial: every 60 s set desired to min(demand, max);
    /// instances shut down while still counted.
    Tutorial,
}

impl Policy {
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Ours => "cci-scaler",
            Policy::Tutorial => "tutorial",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fleet {
    pub min: u32,
    pub max: u32,
    /// Instance boot time (launch to runner registered), uniform in this range.
    pub boot_min_s: u64,
    pub boot_max_s: u64,
    /// Share of launches whose boot fails (the runner never registers).
    pub launch_failure_rate: f64,
    /// Ours: a failed boot is one its script sees (a secret it cannot read,
    /// a setup script that fails...): the instance leaves its group with
    /// decrement when the boot ends, as the user data does. `true`: the
    /// failure is silent (a hung boot), and only the boot timeout reaps it.
    pub silent_boot_failures: bool,
    pub idle_timeout_s: u64,
    /// Our poll interval (the tutorial's is fixed at 60 s).
    pub interval_s: u64,
    pub boot_timeout_s: u64,
    pub price_per_hour: f64,
    /// Jobs that waited longer than this are counted.
    pub wait_threshold_s: u64,
    /// What-if: the first N launches fail their boot (on top of the rate).
    pub fail_first_launches: u64,
    /// The tutorial's boot time range: it always boots a stock image and
    /// installs the runner at boot.
    pub tutorial_boot_min_s: u64,
    pub tutorial_boot_max_s: u64,
    /// Spare runners by schedule (ours). Simulated time 0 is 1970-01-01
    /// 00:00 UTC, a Thursday.
    pub headroom: Vec<HeadroomSpec>,
    /// Ours launches from a warm pool of stopped instances (the boot range is
    /// then their start time); the stopped ones, up to max, pay for their disk.
    pub warm_pool: bool,
    /// What one stopped instance costs an hour (its disk).
    pub stopped_price_per_hour: f64,
    /// Share of jobs cancelled while still queued (auto-cancelled redundant
    /// workflows), each at a uniform time within `cancel_within_s` of arrival.
    pub cancel_rate: f64,
    pub cancel_within_s: u64,
    /// What-if: spares idle out after the plain idle timeout (no
    /// spare-until rule), to show the churn the rule prevents.
    pub without_spare_rule: bool,
    /// Ours on spot (the tutorial stays on demand): spot instances cost
    /// `spot_price_ratio` of the on-demand price and are interrupted at
    /// `interruption_rate` per instance-hour.
    pub spot: bool,
    pub spot_price_ratio: f64,
    pub interruption_rate: f64,
    /// Instances always on demand.
    pub on_demand_base: u32,
    /// A job on an interrupted instance runs again from the beginning
    /// (unsafe retries) instead of failing.
    pub retry_interrupted_jobs: bool,
    /// Spot launches fail in this window of simulated time (a capacity
    /// outage), from..to seconds.
    pub spot_outage: Option<(u64, u64)>,
    /// The fallback's grace period and cool-down (as the scaler's).
    pub spot_grace_s: u64,
    pub spot_cooldown_s: u64,
    /// What the control planes cost a month (prorated over the simulated
    /// time, added to the cost).
    pub control_plane_per_month: f64,
    pub tutorial_control_plane_per_month: f64,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            min: 0,
            max: 10,
            boot_min_s: 45,
            boot_max_s: 90,
            launch_failure_rate: 0.0,
            silent_boot_failures: false,
            idle_timeout_s: 60,
            interval_s: 10,
            boot_timeout_s: 600,
            price_per_hour: 0.0832,
            wait_threshold_s: 300,
            fail_first_launches: 0,
            tutorial_boot_min_s: 45,
            tutorial_boot_max_s: 90,
            headroom: Vec::new(),
            warm_pool: false,
            stopped_price_per_hour: 30.0 * 0.08 / 730.0,
            cancel_rate: 0.0,
            cancel_within_s: 120,
            without_spare_rule: false,
            spot: false,
            spot_price_ratio: 0.35,
            interruption_rate: 0.05,
            on_demand_base: 0,
            retry_interrupted_jobs: false,
            spot_outage: None,
            spot_grace_s: 180,
            spot_cooldown_s: 1800,
            control_plane_per_month: CONTROL_PLANE_PER_MONTH,
            tutorial_control_plane_per_month: TUTORIAL_CONTROL_PLANE_PER_MONTH,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulation setting: {0}")]
    Invalid(String),
    #[error(transparent)]
    Decide(#[from] decide::DecideError),
    #[error(transparent)]
    Headroom(#[from] crate::scale::headroom::HeadroomError),
}

impl Fleet {
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: &str| Err(SimError::Invalid(m.to_string()));
        if self.min > self.max {
            return bad("min above max");
        }
        if self.boot_min_s > self.boot_max_s || self.tutorial_boot_min_s > self.tutorial_boot_max_s
        {
            return bad("boot time range is reversed");
        }
        if !(0.0..=1.0).contains(&self.spot_price_ratio) {
            return bad("spot price ratio must be between 0 and 1");
        }
        if !(self.interruption_rate.is_finite() && (0.0..=3600.0).contains(&self.interruption_rate))
        {
            return bad("interruption rate must be 0 or more (per instance-hour)");
        }
        if !(0.0..=1.0).contains(&self.cancel_rate) {
            return bad("cancel rate must be between 0 and 1");
        }
        if !(self.stopped_price_per_hour.is_finite() && self.stopped_price_per_hour >= 0.0) {
            return bad("stopped price per hour must be 0 or more");
        }
        Schedule::new(&self.headroom)?;
        if !(0.0..=1.0).contains(&self.launch_failure_rate) {
            return bad("launch failure rate must be between 0 and 1");
        }
        if self.interval_s == 0 {
            return bad("interval must be at least 1 s");
        }
        if self.idle_timeout_s == 0 {
            return bad("idle timeout must be at least 1 s");
        }
        if !(self.price_per_hour.is_finite() && self.price_per_hour >= 0.0) {
            return bad("price per hour must be 0 or more");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Waits {
    pub p50_s: u64,
    pub p95_s: u64,
    pub max_s: u64,
    pub mean_s: f64,
}

/// One point of the chart (every 60 s of simulated time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub t_s: u64,
    pub queued: u32,
    pub desired: u32,
    pub in_service: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub policy: Policy,
    pub jobs: usize,
    pub waits: Waits,
    pub waited_over_threshold: usize,
    /// Jobs still queued when the simulation ended.
    pub jobs_not_run: usize,
    pub instance_hours: f64,
    pub idle_instance_hours: f64,
    pub boots: u64,
    pub boots_per_job: f64,
    /// Instances the group launched to replace one that left while still counted.
    pub replaced: u64,
    /// Instances whose boot failed.
    pub failed_boots: u64,
    /// Jobs whose instance was terminated under them.
    pub jobs_killed: u64,
    /// Instances still running (billing) when the simulation ended.
    pub left_running: u32,
    pub cost: f64,
    /// Jobs cancelled while queued (not counted in the waits).
    pub jobs_cancelled: usize,
    /// Waits of jobs that arrived while a headroom period was active, and of
    /// the others (ours; the tutorial's split by the same periods).
    pub waits_in_headroom: Waits,
    pub jobs_in_headroom: usize,
    pub waits_outside_headroom: Waits,
    /// Idle instance-hours while a headroom period was active.
    pub spare_instance_hours: f64,
    /// Stopped instance-hours in the warm pool, and what they cost (in `cost`).
    pub warm_pool_hours: f64,
    pub warm_pool_cost: f64,
    /// The control plane's share of the cost (in `cost`).
    pub control_plane_cost: f64,
    /// Spot: instance-hours on spot and on demand, jobs whose instance was
    /// interrupted (retried from the beginning, or failed), time spent in the
    /// on-demand fallback.
    pub spot_instance_hours: f64,
    pub on_demand_instance_hours: f64,
    pub jobs_interrupted: u64,
    pub jobs_retried: u64,
    pub jobs_failed_by_interruption: u64,
    pub fallback_hours: f64,
    pub simulated_s: u64,
    #[serde(skip)]
    pub timeline: Vec<Sample>,
}

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
    /// Headroom now (as of the last poll) and the group's spare-until tag.
    headroom_now: u32,
    spare_tag: u64,
    spare_s: u64,
    warm_s: u64,
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
        let boot = self.rng.random_range(lo..=hi);
        let fails = self.boots < self.fleet.fail_first_launches
            || (self.fleet.launch_failure_rate > 0.0
                && self.rng.random_bool(self.fleet.launch_failure_rate));
        self.boots += 1;
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

    fn poll_ours(&mut self, t: u64) -> Result<(), SimError> {
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

    fn poll_tutorial(&mut self) {
        let demand = self.queue.len() as u32 + self.running();
        self.desired = demand.min(self.fleet.max).max(self.fleet.min);
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
        if !self.queue.is_empty() {
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

fn waits_of(sorted: &[u64]) -> Waits {
    Waits {
        p50_s: percentile(sorted, 50.0),
        p95_s: percentile(sorted, 95.0),
        max_s: sorted.last().copied().unwrap_or(0),
        mean_s: if sorted.is_empty() {
            0.0
        } else {
            sorted.iter().sum::<u64>() as f64 / sorted.len() as f64
        },
    }
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

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
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
        headroom_now: 0,
        spare_tag: 0,
        spare_s: 0,
        warm_s: 0,
        cancel_at: cancellations(jobs, fleet, seed),
        cancelled: 0,
        fallback_until: None,
        launch_failures: VecDeque::new(),
        interrupted: 0,
        retried: 0,
        failed_by_interruption: 0,
        fallback_s: 0,
        rng_spot: ChaCha8Rng::seed_from_u64(seed ^ 0x7370_6f74),
    };
    let last_arrival = jobs.iter().map(|j| j.arrival_s).max().unwrap_or(0);
    let drain = fleet.boot_max_s
        + fleet.idle_timeout_s
        + fleet.interval_s.max(TUTORIAL_INTERVAL_S) * 2
        + fleet.boot_timeout_s;
    let hard_end = last_arrival + 2 * 86_400;
    let mut next_job = 0;
    let mut timeline = Vec::new();
    let mut t = 0;
    let mut quiet_since: Option<u64> = None;
    loop {
        sim.tick(t, &mut next_job)?;
        if t % 60 == 0 {
            timeline.push(Sample {
                t_s: t,
                queued: sim.queue.len() as u32,
                desired: sim.desired,
                in_service: sim.live.len() as u32,
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
    let warm_pool_cost = warm_pool_hours * fleet.stopped_price_per_hour;
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
    })
}

#[cfg(test)]
mod tests;
