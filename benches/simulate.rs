//! How long a day of 10,000 jobs takes to simulate under both policies
//! (`cargo bench --bench simulate`; scripts/bench.sh runs it).

use std::time::{Duration, Instant};

use cci_scaler::simulate::workload::Generator;
use cci_scaler::simulate::{Fleet, Policy, simulate};

fn main() {
    let jobs = Generator::working_day()
        .scaled_to(10_000.0)
        .generate(1)
        .unwrap();
    for max in [50, 200] {
        let fleet = Fleet {
            max,
            ..Fleet::default()
        };
        let mut times: Vec<Duration> = (0..7)
            .map(|_| {
                let start = Instant::now();
                let o = simulate(&jobs, &fleet, Policy::Ours, 1).unwrap();
                let t = simulate(&jobs, &fleet, Policy::Tutorial, 1).unwrap();
                assert_eq!(o.jobs, t.jobs);
                start.elapsed()
            })
            .collect();
        times.sort();
        println!(
            "simulate {} jobs, max {max} instances, both policies: median {:.1} ms of 7 runs",
            jobs.len(),
            times[3].as_secs_f64() * 1000.0
        );
    }
}
