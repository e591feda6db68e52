//! Spot pools: recognising launches that failed for want of spot capacity,
//! and the group tag that records an on-demand fallback until when.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Group tag: the on-demand fallback lasts until this time (seconds since
/// the epoch); the scaler switches back to spot after it.
pub const FALLBACK_TAG: &str = "cci-scaler:spot-fallback-until";

/// Instance tag: its spot watcher saw an interruption notice at this time
/// (seconds since the epoch).
pub const INTERRUPTED_TAG: &str = "cci-scaler:interrupted";

/// A launch the group tried and failed (a scaling activity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchFailure {
    pub time: SystemTime,
    /// The activity's status message.
    pub reason: String,
}

/// A spot pool's state as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpotState {
    /// The policy's on-demand percentage above the base (0: spot; 100: on
    /// demand, a fallback).
    pub on_demand_percentage: u32,
    /// The fallback tag, if set.
    pub fallback_until: Option<SystemTime>,
    /// Recent failed launches (read only while the group is short of its
    /// desired capacity).
    pub failures: Vec<LaunchFailure>,
}

/// What the decision does about spot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "fallback")]
pub enum Fallback {
    None,
    /// Launch on demand (100% above the base) until `until`.
    Start {
        #[serde(serialize_with = "secs")]
        until: SystemTime,
        reason: String,
    },
    /// The cool-down is over: back to spot.
    End,
}

fn secs<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(epoch(*t))
}

pub fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn from_epoch(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

/// A failed launch for want of spot capacity, price or quota (EC2's codes
/// and Auto Scaling's wording).
pub fn is_spot_shortage(status: &str, message: &str) -> bool {
    if !matches!(status, "Failed" | "Cancelled") {
        return false;
    }
    let m = message.to_ascii_lowercase();
    [
        "insufficientinstancecapacity",
        "insufficient capacity",
        "spotmaxpricetoolow",
        "maxspotinstancecountexceeded",
        "spot instance",
        "spot request",
        "capacity-not-available",
        "vcpulimitexceeded",
        "quota",
    ]
    .iter()
    .any(|k| m.contains(k))
}

/// Whether an SDK group is a spot pool's (its mixed-instances policy names a
/// spot allocation strategy).
pub fn is_spot_group(g: &aws_sdk_autoscaling::types::AutoScalingGroup) -> bool {
    g.mixed_instances_policy()
        .and_then(|m| m.instances_distribution())
        .and_then(|d| d.spot_allocation_strategy())
        .is_some()
}

/// Whether an SDK group has an active fallback tag at `now`.
pub fn fallback_active(g: &aws_sdk_autoscaling::types::AutoScalingGroup, now: SystemTime) -> bool {
    fallback_until(g).is_some_and(|u| u > now)
}

pub fn fallback_until(g: &aws_sdk_autoscaling::types::AutoScalingGroup) -> Option<SystemTime> {
    g.tags()
        .iter()
        .find(|t| t.key() == Some(FALLBACK_TAG))
        .and_then(|t| t.value())
        .and_then(|v| v.parse::<u64>().ok())
        .map(from_epoch)
}
