//! `cci-scaler simulate` end to end: no AWS, no network, no emulator.

use serde_json::Value;

use crate::support::{command, run};

fn simulate(home: &std::path::Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = command("cci-scaler", home);
    cmd.arg("simulate").args(args);
    cmd
}

#[tokio::test]
async fn simulate_reports_both_policies_with_a_chart() {
    let home = tempfile::tempdir().unwrap();
    let chart = home.path().join("day.svg");
    let r = run(simulate(
        home.path(),
        &["--seed", "3", "--chart", chart.to_str().unwrap()],
    ))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    for row in [
        "wait p95",
        "instance-hours",
        "instances replaced (churn)",
        "jobs killed",
        "left running at the end",
        "cost at",
    ] {
        assert!(r.stdout.contains(row), "{row}: {r:?}");
    }
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "{}",
        &svg[..100]
    );
    for label in [
        "cci-scaler",
        "tutorial",
        "queued jobs",
        "desired capacity",
        "in-service instances",
    ] {
        assert!(svg.contains(label), "{label} missing from the chart");
    }
    // Same seed, same figures.
    let again = run(simulate(home.path(), &["--seed", "3"])).await;
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with("simulated ") && !l.starts_with("chart:"))
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
            .to_string()
    };
    assert_eq!(strip(&again.stdout), strip(&r.stdout));
}

#[tokio::test]
async fn simulate_json_csv_and_sweep() {
    let home = tempfile::tempdir().unwrap();
    let csv = home.path().join("jobs.csv");
    std::fs::write(
        &csv,
        "arrival_s,duration_s,resource_class\n5,100,acme/a\n7,50,acme/b\n",
    )
    .unwrap();
    let r = run(simulate(
        home.path(),
        &[
            "--jobs",
            csv.to_str().unwrap(),
            "--resource-class",
            "acme/a",
            "--boot-time",
            "60s",
            "--output",
            "json",
            "--sweep",
            "max_instances=1,2",
            "--sweep",
            "idle_timeout=1m,5m",
        ],
    ))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["reports"][0]["policy"], "ours");
    assert_eq!(v["reports"][0]["jobs"], 1);
    assert_eq!(v["reports"][0]["waits"]["max_s"], 65);
    assert_eq!(v["reports"][1]["policy"], "tutorial");
    assert_eq!(v["reports"][1]["waits"]["max_s"], 115);
    assert_eq!(v["reports"][1]["replaced"], 1);
    assert_eq!(v["sweeps"][0]["setting"], "max_instances");
    assert_eq!(v["sweeps"][0]["rows"].as_array().unwrap().len(), 2);
    assert_eq!(v["sweeps"][1]["rows"][1]["value"], "5m");

    let r = run(simulate(home.path(), &["--sweep", "max_instances=1,2"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("sweep max_instances:"), "{r:?}");
}

#[tokio::test]
async fn simulate_refuses_bad_input() {
    let home = tempfile::tempdir().unwrap();
    let bad = home.path().join("bad.csv");
    std::fs::write(&bad, "1,60\n2,sixty\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--jobs", bad.to_str().unwrap()],
            "line 2: duration_s \"sixty\" is not a number",
        ),
        (
            vec!["--jobs", "/nonexistent.csv"],
            "cannot read the jobs file /nonexistent.csv",
        ),
        (
            vec!["--sweep", "colour=red"],
            "can sweep max_instances, idle_timeout, interval, headroom, image, market, warm_pool or cancel_rate",
        ),
        (
            vec!["--warm-pool", "2", "--market", "spot"],
            "EC2 Auto Scaling refuses warm pools for groups with a mixed instances policy or spot instances",
        ),
        (
            vec!["--warm-pool", "11"],
            "warm pool size must be at most max instances",
        ),
        (
            vec!["--sweep", "headroom=1,lots"],
            "a count of spares, or auto",
        ),
        (vec!["--sweep", "max_instances"], "expected KEY=V1,V2"),
        (vec!["--boot-time", "90s..30s"], "reversed"),
        (
            vec!["--min-instances", "5", "--max-instances", "2"],
            "min above max",
        ),
        (vec!["--launch-failure-rate", "2"], "between 0 and 1"),
    ];
    for (args, want) in cases {
        let r = run(simulate(home.path(), &args)).await;
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(r.stderr.contains(want), "{args:?}: want {want:?}: {r:?}");
    }
}

#[tokio::test]
async fn simulate_every_pool_of_a_stack_file() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    std::fs::write(
        dir.join("cci-scaler.toml"),
        "stack = \"ci\"\n[defaults]\nmax_instances = 4\nidle_timeout = \"1m\"\n\
         [[pool]]\nresource_class = \"acme/small\"\n\
         [[pool]]\nresource_class = \"acme/arm\"\ninstance_types = [\"c7g.large\"]\nmax_instances = 1\nidle_timeout = \"5m\"\n",
    )
    .unwrap();
    // Ten small jobs a minute apart; three arm64 jobs at once (one runner:
    // they queue behind each other); one job of a class with no pool.
    let mut csv = String::from("arrival_s,duration_s,resource_class\n");
    for i in 0..10 {
        csv.push_str(&format!("{},120,acme/small\n", 60 * i));
    }
    for _ in 0..3 {
        csv.push_str("100,600,acme/arm\n");
    }
    csv.push_str("50,60,acme/gpu\n");
    std::fs::write(dir.join("jobs.csv"), &csv).unwrap();
    let args = [
        "--config",
        "cci-scaler.toml",
        "--jobs",
        "jobs.csv",
        "--boot-time",
        "60s",
    ];
    let mut cmd = command("cci-scaler", dir);
    cmd.current_dir(dir)
        .args(["--output", "json", "simulate"])
        .args(args);
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("1 job(s) of classes the stack has no pool for were left out: acme/gpu"),
        "{r:?}"
    );
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let pools = v["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 2, "{v}");
    assert_eq!(pools[0]["pool"], "small");
    assert_eq!(pools[0]["reports"][0]["jobs"], 10);
    assert_eq!(pools[1]["pool"], "arm");
    assert_eq!(pools[1]["settings"]["max"], 1);
    assert_eq!(pools[1]["settings"]["idle_timeout_s"], 300);
    let arm = &pools[1]["reports"][0];
    assert_eq!(arm["jobs"], 3);
    // One runner for three 10-minute jobs: the last waits two of them.
    assert!(arm["waits"]["max_s"].as_u64().unwrap() >= 1200, "{arm}");
    let total = &v["total"]["cci_scaler"];
    assert_eq!(total["jobs"], 13);
    assert_eq!(total["wait_max_s"], arm["waits"]["max_s"]);
    let cost = pools[0]["reports"][0]["cost"].as_f64().unwrap() + arm["cost"].as_f64().unwrap();
    assert!((total["cost"].as_f64().unwrap() - cost).abs() < 1e-9, "{v}");

    // Text: per pool, then all pools.
    let mut cmd = command("cci-scaler", dir);
    cmd.current_dir(dir).arg("simulate").args(args);
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("pool small (acme/small, max 4, idle 1m00s):"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("pool arm (acme/arm, max 1, idle 5m00s):"),
        "{r:?}"
    );
    assert!(r.stdout.contains("all pools:"), "{r:?}");

    // A row without a class cannot be given to a pool.
    std::fs::write(dir.join("jobs.csv"), format!("{csv}70,60\n")).unwrap();
    let mut cmd = command("cci-scaler", dir);
    cmd.current_dir(dir).arg("simulate").args(args);
    let r = run(cmd).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("1 row(s) have no resource_class"),
        "{r:?}"
    );
}

/// CircleCI's usage export (gzip, its own columns) replays as it is: every
/// pool of a stack file takes its class's job runs; one pool alone needs
/// --resource-class when the export has several; cloud classes and runs that
/// never started are left out and counted.
#[tokio::test]
async fn simulate_replays_a_usage_export() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    std::fs::write(
        dir.join("cci-scaler.toml"),
        "stack = \"ci\"\n[[pool]]\nresource_class = \"acme/small\"\n[[pool]]\nresource_class = \"acme/arm\"\n",
    )
    .unwrap();
    let mut csv = String::from(
        "JOB_ID,PROJECT_NAME,WORKFLOW_NAME,JOB_NAME,RESOURCE_CLASS,EXECUTOR,JOB_RUN_QUEUED_AT,JOB_RUN_STARTED_AT,JOB_RUN_STOPPED_AT\n",
    );
    for i in 0..6 {
        csv.push_str(&format!(
            "{i},api,build,\"test, {i}\",acme/small,machine,2024-08-01 10:0{i}:00.000,2024-08-01 10:0{i}:40.000,2024-08-01 10:1{i}:00.000\n"
        ));
    }
    csv.push_str("7,api,build,arm,acme/arm,machine,2024-08-01 11:00:00,2024-08-01 11:01:00,2024-08-01 11:05:00\n");
    csv.push_str("8,api,build,lint,medium,docker,2024-08-01 11:00:00,2024-08-01 11:00:05,2024-08-01 11:01:00\n");
    csv.push_str("9,api,build,gone,acme/arm,machine,2024-08-01 12:00:00,\\N,\\N\n");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, csv.as_bytes()).unwrap();
    std::fs::write(dir.join("usage.csv.gz"), gz.finish().unwrap()).unwrap();

    let mut cmd = command("cci-scaler", dir);
    cmd.current_dir(dir).args([
        "--output",
        "json",
        "simulate",
        "--config",
        "cci-scaler.toml",
        "--jobs",
        "usage.csv.gz",
    ]);
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("7 job run(s) of self-hosted classes replayed; 1 of cloud resource classes and 1 that never started or stopped left out"),
        "{r:?}"
    );
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["pools"][0]["reports"][0]["jobs"], 6, "{v}");
    assert_eq!(v["pools"][1]["reports"][0]["jobs"], 1, "{v}");

    // One pool: which class?
    let r = run(simulate(
        dir,
        &["--jobs", dir.join("usage.csv.gz").to_str().unwrap()],
    ))
    .await;
    assert_eq!(r.code, 2, "bad usage: {r:?}");
    assert!(
        r.stderr
            .contains("2 resource classes (acme/arm, acme/small): pass --resource-class"),
        "{r:?}"
    );
    let r = run(simulate(
        dir,
        &[
            "--output",
            "json",
            "--jobs",
            dir.join("usage.csv.gz").to_str().unwrap(),
            "--resource-class",
            "acme/small",
        ],
    ))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["reports"][0]["jobs"], 6, "{v}");
}

/// The goal of runner-ready images plus headroom, on the embedded day at max
/// 20: most jobs start within seconds, for no more than the tutorial costs
/// (1.2 times at most), and spares do not churn.
#[tokio::test]
async fn headroom_and_a_baked_image_meet_the_goal() {
    let home = tempfile::tempdir().unwrap();
    let r = run(simulate(
        home.path(),
        &[
            "--max-instances",
            "20",
            "--headroom",
            "2",
            "--image",
            "baked",
            "--output",
            "json",
        ],
    ))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let (ours, tut) = (&v["reports"][0], &v["reports"][1]);
    assert!(ours["waits"]["p50_s"].as_u64().unwrap() <= 10, "{ours}");
    assert!(ours["waits"]["p95_s"].as_u64().unwrap() <= 90, "{ours}");
    assert!(
        ours["cost"].as_f64().unwrap() <= 1.2 * tut["cost"].as_f64().unwrap(),
        "{ours} vs {tut}"
    );
    assert!(ours["boots_per_job"].as_f64().unwrap() <= 1.05, "{ours}");
    assert!(ours["jobs_in_headroom"].as_u64().unwrap() > 0);
    assert!(ours["spare_instance_hours"].as_f64().unwrap() > 0.0);
    assert_eq!(ours["jobs_killed"], 0);
}

/// The figures are pinned: a reshaping of the model or the report changes
/// no number (text and JSON, several fleets on the embedded day).
#[tokio::test]
async fn the_embedded_day_gives_the_same_figures() {
    let home = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("default_20", &["--max-instances", "20"]),
        (
            "headroom_baked",
            &[
                "--max-instances",
                "20",
                "--headroom",
                "2",
                "--image",
                "baked",
            ],
        ),
        (
            "spot_faults",
            &[
                "--market",
                "spot",
                "--spot-outage",
                "10h..11h",
                "--retry-interrupted-jobs",
                "--cancel-rate",
                "0.1",
                "--launch-failure-rate",
                "0.05",
            ],
        ),
        ("warm_pool", &["--image", "warm-pool", "--seed", "4"]),
        ("sweep", &["--sweep", "max_instances=5,10"]),
        ("json", &["--output", "json", "--headroom", "1"]),
    ];
    for (name, args) in cases {
        let mut cmd = command("cci-scaler", home.path());
        if args.first() == Some(&"--output") {
            cmd.args(&args[..2]).arg("simulate").args(&args[2..]);
        } else {
            cmd.arg("simulate").args(*args);
        }
        let r = run(cmd).await;
        assert_eq!(r.code, 0, "{name}: {r:?}");
        // Without the line that says how long the run took.
        let mut out: String = r
            .stdout
            .lines()
            .filter(|l| !l.starts_with("simulated "))
            .map(|l| format!("{l}\n"))
            .collect();
        if let Ok(mut v) = serde_json::from_str::<Value>(&out) {
            if let Some(o) = v.as_object_mut() {
                o.remove("elapsed_ms");
            }
            out = serde_json::to_string_pretty(&v).unwrap();
        }
        insta::assert_snapshot!(format!("simulate_{name}"), out);
    }
}

/// The chart as a reader sees it: rendered to PNG (resvg, from
/// `scripts/test-env.sh`) into the tests' output folder, to be looked at;
/// and checked for what it must show: the legend apart from the data, the
/// headroom and fallback spans, whole-number ticks, the waits side by side.
#[tokio::test]
async fn the_chart_renders_with_its_spans_and_the_waits_side_by_side() {
    let home = tempfile::tempdir().unwrap();
    let chart = home.path().join("day.svg");
    let r = run(simulate(
        home.path(),
        &[
            "--max-instances",
            "20",
            "--headroom",
            "2",
            "--market",
            "spot",
            "--spot-outage",
            "10h..12h",
            "--chart",
            chart.to_str().unwrap(),
        ],
    ))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let svg = std::fs::read_to_string(&chart).unwrap();
    for label in [
        "headroom period (spares)",
        "on-demand fallback",
        "how long jobs waited:",
        "cci-scaler (p50 ",
        "tutorial (p50 ",
        "0s",
        "5-10m",
        "08:00",
    ] {
        assert!(svg.contains(label), "{label} missing from the chart");
    }
    // Tick labels are whole numbers: no "2.0", "7.5".
    let texts: Vec<&str> = svg
        .split("<text")
        .skip(1)
        .filter_map(|t| t.split_once('>').map(|(_, rest)| rest))
        .filter_map(|t| t.split_once("</text>").map(|(inner, _)| inner.trim()))
        .collect();
    let numeric: Vec<&&str> = texts.iter().filter(|t| t.parse::<f64>().is_ok()).collect();
    assert!(numeric.len() > 6, "{texts:?}");
    assert!(
        numeric.iter().all(|t| !t.contains('.')),
        "ticks: {numeric:?}"
    );
    // Shaded spans: the headroom hours (yellow) and the fallback (orange).
    assert!(
        svg.contains("#FFD640") || svg.contains("#ffd640"),
        "headroom shading"
    );
    assert!(
        svg.contains("#FF7F0E") || svg.contains("#ff7f0e"),
        "fallback shading"
    );

    let python = std::env::var("CCI_SCALER_PYTHON").expect(
        "CCI_SCALER_PYTHON is not set: run the tests with scripts/test.sh, which installs resvg",
    );
    let png = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("simulate-chart.png");
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys, resvg_py\n\
             png = resvg_py.svg_to_bytes(svg_path=sys.argv[1], background='#ffffff', \
             font_dirs=['/usr/share/fonts/truetype/dejavu'], font_family='DejaVu Sans', \
             sans_serif_family='DejaVu Sans')\n\
             open(sys.argv[2], 'wb').write(bytes(png))",
            chart.to_str().unwrap(),
            png.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1000, 864), "two days and the waits");
    eprintln!("chart rendered: {}", png.display());
}
