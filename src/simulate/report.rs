//! What a simulation reports: one policy's figures ([`Report`]), and the
//! renderings of a run as text (tables), JSON and SVG ([`super::chart`]).

use serde::Serialize;
use serde_json::{Value, json};

use super::fleet::{Fleet, Policy};

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
    /// A headroom period was active (spares wanted).
    pub spare: bool,
    /// The spot pool was on its on-demand fallback.
    pub fallback: bool,
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
    /// The most instances the group was asked for: below the max, the max
    /// never bound (a larger one replays the same).
    #[serde(skip)]
    pub peak_desired: u32,
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
    /// Every run job's wait, in seconds, shortest first (the distribution).
    #[serde(skip)]
    pub wait_list: Vec<u64>,
}

/// p50, p95 (nearest rank), max and mean of waits sorted shortest first.
pub fn waits_of(sorted: &[u64]) -> Waits {
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

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A run of the simulator as reported: one day (the embedded one or a jobs
/// file) under both policies, with any sweeps, or every pool of a stack file
/// and their total. Rendered as text, JSON or (a day) SVG.
// One value a run, made once and printed: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum RunReport {
    Day {
        seed: u64,
        jobs: usize,
        fleet: Fleet,
        ours: Report,
        tutorial: Report,
        sweeps: Vec<Sweep>,
        elapsed_ms: f64,
    },
    Stack {
        seed: u64,
        pools: Vec<PoolRun>,
        elapsed_ms: f64,
    },
}

/// One setting tried at several values: (value, ours, the tutorial's).
pub struct Sweep {
    pub setting: String,
    pub rows: Vec<(String, Report, Report)>,
}

/// One pool's simulation under both policies.
pub struct PoolRun {
    pub pool: String,
    pub resource_class: String,
    pub fleet: Fleet,
    pub ours: Report,
    pub tutorial: Report,
}

impl RunReport {
    pub fn json(&self) -> Value {
        match self {
            RunReport::Day {
                seed,
                fleet,
                ours,
                tutorial,
                sweeps,
                elapsed_ms,
                ..
            } => {
                let sweeps: Vec<_> = sweeps
                    .iter()
                    .map(|s| {
                        json!({
                            "setting": s.setting,
                            "rows": s.rows.iter().map(|(v, o, t)| json!({"value": v, "cci_scaler": o, "tutorial": t})).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                json!({
                    "seed": seed,
                    "settings": fleet,
                    "reports": [ours, tutorial],
                    "sweeps": sweeps,
                    "elapsed_ms": elapsed_ms,
                })
            }
            RunReport::Stack {
                seed,
                pools,
                elapsed_ms,
            } => {
                let (ours, tut) = totals(pools);
                let list: Vec<_> = pools
                    .iter()
                    .map(|r| {
                        json!({
                            "pool": r.pool, "resource_class": r.resource_class, "settings": r.fleet,
                            "reports": [r.ours, r.tutorial],
                        })
                    })
                    .collect();
                json!({
                    "seed": seed,
                    "pools": list,
                    "total": {"cci_scaler": ours, "tutorial": tut},
                    "elapsed_ms": elapsed_ms,
                })
            }
        }
    }

    /// The tables; `chart`: where the SVG was written, to say so.
    pub fn text(&self, chart: Option<&str>) -> String {
        let mut out = String::new();
        match self {
            RunReport::Day {
                seed,
                jobs,
                fleet,
                ours,
                tutorial,
                sweeps,
                elapsed_ms,
            } => {
                out.push_str(&table(ours, tutorial, fleet));
                for s in sweeps {
                    out.push_str(&sweep_table(s));
                }
                if let Some(path) = chart {
                    out.push_str(&format!("\nchart: {path}\n"));
                }
                out.push_str(&format!(
                    "\nsimulated {jobs} jobs under both policies in {elapsed_ms:.0} ms (seed {seed})\n"
                ));
            }
            RunReport::Stack {
                seed,
                pools,
                elapsed_ms,
            } => {
                for r in pools {
                    out.push_str(&format!(
                        "pool {} ({}, max {}, idle {}):\n",
                        r.pool,
                        r.resource_class,
                        r.fleet.max,
                        hms(r.fleet.idle_timeout_s)
                    ));
                    out.push_str(&table(&r.ours, &r.tutorial, &r.fleet));
                    out.push('\n');
                }
                let (ours, tut) = totals(pools);
                out.push_str("all pools:\n");
                out.push_str(&format!(
                    "{:26}  {:>12}  {:>12}\n",
                    "", "cci-scaler", "tutorial"
                ));
                for (k, key, float) in [
                    ("jobs", "jobs", false),
                    ("wait max (s)", "wait_max_s", false),
                    ("wait mean (s)", "wait_mean_s", true),
                    (
                        "jobs waiting over threshold",
                        "waited_over_threshold",
                        false,
                    ),
                    ("jobs never run", "jobs_not_run", false),
                    ("instance-hours", "instance_hours", true),
                    ("boots", "boots", false),
                    ("jobs killed", "jobs_killed", false),
                    ("left running at the end", "left_running", false),
                    ("cost", "cost", true),
                ] {
                    let cell = |v: &Value| {
                        if float {
                            format!("{:.2}", v[key].as_f64().unwrap_or(0.0))
                        } else {
                            v[key].to_string()
                        }
                    };
                    out.push_str(&format!(
                        "{k:26}  {:>12}  {:>12}\n",
                        cell(&ours),
                        cell(&tut)
                    ));
                }
                out.push_str(&format!(
                    "\nsimulated {} pool(s) under both policies in {elapsed_ms:.0} ms (seed {seed})\n",
                    pools.len()
                ));
            }
        }
        out
    }

    /// The day as a chart (a stack's pools have none).
    pub fn svg(&self) -> Option<Result<String, String>> {
        match self {
            RunReport::Day {
                jobs,
                ours,
                tutorial,
                ..
            } => Some(super::chart::svg(
                &[ours, tutorial],
                &format!("{jobs} jobs"),
            )),
            RunReport::Stack { .. } => None,
        }
    }
}

/// Ours and the tutorial's totals over a stack's pools.
fn totals(pools: &[PoolRun]) -> (Value, Value) {
    (
        total(&pools.iter().map(|r| &r.ours).collect::<Vec<_>>()),
        total(&pools.iter().map(|r| &r.tutorial).collect::<Vec<_>>()),
    )
}

fn sweep_table(s: &Sweep) -> String {
    let key = &s.setting;
    let mut out = format!("\nsweep {key}:\n");
    out.push_str(&format!(
        "{:>10}  {:>8} {:>9} {:>9} {:>8} {:>8} {:>6}  |  {:>8} {:>9} {:>9} {:>8} {:>8} {:>6}\n",
        key.replace('_', " ").split(' ').next_back().unwrap_or(key),
        "p50 wait",
        "p95 wait",
        "max wait",
        "inst-h",
        "cost",
        "churn",
        "p50 wait",
        "p95 wait",
        "max wait",
        "inst-h",
        "cost",
        "churn"
    ));
    out.push_str(&format!(
        "{:>10}  {:^54}  |  {:^54}\n",
        "", "cci-scaler", "tutorial"
    ));
    for (v, o, t) in &s.rows {
        out.push_str(&format!(
            "{v:>10}  {:>8} {:>9} {:>9} {:>8.1} {:>8.2} {:>6}  |  {:>8} {:>9} {:>9} {:>8.1} {:>8.2} {:>6}\n",
            hms(o.waits.p50_s),
            hms(o.waits.p95_s),
            hms(o.waits.max_s),
            o.instance_hours,
            o.cost,
            o.replaced,
            hms(t.waits.p50_s),
            hms(t.waits.p95_s),
            hms(t.waits.max_s),
            t.instance_hours,
            t.cost,
            t.replaced
        ));
    }
    out
}

/// A duration as the tables show it: 45s, 3m32s, 1h05m.
pub fn hms(s: u64) -> String {
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

fn p50_p95(w: &Waits) -> String {
    format!("{}/{}", hms(w.p50_s), hms(w.p95_s))
}

/// The two policies' figures, a row each.
fn table(ours: &Report, tut: &Report, fleet: &Fleet) -> String {
    type Cell = fn(&Report) -> String;
    let cells: Vec<(String, Cell)> = vec![
        ("jobs".into(), |r| r.jobs.to_string()),
        ("wait p50".into(), |r| hms(r.waits.p50_s)),
        ("wait p95".into(), |r| hms(r.waits.p95_s)),
        ("wait max".into(), |r| hms(r.waits.max_s)),
        (
            format!("jobs waiting over {}", hms(fleet.wait_threshold_s)),
            |r| r.waited_over_threshold.to_string(),
        ),
        ("jobs never run".into(), |r| r.jobs_not_run.to_string()),
        ("jobs cancelled while queued".into(), |r| {
            r.jobs_cancelled.to_string()
        }),
        (
            format!("wait p50/p95 in headroom ({} jobs)", ours.jobs_in_headroom),
            |r| p50_p95(&r.waits_in_headroom),
        ),
        ("wait p50/p95 outside headroom".into(), |r| {
            p50_p95(&r.waits_outside_headroom)
        }),
        ("instance-hours".into(), |r| {
            format!("{:.1}", r.instance_hours)
        }),
        ("  of which idle".into(), |r| {
            format!("{:.1}", r.idle_instance_hours)
        }),
        ("  spare (idle in headroom)".into(), |r| {
            format!("{:.1}", r.spare_instance_hours)
        }),
        ("  on spot".into(), |r| {
            format!("{:.1}", r.spot_instance_hours)
        }),
        ("jobs interrupted (retried/failed)".into(), |r| {
            format!(
                "{} ({}/{})",
                r.jobs_interrupted, r.jobs_retried, r.jobs_failed_by_interruption
            )
        }),
        ("hours on on-demand fallback".into(), |r| {
            format!("{:.1}", r.fallback_hours)
        }),
        ("control plane (its share)".into(), |r| {
            format!("{:.2}", r.control_plane_cost)
        }),
        ("warm-pool stopped hours".into(), |r| {
            format!("{:.1}", r.warm_pool_hours)
        }),
        ("boots".into(), |r| r.boots.to_string()),
        ("boots per job".into(), |r| {
            format!("{:.2}", r.boots_per_job)
        }),
        ("instances replaced (churn)".into(), |r| {
            r.replaced.to_string()
        }),
        ("failed boots".into(), |r| r.failed_boots.to_string()),
        ("jobs killed".into(), |r| r.jobs_killed.to_string()),
        ("left running at the end".into(), |r| {
            r.left_running.to_string()
        }),
        (
            format!("cost at {}/instance-hour", fleet.price_per_hour),
            |r| format!("{:.2}", r.cost),
        ),
    ];
    let rows: Vec<(String, String, String)> = cells
        .into_iter()
        .map(|(label, cell)| (label, cell(ours), cell(tut)))
        .collect();
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut s = format!("{:w$}  {:>12}  {:>12}\n", "", "cci-scaler", "tutorial");
    for (k, a, b) in rows {
        s.push_str(&format!("{k:w$}  {a:>12}  {b:>12}\n"));
    }
    s
}

/// The additive figures of several reports, and the longest wait.
fn total(reports: &[&Report]) -> Value {
    let sum_u = |f: &dyn Fn(&Report) -> u64| reports.iter().map(|r| f(r)).sum::<u64>();
    let sum_f = |f: &dyn Fn(&Report) -> f64| reports.iter().map(|r| f(r)).sum::<f64>();
    let jobs = sum_u(&|r| r.jobs as u64);
    json!({
        "jobs": jobs,
        "wait_max_s": reports.iter().map(|r| r.waits.max_s).max().unwrap_or(0),
        "wait_mean_s": if jobs == 0 { 0.0 } else { sum_f(&|r| r.waits.mean_s * r.jobs as f64) / jobs as f64 },
        "waited_over_threshold": sum_u(&|r| r.waited_over_threshold as u64),
        "jobs_not_run": sum_u(&|r| r.jobs_not_run as u64),
        "instance_hours": sum_f(&|r| r.instance_hours),
        "idle_instance_hours": sum_f(&|r| r.idle_instance_hours),
        "boots": sum_u(&|r| r.boots),
        "replaced": sum_u(&|r| r.replaced),
        "jobs_killed": sum_u(&|r| r.jobs_killed),
        "left_running": sum_u(&|r| r.left_running as u64),
        "cost": sum_f(&|r| r.cost),
    })
}
