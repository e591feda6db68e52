//! The fleet being simulated (its settings and prices) and the two policies.

use serde::Serialize;

use crate::scale::decide;
use crate::scale::headroom::{HeadroomSpec, Schedule};

/// What the control plane costs a month (us-east-1 list prices, before free
/// tiers; the README's table): ours for a one-pool stack (the Lambda polling
/// 50 s of every minute, its logs, 11 EMF metrics, 3 alarms, a dashboard, 2
/// secrets) and the tutorial's (a 1 s Lambda a minute, its logs, 1 secret).
pub const CONTROL_PLANE_PER_MONTH: f64 = 12.08;
pub const TUTORIAL_CONTROL_PLANE_PER_MONTH: f64 = 0.50;
pub(super) const MONTH_S: f64 = 30.0 * 86_400.0;

pub use crate::scale::auto_headroom::DEFAULT_MAX_SPARES;
pub use crate::scale::auto_headroom::SPARE_HOLD_S as AUTO_SPARE_HOLD_S;

/// A baked (runner-ready) image boots to a registered runner in this range
/// (seconds).
pub const BAKED_BOOT_S: (u64, u64) = (40, 60);
/// A stopped warm-pool instance starts in this range (seconds).
pub const WARM_START_S: (u64, u64) = (15, 30);

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
    /// Ours: spares sized from the demand seen (`headroom = "auto"`,
    /// [`crate::scale::auto_headroom`]), combined with `headroom` (the larger
    /// count wins), at most `max_spares`.
    pub auto_headroom: bool,
    pub max_spares: u32,
    /// `headroom = "auto"`'s history: for each earlier week (1 week ago
    /// first), the busy minutes of each hour from the same moment as the
    /// simulation's start ([`super::workload::hourly_busy_minutes`]);
    /// empty: a pool with no history.
    #[serde(skip)]
    pub learned: Vec<Vec<u32>>,
    /// Ours launches from a warm pool of stopped instances (the boot range is
    /// then their start time); the stopped ones, up to max, pay for their disk.
    pub warm_pool: bool,
    /// Ours: an EC2 Auto Scaling warm pool of this many stopped,
    /// pre-initialised instances (0: none). A launch takes a stopped one
    /// when there is one (it starts in `warm_start_*_s`); otherwise it boots
    /// as usual. The pool refills: each refill is a launch that boots as
    /// usual, runs its install (billed), and stops.
    pub warm_pool_size: u32,
    pub warm_start_min_s: u64,
    pub warm_start_max_s: u64,
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
            auto_headroom: false,
            max_spares: DEFAULT_MAX_SPARES,
            learned: Vec::new(),
            warm_pool: false,
            warm_pool_size: 0,
            warm_start_min_s: 15,
            warm_start_max_s: 30,
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
        if self.warm_pool_size > self.max {
            return bad("warm pool size must be at most max instances");
        }
        if self.warm_pool_size > 0 && self.spot {
            // As AWS: no warm pool for a group with a mixed instances
            // policy or spot instances.
            return bad(
                "a warm pool cannot serve a spot pool (EC2 Auto Scaling refuses warm pools for groups with a mixed instances policy or spot instances)",
            );
        }
        if self.warm_pool_size > 0 && self.warm_pool {
            return bad(
                "--warm-pool N sizes the warm pool; --image warm-pool is the pool up to max: give one",
            );
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
