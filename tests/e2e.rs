//! End-to-end tests of the real binaries against the moto AWS emulator, a
//! CircleCI runner-API stand-in and a Lambda Runtime API stand-in, all on
//! 127.0.0.1 and all stopped when each test ends.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::circleci::{CircleCi, Fault};
use support::lambda_api::{LambdaApi, Outcome};
use support::moto::Moto;
use support::{REGION, Run, TOKEN, command, eventually, run};

const RC: &str = "acme/linux-x64";

struct Fx {
    moto: Moto,
    cci: CircleCi,
    home: tempfile::TempDir,
}

impl Fx {
    async fn new() -> Fx {
        Fx {
            moto: Moto::start().await,
            cci: CircleCi::start().await,
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// `cci-scaler scale --once ...` wired to the emulator and the stand-in,
    /// with the token in CIRCLECI_TOKEN.
    fn scale(&self, extra: &[&str]) -> tokio::process::Command {
        let mut cmd = self.scale_bare(&["--asg", "fleet", "--resource-class", RC]);
        cmd.args(extra);
        cmd
    }

    /// `cci-scaler scale --once` with only the given group/class flags.
    fn scale_bare(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = command("cci-scaler", self.home.path());
        self.moto.env(&mut cmd);
        cmd.env("CIRCLECI_TOKEN", TOKEN)
            .env("CIRCLECI_RUNNER_API_URL", &self.cci.url)
            .args(["scale", "--once"])
            .args(args);
        cmd
    }

    async fn desired(&self) -> i32 {
        self.moto.desired("fleet").await
    }
}

fn assert_no_token(r: &Run) {
    assert!(!r.all().contains(TOKEN), "token leaked:\n{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_sets_desired_and_never_lowers_it() {
    let fx = Fx::new().await;
    fx.moto.create_group("fleet", 10, 0).await;

    // 3 unclaimed + 2 running with max 10: desired 5.
    fx.cci.set_queue(3, 2);
    let r = run(fx.scale(&[])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(fx.desired().await, 5);
    assert!(r.stdout.contains("queue 3 unclaimed + 2 running"), "{r:?}");
    assert!(r.stdout.contains("desired 0 -> 5"), "{r:?}");
    assert!(r.stdout.contains("scale-out"), "{r:?}");
    assert_eq!(r.stdout.lines().count(), 1, "one line per decision: {r:?}");
    assert_no_token(&r);
    // The stand-in only answers the right token; every request carried it.
    assert!(
        fx.cci
            .requests()
            .iter()
            .all(|q| q.token_ok && q.resource_class.as_deref() == Some(RC))
    );

    // The queue shrinks: desired stays (instances leave by themselves).
    fx.cci.set_queue(0, 1);
    let r = run(fx.scale(&[])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(fx.desired().await, 5);
    assert!(r.stdout.contains("no change"), "{r:?}");

    // A queue above max sets max.
    fx.cci.set_queue(40, 2);
    let r = run(fx.scale(&["--output", "json"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(fx.desired().await, 10);
    let v: Value = serde_json::from_str(r.stdout.trim()).expect("one JSON object");
    assert_eq!(v["queue"]["unclaimed"], 40);
    assert_eq!(v["queue"]["running"], 2);
    assert_eq!(v["group"]["desired_before"], 5);
    assert_eq!(v["group"]["desired_after"], 10);
    assert_eq!(v["group"]["max"], 10);
    assert_eq!(v["action"], "scale-out");
    assert_eq!(v["dry_run"], false);
    assert!(v["reason"].as_str().unwrap().contains("above max 10"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing() {
    let fx = Fx::new().await;
    fx.moto.create_group("fleet", 10, 0).await;
    fx.cci.set_queue(3, 2);
    let r = run(fx.scale(&["--dry-run"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("would scale-out"), "{r:?}");
    assert!(r.stdout.contains("desired 0 -> 5"), "{r:?}");
    assert_eq!(fx.desired().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_old_instance_is_reaped_registered_one_kept() {
    let fx = Fx::new().await;
    fx.moto.create_group("fleet", 10, 2).await;
    let (_, instances) = fx.moto.group("fleet").await;
    assert_eq!(instances.len(), 2);
    let registered = instances[0].instance_id().unwrap().to_string();
    let stuck = instances[1].instance_id().unwrap().to_string();
    fx.cci.set_runners(&[&registered]);
    fx.cci.set_queue(0, 1);

    // Young instances are still booting: kept.
    let r = run(fx.scale(&[])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(fx.moto.group("fleet").await.1.len(), 2);

    // With a 0 s boot timeout the unregistered one is overdue.
    let r = run(fx.scale(&["--boot-timeout", "0s", "--output", "json"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["action"], "reap");
    assert_eq!(v["reaped"][0]["instance_id"], stuck.as_str());
    assert_eq!(v["reaped"][0]["decrement"], true);
    let (desired, left) = fx.moto.group("fleet").await;
    assert_eq!(desired, 1, "terminated with decrement");
    let ids: Vec<&str> = left.iter().filter_map(|i| i.instance_id()).collect();
    assert_eq!(ids, vec![registered.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_requests_go_out_concurrently() {
    let fx = Fx::new().await;
    fx.moto.create_group("fleet", 10, 0).await;
    fx.cci.set_queue(1, 0);
    fx.cci.set_delay(Duration::from_millis(400));
    let r = run(fx.scale(&[])).await;
    assert_eq!(r.code, 0, "{r:?}");
    let reqs = fx.cci.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    let first = reqs.iter().map(|q| q.at).min().unwrap();
    let last = reqs.iter().map(|q| q.at).max().unwrap();
    // Sequential requests would arrive at least 400 ms apart.
    assert!(last - first < Duration::from_millis(300), "{reqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circleci_faults_leave_the_group_alone() {
    let fx = Fx::new().await;
    fx.moto.create_group("fleet", 10, 2).await;
    fx.cci.set_queue(7, 0);
    let cases: Vec<(Fault, &[&str], &str)> = vec![
        (
            Fault::Status(401),
            &[],
            "rejected the personal API token (HTTP 401)",
        ),
        (
            Fault::Status(403),
            &[],
            "rejected the personal API token (HTTP 403)",
        ),
        (Fault::Status(404), &[], "found no"),
        (Fault::Status(429), &[], "rate-limiting"),
        (Fault::Status(500), &[], "HTTP 500 after 3 attempt(s)"),
        (Fault::Status(503), &[], "HTTP 503 after 3 attempt(s)"),
        (Fault::Status(418), &[], "HTTP 418"),
        (Fault::Malformed, &[], "malformed JSON"),
        (Fault::Hang, &["--circleci-timeout", "1s"], "did not answer"),
    ];
    for (fault, extra, want) in cases {
        fx.cci.set_fault(Some(fault.clone()));
        let r = run(fx.scale(extra)).await;
        assert_eq!(r.code, 1, "{fault:?}: {r:?}");
        assert!(r.stderr.contains(want), "{fault:?}: want {want:?}: {r:?}");
        assert!(
            r.stderr.contains("the group was not changed"),
            "{fault:?}: {r:?}"
        );
        assert_eq!(r.stderr.lines().count(), 1, "one-line error: {r:?}");
        assert!(r.stdout.is_empty(), "{r:?}");
        assert_no_token(&r);
        assert_eq!(fx.desired().await, 2, "{fault:?} changed the group");
    }

    // Transient 503s are retried: two failures, then success.
    fx.cci.set_fault(Some(Fault::Flaky(503, 2)));
    let r = run(fx.scale(&[])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(fx.desired().await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_clear_errors() {
    let mut fx = Fx::new().await;
    fx.moto.create_group("fleet", 10, 0).await;
    fx.cci.set_queue(2, 0);

    // A missing group.
    let r = run(fx.scale_bare(&["--asg", "nope", "--resource-class", RC])).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("Auto Scaling group 'nope' not found in us-east-1"),
        "{r:?}"
    );

    // No token anywhere.
    let mut cmd = fx.scale(&[]);
    cmd.env_remove("CIRCLECI_TOKEN");
    let r = run(cmd).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no CircleCI personal API token"), "{r:?}");

    // The CircleCI CLI's variable works too.
    let mut cmd = fx.scale(&["--dry-run"]);
    cmd.env_remove("CIRCLECI_TOKEN")
        .env("CIRCLECI_CLI_TOKEN", TOKEN);
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{r:?}");

    // Bad flags: usage errors exit 2.
    for args in [
        &["--interval", "soon"][..],
        &["--output", "yaml"][..],
        &["--resource-class", "no-slash"][..],
    ] {
        let r = run(fx.scale(args)).await;
        assert_ne!(r.code, 0, "{args:?}: {r:?}");
        assert!(!r.stderr.is_empty(), "{args:?}: {r:?}");
    }
    let r = run(fx.scale(&["--interval", "soon"])).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--interval"), "{r:?}");

    // No region.
    let mut cmd = fx.scale(&[]);
    cmd.env_remove("AWS_REGION");
    let r = run(cmd).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no AWS region configured"), "{r:?}");

    // No credentials.
    let mut cmd = fx.scale(&[]);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let r = run(cmd).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("credentials"), "{r:?}");
    assert_eq!(fx.desired().await, 0);

    // An unknown profile.
    let r = run(fx.scale(&["--profile", "nosuch"])).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("nosuch"), "{r:?}");

    // The emulator is gone.
    fx.moto.kill();
    let r = run(fx.scale(&[])).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("DescribeAutoScalingGroups"), "{r:?}");
    assert!(r.stderr.contains("the group was not changed"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_from_the_secret_is_never_printed() {
    let fx = Fx::new().await;
    fx.moto.create_group("fleet", 10, 0).await;
    let arn = fx
        .moto
        .create_secret(
            "cci-scaler/fleet",
            &serde_json::json!({"resource_class": RC, "circle_token": TOKEN}).to_string(),
        )
        .await;
    fx.cci.set_queue(1, 1);

    // Resource class from the secret; token only from the secret; trace logs on.
    let mut cmd = command("cci-scaler", fx.home.path());
    fx.moto.env(&mut cmd);
    cmd.env("CIRCLECI_RUNNER_API_URL", &fx.cci.url).args([
        "scale",
        "--once",
        "--asg",
        "fleet",
        "--secret-id",
        &arn,
        "-vv",
    ]);
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(fx.desired().await, 2);
    assert!(r.stdout.contains(RC), "{r:?}");
    assert_no_token(&r);

    // A conflicting resource class is refused.
    let mut cmd = fx.scale_bare(&[
        "--asg",
        "fleet",
        "--secret-id",
        "cci-scaler/fleet",
        "--resource-class",
        "acme/other",
    ]);
    cmd.env_remove("CIRCLECI_TOKEN");
    let r = run(cmd).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("differs from the secret's resource_class"),
        "{r:?}"
    );

    // A missing secret and a malformed one.
    let r = run(fx.scale(&["--secret-id", "nope"])).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("secret 'nope' not found"), "{r:?}");
    fx.moto
        .create_secret("bad", &format!("{{\"circle_token\": {}}}", 12345678))
        .await;
    let r = run(fx.scale(&["--secret-id", "bad"])).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("secret 'bad' is malformed"), "{r:?}");
    assert!(!r.stderr.contains("12345678"), "{r:?}");
    assert_eq!(fx.desired().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_mode_stops_cleanly_on_interrupt() {
    let fx = Fx::new().await;
    fx.moto.create_group("fleet", 10, 0).await;
    fx.cci.set_queue(1, 0);
    let mut cmd = command("cci-scaler", fx.home.path());
    fx.moto.env(&mut cmd);
    cmd.env("CIRCLECI_TOKEN", TOKEN)
        .env("CIRCLECI_RUNNER_API_URL", &fx.cci.url)
        .args([
            "scale",
            "--asg",
            "fleet",
            "--resource-class",
            RC,
            "--interval",
            "1s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id().unwrap() as i32;
    eventually("two rounds", Duration::from_secs(20), || async {
        (fx.cci.count("/api/v3/runner/tasks") >= 2).then_some(())
    })
    .await;
    fx.cci.set_queue(3, 0);
    eventually("a third round", Duration::from_secs(20), || async {
        (fx.cci.count("/api/v3/runner/tasks") >= 3).then_some(())
    })
    .await;
    // SIGINT, as Ctrl-C sends.
    assert_eq!(unsafe_kill(pid, 2), 0);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("exits after SIGINT")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("stopping after the current round"),
        "{stderr}"
    );
    assert!(stdout.lines().count() >= 3, "{stdout}");
    assert_eq!(fx.desired().await, 3);
}

fn unsafe_kill(pid: i32, sig: i32) -> i32 {
    std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .map(|s| s.code().unwrap_or(1))
        .unwrap_or(1)
}

// ---- the Lambda binary against a Lambda Runtime API stand-in ----

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
