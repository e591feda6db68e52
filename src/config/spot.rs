//! `market`, `on_demand_base`, `spot_allocation`, `retry_interrupted_jobs`:
//! a pool's spot capacity (with on-demand fallback), or on demand only.

use serde::Serialize;

use super::ConfigError;
use super::bad;
use super::pool::PoolFile;

/// A spot pool's settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpotSettings {
    /// Instances always on demand.
    pub on_demand_base: u32,
    /// EC2's spot allocation strategy.
    pub allocation: String,
}

/// The spot allocation strategies Auto Scaling takes.
pub const SPOT_ALLOCATIONS: &[&str] = &[
    "price-capacity-optimized",
    "capacity-optimized",
    "capacity-optimized-prioritized",
    "lowest-price",
];

/// What the market keys come to.
pub(super) struct Market {
    pub spot: Option<SpotSettings>,
    pub retry_interrupted_jobs: bool,
    /// Spot keys an on-demand pool ignores, named.
    pub warnings: Vec<String>,
}

pub(super) fn check(p: &PoolFile, max_instances: u32) -> Result<Market, ConfigError> {
    match p.market.as_deref().unwrap_or("on-demand") {
        "on-demand" => {
            // Turning a spot pool back to on demand is a one-line change made
            // in a hurry: the spot keys left behind are ignored, not refused.
            let ignored: Vec<&str> = [
                ("on_demand_base", p.on_demand_base.is_some()),
                ("spot_allocation", p.spot_allocation.is_some()),
                (
                    "retry_interrupted_jobs",
                    p.retry_interrupted_jobs == Some(true),
                ),
            ]
            .into_iter()
            .filter_map(|(k, set)| set.then_some(k))
            .collect();
            let warnings = if ignored.is_empty() {
                vec![]
            } else {
                vec![format!(
                    "{} appl{} to market = \"spot\" only: ignored while the market is on-demand",
                    ignored.join(", "),
                    if ignored.len() == 1 { "ies" } else { "y" }
                )]
            };
            Ok(Market {
                spot: None,
                retry_interrupted_jobs: false,
                warnings,
            })
        }
        "spot" => {
            let allocation = p
                .spot_allocation
                .clone()
                .unwrap_or_else(|| SPOT_ALLOCATIONS[0].into());
            if !SPOT_ALLOCATIONS.contains(&allocation.as_str()) {
                return Err(bad(
                    "spot_allocation",
                    format!("{allocation:?}: one of {}", SPOT_ALLOCATIONS.join(", ")),
                ));
            }
            let on_demand_base = p.on_demand_base.unwrap_or(0);
            if on_demand_base > max_instances {
                return Err(bad(
                    "on_demand_base",
                    format!("{on_demand_base} is above max_instances {max_instances}"),
                ));
            }
            Ok(Market {
                spot: Some(SpotSettings {
                    on_demand_base,
                    allocation,
                }),
                retry_interrupted_jobs: p.retry_interrupted_jobs.unwrap_or(false),
                warnings: vec![],
            })
        }
        other => Err(bad(
            "market",
            format!("{other:?}: \"on-demand\" or \"spot\""),
        )),
    }
}
