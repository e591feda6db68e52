//! `cci-scaler simulate`: replay a day of CI jobs through our policy and the
//! tutorial's; report waits, instance-hours and cost. No AWS, no network.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use cci_scaler::scale::auto_headroom;
use cci_scaler::scale::headroom::HeadroomSpec;
use cci_scaler::simulate::workload::{self, Generator, Job};
use cci_scaler::simulate::{self, Fleet, Policy, PoolRun, RunReport, Sweep, hms};

use super::{GlobalArgs, Output, parse_duration};

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Jobs from a CSV file: arrival_s,duration_s[,resource_class], or
    /// CircleCI's usage export (its CSV, gzip or not: each self-hosted job
    /// run arrives when it was queued and runs from start to stop) (default:
    /// a generated working day with morning and afternoon bursts).
    #[arg(long, value_name = "FILE")]
    pub jobs: Option<PathBuf>,
    /// With --jobs: only rows of this resource class.
    #[arg(long, value_name = "NS/NAME")]
    pub resource_class: Option<String>,
    /// With --jobs: simulate every pool of this stack file at once (each
    /// pool's rows by the resource_class column, with its max_instances,
    /// idle_timeout, the stack's poll interval and boot timeout); reports
    /// per pool and in total.
    #[arg(long, value_name = "FILE", requires = "jobs", conflicts_with_all = ["resource_class", "sweep", "chart"])]
    pub config: Option<PathBuf>,
    /// The generated day: one office's working day, teams in three time
    /// zones, a monorepo whose pipelines fan out 40 jobs at once, or a small
    /// team.
    #[arg(
        long,
        value_enum,
        default_value = "working-day",
        conflicts_with = "jobs"
    )]
    pub workload: workload::Named,
    /// With --headroom auto: the pool's history, the same day of this many
    /// earlier weeks (0 to 4; 0: a new pool). A jobs file's own earlier
    /// weeks are its history.
    #[arg(long, default_value_t = 4, value_name = "N", conflicts_with = "jobs")]
    pub history_weeks: u64,
    /// Scale the generated day to about this many jobs.
    #[arg(long, value_name = "N", conflicts_with = "jobs")]
    pub jobs_per_day: Option<f64>,
    /// Median duration of generated jobs.
    #[arg(long, default_value = "6m", value_parser = parse_duration, value_name = "DURATION", conflicts_with = "jobs")]
    pub median_job: Duration,
    /// Seed of the generator and of boot times: same seed, same report.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The group's max size.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub max_instances: u32,
    /// The group's min size.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub min_instances: u32,
    /// Launch to registered runner from a stock image (the user data installs
    /// packages and the runner): one duration or a range MIN..MAX (uniform).
    /// The tutorial always boots this way.
    #[arg(long, default_value = "2m..5m", value_name = "RANGE")]
    pub boot_time: String,
    /// How our instances start: `cold` (a stock image, --boot-time), `baked`
    /// (a runner-ready image: 40s..60s), `warm-pool` (stopped instances
    /// started: 15s..30s, each stopped one paying for its disk).
    #[arg(long, value_enum, default_value = "cold")]
    pub image: ImageKind,
    /// Spare runners: COUNT during the default working hours (08:00-19:00
    /// UTC on weekdays; a stack file's [[headroom]] periods with --config),
    /// or `auto`: sized from the demand seen, with no schedule.
    #[arg(long, value_name = "COUNT|auto", value_parser = parse_headroom)]
    pub headroom: Option<Headroom>,
    /// Ours: an EC2 Auto Scaling warm pool of N stopped, pre-initialised
    /// instances: a launch starts one (15s..30s) while there is one, and a
    /// refill (a launch that installs, per --image, and stops) takes its
    /// place; stopped ones pay for their disk, refills for their install.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub warm_pool: u32,
    /// With --headroom auto: at most this many spares.
    #[arg(long, default_value_t = simulate::DEFAULT_MAX_SPARES, value_name = "N")]
    pub max_spares: u32,
    /// Share of jobs cancelled while still queued (auto-cancelled redundant
    /// workflows), each within 2 minutes of its arrival.
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub cancel_rate: f64,
    /// Ours on `spot` (the tutorial stays on demand) or `on-demand`.
    #[arg(long, value_enum, default_value = "on-demand")]
    pub market: Market,
    /// Spot price as a share of on demand.
    #[arg(long, default_value_t = 0.35, value_name = "RATIO")]
    pub spot_price_ratio: f64,
    /// Spot interruptions per instance-hour.
    #[arg(long, default_value_t = 0.05, value_name = "RATE")]
    pub interruption_rate: f64,
    /// A job on an interrupted instance runs again from the beginning
    /// (the runner's unsafe retries) instead of failing.
    #[arg(long)]
    pub retry_interrupted_jobs: bool,
    /// Spot capacity out in this window of the day, e.g. 10h..11h.
    #[arg(long, value_name = "FROM..TO")]
    pub spot_outage: Option<String>,
    /// Root volume size, for what a stopped warm-pool instance costs (gp3).
    #[arg(long, default_value_t = 30, value_name = "GB")]
    pub root_volume_gb: u32,
    /// Share of launches whose boot fails (0 to 1).
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub launch_failure_rate: f64,
    /// Boot failures are silent (a hung boot): only the boot timeout reaps
    /// them. Default: the boot script sees its failure and leaves the group
    /// with decrement at once.
    #[arg(long)]
    pub silent_boot_failures: bool,
    /// Runner idle timeout.
    #[arg(long, default_value = "1m", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,
    /// Our poll interval (the tutorial polls every 60 s).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,
    /// Our reaping of instances that never registered.
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    pub boot_timeout: Duration,
    /// Price of one instance-hour (default: t3.large on demand, us-east-1).
    #[arg(long, default_value_t = 0.0832, value_name = "PRICE")]
    pub price: f64,
    /// Count the jobs that waited longer than this.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub wait_threshold: Duration,
    /// Write an SVG chart of queue, desired and in-service over the day.
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
    /// Compare settings: max_instances=5,10,20, idle_timeout=1m,5m, interval=10s,30s,
    /// headroom=0,1,2,4,auto, image=cold,baked,warm-pool, market=on-demand,spot,
    /// warm_pool=0,2,4 or
    /// cancel_rate=0,0.1,0.3.
    #[arg(long, value_name = "KEY=V1,V2,...")]
    pub sweep: Vec<String>,
    /// Replay every combination of max instances (around the jobs' own
    /// peak), spares (0 to 4 in working hours, or auto), image (stock or
    /// baked) and market (on demand or spot), and show the cheapest that
    /// meets --target-p95 losing no job, with the runners-up (per pool with
    /// --config). Exit status 1 when none meets it.
    #[arg(long, requires = "target_p95", conflicts_with_all = ["sweep", "chart"])]
    pub recommend: bool,
    /// With --recommend: the p95 queue wait to meet.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", requires = "recommend")]
    pub target_p95: Option<Duration>,
}

fn secs(d: Duration) -> anyhow::Result<u64> {
    if d.subsec_nanos() != 0 {
        bail!("durations are simulated in whole seconds; {d:?} is not");
    }
    Ok(d.as_secs())
}

fn boot_range(s: &str) -> anyhow::Result<(u64, u64)> {
    let parse = |p: &str| -> anyhow::Result<u64> {
        secs(
            parse_duration(p.trim())
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--boot-time {s}"))?,
        )
    };
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => (parse(s)?, parse(s)?),
    };
    if a > b {
        bail!("--boot-time {s}: the range is reversed");
    }
    Ok((a, b))
}

/// Where our instances run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    OnDemand,
    Spot,
}

/// How our instances start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    Cold,
    Baked,
    WarmPool,
}

use cci_scaler::simulate::{BAKED_BOOT_S, WARM_START_S};
/// gp3 storage, per GB-month (us-east-1), over 730 hours a month.
const GP3_PER_GB_HOUR: f64 = 0.08 / 730.0;

fn apply_image(f: &mut Fleet, image: ImageKind, cold: (u64, u64)) {
    let (lo, hi) = match image {
        ImageKind::Cold => cold,
        ImageKind::Baked => BAKED_BOOT_S,
        ImageKind::WarmPool => WARM_START_S,
    };
    f.boot_min_s = lo;
    f.boot_max_s = hi;
    f.warm_pool = image == ImageKind::WarmPool;
}

/// `--headroom`: a count of spares in working hours, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Headroom {
    Count(u32),
    Auto,
}

fn parse_headroom(s: &str) -> Result<Headroom, String> {
    match s {
        "auto" => Ok(Headroom::Auto),
        n => n
            .parse()
            .map(Headroom::Count)
            .map_err(|_| format!("{n:?}: a count of spares, or auto")),
    }
}

fn headroom_specs(count: u32) -> Vec<HeadroomSpec> {
    if count == 0 {
        Vec::new()
    } else {
        vec![HeadroomSpec::working_hours(count)]
    }
}

fn fleet(args: &SimulateArgs) -> anyhow::Result<Fleet> {
    let (boot_min_s, boot_max_s) = boot_range(&args.boot_time)?;
    let mut f = Fleet {
        min: args.min_instances,
        max: args.max_instances,
        boot_min_s,
        boot_max_s,
        launch_failure_rate: args.launch_failure_rate,
        silent_boot_failures: args.silent_boot_failures,
        idle_timeout_s: secs(args.idle_timeout)?,
        interval_s: secs(args.interval)?,
        boot_timeout_s: secs(args.boot_timeout)?,
        price_per_hour: args.price,
        wait_threshold_s: secs(args.wait_threshold)?,
        fail_first_launches: 0,
        tutorial_boot_min_s: boot_min_s,
        tutorial_boot_max_s: boot_max_s,
        headroom: match args.headroom {
            Some(Headroom::Count(n)) => headroom_specs(n),
            _ => Vec::new(),
        },
        auto_headroom: args.headroom == Some(Headroom::Auto),
        warm_pool_size: args.warm_pool,
        max_spares: args.max_spares,
        warm_pool: false,
        stopped_price_per_hour: f64::from(args.root_volume_gb) * GP3_PER_GB_HOUR,
        cancel_rate: args.cancel_rate,
        cancel_within_s: 120,
        without_spare_rule: false,
        spot: args.market == Market::Spot,
        spot_price_ratio: args.spot_price_ratio,
        interruption_rate: args.interruption_rate,
        retry_interrupted_jobs: args.retry_interrupted_jobs,
        spot_outage: args
            .spot_outage
            .as_deref()
            .map(|s| {
                let (a, b) = boot_range(s).with_context(|| format!("--spot-outage {s}"))?;
                if a >= b {
                    bail!("--spot-outage {s}: the window is empty");
                }
                Ok((a, b))
            })
            .transpose()?,
        ..Fleet::default()
    };
    apply_image(&mut f, args.image, (boot_min_s, boot_max_s));
    f.validate()?;
    Ok(f)
}

fn jobs(args: &SimulateArgs) -> anyhow::Result<Vec<Job>> {
    let Some(path) = &args.jobs else {
        return Ok(generator(args)?.generate(args.seed)?);
    };
    match read_jobs(path)? {
        JobsFile::Rows(text) => workload::parse_csv(&text, args.resource_class.as_deref())
            .with_context(|| format!("jobs file {}", path.display())),
        JobsFile::Usage(mut by_class) => {
            let classes: Vec<String> = by_class.keys().flatten().cloned().collect();
            let want = match (&args.resource_class, classes.as_slice()) {
                (Some(rc), _) => rc.clone(),
                (None, [one]) => one.clone(),
                (None, _) => crate::usage!(
                    "usage export {} has jobs of {} resource classes ({}): pass --resource-class, or --config for a stack's pools",
                    path.display(),
                    classes.len(),
                    classes.join(", ")
                ),
            };
            by_class.remove(&Some(want.clone())).with_context(|| {
                format!(
                    "usage export {} has no jobs of {want} (it has {})",
                    path.display(),
                    classes.join(", ")
                )
            })
        }
    }
}

/// A jobs file: rows (`arrival_s,duration_s[,resource_class]`), or a
/// CircleCI usage export (gzip or not), already split by resource class.
enum JobsFile {
    Rows(String),
    Usage(std::collections::BTreeMap<Option<String>, Vec<Job>>),
}

fn read_jobs(path: &std::path::Path) -> anyhow::Result<JobsFile> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the jobs file {}", path.display()))?;
    let text = simulate::usage::read_maybe_gzip(&bytes)
        .with_context(|| format!("jobs file {}: neither text nor gzip", path.display()))?;
    if !simulate::usage::is_usage_export(&text) {
        return Ok(JobsFile::Rows(text));
    }
    let export = simulate::usage::parse(&text)
        .with_context(|| format!("usage export {}", path.display()))?;
    if export.cloud_rows + export.unfinished > 0 {
        eprintln!(
            "note: usage export {}: {} job run(s) of self-hosted classes replayed; {} of cloud resource classes and {} that never started or stopped left out",
            path.display(),
            export.runs.len(),
            export.cloud_rows,
            export.unfinished
        );
    }
    Ok(JobsFile::Usage(export.jobs_by_class().with_context(
        || format!("usage export {}", path.display()),
    )?))
}

fn generator(args: &SimulateArgs) -> anyhow::Result<Generator> {
    let mut g = args.workload.generator();
    g.median_duration_s = secs(args.median_job)? as f64;
    if let Some(n) = args.jobs_per_day {
        if !(n.is_finite() && n > 0.0 && n <= 1e7) {
            bail!("--jobs-per-day must be above 0 and at most 10000000");
        }
        let per_arrival = f64::from(g.fan_out.max(1));
        g = g.scaled_to(n / per_arrival);
    }
    Ok(g)
}

/// `--headroom auto` on a generated day: what the pool learned in the
/// earlier weeks (their hourly peaks, as the scaler records them).
fn learn(args: &SimulateArgs, fleet: &mut Fleet) -> anyhow::Result<()> {
    if args.history_weeks > auto_headroom::HISTORY_WEEKS as u64 {
        bail!(
            "--history-weeks {}: at most {} (what the scaler keeps)",
            args.history_weeks,
            auto_headroom::HISTORY_WEEKS
        );
    }
    if args.jobs.is_some() {
        return Ok(());
    }
    let g = generator(args)?;
    fleet.learned = (1..=args.history_weeks)
        .map(|w| {
            g.earlier_week(args.seed, w)
                .map(|jobs| workload::hourly_busy_minutes(&jobs))
        })
        .collect::<Result<_, _>>()?;
    Ok(())
}

/// One sweep: a setting and its values, each applied to a copy of the fleet.
fn sweep_fleets(spec: &str, base: &Fleet) -> anyhow::Result<(String, Vec<(String, Fleet)>)> {
    let (key, values) = spec
        .split_once('=')
        .with_context(|| format!("--sweep {spec}: expected KEY=V1,V2,..."))?;
    let mut out = Vec::new();
    for v in values.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        let mut f = base.clone();
        let dur = |v: &str| -> anyhow::Result<u64> {
            secs(
                parse_duration(v)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("--sweep {key}={v}"))?,
            )
        };
        match key {
            "max_instances" | "max-instances" => {
                f.max = v
                    .parse()
                    .with_context(|| format!("--sweep {key}={v}: not a count"))?;
            }
            "idle_timeout" | "idle-timeout" => f.idle_timeout_s = dur(v)?,
            "interval" => f.interval_s = dur(v)?,
            "headroom" => {
                match parse_headroom(v).map_err(|e| anyhow::anyhow!("--sweep {key}={v}: {e}"))? {
                    Headroom::Auto => {
                        f.headroom = Vec::new();
                        f.auto_headroom = true;
                    }
                    Headroom::Count(n) => {
                        f.headroom = headroom_specs(n);
                        f.auto_headroom = false;
                    }
                }
            }
            "image" => {
                let image = <ImageKind as clap::ValueEnum>::from_str(v, true).map_err(|_| {
                    anyhow::anyhow!("--sweep image={v}: expected cold, baked or warm-pool")
                })?;
                apply_image(
                    &mut f,
                    image,
                    (base.tutorial_boot_min_s, base.tutorial_boot_max_s),
                );
            }
            "market" => {
                f.spot = match v {
                    "spot" => true,
                    "on-demand" => false,
                    _ => bail!("--sweep market={v}: expected on-demand or spot"),
                };
            }
            "warm_pool" | "warm-pool" => {
                f.warm_pool_size = v
                    .parse()
                    .with_context(|| format!("--sweep {key}={v}: not a count"))?;
            }
            "cancel_rate" | "cancel-rate" => {
                f.cancel_rate = v
                    .parse()
                    .with_context(|| format!("--sweep {key}={v}: not a rate"))?;
            }
            other => bail!(
                "--sweep {other}: can sweep max_instances, idle_timeout, interval, headroom, image, market, warm_pool or cancel_rate"
            ),
        }
        f.validate().with_context(|| format!("--sweep {key}={v}"))?;
        out.push((v.to_string(), f));
    }
    if out.is_empty() {
        bail!("--sweep {spec}: no values");
    }
    Ok((key.to_string(), out))
}

/// A pool of a stack file as the simulator runs it: `base` (the flags) with
/// the pool's max instances, spares (periods, auto), warm pool, market,
/// idle timeout, poll interval and boot timeout.
pub(super) fn pool_fleet(
    base: &Fleet,
    p: &cci_scaler::config::StackSettings,
) -> anyhow::Result<Fleet> {
    let idle = cci_scaler::render::parse_go_duration("idle timeout", &p.runner.idle_timeout)?;
    let f = Fleet {
        max: p.max_instances,
        min: base.min.min(p.max_instances),
        headroom: if p.headroom.is_empty() {
            base.headroom.clone()
        } else {
            p.headroom.clone()
        },
        auto_headroom: base.auto_headroom || p.auto_headroom.is_some(),
        max_spares: p
            .auto_headroom
            .map_or(base.max_spares, |a| a.max_spares)
            .min(p.max_instances),
        warm_pool_size: base.warm_pool_size.max(p.warm_pool),
        spot: base.spot || p.spot.is_some(),
        on_demand_base: p.spot.as_ref().map_or(0, |s| s.on_demand_base),
        retry_interrupted_jobs: base.retry_interrupted_jobs || p.retry_interrupted_jobs,
        stopped_price_per_hour: f64::from(p.root_volume_gb) * GP3_PER_GB_HOUR,
        idle_timeout_s: secs(idle)?,
        interval_s: secs(p.poll_interval)?,
        boot_timeout_s: secs(p.boot_timeout)?,
        ..base.clone()
    };
    f.validate()?;
    Ok(f)
}

/// `--config`: every pool of a stack file, each with its own jobs and
/// settings, then the whole stack.
fn run_pools(
    global: &GlobalArgs,
    args: &SimulateArgs,
    path: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    use cci_scaler::config::StackFile;
    let pools = StackFile::load(path)?.pools()?;
    let jobs_path = args.jobs.as_ref().context("--config needs --jobs")?;
    let mut by_class = match read_jobs(jobs_path)? {
        JobsFile::Rows(text) => workload::parse_csv_by_class(&text)
            .with_context(|| format!("jobs file {}", jobs_path.display()))?,
        JobsFile::Usage(by_class) => by_class,
    };
    if let Some(rows) = by_class.get(&None) {
        bail!(
            "jobs file {}: {} row(s) have no resource_class; with --config every row needs one (arrival_s,duration_s,resource_class)",
            jobs_path.display(),
            rows.len()
        );
    }
    let base = fleet(args)?;
    let started = Instant::now();
    let mut pool_jobs = Vec::new();
    for p in &pools {
        let name = p.pool.clone().unwrap_or_else(|| p.stack.clone());
        let Some(jobs) = by_class.remove(&Some(p.resource_class.clone())) else {
            eprintln!(
                "note: pool {name} ({}) has no jobs in the file",
                p.resource_class
            );
            continue;
        };
        let f = pool_fleet(&base, p).with_context(|| format!("pool {name}"))?;
        pool_jobs.push((name, p.resource_class.clone(), f, jobs));
    }
    let left_out: usize = by_class.values().map(Vec::len).sum();
    if left_out > 0 {
        let classes: Vec<String> = by_class.keys().flatten().cloned().collect();
        eprintln!(
            "note: {left_out} job(s) of classes the stack has no pool for were left out: {}",
            classes.join(", ")
        );
    }
    if pool_jobs.is_empty() {
        bail!("no pool of {} has jobs in the file", path.display());
    }
    if args.recommend {
        let pools = pool_jobs
            .into_iter()
            .map(|(name, class, f, jobs)| (Some(name), Some(class), f, jobs))
            .collect();
        return recommend(global, args, pools);
    }
    let mut runs = Vec::new();
    for (pool, resource_class, f, jobs) in pool_jobs {
        let ours = simulate::simulate(&jobs, &f, Policy::Ours, args.seed)?;
        let tutorial = simulate::simulate(&jobs, &f, Policy::Tutorial, args.seed)?;
        runs.push(PoolRun {
            pool,
            resource_class,
            fleet: f,
            ours,
            tutorial,
        });
    }
    let report = RunReport::Stack {
        seed: args.seed,
        pools: runs,
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
    };
    print(global.output, &report, None)
}

/// A pool to recommend for: its name, class, own fleet and jobs.
type PoolJobs = (Option<String>, Option<String>, Fleet, Vec<Job>);

/// `--recommend`: for each pool (its name, class, own fleet and jobs), every
/// choice replayed and the cheapest meeting the target shown.
fn recommend(
    global: &GlobalArgs,
    args: &SimulateArgs,
    pools: Vec<PoolJobs>,
) -> anyhow::Result<ExitCode> {
    use cci_scaler::simulate::recommend::{self, Space};
    let target = secs(args.target_p95.context("--recommend needs --target-p95")?)?;
    let cold = boot_range(&args.boot_time)?;
    let spaces: Vec<Space> = pools
        .iter()
        .map(|(_, _, f, jobs)| Space::around(jobs, f.max, cold, BAKED_BOOT_S))
        .collect();
    let total: usize = spaces.iter().map(|s| s.choices().len()).sum();
    let bar = indicatif::ProgressBar::new(total as u64);
    if global.output == Output::Text && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "replaying {pos}/{len} settings {wide_bar} {elapsed}",
            )
            .expect("a valid template"),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = Instant::now();
    let mut out = Vec::new();
    for ((pool, class, f, jobs), space) in pools.iter().zip(&spaces) {
        let r = recommend::recommend(jobs, f, space, Some(f), target, args.seed, &|| bar.inc(1))?;
        out.push(recommend::PoolRecommendation {
            pool: pool.clone(),
            resource_class: class.clone(),
            days: span_days(jobs),
            recommendation: r,
        });
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let text = match global.output {
        Output::Json => format!(
            "{}\n",
            serde_json::json!({
                "target_p95_s": target,
                "seed": args.seed,
                "pools": out.iter().map(recommend::PoolRecommendation::json).collect::<Vec<_>>(),
                "settings_replayed": total,
                "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
            })
        ),
        Output::Text => {
            let mut t = String::new();
            for r in &out {
                t.push_str(&r.text());
            }
            t.push_str(&format!(
                "{total} settings replayed in {:.1}s with the real scaling decision (seed {}).\n",
                elapsed.as_secs_f64(),
                args.seed
            ));
            t
        }
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    let unmet: Vec<String> = out
        .iter()
        .filter(|r| r.recommendation.best().is_none())
        .map(|r| r.pool.clone().unwrap_or_else(|| "the pool".into()))
        .collect();
    if unmet.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: no setting tried meets p95 {} without losing a job for {}; the closest are shown",
            hms(target),
            unmet.join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// Days the jobs span (at least 1), for costs per day and month.
fn span_days(jobs: &[Job]) -> f64 {
    let first = jobs.iter().map(|j| j.arrival_s).min().unwrap_or(0);
    let last = jobs
        .iter()
        .map(|j| j.arrival_s + j.duration_s)
        .max()
        .unwrap_or(0);
    ((last - first) as f64 / 86_400.0).max(1.0)
}

/// The report on stdout, as text or JSON.
fn print(output: Output, report: &RunReport, chart: Option<&str>) -> anyhow::Result<ExitCode> {
    let text = match output {
        Output::Json => format!("{}\n", report.json()),
        Output::Text => report.text(chart),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn run(global: &GlobalArgs, args: SimulateArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.config {
        return run_pools(global, &args, path);
    }
    let mut base = fleet(&args)?;
    learn(&args, &mut base)?;
    if args.recommend {
        let jobs = jobs(&args)?;
        return recommend(
            global,
            &args,
            vec![(None, args.resource_class.clone(), base, jobs)],
        );
    }
    let sweeps = args
        .sweep
        .iter()
        .map(|s| sweep_fleets(s, &base))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let jobs = jobs(&args)?;

    let started = Instant::now();
    let ours = simulate::simulate(&jobs, &base, Policy::Ours, args.seed)?;
    let tut = simulate::simulate(&jobs, &base, Policy::Tutorial, args.seed)?;
    let elapsed = started.elapsed();

    let mut sweep_results = Vec::new();
    for (key, fleets) in &sweeps {
        let mut rows = Vec::new();
        for (value, f) in fleets {
            let o = simulate::simulate(&jobs, f, Policy::Ours, args.seed)?;
            let t = simulate::simulate(&jobs, f, Policy::Tutorial, args.seed)?;
            rows.push((value.clone(), o, t));
        }
        sweep_results.push(Sweep {
            setting: key.clone(),
            rows,
        });
    }
    let report = RunReport::Day {
        seed: args.seed,
        jobs: jobs.len(),
        fleet: base,
        ours,
        tutorial: tut,
        sweeps: sweep_results,
        elapsed_ms: elapsed.as_secs_f64() * 1000.0,
    };
    if let Some(path) = &args.chart {
        let svg = report
            .svg()
            .expect("a day has a chart")
            .map_err(|e| anyhow::anyhow!("drawing the chart failed: {e}"))?;
        std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let chart = args.chart.as_ref().map(|p| p.display().to_string());
    print(global.output, &report, chart.as_deref())
}
