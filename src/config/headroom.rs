//! `[[headroom]]` (`[[pool.headroom]]`, `[[defaults.headroom]]`): spare
//! runners by schedule.

use super::ConfigError;
use super::bad;
use super::pool::PoolFile;
use crate::scale::headroom::{HeadroomSpec, Schedule};

pub(super) fn check(p: &PoolFile, max_instances: u32) -> Result<Vec<HeadroomSpec>, ConfigError> {
    let headroom = p.headroom.clone().unwrap_or_default();
    Schedule::new(&headroom).map_err(|e| bad("headroom", e.to_string()))?;
    if let Some(h) = headroom.iter().find(|h| h.count > max_instances) {
        return Err(bad(
            "headroom",
            format!(
                "a period wants {} spare runners, above max_instances {max_instances}",
                h.count
            ),
        ));
    }
    Ok(headroom)
}
