//! The Lambda binary end to end, against a stand-in of the Lambda Runtime API,
//! moto and the CircleCI runner-API stand-in.

use std::time::Duration;

use serde_json::Value;

use crate::scale::{Fx, RC};
use crate::support::circleci::Fault;
use crate::support::lambda_api::{LambdaApi, Outcome};
use crate::support::{REGION, TOKEN, command, eventually, run};

struct LambdaFx {
    fx: Fx,
    api: LambdaApi,
    arn: String,
}

impl LambdaFx {
    async fn new(max: i32) -> LambdaFx {
        let fx = Fx::new().await;
        fx.moto.create_group("fleet", max, 0).await;
        let arn = fx
            .moto
            .create_secret(
                "cci-scaler/fleet",
                &serde_json::json!({"resource_class": RC, "circle_token": TOKEN}).to_string(),
            )
            .await;
        LambdaFx {
            fx,
            api: LambdaApi::start().await,
            arn,
        }
    }

    fn spawn(&self, interval: &str, window: &str) -> tokio::process::Child {
        let mut cmd = command("cci-scaler-lambda", self.fx.home.path());
        self.fx.moto.env(&mut cmd);
        self.api.env(&mut cmd);
        cmd.env("CCI_SCALER_SECRET_ID", &self.arn)
            .env("CCI_SCALER_ASG", "fleet")
            .env("CCI_SCALER_POLL_INTERVAL", interval)
            .env("CCI_SCALER_POLL_WINDOW", window)
            .env("CIRCLECI_RUNNER_API_URL", &self.fx.cci.url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().expect("spawn lambda")
    }

    async fn outcome(&self, id: &str) -> Outcome {
        eventually(id, Duration::from_secs(60), || async {
            self.api.outcome(id)
        })
        .await
    }
}

/// Stop the Lambda process and return what it logged.
async fn finish(mut child: tokio::process::Child) -> (String, String) {
    let _ = child.start_kill();
    let out = child.wait_with_output().await.unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn poll_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("poll").is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_scheduled_event_raises_desired_and_reads_secret_once() {
    let lf = LambdaFx::new(10).await;
    lf.fx.cci.set_queue(3, 2);
    let child = lf.spawn("200ms", "600ms");
    lf.api
        .push_scheduled_event("inv-1", Duration::from_secs(30));
    let Outcome::Response(v) = lf.outcome("inv-1").await else {
        panic!("expected a response")
    };
    assert_eq!(v["polls"], 4, "polls at 0, 200, 400, 600 ms: {v}");
    assert_eq!(v["desired"], 5);
    assert_eq!(lf.fx.desired().await, 5);

    // The secret is read once per container: gone now, the next run still works.
    lf.fx.moto.delete_secret("cci-scaler/fleet").await;
    lf.fx.cci.set_queue(6, 2);
    lf.api
        .push_scheduled_event("inv-2", Duration::from_secs(30));
    assert!(matches!(lf.outcome("inv-2").await, Outcome::Response(_)));
    assert_eq!(lf.fx.desired().await, 8);

    let (stdout, stderr) = finish(child).await;
    let polls = poll_lines(&stdout);
    assert_eq!(
        polls.len(),
        8,
        "one JSON line per poll:\n{stdout}\n{stderr}"
    );
    for p in &polls {
        for key in ["queue", "group", "action", "reason"] {
            assert!(p.get(key).is_some(), "{key} missing in {p}");
        }
    }
    assert_eq!(polls[0]["action"], "scale-out");
    assert_eq!(polls[0]["group"]["desired_before"], 0);
    assert_eq!(polls[0]["group"]["desired_after"], 5);
    assert_eq!(polls[1]["action"], "none");
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_acts_on_a_queue_change_within_one_interval() {
    let lf = LambdaFx::new(10).await;
    let child = lf.spawn("500ms", "3s");
    lf.api
        .push_scheduled_event("inv-1", Duration::from_secs(30));
    // Let the first poll finish on an empty queue, then queue two jobs.
    eventually("first poll", Duration::from_secs(30), || async {
        (lf.fx.cci.count("/api/v3/runner/tasks") >= 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started_before_change = lf.fx.cci.count("/api/v3/runner/tasks");
    lf.fx.cci.set_queue(2, 0);
    assert!(matches!(lf.outcome("inv-1").await, Outcome::Response(_)));
    let (stdout, _) = finish(child).await;
    let polls = poll_lines(&stdout);
    let acted = polls
        .iter()
        .find(|p| p["action"] == "scale-out")
        .unwrap_or_else(|| panic!("no scale-out:\n{stdout}"));
    // The next poll to start after the change acts on it.
    let acted_poll = acted["poll"].as_u64().unwrap() as usize;
    assert!(
        acted_poll <= started_before_change + 1,
        "acted at poll {acted_poll}, change after poll {started_before_change}"
    );
    assert_eq!(lf.fx.desired().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_errors_fail_the_invocation_and_change_nothing() {
    let mut lf = LambdaFx::new(10).await;
    lf.fx.cci.set_queue(4, 0);
    lf.fx.cci.set_fault(Some(Fault::Status(500)));
    let child = lf.spawn("200ms", "600ms");
    lf.api
        .push_scheduled_event("inv-err", Duration::from_secs(30));
    let Outcome::Error(e) = lf.outcome("inv-err").await else {
        panic!("expected an error report")
    };
    let msg = e["errorMessage"].as_str().unwrap_or_default();
    assert!(msg.contains("HTTP 500"), "{e}");
    assert!(msg.contains("the group was not changed"), "{e}");
    assert_eq!(e["errorType"], "ScaleError");
    assert_eq!(lf.fx.desired().await, 0);

    // The emulator dies mid-window: the invocation fails, it does not hang.
    lf.fx.cci.set_fault(None);
    lf.api
        .push_scheduled_event("inv-dies", Duration::from_secs(30));
    eventually("a poll", Duration::from_secs(30), || async {
        (lf.fx.cci.count("/api/v3/runner/tasks") >= 2).then_some(())
    })
    .await;
    lf.fx.moto.kill();
    let Outcome::Error(e) = lf.outcome("inv-dies").await else {
        panic!("expected an error report")
    };
    assert!(
        e["errorMessage"]
            .as_str()
            .unwrap()
            .contains("DescribeAutoScalingGroups"),
        "{e}"
    );
    let (stdout, stderr) = finish(child).await;
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_missing_configuration_is_reported() {
    let home = tempfile::tempdir().unwrap();
    let api = LambdaApi::start().await;
    let mut cmd = command("cci-scaler-lambda", home.path());
    api.env(&mut cmd);
    cmd.env("AWS_REGION", REGION);
    let r = run(cmd).await;
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.all().contains("CCI_SCALER_SECRET_ID is not set"), "{r:?}");
}

/// Several pools from CCI_SCALER_POOLS: each poll scales every pool, one line
/// per pool; a pool whose group is missing is logged and fails the
/// invocation, while the other pool is still scaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_scales_several_pools_and_fails_only_for_the_broken_one() {
    let lf = LambdaFx::new(10).await;
    lf.fx.moto.create_group("arm", 4, 0).await;
    lf.fx.cci.set_class_queue("acme/linux-x64", 2, 0);
    lf.fx.cci.set_class_queue("acme/linux-arm64", 1, 0);
    lf.fx.cci.set_class_queue("acme/gpu", 0, 0);
    let pools = serde_json::json!([
        {"name": "x64", "asg": "fleet", "resource_class": "acme/linux-x64"},
        {"name": "arm64", "asg": "arm", "resource_class": "acme/linux-arm64"},
        {"name": "gpu", "asg": "no-such-group", "resource_class": "acme/gpu"},
    ]);
    let mut cmd = command("cci-scaler-lambda", lf.fx.home.path());
    lf.fx.moto.env(&mut cmd);
    lf.api.env(&mut cmd);
    cmd.env("CCI_SCALER_SECRET_ID", &lf.arn)
        .env("CCI_SCALER_POOLS", pools.to_string())
        .env("CCI_SCALER_POLL_INTERVAL", "200ms")
        .env("CCI_SCALER_POLL_WINDOW", "200ms")
        .env("CIRCLECI_RUNNER_API_URL", &lf.fx.cci.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("spawn lambda");
    lf.api
        .push_scheduled_event("inv-1", Duration::from_secs(30));
    let outcome = lf.outcome("inv-1").await;
    let Outcome::Error(e) = &outcome else {
        panic!("expected an error report, got {outcome:?}")
    };
    assert!(e.to_string().contains("1 pool(s) failed"), "{e}");
    assert!(e.to_string().contains("gpu"), "{e}");
    assert_eq!(lf.fx.desired().await, 2);
    assert_eq!(lf.fx.moto.desired("arm").await, 1);

    let (stdout, stderr) = finish(child).await;
    let polls = poll_lines(&stdout);
    let ok: Vec<&Value> = polls.iter().filter(|p| p.get("action").is_some()).collect();
    assert_eq!(
        ok.len(),
        4,
        "two good pools, two polls:\n{stdout}\n{stderr}"
    );
    let failed: Vec<&Value> = polls.iter().filter(|p| p["level"] == "error").collect();
    assert_eq!(failed.len(), 2, "the broken pool once a poll:\n{stdout}");
    // Every line is a valid EMF document: metrics per stack and pool.
    for line in &polls {
        let problems = crate::support::emf::problems(line);
        assert!(problems.is_empty(), "{problems:?}: {line}");
    }
    let x64 = ok.iter().find(|l| l["pool"] == "x64").unwrap();
    assert_eq!(
        x64["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "cci-scaler"
    );
    assert_eq!(x64["Desired"], 2.0);
    assert_eq!(x64["Unclaimed"], 2.0);
    assert!(x64["CircleCiLatency"].as_f64().is_some());
    assert_eq!(failed[0]["Errors"], 1.0);
    assert_eq!(failed[0]["error_kind"], "ScaleError");
    assert!(failed.iter().all(|f| f["pool"] == "gpu"));
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));
}

/// The daily report of real queue waits: a first step asks CircleCI for an
/// export of the last days, later ones wait for it (a 429 and two
/// `processing` answers), then each day of the pool's class is reported as
/// metrics dated that day, and the record says so; a further step has
/// nothing to do. Scaling goes on at every invocation meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_reports_each_days_real_queue_waits_from_the_usage_export() {
    let lf = LambdaFx::new(10).await;
    lf.fx.cci.set_queue(0, 0);
    let usage = crate::support::usage_api::UsageApi::start().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let into_today = now % 86_400;
    // Yesterday at 23:00 (waits 30 s and 90 s), two days ago (10 s), and a
    // class of no pool of this stack.
    usage.add_run(1, RC, into_today + 3600, 30, Some(300));
    usage.add_run(2, RC, into_today + 3500, 90, Some(300));
    usage.add_run(3, RC, into_today + 86_400 + 3600, 10, Some(300));
    usage.add_run(4, "other/class", into_today + 3600, 500, Some(300));
    let mut cmd = command("cci-scaler-lambda", lf.fx.home.path());
    lf.fx.moto.env(&mut cmd);
    lf.api.env(&mut cmd);
    let record = "/cci-scaler/fleet/usage";
    cmd.env("CCI_SCALER_SECRET_ID", &lf.arn)
        .env("CCI_SCALER_ASG", "fleet")
        .env("CCI_SCALER_POLL_INTERVAL", "1s")
        .env("CCI_SCALER_POLL_WINDOW", "4s")
        .env("CIRCLECI_RUNNER_API_URL", &lf.fx.cci.url)
        .env("CCI_SCALER_USAGE_ORG", "org-1")
        .env("CCI_SCALER_USAGE_RECORD", record)
        .env("CCI_SCALER_USAGE_MINUTE", "*")
        .env(
            "CCI_SCALER_MODEL",
            r#"{"max_instances": 10, "boot_s": [40, 60], "idle_timeout_s": 60}"#,
        )
        .env("CIRCLECI_API_URL", &usage.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("spawn lambda");
    let mut reported = false;
    for i in 1..=6 {
        let id = format!("inv-{i}");
        lf.api.push_scheduled_event(&id, Duration::from_secs(30));
        assert!(
            matches!(lf.outcome(&id).await, Outcome::Response(_)),
            "scaling goes on"
        );
        let text = lf.fx.moto.parameter(record).await.unwrap_or_default();
        let rec: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if rec["pending"].is_null() && rec["through"].as_i64() == Some(now - into_today) {
            reported = true;
            break;
        }
    }
    assert!(reported, "the export was picked up within 6 invocations");
    let id = "inv-last";
    lf.api.push_scheduled_event(id, Duration::from_secs(30));
    assert!(matches!(lf.outcome(id).await, Outcome::Response(_)));

    let (stdout, stderr) = finish(child).await;
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("usage").is_some())
        .collect();
    let kinds: Vec<&str> = lines.iter().filter_map(|l| l["usage"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"asked"), "{stdout}\n{stderr}");
    assert!(kinds.contains(&"waiting"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"up_to_date"), "{kinds:?}");
    // A step cut short by its time limit after logging reports its days
    // again at the next one (CloudWatch keeps the maximum): once each here.
    let mut days: Vec<&Value> = lines.iter().filter(|l| l["usage"] == "day").collect();
    days.sort_by_key(|d| d["day"].as_i64());
    days.dedup_by_key(|d| d["day"].as_i64());
    assert_eq!(days.len(), 2, "two days of the pool's class: {days:?}");
    let yesterday = days
        .iter()
        .find(|d| d["day"].as_i64() == Some(now - into_today - 86_400))
        .expect("yesterday");
    assert_eq!(yesterday["jobs"], 2);
    assert_eq!(yesterday["RealWaitP50"], 30.0);
    assert_eq!(yesterday["RealWaitMax"], 90.0);
    assert_eq!(yesterday["pool"], "fleet");
    // Beside them, the same runs replayed through the simulator: a new
    // instance for each job, a baked boot each.
    let sim = yesterday["SimWaitP95"].as_f64().expect("a simulated p95");
    assert!((40.0..=70.0).contains(&sim), "{yesterday}");
    assert_eq!(
        yesterday["_aws"]["Timestamp"].as_i64(),
        Some((now - into_today - 86_400 + 43_200) * 1000),
        "dated that day"
    );
    let names: Vec<&str> = yesterday["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["Name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "RealWaitP50",
            "RealWaitP95",
            "RealWaitMax",
            "RealJobs",
            "SimWaitP50",
            "SimWaitP95"
        ]
    );
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));
    assert!(
        usage
            .requests()
            .iter()
            .filter(|(w, _)| w.starts_with("GET file"))
            .all(|(_, token)| !token),
        "no token to a pre-signed link"
    );
}
