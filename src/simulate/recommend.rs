//! `simulate --recommend`: replay a pool's jobs under every combination of
//! max instances, spares (a fixed count in working hours, or auto), image
//! (stock or baked) and market, with the real scaling decision, and rank the
//! ones that meet a p95 wait target by cost.
//!
//! A choice meets the target only if it also loses nothing: no job killed,
//! none failed by a spot interruption, none left queued at the end.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use super::fleet::{Fleet, Policy, SimError};
use super::model::simulate;
use super::report::Report;
use super::workload::Job;
use crate::scale::headroom::HeadroomSpec;

/// Spares: a fixed count in working hours, or sized from demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Spares {
    Fixed(u32),
    Auto,
}

/// How instances start: a stock image installing at boot, or a baked one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Image {
    Cold,
    Baked,
}

/// One combination of settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Choice {
    pub max_instances: u32,
    pub spares: Spares,
    pub image: Image,
    pub spot: bool,
    /// Stopped instances in the group's warm pool (on demand only).
    pub warm_pool: u32,
}

impl std::fmt::Display for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let spares = match self.spares {
            Spares::Fixed(n) => format!("spares {n}"),
            Spares::Auto => "spares auto".into(),
        };
        let image = match self.image {
            Image::Cold => "stock image",
            Image::Baked => "baked image",
        };
        let market = if self.spot { "spot" } else { "on demand" };
        write!(f, "max {}, {spares}, {image}, {market}", self.max_instances)?;
        if self.warm_pool > 0 {
            write!(f, ", warm pool {}", self.warm_pool)?;
        }
        Ok(())
    }
}

/// The values tried in each dimension, and what the images boot in.
#[derive(Debug, Clone)]
pub struct Space {
    pub max_instances: Vec<u32>,
    pub spares: Vec<Spares>,
    pub images: Vec<Image>,
    pub markets: Vec<bool>,
    /// Warm pool sizes tried on demand (AWS refuses warm pools for spot).
    pub warm_pools: Vec<u32>,
    /// Launch to registered runner (seconds): a stock image, a baked one.
    pub cold_boot_s: (u64, u64),
    pub baked_boot_s: (u64, u64),
}

impl Space {
    /// Max instances around the jobs' own peak (the most that ran at once had
    /// none of them waited): half, three quarters, all, and a quarter more,
    /// with `current` (the pool's setting) among them; spares 0 to 4 and
    /// auto; both images; both markets; on demand, no warm pool or one of 2.
    pub fn around(jobs: &[Job], current: u32, cold_boot_s: (u64, u64), baked: (u64, u64)) -> Self {
        let peak = peak_concurrency(jobs).max(1);
        let mut max: Vec<u32> = [0.5, 0.75, 1.0, 1.25]
            .iter()
            .map(|f| ((f64::from(peak) * f).ceil() as u32).max(1))
            .chain(std::iter::once(current.max(1)))
            .collect();
        max.sort_unstable();
        max.dedup();
        Space {
            max_instances: max,
            spares: (0..=4).map(Spares::Fixed).chain([Spares::Auto]).collect(),
            images: vec![Image::Cold, Image::Baked],
            markets: vec![false, true],
            warm_pools: vec![0, 2],
            cold_boot_s,
            baked_boot_s: baked,
        }
    }

    pub fn choices(&self) -> Vec<Choice> {
        let mut out = Vec::new();
        for &max_instances in &self.max_instances {
            for &spares in &self.spares {
                for &image in &self.images {
                    for &spot in &self.markets {
                        for &warm_pool in &self.warm_pools {
                            if spot && warm_pool > 0 {
                                continue;
                            }
                            out.push(Choice {
                                max_instances,
                                spares,
                                image,
                                spot,
                                warm_pool: warm_pool.min(max_instances),
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// `base` with `choice` applied (its other settings kept).
    pub fn fleet(&self, base: &Fleet, choice: &Choice) -> Fleet {
        let mut f = base.clone();
        f.max = choice.max_instances;
        f.min = f.min.min(f.max);
        match choice.spares {
            Spares::Fixed(0) => {
                f.headroom = Vec::new();
                f.auto_headroom = false;
            }
            Spares::Fixed(n) => {
                f.headroom = vec![HeadroomSpec::working_hours(n)];
                f.auto_headroom = false;
            }
            Spares::Auto => {
                f.headroom = Vec::new();
                f.auto_headroom = true;
            }
        }
        f.max_spares = f.max_spares.clamp(1, f.max);
        (f.boot_min_s, f.boot_max_s) = match choice.image {
            Image::Cold => self.cold_boot_s,
            Image::Baked => self.baked_boot_s,
        };
        f.warm_pool = false;
        f.warm_pool_size = choice.warm_pool;
        f.spot = choice.spot;
        f
    }
}

/// The most jobs running at once if none had waited (each from its arrival
/// for its duration).
pub fn peak_concurrency(jobs: &[Job]) -> u32 {
    let mut edges: Vec<(u64, i32)> = jobs
        .iter()
        .flat_map(|j| [(j.arrival_s, 1), (j.arrival_s + j.duration_s.max(1), -1)])
        .collect();
    // Ends before starts at the same second.
    edges.sort_unstable();
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        peak = peak.max(now);
    }
    peak as u32
}

/// One choice, replayed.
#[derive(Debug, Clone, Serialize)]
pub struct Tried {
    pub choice: Choice,
    pub meets: bool,
    /// Jobs killed, failed by an interruption, or never run.
    pub jobs_lost: u64,
    pub report: Report,
}

/// Every choice replayed, ranked.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub target_p95_s: u64,
    pub jobs: usize,
    /// Every choice tried: those meeting the target first, cheapest first;
    /// then the others, fastest first.
    pub tried: Vec<Tried>,
    /// The pool's own settings, replayed (when given).
    pub current: Option<Tried>,
    /// The tutorial's policy on the same jobs, for scale.
    pub tutorial: Report,
}

impl Recommendation {
    /// The cheapest choice that meets the target.
    pub fn best(&self) -> Option<&Tried> {
        self.tried.first().filter(|t| t.meets)
    }

    /// What to show: the best and up to `n` runners-up meeting the target
    /// (each differing from those before in more than max instances),
    /// the cheapest on demand if those are all spot, or (none meeting) the
    /// `n` fastest.
    pub fn shortlist(&self, n: usize) -> Vec<&Tried> {
        let meeting: Vec<&Tried> = self.tried.iter().filter(|t| t.meets).collect();
        if meeting.is_empty() {
            return self.tried.iter().take(n).collect();
        }
        // Runners-up that differ in more than max instances.
        let key = |t: &Tried| {
            (
                t.choice.spares,
                t.choice.image,
                t.choice.spot,
                t.choice.warm_pool,
            )
        };
        let mut out: Vec<&Tried> = Vec::new();
        for t in &meeting {
            if out.len() > n {
                break;
            }
            if !out.iter().any(|o| key(o) == key(t)) {
                out.push(t);
            }
        }
        if out.iter().all(|t| t.choice.spot)
            && let Some(od) = meeting.iter().find(|t| !t.choice.spot)
        {
            out.push(od);
        }
        out
    }
}

fn lost(r: &Report) -> u64 {
    r.jobs_killed + r.jobs_failed_by_interruption + r.jobs_not_run as u64
}

/// Replay every choice of `space` (on `base`'s other settings, on all cores)
/// and rank them against `target_p95_s`. `current`: the pool's own fleet, to
/// show beside. `progress` is called once per choice replayed.
pub fn recommend(
    jobs: &[Job],
    base: &Fleet,
    space: &Space,
    current: Option<&Fleet>,
    target_p95_s: u64,
    seed: u64,
    progress: &(dyn Fn() + Sync),
) -> Result<Recommendation, SimError> {
    let choices = space.choices();
    let fleets: Vec<Fleet> = choices.iter().map(|c| space.fleet(base, c)).collect();
    for f in &fleets {
        f.validate()?;
    }
    // Work in groups that differ only in max instances, smallest max first:
    // once a max does not bind (the group never asked for it), every larger
    // one replays the same, and is not replayed again.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, c) in choices.iter().enumerate() {
        let key = |c: &Choice| (c.spares, c.image, c.spot, c.warm_pool);
        match groups.iter_mut().find(|g| key(&choices[g[0]]) == key(c)) {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    for g in &mut groups {
        g.sort_by_key(|&i| choices[i].max_instances);
    }
    let results: Mutex<Vec<Option<Result<Report, SimError>>>> =
        Mutex::new((0..fleets.len()).map(|_| None).collect());
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(groups.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while let Some(group) = groups.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let mut unbound: Option<Report> = None;
                    for &i in group {
                        let r = match &unbound {
                            Some(r) => Ok(r.clone()),
                            None => simulate(jobs, &fleets[i], Policy::Ours, seed),
                        };
                        if let Ok(rep) = &r
                            && rep.peak_desired < fleets[i].max
                        {
                            unbound = Some(rep.clone());
                        }
                        results.lock().expect("no worker panics")[i] = Some(r);
                        progress();
                    }
                }
            });
        }
    });
    let judge = |choice: Choice, report: Report| {
        let jobs_lost = lost(&report);
        Tried {
            choice,
            meets: jobs_lost == 0 && report.waits.p95_s <= target_p95_s,
            jobs_lost,
            report,
        }
    };
    let mut tried = Vec::with_capacity(choices.len());
    for (choice, r) in choices
        .into_iter()
        .zip(results.into_inner().expect("no worker panics"))
    {
        tried.push(judge(choice, r.expect("every choice was replayed")?));
    }
    tried.sort_by(|a, b| {
        b.meets.cmp(&a.meets).then_with(|| {
            if a.meets {
                a.report
                    .cost
                    .total_cmp(&b.report.cost)
                    .then(a.report.waits.p95_s.cmp(&b.report.waits.p95_s))
                    .then(a.report.waits.max_s.cmp(&b.report.waits.max_s))
                    .then(a.choice.max_instances.cmp(&b.choice.max_instances))
            } else {
                a.jobs_lost
                    .cmp(&b.jobs_lost)
                    .then(a.report.waits.p95_s.cmp(&b.report.waits.p95_s))
                    .then(a.report.cost.total_cmp(&b.report.cost))
            }
        })
    });
    let current = current
        .map(|f| {
            let r = simulate(jobs, f, Policy::Ours, seed)?;
            let choice = Choice {
                max_instances: f.max,
                spares: if f.auto_headroom {
                    Spares::Auto
                } else {
                    Spares::Fixed(f.headroom.iter().map(|h| h.count).max().unwrap_or(0))
                },
                image: if (f.boot_min_s, f.boot_max_s) == space.cold_boot_s {
                    Image::Cold
                } else {
                    Image::Baked
                },
                spot: f.spot,
                warm_pool: f.warm_pool_size,
            };
            Ok::<_, SimError>(judge(choice, r))
        })
        .transpose()?;
    let tutorial = simulate(jobs, base, Policy::Tutorial, seed)?;
    Ok(Recommendation {
        target_p95_s,
        jobs: jobs.len(),
        tried,
        current,
        tutorial,
    })
}

/// One pool's recommendation, as `simulate --recommend` shows it.
pub struct PoolRecommendation {
    pub pool: Option<String>,
    pub resource_class: Option<String>,
    /// Days the pool's jobs span.
    pub days: f64,
    pub recommendation: Recommendation,
}

/// Shown beside the best: this many runners-up.
const RUNNERS_UP: usize = 3;

impl PoolRecommendation {
    fn name(&self) -> String {
        match (&self.pool, &self.resource_class) {
            (Some(p), Some(c)) => format!("pool {p} ({c})"),
            (None, Some(c)) => c.clone(),
            (Some(p), None) => format!("pool {p}"),
            (None, None) => "the replayed jobs".into(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let r = &self.recommendation;
        let row = |t: &Tried| {
            serde_json::json!({
                "choice": t.choice,
                "meets": t.meets,
                "jobs_lost": t.jobs_lost,
                "waits": t.report.waits,
                "cost": t.report.cost,
                "instance_hours": t.report.instance_hours,
                "boots_per_job": t.report.boots_per_job,
                "settings": {
                    "max_instances": t.choice.max_instances,
                    "headroom": match t.choice.spares {
                        Spares::Auto => serde_json::json!("auto"),
                        Spares::Fixed(n) => serde_json::json!(n),
                    },
                    "image": t.choice.image,
                    "market": if t.choice.spot { "spot" } else { "on-demand" },
                    "warm_pool": t.choice.warm_pool,
                },
                "stack_file": stack_keys(&t.choice),
            })
        };
        serde_json::json!({
            "pool": self.pool,
            "resource_class": self.resource_class,
            "jobs": r.jobs,
            "days": self.days,
            "target_p95_s": r.target_p95_s,
            "recommended": r.best().map(row),
            "shortlist": r.shortlist(RUNNERS_UP).into_iter().map(row).collect::<Vec<_>>(),
            "current": r.current.as_ref().map(row),
            "tutorial": {"waits": r.tutorial.waits, "cost": r.tutorial.cost},
            "settings_replayed": r.tried.len(),
        })
    }

    pub fn text(&self) -> String {
        use super::report::hms;
        let r = &self.recommendation;
        let mut out = format!(
            "{}: {} jobs over {:.1} days, target p95 {}\n",
            self.name(),
            r.jobs,
            self.days,
            hms(r.target_p95_s)
        );
        let now_cost = r.current.as_ref().map(|c| c.report.cost);
        let mut rows: Vec<(String, String, &Report, u64)> = Vec::new();
        let short = r.shortlist(RUNNERS_UP);
        for (i, t) in short.iter().enumerate() {
            let label = match (i, t.meets) {
                (0, true) => "best".to_string(),
                (_, true) => format!("#{}", i + 1),
                (_, false) => "closest".to_string(),
            };
            rows.push((label, t.choice.to_string(), &t.report, t.jobs_lost));
        }
        if let Some(c) = &r.current {
            rows.push(("now".into(), c.choice.to_string(), &c.report, c.jobs_lost));
        }
        rows.push((
            "tutorial".into(),
            "its Lambda once a minute, stock image".into(),
            &r.tutorial,
            lost(&r.tutorial),
        ));
        let w = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
        out.push_str(&format!(
            "  {:<8} {:<w$}  {:>6} {:>6} {:>7} {:>5} {:>10} {:>7}\n",
            "", "settings", "p50", "p95", "max", "lost", "cost", "vs now"
        ));
        for (label, choice, rep, lost) in rows {
            let vs = now_cost
                .filter(|c| *c > 0.0)
                .map_or("-".to_string(), |c| format!("{:.2}x", rep.cost / c));
            out.push_str(&format!(
                "  {:<8} {:<w$}  {:>6} {:>6} {:>7} {:>5} {:>10} {:>7}\n",
                label,
                choice,
                hms(rep.waits.p50_s),
                hms(rep.waits.p95_s),
                hms(rep.waits.max_s),
                lost,
                format!("${:.2}", rep.cost),
                vs
            ));
        }
        match r.best() {
            Some(b) => out.push_str(&format!(
                "  In the stack file{}: {}\n",
                self.pool
                    .as_ref()
                    .map(|p| format!(" ([[pool]] {p})"))
                    .unwrap_or_default(),
                stack_keys(&b.choice)
            )),
            None => out.push_str(&format!(
                "  None of the {} settings tried meets p95 {} without losing a job.\n",
                r.tried.len(),
                hms(r.target_p95_s)
            )),
        }
        out.push_str("  cost: instances, stopped disks and the control plane over the replay.\n\n");
        out
    }
}

/// A choice as stack-file keys (and the init flag for a stock image).
pub fn stack_keys(c: &Choice) -> String {
    let mut keys = vec![format!("max_instances = {}", c.max_instances)];
    match c.spares {
        Spares::Auto => keys.push("headroom = \"auto\"".into()),
        Spares::Fixed(0) => {}
        Spares::Fixed(n) => {
            let h = HeadroomSpec::working_hours(n);
            keys.push(format!(
                "headroom = [{{ schedule = \"{}\", duration = \"{}\", count = {n} }}]",
                h.schedule, h.duration
            ));
        }
    }
    keys.push(format!(
        "market = \"{}\"",
        if c.spot { "spot" } else { "on-demand" }
    ));
    if c.warm_pool > 0 {
        keys.push(format!("warm_pool = {}", c.warm_pool));
    }
    let image = match c.image {
        Image::Baked => "(init bakes the image, its default)",
        Image::Cold => "(init --no-bake: a stock image)",
    };
    format!("{} {image}", keys.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_concurrency_counts_overlaps_only() {
        let j = |a, d| Job {
            arrival_s: a,
            duration_s: d,
        };
        assert_eq!(peak_concurrency(&[]), 0);
        assert_eq!(peak_concurrency(&[j(0, 10), j(10, 10), j(20, 10)]), 1);
        assert_eq!(peak_concurrency(&[j(0, 100), j(10, 10), j(15, 10)]), 3);
    }

    #[test]
    fn the_space_brackets_the_peak_and_keeps_the_current_max() {
        let jobs: Vec<Job> = (0..8)
            .map(|i| Job {
                arrival_s: i,
                duration_s: 600,
            })
            .collect();
        let s = Space::around(&jobs, 30, (120, 300), (40, 60));
        assert_eq!(s.max_instances, vec![4, 6, 8, 10, 30]);
        assert_eq!(s.choices().len(), 5 * 6 * 2 * 3);
    }

    #[test]
    fn a_max_that_does_not_bind_replays_as_a_larger_one() {
        let jobs: Vec<Job> = (0..40)
            .map(|i| Job {
                arrival_s: 9 * 3600 + i * 900,
                duration_s: 300,
            })
            .collect();
        let space = Space {
            max_instances: vec![2, 3, 9],
            markets: vec![false],
            warm_pools: vec![0],
            ..Space::around(&jobs, 3, (120, 300), (40, 60))
        };
        let r = recommend(&jobs, &Fleet::default(), &space, None, 600, 1, &|| {}).unwrap();
        for t in &r.tried {
            let f = space.fleet(&Fleet::default(), &t.choice);
            let direct = simulate(&jobs, &f, Policy::Ours, 1).unwrap();
            assert_eq!(direct.cost, t.report.cost, "{}", t.choice);
            assert_eq!(direct.waits, t.report.waits, "{}", t.choice);
        }
    }

    #[test]
    fn the_cheapest_choice_meeting_the_target_comes_first() {
        // Two bursts of 6 jobs an hour apart on a weekday morning.
        let jobs: Vec<Job> = (0..12)
            .map(|i| Job {
                arrival_s: 9 * 3600 + (i / 6) * 3600 + i % 6,
                duration_s: 300,
            })
            .collect();
        let base = Fleet::default();
        let space = Space {
            markets: vec![false],
            ..Space::around(&jobs, 6, (120, 300), (40, 60))
        };
        let r = recommend(&jobs, &base, &space, Some(&base), 90, 1, &|| {}).unwrap();
        let best = r.best().expect("a baked image meets 90 s");
        assert!(best.report.waits.p95_s <= 90);
        assert_eq!(best.choice.image, Image::Baked);
        assert!(best.choice.max_instances >= 6, "{}", best.choice);
        for t in r.tried.iter().filter(|t| t.meets) {
            assert!(t.report.cost >= best.report.cost);
        }
        assert!(
            r.tried.iter().any(|t| !t.meets),
            "a stock image is too slow"
        );
        assert!(r.current.is_some());
        assert!(r.shortlist(3).len() <= 4);
    }
}
