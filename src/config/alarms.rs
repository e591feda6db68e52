//! `[alarms]`: what pages, and when (for the whole stack).

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::bad;

/// `[alarms]` as the stack file gives it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlarmsFile {
    /// Create the alarms [default: true].
    pub enabled: Option<bool>,
    /// An email address subscribed to the alarms' SNS topic.
    pub email: Option<String>,
    /// The scaler is failing: Lambda errors in this many of the last 5 minutes [3].
    pub scaler_errors: Option<u32>,
    /// Jobs starved: unclaimed while desired is at max for this many minutes [10].
    pub starved_minutes: Option<u32>,
    /// Boots failing: instances reaped within this many minutes [30].
    pub reaped_window_minutes: Option<u32>,
}

/// Checked alarm settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmSettings {
    pub enabled: bool,
    pub email: Option<String>,
    pub scaler_errors: u32,
    pub starved_minutes: u32,
    pub reaped_window_minutes: u32,
}

/// `[alarms]` with the top-level shorthand `alarm_email`.
pub(super) fn check(
    alarms: Option<&AlarmsFile>,
    alarm_email: Option<&String>,
) -> Result<AlarmSettings, ConfigError> {
    let mut a = alarms.cloned().unwrap_or_default();
    match (&a.email, alarm_email) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "alarm_email",
                "set alarm_email or [alarms] email, not both",
            ));
        }
        (None, Some(e)) => a.email = Some(e.clone()),
        _ => {}
    }
    if let Some(e) = &a.email
        && !(e.len() <= 254
            && e.split_once('@').is_some_and(|(l, d)| {
                !l.is_empty() && d.contains('.') && !e.contains(char::is_whitespace)
            }))
    {
        return Err(bad(
            "alarms.email",
            format!("{e:?} is not an email address"),
        ));
    }
    let alarms = AlarmSettings {
        enabled: a.enabled.unwrap_or(true),
        email: a.email.clone(),
        scaler_errors: a.scaler_errors.unwrap_or(3),
        starved_minutes: a.starved_minutes.unwrap_or(10),
        reaped_window_minutes: a.reaped_window_minutes.unwrap_or(30),
    };
    if !(1..=5).contains(&alarms.scaler_errors) {
        return Err(bad(
            "alarms.scaler_errors",
            "1 to 5 (of the last 5 minutes)",
        ));
    }
    if !(1..=1440).contains(&alarms.starved_minutes) {
        return Err(bad("alarms.starved_minutes", "1 to 1440"));
    }
    if !(5..=1440).contains(&alarms.reaped_window_minutes) {
        return Err(bad("alarms.reaped_window_minutes", "5 to 1440"));
    }
    Ok(alarms)
}
