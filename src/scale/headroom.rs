//! Headroom: spare idle runners kept ready while a scheduled period is
//! active. A period starts at each time its cron schedule fires (five fields,
//! in its time zone) and lasts its duration; periods may overlap, and the
//! largest count wins. Pure: the caller passes the time.
//!
//! Daylight saving time follows cron (Vixie, and the Open Cron Pattern
//! Specification croner implements): a start in the hour that a clock skips
//! happens right after the jump, and a start in the hour a clock repeats
//! happens once. So a change of clock neither skips nor doubles a period; the
//! duration is real time.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};

/// One period as the stack file (and the Lambda's environment) gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadroomSpec {
    /// Five-field cron: minute hour day-of-month month day-of-week.
    pub schedule: String,
    /// How long each period lasts, e.g. `11h`.
    pub duration: String,
    /// IANA time zone of the schedule [default: UTC].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Spare idle runners wanted while the period lasts.
    pub count: u32,
}

impl HeadroomSpec {
    /// The default working day: 08:00 to 19:00 on weekdays, UTC.
    pub fn working_hours(count: u32) -> HeadroomSpec {
        HeadroomSpec {
            schedule: "0 8 * * MON-FRI".into(),
            duration: "11h".into(),
            time_zone: None,
            count,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("headroom {field}: {detail}")]
pub struct HeadroomError {
    /// The key of the period the error is about (`schedule`, `duration`,
    /// `time_zone`, `count`).
    pub field: &'static str,
    pub detail: String,
}

fn bad(field: &'static str, detail: impl Into<String>) -> HeadroomError {
    HeadroomError {
        field,
        detail: detail.into(),
    }
}

#[derive(Debug, Clone)]
struct Period {
    cron: Cron,
    duration: Duration,
    tz: jiff::tz::TimeZone,
    count: u32,
}

/// Compiled periods.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    periods: Vec<Period>,
}

/// The headroom wanted at one time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Active {
    /// Spare runners wanted.
    pub count: u32,
    /// When the period that wants them ends.
    #[serde(serialize_with = "epoch_secs")]
    pub until: SystemTime,
    /// Which period (its index in the list).
    pub period: usize,
}

fn epoch_secs<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(secs(*t))
}

/// Seconds since the epoch (0 before it).
pub fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// At most a week: a period longer than that is always on.
const MAX_DURATION: Duration = Duration::from_secs(7 * 86_400);

impl Schedule {
    pub fn new(specs: &[HeadroomSpec]) -> Result<Schedule, HeadroomError> {
        let parser = CronParser::builder().seconds(Seconds::Disallowed).build();
        let mut periods = Vec::new();
        for spec in specs {
            let cron = parser.parse(spec.schedule.trim()).map_err(|e| {
                bad(
                    "schedule",
                    format!(
                        "{:?}: {e} (five fields: minute hour day-of-month month day-of-week, e.g. \"0 8 * * MON-FRI\")",
                        spec.schedule
                    ),
                )
            })?;
            let duration = humantime::parse_duration(&spec.duration)
                .map_err(|e| bad("duration", format!("{:?}: {e} (e.g. 11h)", spec.duration)))?;
            if duration < Duration::from_secs(60) || duration > MAX_DURATION {
                return Err(bad(
                    "duration",
                    format!("{}: must be 1m to 7d", spec.duration),
                ));
            }
            let tz = match spec.time_zone.as_deref() {
                None | Some("UTC") => jiff::tz::TimeZone::UTC,
                Some(name) => jiff::tz::TimeZone::get(name).map_err(|_| {
                    bad(
                        "time_zone",
                        format!("{name:?} is not a time zone (IANA names, e.g. Europe/Berlin)"),
                    )
                })?,
            };
            if spec.count == 0 || spec.count > 1000 {
                return Err(bad("count", format!("{}: must be 1 to 1000", spec.count)));
            }
            periods.push(Period {
                cron,
                duration,
                tz,
                count: spec.count,
            });
        }
        Ok(Schedule { periods })
    }

    pub fn is_empty(&self) -> bool {
        self.periods.is_empty()
    }

    /// The headroom wanted at `now`: the largest count of the periods active
    /// then (ties: the one that lasts longest), or `None` outside them all.
    pub fn active(&self, now: SystemTime) -> Option<Active> {
        let mut best: Option<Active> = None;
        for (i, p) in self.periods.iter().enumerate() {
            let Some(start) = last_start(p, now) else {
                continue;
            };
            let until = start + p.duration;
            if until <= now {
                continue;
            }
            let a = Active {
                count: p.count,
                until,
                period: i,
            };
            best = match best {
                Some(b) if (b.count, b.until) >= (a.count, a.until) => Some(b),
                _ => Some(a),
            };
        }
        best
    }

    /// The first start of any period after `now` (`None`: no period will
    /// start again). Until then, and until the active period's end,
    /// [`Schedule::active`] gives the same answer.
    pub fn next_start(&self, now: SystemTime) -> Option<SystemTime> {
        self.periods
            .iter()
            .filter_map(|p| {
                p.cron
                    .find_next_occurrence(&zoned(now, &p.tz), false)
                    .ok()
                    .map(|z| system_time(&z))
            })
            .min()
    }

    /// The periods' starts in `[from, to)` (for tests and the simulator's
    /// report).
    pub fn starts(&self, from: SystemTime, to: SystemTime) -> Vec<(usize, SystemTime)> {
        let mut out = Vec::new();
        for (i, p) in self.periods.iter().enumerate() {
            let mut at = zoned(from, &p.tz);
            let mut inclusive = true;
            while let Ok(next) = p.cron.find_next_occurrence(&at, inclusive) {
                let t = system_time(&next);
                if t >= to {
                    break;
                }
                out.push((i, t));
                at = next;
                inclusive = false;
            }
        }
        out.sort_by_key(|(_, t)| *t);
        out
    }
}

/// The last start of `p` within one duration before `now` (a later start is
/// the one that lasts longest), if any.
fn last_start(p: &Period, now: SystemTime) -> Option<SystemTime> {
    let from = now.checked_sub(p.duration)?;
    let first = p
        .cron
        .find_next_occurrence(&zoned(from, &p.tz), false)
        .ok()?;
    if system_time(&first) > now {
        return None;
    }
    // Walk on to the last start at or before `now`.
    let mut last = first;
    while let Ok(next) = p.cron.find_next_occurrence(&last, false) {
        if system_time(&next) > now {
            break;
        }
        last = next;
    }
    Some(system_time(&last))
}

fn zoned(t: SystemTime, tz: &jiff::tz::TimeZone) -> jiff::Zoned {
    let ts = jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    ts.to_zoned(tz.clone())
}

fn system_time(z: &jiff::Zoned) -> SystemTime {
    SystemTime::from(z.timestamp())
}

impl FromStr for HeadroomSpec {
    type Err = HeadroomError;
    /// `COUNT` alone: that many spares during the default working hours.
    fn from_str(s: &str) -> Result<HeadroomSpec, HeadroomError> {
        let count = s
            .trim()
            .parse::<u32>()
            .map_err(|_| bad("count", format!("{s:?} is not a count")))?;
        Ok(HeadroomSpec::working_hours(count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> SystemTime {
        SystemTime::from(rfc3339.parse::<jiff::Timestamp>().unwrap())
    }

    fn spec(schedule: &str, duration: &str, tz: Option<&str>, count: u32) -> HeadroomSpec {
        HeadroomSpec {
            schedule: schedule.into(),
            duration: duration.into(),
            time_zone: tz.map(String::from),
            count,
        }
    }

    #[test]
    fn working_hours_in_a_time_zone() {
        let s = Schedule::new(&[spec("0 8 * * MON-FRI", "11h", Some("Europe/Berlin"), 2)]).unwrap();
        // 2026-11-27 is a Friday; Berlin is UTC+1 in November.
        let cases = [
            ("2026-11-27T06:59:59Z", None),
            ("2026-11-27T07:00:00Z", Some(2)),
            ("2026-11-27T17:59:59Z", Some(2)),
            ("2026-11-27T18:00:00Z", None),
            ("2026-11-28T10:00:00Z", None), // Saturday
            ("2026-11-30T12:00:00Z", Some(2)),
        ];
        for (t, want) in cases {
            assert_eq!(s.active(at(t)).map(|a| a.count), want, "{t}");
        }
        assert_eq!(
            s.active(at("2026-11-27T12:00:00Z")).unwrap().until,
            at("2026-11-27T18:00:00Z")
        );
    }

    #[test]
    fn overlapping_periods_take_the_largest_count() {
        let s = Schedule::new(&[
            spec("0 8 * * *", "10h", None, 1),
            spec("0 9 * * *", "2h", None, 4),
        ])
        .unwrap();
        let count = |t| s.active(at(t)).map(|a| (a.count, a.period));
        assert_eq!(count("2026-11-27T08:30:00Z"), Some((1, 0)));
        assert_eq!(count("2026-11-27T09:30:00Z"), Some((4, 1)));
        assert_eq!(count("2026-11-27T11:00:00Z"), Some((1, 0)));
        assert_eq!(count("2026-11-27T18:00:00Z"), None);
    }

    /// Spring forward in Berlin, 2026-03-29 02:00 CET -> 03:00 CEST: a period
    /// due at 02:30 (a time that does not exist that day) starts right after
    /// the jump and lasts its real hour; it is neither skipped nor doubled.
    #[test]
    fn a_clock_that_jumps_forward_does_not_skip_a_period() {
        let s = Schedule::new(&[spec("30 2 * * *", "1h", Some("Europe/Berlin"), 3)]).unwrap();
        let starts = s.starts(at("2026-03-28T12:00:00Z"), at("2026-03-30T12:00:00Z"));
        let times: Vec<SystemTime> = starts.iter().map(|(_, t)| *t).collect();
        // 02:30 CET on the 28th... the 29th at 03:00 CEST (01:00Z), the 30th at 02:30 CEST.
        assert_eq!(
            times,
            [at("2026-03-29T01:00:00Z"), at("2026-03-30T00:30:00Z")]
        );
        assert_eq!(s.active(at("2026-03-29T00:59:00Z")), None);
        let a = s.active(at("2026-03-29T01:30:00Z")).unwrap();
        assert_eq!((a.count, a.until), (3, at("2026-03-29T02:00:00Z")));
        assert_eq!(s.active(at("2026-03-29T02:00:00Z")), None);
    }

    /// Fall back in Berlin, 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens
    /// twice; the period starts once (the first time) and is not started again.
    #[test]
    fn a_clock_that_goes_back_does_not_double_a_period() {
        let s = Schedule::new(&[spec("30 2 * * *", "1h", Some("Europe/Berlin"), 3)]).unwrap();
        let starts = s.starts(at("2026-10-24T12:00:00Z"), at("2026-10-26T12:00:00Z"));
        let times: Vec<SystemTime> = starts.iter().map(|(_, t)| *t).collect();
        // 02:30 CEST = 00:30Z on the 25th (not again at 02:30 CET = 01:30Z);
        // 02:30 CET = 01:30Z on the 26th.
        assert_eq!(
            times,
            [at("2026-10-25T00:30:00Z"), at("2026-10-26T01:30:00Z")]
        );
        let a = s.active(at("2026-10-25T01:00:00Z")).unwrap();
        assert_eq!(a.until, at("2026-10-25T01:30:00Z"));
        assert_eq!(s.active(at("2026-10-25T01:45:00Z")), None, "not doubled");
    }

    #[test]
    fn bad_periods_name_their_key() {
        for (s, field) in [
            (spec("0 8 * *", "1h", None, 1), "schedule"),
            (spec("0 0 8 * * *", "1h", None, 1), "schedule"),
            (spec("0 8 * * *", "soon", None, 1), "duration"),
            (spec("0 8 * * *", "30s", None, 1), "duration"),
            (spec("0 8 * * *", "8d", None, 1), "duration"),
            (
                spec("0 8 * * *", "1h", Some("Mars/Olympus"), 1),
                "time_zone",
            ),
            (spec("0 8 * * *", "1h", None, 0), "count"),
        ] {
            assert_eq!(
                Schedule::new(std::slice::from_ref(&s)).unwrap_err().field,
                field,
                "{s:?}"
            );
        }
    }
}
