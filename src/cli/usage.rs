//! `cci-scaler usage`: who used the fleet and how long their jobs waited,
//! from `history`'s file (or a usage export): instance-hours and cost per
//! resource class and project, queue waits per class and per day, and a
//! chart of each day's p95 wait.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use cci_scaler::simulate::usage;
use cci_scaler::simulate::usage_report::{self, UsageReport};
use cci_scaler::simulate::{Waits, hms};

use super::{GlobalArgs, Output, parse_duration};

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// The job runs: `cci-scaler history`'s file, or a CircleCI usage export
    /// (gzip or not).
    #[arg(long, value_name = "FILE")]
    pub jobs: PathBuf,
    /// Prices each pool's class by its first instance type (on-demand list
    /// price, us-east-1) [default: ./cci-scaler.toml if present].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A class's price an hour, in USD (repeat; wins over the stack file).
    #[arg(long, value_name = "CLASS=USD")]
    pub price: Vec<String>,
    /// Only runs queued in this last stretch of time (e.g. 7d).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub since: Option<Duration>,
}

type Pools = Vec<cci_scaler::config::StackSettings>;

/// Each class's price an hour (`--price`, else its pool's first instance
/// type's list price), and the stack file's pools.
fn prices(args: &UsageArgs) -> anyhow::Result<(BTreeMap<String, f64>, Pools)> {
    let mut prices = BTreeMap::new();
    let config = args.config.clone().or_else(|| {
        let p = PathBuf::from("cci-scaler.toml");
        p.exists().then_some(p)
    });
    let pools = match config {
        Some(path) => cci_scaler::config::StackFile::load(&path)?.pools()?,
        None => Vec::new(),
    };
    for p in &pools {
        let t = p.instance_types.first().map(String::as_str).unwrap_or("");
        if let Some(usd) = usage_report::on_demand_price(t) {
            prices.insert(p.resource_class.clone(), usd);
        }
    }
    for spec in &args.price {
        let Some((class, usd)) = spec.split_once('=') else {
            crate::usage!("--price {spec}: expected CLASS=USD, e.g. acme/linux=0.0832");
        };
        let usd: f64 = match usd.trim().parse() {
            Ok(v) if (0.0..1000.0).contains(&v) => v,
            _ => crate::usage!("--price {spec}: {usd:?} is not a price an hour in USD"),
        };
        prices.insert(class.trim().to_string(), usd);
    }
    Ok((prices, pools))
}

/// What the simulator says each pool's jobs would have waited with the
/// stack file's settings (a baked image, as init makes), the same runs
/// replayed: beside the real waits, how far the model is from the fleet.
fn simulated(
    runs: &[usage::Run],
    pools: &Pools,
    prices: &BTreeMap<String, f64>,
) -> anyhow::Result<BTreeMap<String, Waits>> {
    use cci_scaler::simulate::{self, Fleet, Policy};
    let mut out = BTreeMap::new();
    for p in pools {
        let class_runs: Vec<usage::Run> = runs
            .iter()
            .filter(|r| r.resource_class == p.resource_class)
            .cloned()
            .collect();
        if class_runs.is_empty() {
            continue;
        }
        let export = usage::Export {
            runs: class_runs,
            ..Default::default()
        };
        let Some(jobs) = export
            .jobs_by_class()?
            .remove(&Some(p.resource_class.clone()))
        else {
            continue;
        };
        let base = Fleet {
            boot_min_s: simulate::BAKED_BOOT_S.0,
            boot_max_s: simulate::BAKED_BOOT_S.1,
            price_per_hour: prices
                .get(&p.resource_class)
                .copied()
                .unwrap_or(Fleet::default().price_per_hour),
            ..Fleet::default()
        };
        let f = super::simulate::pool_fleet(&base, p)?;
        let r = simulate::simulate(&jobs, &f, Policy::Ours, 1)?;
        out.insert(p.resource_class.clone(), r.waits);
    }
    Ok(out)
}

pub async fn run(global: &GlobalArgs, args: UsageArgs) -> anyhow::Result<ExitCode> {
    let (prices, pools) = prices(&args)?;
    let bytes = std::fs::read(&args.jobs)
        .with_context(|| format!("cannot read the jobs file {}", args.jobs.display()))?;
    let text = usage::read_maybe_gzip(&bytes)
        .with_context(|| format!("jobs file {}: neither text nor gzip", args.jobs.display()))?;
    if !usage::is_usage_export(&text) {
        crate::usage!(
            "{}: not job runs with queued, started and stopped times; write one with `cci-scaler history`, or pass a CircleCI usage export",
            args.jobs.display()
        );
    }
    let export =
        usage::parse(&text).with_context(|| format!("usage export {}", args.jobs.display()))?;
    let mut runs = export.runs;
    if let Some(since) = args.since {
        let from = jiff::Timestamp::now().as_second() - since.as_secs() as i64;
        runs.retain(|r| r.queued >= from);
    }
    if runs.is_empty() {
        anyhow::bail!(
            "{}: no job runs of self-hosted classes{}",
            args.jobs.display(),
            if args.since.is_some() {
                " in that window"
            } else {
                ""
            }
        );
    }
    // A class without a price, said once, with why.
    let notes: Vec<String> = runs
        .iter()
        .map(|r| r.resource_class.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|c| !prices.contains_key(*c))
        .map(|c| {
            let why = match pools.iter().find(|p| p.resource_class == c) {
                Some(p) => format!(
                    "no list price for {}",
                    p.instance_types
                        .first()
                        .map(String::as_str)
                        .unwrap_or("its type")
                ),
                None => "no price (no pool of it in a stack file)".to_string(),
            };
            format!("{c}: {why}; pass --price {c}=USD")
        })
        .collect();
    let report = usage_report::report(&runs, &prices);
    let sim = simulated(&runs, &pools, &prices)?;
    let out = match global.output {
        Output::Json => format!(
            "{}\n",
            serde_json::json!({
                "report": report,
                "simulated_waits": sim,
                "projects": report.projects_ranked().into_iter().map(|(p, l)| serde_json::json!({"project": p, "usage": l})).collect::<Vec<_>>(),
                "notes": notes,
            })
        ),
        Output::Text => text_report(&report, &sim, &notes),
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn money(c: Option<f64>) -> String {
    c.map_or("-".into(), |c| format!("${c:.2}"))
}

fn waits(w: &Waits) -> String {
    format!(
        "{:>7} {:>7} {:>7}",
        hms(w.p50_s),
        hms(w.p95_s),
        hms(w.max_s)
    )
}

fn day(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// The tables and the chart.
pub fn text_report(r: &UsageReport, sim: &BTreeMap<String, Waits>, notes: &[String]) -> String {
    let mut o = format!(
        "{} job runs queued {} to {} UTC: {:.1} job-hours, {}\n\n",
        r.total.jobs,
        day(r.from),
        day(r.to),
        r.total.job_hours,
        money(r.total.cost)
    );
    let w = r
        .by_class
        .keys()
        .chain(r.by_project.keys())
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max(14);
    o.push_str(&format!(
        "{:<w$}  {:>6} {:>9} {:>8} {:>10}  {:>7} {:>7} {:>7}\n",
        "resource class", "jobs", "job-h", "$/h", "cost", "p50", "p95", "max"
    ));
    for (c, l) in &r.by_class {
        o.push_str(&format!(
            "{c:<w$}  {:>6} {:>9.1} {:>8} {:>10}  {}\n",
            l.jobs,
            l.job_hours,
            r.prices.get(c).map_or("-".into(), |p| format!("{p:.4}")),
            money(l.cost),
            waits(&l.waits)
        ));
        if let Some(s) = sim.get(c) {
            o.push_str(&format!(
                "{:<w$}  {:>36}  {}\n",
                "  simulated",
                "stack file's settings, baked image",
                waits(s)
            ));
        }
    }
    o.push_str(&format!(
        "\n{:<w$}  {:>6} {:>9} {:>10} {:>6}  {:>7}\n",
        "project", "jobs", "job-h", "cost", "share", "p95"
    ));
    for (p, l) in r.projects_ranked() {
        let share = if r.total.job_hours > 0.0 {
            format!("{:.0}%", 100.0 * l.job_hours / r.total.job_hours)
        } else {
            "-".into()
        };
        o.push_str(&format!(
            "{p:<w$}  {:>6} {:>9.1} {:>10} {:>6}  {:>7}\n",
            l.jobs,
            l.job_hours,
            money(l.cost),
            share,
            hms(l.waits.p95_s)
        ));
    }
    // The chart: each class's p95 wait, day by day.
    let longest = r.by_day.iter().map(|d| d.waits.p95_s).max().unwrap_or(0);
    const WIDTH: u64 = 40;
    o.push_str(&format!(
        "\nqueue wait per day (UTC), p95 as a bar (full width {}), then p50 / p95 / max\n",
        hms(longest)
    ));
    let cw = r.by_class.keys().map(String::len).max().unwrap_or(0);
    for d in &r.by_day {
        let len = if longest == 0 {
            0
        } else {
            (d.waits.p95_s * WIDTH).div_ceil(longest)
        } as usize;
        o.push_str(&format!(
            "{} {:<cw$} {:<40} {} ({} jobs)\n",
            d.day,
            d.resource_class,
            "█".repeat(len),
            waits(&d.waits),
            d.jobs
        ));
    }
    o.push_str(
        "\njob-h: started to stopped (each job holds one instance); boot and idle time are not in it \
(simulate --config --jobs on the same file estimates them). p50, p95, max: the queue wait, \
queued to started; a project's p95 is its worst class's.\n",
    );
    for n in notes {
        o.push_str(&format!("note: {n}\n"));
    }
    o
}
