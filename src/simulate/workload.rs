//! Jobs to replay: from a CSV file or from a generator (a rate per hour of day
//! and a log-normal duration), deterministic for a given seed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, LogNormal};

/// One CI job: when it is queued and how long it runs once claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub arrival_s: u64,
    pub duration_s: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("line {line}: {why} (expected arrival_s,duration_s[,resource_class])")]
    Csv { line: usize, why: String },
    #[error("the workload has no jobs")]
    Empty,
    #[error("{0}")]
    Generator(String),
}

/// Parse `arrival_s,duration_s[,resource_class]`; a header line and `#`
/// comments are allowed. When `resource_class` is given, only matching rows.
pub fn parse_csv(text: &str, resource_class: Option<&str>) -> Result<Vec<Job>, WorkloadError> {
    let mut jobs: Vec<Job> = parse_rows(text)?
        .into_iter()
        .filter(|(rc, _)| match (resource_class, rc) {
            (Some(want), Some(rc)) => want == rc,
            _ => true,
        })
        .map(|(_, j)| j)
        .collect();
    if jobs.is_empty() {
        return Err(WorkloadError::Empty);
    }
    jobs.sort_by_key(|j| j.arrival_s);
    Ok(jobs)
}

/// The jobs of each resource class (rows without one under `None`), each
/// list sorted by arrival.
pub fn parse_csv_by_class(
    text: &str,
) -> Result<std::collections::BTreeMap<Option<String>, Vec<Job>>, WorkloadError> {
    let mut out: std::collections::BTreeMap<Option<String>, Vec<Job>> = Default::default();
    for (rc, job) in parse_rows(text)? {
        out.entry(rc).or_default().push(job);
    }
    if out.is_empty() {
        return Err(WorkloadError::Empty);
    }
    for jobs in out.values_mut() {
        jobs.sort_by_key(|j| j.arrival_s);
    }
    Ok(out)
}

fn parse_rows(text: &str) -> Result<Vec<(Option<String>, Job)>, WorkloadError> {
    let mut jobs = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if i == 0 && fields[0].parse::<f64>().is_err() {
            continue; // header
        }
        let bad = |why: String| WorkloadError::Csv { line: i + 1, why };
        if fields.len() < 2 || fields.len() > 3 {
            return Err(bad(format!("{} fields", fields.len())));
        }
        let num = |s: &str, what: &str| -> Result<u64, WorkloadError> {
            let v: f64 = s
                .parse()
                .map_err(|_| bad(format!("{what} {s:?} is not a number")))?;
            if !v.is_finite() || !(0.0..=1e9).contains(&v) {
                return Err(bad(format!("{what} {s:?} is out of range")));
            }
            Ok(v.round() as u64)
        };
        let arrival_s = num(fields[0], "arrival_s")?;
        let duration_s = num(fields[1], "duration_s")?.max(1);
        let rc = fields
            .get(2)
            .filter(|s| !s.is_empty())
            .map(|s| s.to_string());
        jobs.push((
            rc,
            Job {
                arrival_s,
                duration_s,
            },
        ));
    }
    Ok(jobs)
}

/// The minutes with an arrival in each hour, from hour 0 to the last
/// arrival's (what the scaler records for `headroom = "auto"`).
pub fn hourly_busy_minutes(jobs: &[Job]) -> Vec<u32> {
    let Some(last) = jobs.iter().map(|j| j.arrival_s).max() else {
        return Vec::new();
    };
    let mut out = vec![0u32; (last / 3600 + 1) as usize];
    let mut minutes: Vec<u64> = jobs.iter().map(|j| j.arrival_s / 60).collect();
    minutes.sort_unstable();
    minutes.dedup();
    for m in minutes {
        out[(m / 60) as usize] += 1;
    }
    out
}

/// Jobs per hour for each hour of the day, and the duration distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Generator {
    pub rate_per_hour: [f64; 24],
    /// Median job duration (seconds) of the log-normal distribution.
    pub median_duration_s: f64,
    /// Its shape: the standard deviation of ln(duration).
    pub sigma: f64,
    /// Durations are capped here (the runner's max run time).
    pub max_duration_s: u64,
    /// Each arrival is a pipeline of this many jobs (1: one job), queued
    /// within `fan_out_spread_s` of each other.
    pub fan_out: u32,
    pub fan_out_spread_s: u64,
}

/// The generated workloads `simulate --workload` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Named {
    /// One office's working day (about 560 jobs).
    WorkingDay,
    /// Teams in three time zones (Europe, the Americas, India): load over
    /// most of the 24 hours (about 600 jobs).
    TimeZones,
    /// A monorepo: 24 pipelines in office hours, each fanning out 40 jobs
    /// within 90 s (about 960 jobs).
    FanOut,
    /// A small team: a few dozen jobs in office hours (about 30).
    SmallTeam,
}

impl Named {
    pub fn generator(self) -> Generator {
        let day = Generator::working_day();
        match self {
            Named::WorkingDay => day,
            Named::TimeZones => {
                // The working day's shape shifted to each office's hours.
                let mut rate = [0.0; 24];
                for (shift, share) in [(0i32, 0.4), (6, 0.4), (-5, 0.2)] {
                    for (h, r) in day.rate_per_hour.iter().enumerate() {
                        let to = (h as i32 + shift).rem_euclid(24) as usize;
                        rate[to] += r * share;
                    }
                }
                Generator {
                    rate_per_hour: rate,
                    ..day
                }
                .scaled_to(600.0)
            }
            Named::FanOut => Generator {
                fan_out: 40,
                fan_out_spread_s: 90,
                ..day.scaled_to(24.0)
            },
            Named::SmallTeam => day.scaled_to(30.0),
        }
    }
}

impl Generator {
    /// A working day: a quiet night, a morning and an afternoon burst, a
    /// lunch dip and an evening tail (about 560 jobs).
    pub fn working_day() -> Generator {
        Generator {
            rate_per_hour: [
                2.0, 1.0, 1.0, 1.0, 1.0, 2.0, 4.0, 12.0, // 00-07
                45.0, 70.0, 60.0, 45.0, 25.0, 35.0, 65.0, 75.0, // 08-15
                55.0, 35.0, 15.0, 8.0, 5.0, 3.0, 2.0, 2.0, // 16-23
            ],
            median_duration_s: 360.0,
            sigma: 0.8,
            max_duration_s: 5 * 3600,
            fan_out: 1,
            fan_out_spread_s: 0,
        }
    }

    /// The same shape scaled to about `total` jobs a day.
    pub fn scaled_to(mut self, total: f64) -> Generator {
        let sum: f64 = self.rate_per_hour.iter().sum();
        for r in &mut self.rate_per_hour {
            *r *= total / sum;
        }
        self
    }

    /// A Poisson arrival process per hour of the day.
    pub fn generate(&self, seed: u64) -> Result<Vec<Job>, WorkloadError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let dur = LogNormal::new(self.median_duration_s.max(1.0).ln(), self.sigma.max(0.0))
            .map_err(|e| WorkloadError::Generator(e.to_string()))?;
        let mut jobs = Vec::new();
        for (hour, rate) in self.rate_per_hour.iter().enumerate() {
            if *rate <= 0.0 {
                continue;
            }
            let gap =
                Exp::new(rate / 3600.0).map_err(|e| WorkloadError::Generator(e.to_string()))?;
            let start = hour as f64 * 3600.0;
            let mut t = start + gap.sample(&mut rng);
            while t < start + 3600.0 {
                for k in 0..self.fan_out.max(1) {
                    let d: f64 = dur.sample(&mut rng);
                    let spread = if k == 0 || self.fan_out_spread_s == 0 {
                        0
                    } else {
                        rng.random_range(0..=self.fan_out_spread_s)
                    };
                    jobs.push(Job {
                        arrival_s: t as u64 + spread,
                        duration_s: (d.round() as u64).clamp(1, self.max_duration_s),
                    });
                }
                t += gap.sample(&mut rng);
            }
        }
        // Keep the RNG stream used in a way that does not depend on float formatting.
        let _ = rng.random::<u32>();
        if jobs.is_empty() {
            return Err(WorkloadError::Empty);
        }
        jobs.sort_by_key(|j| j.arrival_s);
        Ok(jobs)
    }

    /// The same day `weeks` earlier, for a history (another draw of the same
    /// process: the seed is offset by the week).
    pub fn earlier_week(&self, seed: u64, weeks: u64) -> Result<Vec<Job>, WorkloadError> {
        self.generate(seed.wrapping_add(weeks.wrapping_mul(0x9e37_79b9)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_header_comments_and_resource_class() {
        let jobs = parse_csv(
            "arrival_s,duration_s,resource_class\n# c\n10,60,a/b\n5,30\n7,20,a/c\n",
            Some("a/b"),
        )
        .unwrap();
        assert_eq!(
            jobs,
            vec![
                Job {
                    arrival_s: 5,
                    duration_s: 30
                },
                Job {
                    arrival_s: 10,
                    duration_s: 60
                }
            ]
        );
    }

    #[test]
    fn csv_errors_name_the_line() {
        let e = parse_csv("1,2\n3,x\n", None).unwrap_err().to_string();
        assert!(e.starts_with("line 2: duration_s \"x\""), "{e}");
        assert!(parse_csv("# nothing\n", None).is_err());
        assert!(parse_csv("1,-5\n", None).is_err());
    }

    #[test]
    fn generator_is_deterministic_and_shaped() {
        let g = Generator::working_day();
        let a = g.generate(7).unwrap();
        assert_eq!(a, g.generate(7).unwrap());
        assert_ne!(a, g.generate(8).unwrap());
        let night = a.iter().filter(|j| j.arrival_s < 6 * 3600).count();
        let day = a
            .iter()
            .filter(|j| (9 * 3600..12 * 3600).contains(&j.arrival_s))
            .count();
        assert!(day > 5 * night, "day {day} night {night}");
        let big = g.clone().scaled_to(10_000.0).generate(1).unwrap();
        assert!((9_000..11_000).contains(&big.len()), "{}", big.len());
    }
}
