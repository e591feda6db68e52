//! `cci-scaler history` against a stand-in of CircleCI's Usage API: a
//! 40-day window in two exports, each taking several polls, a 429 honoured,
//! gzip parts fetched without the token, cloud and unfinished runs left
//! out, the file replayed by `simulate`; a failed export, a bad token and a
//! window out of range are clear errors, and leave no file.

use serde_json::Value;

use crate::support::usage_api::UsageApi;
use crate::support::{TOKEN, command, run};

fn history(home: &std::path::Path, api: &UsageApi, args: &[&str]) -> tokio::process::Command {
    let mut cmd = command("cci-scaler", home);
    cmd.env("CIRCLECI_TOKEN", TOKEN)
        .env("CIRCLECI_API_URL", &api.url)
        .current_dir(home)
        .args(["--output", "json", "history", "--poll-interval", "100ms"])
        .args(args);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_exports_a_month_and_more_and_simulate_replays_it() {
    let api = UsageApi::start().await;
    let day = 86_400;
    // Three runs this week, two 35 days ago (the second export), one cloud
    // run, one that never started, one outside the window.
    api.add_run(1, "acme/linux", 2 * day, 30, Some(600));
    api.add_run(2, "acme/linux", 2 * day - 60, 5, Some(300));
    api.add_run(3, "acme/arm", day, 90, Some(120));
    api.add_run(4, "acme/linux", 35 * day, 40, Some(900));
    api.add_run(5, "acme/arm", 35 * day + 100, 10, Some(60));
    api.add_run(6, "large", day, 1, Some(60));
    api.add_run(7, "acme/linux", day, 0, None);
    api.add_run(8, "acme/linux", 50 * day, 1, Some(60));
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    let r = run(history(
        dir,
        &api,
        &["--org", "org-1", "--since", "40d", "--out", "jobs.csv"],
    ))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["exports"], 2, "{v}");
    assert_eq!(v["runs"], 5, "{v}");
    assert_eq!(v["classes"]["acme/linux"], 3, "{v}");
    assert_eq!(v["cloud_rows"], 1, "{v}");
    assert_eq!(v["unfinished"], 1, "{v}");
    let reqs = api.requests();
    assert_eq!(
        reqs.iter()
            .filter(|(w, _)| w.starts_with("POST export"))
            .count(),
        2
    );
    assert!(
        reqs.iter()
            .filter(|(w, _)| w.starts_with("GET export"))
            .count()
            >= 7,
        "a 429 and several polls per export: {reqs:?}"
    );
    assert!(
        reqs.iter()
            .filter(|(w, _)| w.starts_with("GET file"))
            .all(|(_, token)| !token),
        "no token to a pre-signed link: {reqs:?}"
    );
    let text = std::fs::read_to_string(dir.join("jobs.csv")).unwrap();
    assert!(text.starts_with("JOB_RUN_QUEUED_AT,"), "{text}");
    assert!(text.contains("\"job, 1\""), "{text}");
    assert!(!text.contains(TOKEN));

    // simulate replays it, one class.
    let mut cmd = command("cci-scaler", dir);
    cmd.current_dir(dir).args([
        "--output",
        "json",
        "simulate",
        "--jobs",
        "jobs.csv",
        "--resource-class",
        "acme/linux",
    ]);
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["reports"][0]["jobs"], 3, "{v}");

    // A failed export: said, and no file left behind.
    let r = run(history(
        dir,
        &api,
        &["--org", "failing", "--since", "2d", "--out", "bad.csv"],
    ))
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("usage export of")
            && r.stderr.contains("the export could not be generated"),
        "{r:?}"
    );
    assert!(!dir.join("bad.csv").exists());

    // A bad token; a window CircleCI does not keep.
    let mut cmd = history(dir, &api, &["--org", "org-1", "--out", "x.csv"]);
    cmd.env("CIRCLECI_TOKEN", "not-the-token");
    let r = run(cmd).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("rejected the personal API token"),
        "{r:?}"
    );
    let r = run(history(
        dir,
        &api,
        &["--org", "org-1", "--since", "500d", "--out", "x.csv"],
    ))
    .await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("13 months"), "{r:?}");
    assert!(!dir.join("x.csv").exists());
}

/// A stand-in organisation's last days (two classes, office hours, each
/// export in several parts) through `history`, then `simulate --recommend`
/// over a two-pool stack file: each pool's recommendation meets the target,
/// costs no more than any runner-up meeting it, and, written into a stack
/// file and replayed by plain `simulate`, gives the same p95 and cost; and
/// `usage` reports the same runs' hours, cost and real waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommend_meets_its_target_on_the_organisations_history() {
    let api = UsageApi::start().await;
    api.set_parts(4);
    let day = 86_400;
    let mut id = 0;
    // A small linear congruential sequence: the same history every run.
    let mut x: u64 = 7;
    let mut next = |m: u64| {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (x >> 33) % m
    };
    for d in 1..=2 {
        for (class, jobs) in [("acme/linux", 70), ("acme/arm", 30)] {
            for _ in 0..jobs {
                id += 1;
                // Office hours: 9 h of the day, 4 to 13 hours before its end.
                let ago = d * day - 4 * 3600 - next(9 * 3600) as i64;
                let run = 120 + next(480) as i64;
                api.add_run(id, class, ago, 5 + next(40) as i64, Some(run));
            }
        }
    }
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    let r = run(history(
        dir,
        &api,
        &["--org", "org-1", "--since", "3d", "--out", "jobs.csv"],
    ))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["runs"], id, "{v}");
    let files = api
        .requests()
        .iter()
        .filter(|(w, _)| w.starts_with("GET file"))
        .count();
    assert_eq!(files, 4, "one export in four parts");

    std::fs::write(
        dir.join("stack.toml"),
        "stack = \"ci\"\n[defaults]\nmax_instances = 6\n[[pool]]\nname = \"linux\"\nresource_class = \"acme/linux\"\n[[pool]]\nname = \"arm\"\nresource_class = \"acme/arm\"\n",
    )
    .unwrap();
    let target = 90;
    let mut cmd = command("cci-scaler", dir);
    cmd.current_dir(dir).args([
        "--output",
        "json",
        "simulate",
        "--config",
        "stack.toml",
        "--jobs",
        "jobs.csv",
        "--recommend",
        "--target-p95",
        "90s",
    ]);
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let pools = v["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 2, "{v}");
    for p in pools {
        let best = &p["recommended"];
        assert_eq!(best["meets"], true, "{p}");
        assert_eq!(best["jobs_lost"], 0, "{p}");
        assert!(best["waits"]["p95_s"].as_u64().unwrap() <= target, "{p}");
        assert!(
            p["current"]["waits"]["p95_s"].as_u64().unwrap() > target,
            "a stock image's boot misses 90 s: {p}"
        );
        for other in p["shortlist"].as_array().unwrap() {
            if other["meets"] == true {
                assert!(other["cost"].as_f64() >= best["cost"].as_f64(), "{p}");
            }
        }

        // The recommendation, as stack-file keys, replayed plainly.
        let s = &best["settings"];
        let headroom = match &s["headroom"] {
            Value::String(a) => format!("headroom = \"{a}\"\n"),
            Value::Number(n) if n.as_u64() == Some(0) => String::new(),
            Value::Number(n) => format!(
                "headroom = [{{ schedule = \"0 8 * * MON-FRI\", duration = \"11h\", count = {n} }}]\n"
            ),
            other => panic!("{other}"),
        };
        std::fs::write(
            dir.join("verify.toml"),
            format!(
                "stack = \"verify\"\nresource_class = \"{}\"\nmax_instances = {}\n{headroom}market = \"{}\"\nwarm_pool = {}\n",
                p["resource_class"].as_str().unwrap(),
                s["max_instances"],
                s["market"].as_str().unwrap(),
                s["warm_pool"],
            ),
        )
        .unwrap();
        let image = if s["image"] == "baked" {
            "baked"
        } else {
            "cold"
        };
        let mut cmd = command("cci-scaler", dir);
        cmd.current_dir(dir).args([
            "--output",
            "json",
            "simulate",
            "--config",
            "verify.toml",
            "--jobs",
            "jobs.csv",
            "--image",
            image,
        ]);
        let r = run(cmd).await;
        assert_eq!(r.code, 0, "{r:?}");
        let again: Value = serde_json::from_str(r.stdout.trim()).unwrap();
        let ours = &again["pools"][0]["reports"][0];
        assert_eq!(ours["waits"]["p95_s"], best["waits"]["p95_s"], "{again}");
        assert_eq!(ours["cost"], best["cost"], "{again}");
    }

    // Who used it and how long they really waited: priced by the stack
    // file's instance type (t3.medium by default).
    let mut cmd = command("cci-scaler", dir);
    cmd.current_dir(dir).args([
        "--output",
        "json",
        "usage",
        "--jobs",
        "jobs.csv",
        "--config",
        "stack.toml",
    ]);
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let rep = &v["report"];
    assert_eq!(rep["total"]["jobs"], id, "{v}");
    let linux = &rep["by_class"]["acme/linux"];
    assert_eq!(linux["jobs"], 140, "{v}");
    let hours = linux["job_hours"].as_f64().unwrap();
    assert!(
        (linux["cost"].as_f64().unwrap() - hours * 0.0416).abs() < 1e-6,
        "{v}"
    );
    let waits = &linux["waits"];
    assert!(
        waits["max_s"].as_u64().unwrap() <= 44,
        "the stand-in's waits: 5-44 s: {v}"
    );
    assert!(waits["p50_s"].as_u64().unwrap() >= 5, "{v}");
    assert_eq!(rep["by_project"]["api"]["acme/arm"]["jobs"], 60, "{v}");
    // Beside them, what the simulator says the same runs would have waited
    // with the stack file's settings.
    for class in ["acme/linux", "acme/arm"] {
        assert!(
            v["simulated_waits"][class]["p95_s"].is_u64(),
            "{class}: {v}"
        );
    }
    assert!(rep["by_day"].as_array().unwrap().len() >= 4, "{v}");
    let mut cmd = command("cci-scaler", dir);
    cmd.current_dir(dir)
        .args(["usage", "--jobs", "jobs.csv", "--price", "acme/arm=0.05"]);
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("█") && r.stdout.contains(" 0.0500 "),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("no price") && r.stdout.contains("--price acme/linux=USD"),
        "{r:?}"
    );
    let mut cmd = command("cci-scaler", dir);
    cmd.current_dir(dir).args(["usage", "--jobs", "night.csv"]);
    std::fs::write(
        dir.join("night.csv"),
        "arrival_s,duration_s\n600,300\n900,300\n",
    )
    .unwrap();
    let r = run(cmd).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("cci-scaler history"), "{r:?}");

    // A target nothing meets (the first job of a new pool at night waits
    // for a boot whatever the settings): exit 1, the closest shown.
    std::fs::write(
        dir.join("night.csv"),
        "arrival_s,duration_s\n600,300\n900,300\n",
    )
    .unwrap();
    let mut cmd = command("cci-scaler", dir);
    cmd.current_dir(dir).args([
        "simulate",
        "--jobs",
        "night.csv",
        "--recommend",
        "--target-p95",
        "5s",
    ]);
    let r = run(cmd).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("closest"), "{r:?}");
    assert!(r.stderr.contains("no setting tried meets p95 5s"), "{r:?}");
}
