//! Benchmarks of the scaling path against the local stand-ins (moto, the
//! CircleCI runner-API stand-in, the Lambda Runtime API stand-in):
//!
//! - median wall time of a cold `cci-scaler scale --once` (a new process each
//!   run), with 0 ms and 50 ms latency added to each CircleCI request, beside the
//!   floor: one CircleCI request and the AWS describe call at once, from a process
//!   that is already running, with new connections each time;
//! - Lambda cold start: from spawning `cci-scaler-lambda` to its first request
//!   for an event.
//!
//! Run with `scripts/bench.sh` (or `cargo bench --bench scale` after
//! `eval "$(scripts/test-env.sh)"`).

#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::circleci::CircleCi;
use support::lambda_api::LambdaApi;
use support::moto::Moto;
use support::{TOKEN, command};

const RUNS: usize = 21;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn floor(moto: &Moto, cci: &CircleCi) -> Duration {
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        let http = reqwest::Client::new();
        let asg = aws_sdk_autoscaling::Client::new(&moto.config);
        let (r, d) = tokio::join!(
            http.get(format!(
                "{}/api/v3/runner/tasks?resource-class=a/b",
                cci.url
            ))
            .header("Circle-Token", TOKEN)
            .send(),
            asg.describe_auto_scaling_groups()
                .auto_scaling_group_names("fleet")
                .send()
        );
        r.unwrap().bytes().await.unwrap();
        d.unwrap();
        times.push(start.elapsed());
    }
    median(times)
}

/// Median wall time of `runs` cold `cci-scaler scale --once ARGS` processes.
async fn cold_scale(
    moto: &Moto,
    cci: &CircleCi,
    home: &std::path::Path,
    args: &[String],
    runs: usize,
) -> Duration {
    let mut times = Vec::new();
    for _ in 0..runs {
        let mut cmd = command("cci-scaler", home);
        moto.env(&mut cmd);
        cmd.env("CIRCLECI_TOKEN", TOKEN)
            .env("CIRCLECI_RUNNER_API_URL", &cci.url)
            .args(["scale", "--once"])
            .args(args);
        let start = Instant::now();
        let out = cmd.output().await.unwrap();
        times.push(start.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    median(times)
}

/// `--asg`/`--resource-class` pairs for `pools` pools.
fn pool_args(pools: usize) -> Vec<String> {
    (0..pools)
        .flat_map(|n| {
            [
                "--asg".to_string(),
                format!("pool-{n}"),
                "--resource-class".to_string(),
                format!("a/pool-{n}"),
            ]
        })
        .collect()
}

async fn lambda_cold_start(home: &std::path::Path) -> Duration {
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let api = LambdaApi::start().await;
        let mut cmd = command("cci-scaler-lambda", home);
        api.env(&mut cmd);
        cmd.env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("CCI_SCALER_SECRET_ID", "unused")
            .env("CCI_SCALER_ASG", "fleet");
        let start = Instant::now();
        let mut child = cmd.spawn().unwrap();
        let first = support::eventually("first /next", Duration::from_secs(10), || async {
            api.first_next()
        })
        .await;
        times.push(first - start);
        let _ = child.kill().await;
    }
    median(times)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let home = tempfile::tempdir().unwrap();
    let moto = Moto::start().await;
    moto.create_group("fleet", 10, 0).await;
    let cci = CircleCi::start().await;

    println!("cci-scaler scale --once, median of {RUNS} cold runs (no change to make):");
    for latency in [0u64, 50] {
        cci.set_delay(Duration::from_millis(latency));
        let f = floor(&moto, &cci).await;
        let one = ["--asg", "fleet", "--resource-class", "a/b"].map(String::from);
        let c = cold_scale(&moto, &cci, home.path(), &one, RUNS).await;
        println!(
            "  CircleCI latency {latency:>2} ms: cold run {}, floor {}, overhead {}",
            ms(c),
            ms(f),
            ms(c.saturating_sub(f))
        );
    }
    // CCI_SCALER_BENCH_POOLS=0 skips this part (binaries from before pools).
    let pools_too = std::env::var("CCI_SCALER_BENCH_POOLS").as_deref() != Ok("0");
    println!("one poll of N pools (scale --once, N --asg/--resource-class pairs), median of 7:");
    for n in 0..50 {
        moto.create_group(&format!("pool-{n}"), 10, 0).await;
    }
    for latency in [0u64, 50].into_iter().filter(|_| pools_too) {
        cci.set_delay(Duration::from_millis(latency));
        let mut line = format!("  CircleCI latency {latency:>2} ms:");
        for pools in [1, 10, 50] {
            {
                let mut s = cci.state.lock().unwrap();
                s.connections = 0;
                s.max_in_flight = 0;
            }
            let t = cold_scale(&moto, &cci, home.path(), &pool_args(pools), 7).await;
            let (conns, in_flight) = {
                let s = cci.state.lock().unwrap();
                (s.connections, s.max_in_flight)
            };
            // Connections per poll (each run is a new process), and the most
            // requests CircleCI had in flight at once.
            line.push_str(&format!(
                " {pools} pool(s) {} ({} conn, {in_flight} in flight),",
                ms(t),
                conns / 7
            ));
        }
        println!("{}", line.trim_end_matches(','));
    }
    cci.set_delay(Duration::ZERO);
    let l = lambda_cold_start(home.path()).await;
    println!(
        "cci-scaler-lambda cold start (spawn to first /next), median of {RUNS}: {}",
        ms(l)
    );
}
