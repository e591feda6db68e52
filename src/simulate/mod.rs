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
mod fleet;
mod model;
pub mod recommend;
mod report;
pub mod usage;
pub mod usage_report;
pub mod workload;

pub use fleet::{
    AUTO_SPARE_HOLD_S, BAKED_BOOT_S, CONTROL_PLANE_PER_MONTH, DEFAULT_MAX_SPARES, Fleet, Policy,
    SimError, TUTORIAL_CONTROL_PLANE_PER_MONTH, TUTORIAL_INTERVAL_S, WARM_START_S,
};
pub use model::simulate;
pub use report::{PoolRun, Report, RunReport, Sample, Sweep, Waits, hms, waits_of};

#[cfg(test)]
mod tests;
