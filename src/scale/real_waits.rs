//! The queue waits jobs really had, day by day, from CircleCI's usage
//! export: the Lambda asks for an export of the days it has not reported
//! yet (at most [`BACKFILL_DAYS`] back, as CloudWatch takes metrics up to two
//! weeks old), picks it up at a later invocation once CircleCI has made it,
//! and reports each pool's waits (queued to started: p50, p95, max) and job
//! runs per UTC day as metrics dated that day. Where it stands is one small
//! SSM parameter ([`UsageRecord`]), so a cold container carries on.

use serde::{Deserialize, Serialize};

use super::{ApiError, GroupApi};
use crate::circleci::usage::{ExportState, window_name};
use crate::circleci::{CircleCiError, RunnerApi};
use crate::simulate::usage;
use crate::simulate::usage_report;

/// Days reported back from today on a first run (and at most after a gap).
pub const BACKFILL_DAYS: i64 = 13;
const DAY_S: i64 = 86_400;

/// Where the daily report stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Days before this (a UTC midnight, seconds since the epoch) are reported.
    pub through: i64,
    /// An export asked for and not yet picked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingExport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingExport {
    pub id: String,
    pub from: i64,
    pub to: i64,
}

/// A stock image installs at boot: launch to registered runner in this
/// range (seconds), as `simulate --boot-time` assumes by default.
pub const STOCK_BOOT_S: (u64, u64) = (120, 300);

/// A pool's settings as the simulator needs them beside what the Lambda
/// already knows (its schedule, auto spares, poll interval, boot timeout):
/// init writes it into the Lambda's environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimModel {
    pub max_instances: u32,
    /// Launch to registered runner (seconds): a baked image's range, or a
    /// stock one's.
    pub boot_s: (u64, u64),
    pub idle_timeout_s: u64,
    #[serde(default)]
    pub warm_pool: u32,
    #[serde(default)]
    pub spot: bool,
}

impl SimModel {
    /// The model fleet of a pool with these settings.
    pub fn fleet(
        &self,
        headroom: &[crate::scale::headroom::HeadroomSpec],
        max_spares: Option<u32>,
        interval_s: u64,
        boot_timeout_s: u64,
    ) -> crate::simulate::Fleet {
        let d = crate::simulate::Fleet::default();
        crate::simulate::Fleet {
            max: self.max_instances.max(1),
            boot_min_s: self.boot_s.0,
            boot_max_s: self.boot_s.1.max(self.boot_s.0),
            idle_timeout_s: self.idle_timeout_s,
            interval_s: interval_s.max(1),
            boot_timeout_s,
            headroom: headroom.to_vec(),
            auto_headroom: max_spares.is_some(),
            max_spares: max_spares
                .unwrap_or(d.max_spares)
                .clamp(1, self.max_instances.max(1)),
            warm_pool_size: if self.spot { 0 } else { self.warm_pool },
            spot: self.spot,
            ..d
        }
    }
}

/// One pool's day: the waits its jobs really had, and (with a model) what
/// the simulator says the same runs would have waited.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolDay {
    pub resource_class: String,
    /// The day's UTC midnight.
    pub day: i64,
    pub jobs: usize,
    pub waits: crate::simulate::Waits,
    pub simulated: Option<crate::simulate::Waits>,
}

/// A pool to report on: its class, and its model fleet if it has one.
pub type ReportPool = (String, Option<crate::simulate::Fleet>);

/// What one step did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "usage", rename_all = "snake_case")]
pub enum Step {
    /// Every day before today is reported.
    UpToDate,
    /// An export was asked for.
    Asked { window: String },
    /// The export is not made yet.
    Waiting { window: String, state: String },
    /// The export was read: these days are reported.
    Reported { window: String, days: Vec<PoolDay> },
    /// CircleCI could not make it: asked again at the next step.
    Failed { window: String, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum RealWaitsError {
    #[error(transparent)]
    CircleCi(#[from] CircleCiError),
    #[error("the usage record: {0}")]
    Record(#[from] ApiError),
    #[error("the usage export of {window}: {why}")]
    Export { window: String, why: String },
}

fn midnight(t: i64) -> i64 {
    t - t.rem_euclid(DAY_S)
}

/// The waits of the pools' job runs, per class and UTC day, from an
/// export's files; with a pool's model fleet, the same day's runs replayed
/// through the simulator beside them.
pub fn days_of(files: &[Vec<u8>], pools: &[ReportPool]) -> Result<Vec<PoolDay>, String> {
    let classes: Vec<String> = pools.iter().map(|(c, _)| c.clone()).collect();
    let mut runs = Vec::new();
    for f in files {
        let text = usage::read_maybe_gzip(f).map_err(|e| e.to_string())?;
        if text.trim().is_empty() {
            continue;
        }
        runs.extend(usage::parse(&text).map_err(|e| e.to_string())?.runs);
    }
    runs.retain(|r| classes.contains(&r.resource_class));
    let report = usage_report::report(&runs, &Default::default());
    Ok(report
        .by_day
        .into_iter()
        .map(|d| {
            let day = format!("{}T00:00:00Z", d.day)
                .parse::<jiff::Timestamp>()
                .map(|t| t.as_second())
                .unwrap_or(0);
            let model = pools
                .iter()
                .find(|(c, _)| *c == d.resource_class)
                .and_then(|(_, f)| f.as_ref());
            let simulated = model.and_then(|f| {
                let export = usage::Export {
                    runs: runs
                        .iter()
                        .filter(|r| {
                            r.resource_class == d.resource_class && midnight(r.queued) == day
                        })
                        .cloned()
                        .collect(),
                    ..Default::default()
                };
                let jobs = export
                    .jobs_by_class()
                    .ok()?
                    .remove(&Some(d.resource_class.clone()))?;
                crate::simulate::simulate(&jobs, f, crate::simulate::Policy::Ours, 1)
                    .ok()
                    .map(|r| r.waits)
            });
            PoolDay {
                day,
                resource_class: d.resource_class,
                jobs: d.jobs,
                waits: d.waits,
                simulated,
            }
        })
        .collect())
}

/// One step: pick up the pending export if it is made, else ask for one of
/// the days not yet reported (before today, UTC), else nothing. Each day
/// read goes to `report` before the record moves past it, so a step cut
/// short reports its days again rather than never.
pub async fn step<G: GroupApi + Sync>(
    api: &RunnerApi,
    store: &G,
    record: &str,
    org: &str,
    pools: &[ReportPool],
    now: i64,
    report: &(dyn Fn(&PoolDay) + Sync),
) -> Result<Step, RealWaitsError> {
    let mut rec: UsageRecord = store
        .load_record(record)
        .await?
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let save = |rec: &UsageRecord| {
        let text = serde_json::to_string(rec).expect("a record serializes");
        async move { store.save_record(record, &text).await }
    };
    let today = midnight(now);
    if let Some(p) = rec.pending.clone() {
        let window = window_name((p.from, p.to));
        return match api.usage_export_state(org, &p.id, &window).await? {
            ExportState::Pending { state, .. } => Ok(Step::Waiting { window, state }),
            ExportState::Failed { reason, .. } => {
                rec.pending = None;
                save(&rec).await?;
                Ok(Step::Failed { window, reason })
            }
            ExportState::Completed { urls, .. } => {
                let files = api.usage_export_files(&urls, &window, &|_| {}).await?;
                let days = days_of(&files, pools).map_err(|why| RealWaitsError::Export {
                    window: window.clone(),
                    why,
                })?;
                days.iter().for_each(report);
                rec.pending = None;
                rec.through = p.to;
                save(&rec).await?;
                Ok(Step::Reported { window, days })
            }
        };
    }
    let from = rec.through.max(today - BACKFILL_DAYS * DAY_S);
    if from >= today {
        return Ok(Step::UpToDate);
    }
    let span = (from, today);
    let window = window_name(span);
    let id = match api.create_usage_export(org, span).await? {
        ExportState::Failed { reason, .. } => return Ok(Step::Failed { window, reason }),
        ExportState::Pending { id, .. } | ExportState::Completed { id, .. } => id,
    };
    rec.pending = Some(PendingExport {
        id,
        from: span.0,
        to: span.1,
    });
    save(&rec).await?;
    Ok(Step::Asked { window })
}

/// A reported day's metrics (EMF), dated that day at noon UTC.
pub fn metrics(d: &PoolDay) -> (Vec<super::metrics::Metric>, u64) {
    let m = |name, unit, value: f64| super::metrics::Metric { name, unit, value };
    let mut out = vec![
        m("RealWaitP50", "Seconds", d.waits.p50_s as f64),
        m("RealWaitP95", "Seconds", d.waits.p95_s as f64),
        m("RealWaitMax", "Seconds", d.waits.max_s as f64),
        m("RealJobs", "Count", d.jobs as f64),
    ];
    if let Some(s) = &d.simulated {
        out.push(m("SimWaitP50", "Seconds", s.p50_s as f64));
        out.push(m("SimWaitP95", "Seconds", s.p95_s as f64));
    }
    (out, ((d.day + DAY_S / 2) * 1000) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_gives_each_pool_its_days() {
        let csv = "JOB_RUN_QUEUED_AT,JOB_RUN_STARTED_AT,JOB_RUN_STOPPED_AT,RESOURCE_CLASS,PROJECT_NAME,WORKFLOW_NAME,JOB_NAME\n\
2026-11-20T10:00:00Z,2026-11-20T10:00:30Z,2026-11-20T10:05:00Z,acme/linux,api,b,t\n\
2026-11-20T11:00:00Z,2026-11-20T11:02:00Z,2026-11-20T11:05:00Z,acme/linux,api,b,t\n\
2026-11-21T11:00:00Z,2026-11-21T11:00:05Z,2026-11-21T11:05:00Z,acme/linux,web,b,t\n\
2026-11-21T11:00:00Z,2026-11-21T11:00:05Z,2026-11-21T11:05:00Z,other/class,web,b,t\n";
        let model = SimModel {
            max_instances: 4,
            boot_s: (40, 60),
            idle_timeout_s: 60,
            warm_pool: 0,
            spot: false,
        };
        let fleet = model.fleet(&[], None, 10, 600);
        let days = days_of(
            &[csv.as_bytes().to_vec()],
            &[("acme/linux".to_string(), Some(fleet))],
        )
        .unwrap();
        let sim = days[0].simulated.expect("a model, a simulated day");
        assert!(
            (40..=70).contains(&sim.max_s),
            "each job waits for a baked boot: {sim:?}"
        );
        assert_eq!(days.len(), 2);
        assert_eq!(days[0].jobs, 2);
        assert_eq!((days[0].waits.p50_s, days[0].waits.max_s), (30, 120));
        assert_eq!(days[0].day % DAY_S, 0);
        assert_eq!(days[1].day - days[0].day, DAY_S);
        let (m, ts) = metrics(&days[0]);
        assert_eq!(m[1].name, "RealWaitP95");
        assert_eq!(ts as i64, (days[0].day + DAY_S / 2) * 1000);
        assert_eq!(midnight(DAY_S * 3 + 5), DAY_S * 3);
    }
}
