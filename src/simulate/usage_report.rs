//! `cci-scaler usage`: who used the fleet and how long their jobs really
//! waited, from an organisation's job runs (`history`'s file or a usage
//! export): instance-hours and cost per resource class and per project, and
//! queue waits (queued to started) per class and per class and day.

use std::collections::BTreeMap;

use serde::Serialize;

use super::report::{Waits, waits_of};
use super::usage::Run;

/// On-demand list prices (USD an hour, Linux, us-east-1) of common runner
/// instance types; a stack file's pools are priced by their first type.
/// Others, and other regions, take `--price CLASS=USD`.
const ON_DEMAND_USD_HOUR: &[(&str, f64)] = &[
    ("t3.micro", 0.0104),
    ("t3.small", 0.0208),
    ("t3.medium", 0.0416),
    ("t3.large", 0.0832),
    ("t3.xlarge", 0.1664),
    ("t3.2xlarge", 0.3328),
    ("t3a.medium", 0.0376),
    ("t3a.large", 0.0752),
    ("t3a.xlarge", 0.1504),
    ("t4g.medium", 0.0336),
    ("t4g.large", 0.0672),
    ("t4g.xlarge", 0.1344),
    ("m5.large", 0.096),
    ("m5.xlarge", 0.192),
    ("m5.2xlarge", 0.384),
    ("m6i.large", 0.096),
    ("m6i.xlarge", 0.192),
    ("m6i.2xlarge", 0.384),
    ("m6g.large", 0.077),
    ("m6g.xlarge", 0.154),
    ("m7g.large", 0.0816),
    ("m7g.xlarge", 0.1632),
    ("c5.large", 0.085),
    ("c5.xlarge", 0.17),
    ("c5.2xlarge", 0.34),
    ("c6i.large", 0.085),
    ("c6i.xlarge", 0.17),
    ("c6i.2xlarge", 0.34),
    ("c6g.large", 0.068),
    ("c6g.xlarge", 0.136),
    ("c7g.large", 0.0725),
    ("c7g.xlarge", 0.145),
];

/// The on-demand price of `instance_type` (`None`: not in the table).
pub fn on_demand_price(instance_type: &str) -> Option<f64> {
    ON_DEMAND_USD_HOUR
        .iter()
        .find(|(t, _)| *t == instance_type)
        .map(|(_, p)| *p)
}

/// One line of the report: jobs, the hours they ran, what those cost, and
/// how long they waited in the queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub jobs: usize,
    /// Started to stopped, summed (each job holds one instance).
    pub job_hours: f64,
    /// `job_hours` at the class's price (`None`: a class without a price).
    pub cost: Option<f64>,
    /// Queued to started.
    pub waits: Waits,
}

/// A class's jobs on one UTC day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub resource_class: String,
    pub jobs: usize,
    pub waits: Waits,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageReport {
    /// The first and last queued time (seconds since the epoch).
    pub from: i64,
    pub to: i64,
    pub total: Line,
    pub by_class: BTreeMap<String, Line>,
    /// `project` then `class`: each project's use of each class.
    pub by_project: BTreeMap<String, BTreeMap<String, Line>>,
    pub by_day: Vec<Day>,
    /// Price an hour used for each class.
    pub prices: BTreeMap<String, f64>,
}

fn line(runs: &[&Run], price: Option<f64>) -> Line {
    let mut waits: Vec<u64> = runs
        .iter()
        .map(|r| (r.started - r.queued).max(0) as u64)
        .collect();
    waits.sort_unstable();
    let job_hours = runs
        .iter()
        .map(|r| (r.stopped - r.started).max(0) as f64 / 3600.0)
        .sum::<f64>();
    Line {
        jobs: runs.len(),
        job_hours,
        cost: price.map(|p| job_hours * p),
        waits: waits_of(&waits),
    }
}

fn day_of(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// The report of `runs`, priced by `prices` (class to USD an hour).
pub fn report(runs: &[Run], prices: &BTreeMap<String, f64>) -> UsageReport {
    let mut classes: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    let mut projects: BTreeMap<(&str, &str), Vec<&Run>> = BTreeMap::new();
    let mut days: BTreeMap<(String, &str), Vec<&Run>> = BTreeMap::new();
    for r in runs {
        classes.entry(&r.resource_class).or_default().push(r);
        projects
            .entry((&r.project, &r.resource_class))
            .or_default()
            .push(r);
        days.entry((day_of(r.queued), &r.resource_class))
            .or_default()
            .push(r);
    }
    let price = |c: &str| prices.get(c).copied();
    let by_class: BTreeMap<String, Line> = classes
        .iter()
        .map(|(c, rs)| (c.to_string(), line(rs, price(c))))
        .collect();
    let mut by_project: BTreeMap<String, BTreeMap<String, Line>> = BTreeMap::new();
    for ((p, c), rs) in &projects {
        by_project
            .entry(p.to_string())
            .or_default()
            .insert(c.to_string(), line(rs, price(c)));
    }
    let all: Vec<&Run> = runs.iter().collect();
    let mut total = line(&all, None);
    total.cost = by_class.values().map(|l| l.cost).sum();
    UsageReport {
        from: runs.iter().map(|r| r.queued).min().unwrap_or(0),
        to: runs.iter().map(|r| r.queued).max().unwrap_or(0),
        total,
        by_class,
        by_project,
        by_day: days
            .into_iter()
            .map(|((day, c), rs)| {
                let l = line(&rs, None);
                Day {
                    day,
                    resource_class: c.to_string(),
                    jobs: l.jobs,
                    waits: l.waits,
                }
            })
            .collect(),
        prices: prices.clone(),
    }
}

impl UsageReport {
    /// Each project's total over its classes, most costly (then most
    /// hours) first.
    pub fn projects_ranked(&self) -> Vec<(&str, Line)> {
        let mut out: Vec<(&str, Line)> = self
            .by_project
            .iter()
            .map(|(p, classes)| {
                let jobs = classes.values().map(|l| l.jobs).sum();
                let job_hours = classes.values().map(|l| l.job_hours).sum();
                let cost = classes.values().map(|l| l.cost).sum::<Option<f64>>();
                // Waits over classes are not additive: the worst class's.
                let waits = classes
                    .values()
                    .map(|l| l.waits)
                    .max_by_key(|w| w.p95_s)
                    .unwrap_or(waits_of(&[]));
                (
                    p.as_str(),
                    Line {
                        jobs,
                        job_hours,
                        cost,
                        waits,
                    },
                )
            })
            .collect();
        out.sort_by(|a, b| {
            b.1.cost
                .unwrap_or(0.0)
                .total_cmp(&a.1.cost.unwrap_or(0.0))
                .then(b.1.job_hours.total_cmp(&a.1.job_hours))
                .then(a.0.cmp(b.0))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(project: &str, class: &str, queued: i64, wait: i64, ran: i64) -> Run {
        Run {
            queued,
            started: queued + wait,
            stopped: queued + wait + ran,
            resource_class: class.into(),
            project: project.into(),
            workflow: "build".into(),
            job: "test".into(),
        }
    }

    #[test]
    fn hours_costs_and_waits_add_up_by_class_project_and_day() {
        let day = 86_400;
        let runs = vec![
            run("api", "acme/linux", 0, 10, 3600),
            run("api", "acme/linux", 100, 30, 1800),
            run("web", "acme/linux", day + 5, 200, 3600),
            run("web", "acme/arm", day + 50, 0, 7200),
        ];
        let prices = BTreeMap::from([("acme/linux".to_string(), 0.1)]);
        let r = report(&runs, &prices);
        let linux = &r.by_class["acme/linux"];
        assert_eq!(linux.jobs, 3);
        assert!((linux.job_hours - 2.5).abs() < 1e-9);
        assert!((linux.cost.unwrap() - 0.25).abs() < 1e-9);
        assert_eq!((linux.waits.p50_s, linux.waits.max_s), (30, 200));
        assert_eq!(r.by_class["acme/arm"].cost, None, "no price, no cost");
        assert_eq!(r.total.cost, None, "a class without a price: no total");
        assert_eq!(r.total.jobs, 4);
        let days: Vec<(&str, &str, usize)> = r
            .by_day
            .iter()
            .map(|d| (d.day.as_str(), d.resource_class.as_str(), d.jobs))
            .collect();
        assert_eq!(
            days,
            [
                ("1970-01-01", "acme/linux", 2),
                ("1970-01-02", "acme/arm", 1),
                ("1970-01-02", "acme/linux", 1)
            ]
        );
        let ranked = r.projects_ranked();
        assert_eq!(ranked[0].0, "api", "0.15 of cost before web's 0.10");
        assert_eq!(ranked[1].1.jobs, 2);
        assert_eq!(on_demand_price("t3.large"), Some(0.0832));
        assert_eq!(on_demand_price("x9.huge"), None);
    }
}
