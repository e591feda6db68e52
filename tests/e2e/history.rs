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
