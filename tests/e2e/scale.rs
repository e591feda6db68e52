//! `cci-scaler scale` end to end: the real binary against moto and the
//! CircleCI runner-API stand-in.

use std::time::Duration;

use crate::support::circleci::{CircleCi, Fault};
use crate::support::moto::Moto;
use crate::support::{Run, TOKEN, command, eventually, run};
use serde_json::Value;

pub const RC: &str = "acme/linux-x64";

pub struct Fx {
    pub moto: Moto,
    pub cci: CircleCi,
    pub home: tempfile::TempDir,
}

impl Fx {
    pub async fn new() -> Fx {
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

    pub async fn desired(&self) -> i32 {
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

/// 2,500 registered runners over 25 pages: the instances registered on the
/// last pages are never reaped, the one on no page is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_runners_on_later_pages_are_never_reaped() {
    use crate::support::circleci::RUNNER_PAGE_SIZE;
    let fx = Fx::new().await;
    fx.moto.create_group("fleet", 10, 3).await;
    let (_, instances) = fx.moto.group("fleet").await;
    let ids: Vec<String> = instances
        .iter()
        .filter_map(|i| i.instance_id().map(String::from))
        .collect();
    assert_eq!(ids.len(), 3);
    let mut names: Vec<String> = (0..2_500).map(|n| format!("other-runner-{n}")).collect();
    names[1_234] = ids[0].clone();
    names[2_499] = ids[1].clone();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    fx.cci.set_runners(&refs);
    fx.cci.set_queue(0, 2);

    let r = run(fx.scale(&["--boot-timeout", "0s", "--output", "json"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let reaped: Vec<&str> = v["reaped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(reaped, vec![ids[2].as_str()], "{v}");
    assert_eq!(
        fx.cci.count("/api/v3/runner"),
        2_500usize.div_ceil(RUNNER_PAGE_SIZE),
        "every page read once"
    );
    let left: Vec<String> = fx
        .moto
        .group("fleet")
        .await
        .1
        .iter()
        .filter_map(|i| i.instance_id().map(String::from))
        .collect();
    assert!(left.contains(&ids[0]) && left.contains(&ids[1]), "{left:?}");
}

/// Three pools in one poll: a queue on one class raises only its group, a
/// registered instance of another is kept, a missing group fails only its own
/// pool (exit 1) while the others are scaled, and the runner list is read
/// once per namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_pools_in_one_poll() {
    let fx = Fx::new().await;
    fx.moto.create_group("x64", 10, 0).await;
    fx.moto.create_group("arm", 4, 1).await;
    let arm_id = fx.moto.group("arm").await.1[0]
        .instance_id()
        .unwrap()
        .to_string();
    fx.cci.set_class_queue("acme/x64", 3, 0);
    fx.cci.set_class_queue("acme/arm64", 0, 1);
    fx.cci.set_class_queue("other/gpu", 0, 0);
    fx.cci
        .set_class_runners("acme/arm64", std::slice::from_ref(&arm_id));
    fx.cci
        .set_class_runners("acme/x64", &["some-other-runner".to_string()]);

    let r = run(fx.scale_bare(&[
        "--asg",
        "x64",
        "--resource-class",
        "acme/x64",
        "--asg",
        "arm",
        "--resource-class",
        "acme/arm64",
        "--asg",
        "gone",
        "--resource-class",
        "other/gpu",
        "--boot-timeout",
        "0s",
        "--output",
        "json",
    ]))
    .await;
    assert_eq!(r.code, 1, "one pool failed: {r:?}");
    assert_no_token(&r);
    let lines: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "one line per pool: {r:?}");
    assert_eq!(lines[0]["pool"], "x64");
    assert_eq!(lines[0]["action"], "scale-out");
    assert_eq!(lines[0]["group"]["desired_after"], 3);
    assert_eq!(lines[1]["pool"], "arm");
    assert_eq!(lines[1]["action"], "none", "registered: kept");
    assert_eq!(lines[2]["pool"], "gone");
    assert!(
        lines[2]["error"]
            .as_str()
            .unwrap()
            .contains("Auto Scaling group 'gone' not found"),
        "{r:?}"
    );
    assert_eq!(fx.moto.desired("x64").await, 3);
    assert_eq!(fx.moto.desired("arm").await, 1);
    assert_eq!(fx.moto.group("arm").await.1.len(), 1);
    assert_eq!(
        fx.cci.count("/api/v3/runner"),
        2,
        "one runner list per namespace"
    );

    // Several groups need one class each.
    let r = run(fx.scale_bare(&[
        "--asg",
        "x64",
        "--asg",
        "arm",
        "--resource-class",
        "acme/x64",
    ]))
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("one --resource-class each"), "{r:?}");
}

/// `scale --stack`: a stack without pools from the flags (its group name
/// follows from the stack's), a stack file's pools, `--pool` one of them,
/// and the stack's own scaler secret when no token is in the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_a_stack_by_its_name() {
    let fx = Fx::new().await;
    fx.moto.create_group("one-runners", 10, 0).await;
    fx.cci.set_queue(0, 0);
    fx.cci.set_class_queue(RC, 2, 0);
    let r = run(fx.scale_bare(&["--stack", "one", "--resource-class", RC])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(fx.moto.desired("one-runners").await, 2);

    // No stack file and no class: say what is missing.
    let r = run(fx.scale_bare(&["--stack", "one"])).await;
    assert_eq!(r.code, 2, "bad usage: {r:?}");
    assert!(
        r.stderr.contains("--config FILE, or --resource-class"),
        "{r:?}"
    );

    // A stack file of two pools; --pool scales one.
    fx.moto.create_group("two-a-runners", 10, 0).await;
    fx.moto.create_group("two-b-runners", 10, 0).await;
    let file = fx.home.path().join("two.toml");
    std::fs::write(
        &file,
        "stack = \"two\"\n[[pool]]\nresource_class = \"acme/a\"\n[[pool]]\nresource_class = \"acme/b\"\n",
    )
    .unwrap();
    fx.cci.set_class_queue("acme/a", 1, 0);
    fx.cci.set_class_queue("acme/b", 3, 0);
    let cfg = file.to_str().unwrap();
    let r = run(fx.scale_bare(&["--stack", "two", "--config", cfg, "--pool", "b"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(fx.moto.desired("two-b-runners").await, 3);
    assert_eq!(fx.moto.desired("two-a-runners").await, 0);
    let r = run(fx.scale_bare(&["--stack", "two", "--config", cfg, "--pool", "c"])).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("no pool named c"), "{r:?}");
    // The file names the stack: --config alone will do, as for init.
    fx.cci.set_class_queue("acme/b", 4, 0);
    let r = run(fx.scale_bare(&["--config", cfg, "--pool", "b"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(fx.moto.desired("two-b-runners").await, 4);
    // A spot pool turned back to on demand in a hurry: the spot keys left
    // behind are named, ignored, and the pool is scaled.
    let back = fx.home.path().join("back.toml");
    std::fs::write(
        &back,
        "stack = \"two\"\n[[pool]]\nresource_class = \"acme/a\"\nmarket = \"on-demand\"\non_demand_base = 1\nretry_interrupted_jobs = true\n",
    )
    .unwrap();
    fx.cci.set_class_queue("acme/a", 2, 0);
    let r = run(fx.scale_bare(&["--config", back.to_str().unwrap()])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains(
            "warning: pool a: on_demand_base, retry_interrupted_jobs apply to market = \"spot\" only: ignored"
        ),
        "{r:?}"
    );
    assert_eq!(fx.moto.desired("two-a-runners").await, 2);
    // A value of the wrong type is bad usage, named; not a call for --asg.
    let bad = fx.home.path().join("bad.toml");
    std::fs::write(
        &bad,
        "stack = \"two\"\nresource_class = \"acme/a\"\nmax_instances = \"ten\"\n",
    )
    .unwrap();
    let r = run(fx.scale_bare(&["--config", bad.to_str().unwrap()])).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("max_instances") && !r.stderr.contains("--asg"),
        "{r:?}"
    );
    // Nothing at all to scale: said, exit 2.
    let mut cmd = fx.scale_bare(&[]);
    cmd.current_dir(fx.home.path());
    let r = run(cmd).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("nothing to scale"), "{r:?}");

    // Without CIRCLECI_TOKEN the token comes from the stack's scaler secret.
    fx.moto
        .create_secret(
            "cci-scaler/two/scaler",
            &format!(r#"{{"resource_class":"acme/a","circle_token":"{TOKEN}"}}"#),
        )
        .await;
    fx.cci.set_class_queue("acme/a", 3, 0);
    let mut cmd = fx.scale_bare(&["--stack", "two", "--config", cfg]);
    cmd.env_remove("CIRCLECI_TOKEN");
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(fx.moto.desired("two-a-runners").await, 3);
    assert_no_token(&r);
}

/// Headroom from the stack file: spares on top of the demand while a period
/// is active, and the group tagged with the period's end before it is
/// raised (instances launched then stay up as spares until that time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headroom_adds_spares_and_tags_the_group() {
    let fx = Fx::new().await;
    fx.moto.create_group("hr-runners", 10, 0).await;
    fx.moto.create_group("hr-off-runners", 10, 0).await;
    let file = fx.home.path().join("hr.toml");
    // Always on (a start every minute, lasting an hour), and never on (the
    // 31st of February).
    std::fs::write(
        &file,
        "stack = \"hr\"\nresource_class = \"acme/linux-x64\"\n\
         [[headroom]]\nschedule = \"* * * * *\"\nduration = \"1h\"\ncount = 2\n\
         [[headroom]]\nschedule = \"0 8 31 2 *\"\nduration = \"1h\"\ncount = 5\n",
    )
    .unwrap();
    fx.cci.set_queue(1, 0);
    let cfg = file.to_str().unwrap();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let r = run(fx.scale_bare(&["--stack", "hr", "--config", cfg, "--output", "json"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["headroom"]["count"], 2, "{v}");
    assert_eq!(v["group"]["desired_after"], 3, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("+ 2 spare"), "{v}");
    assert_eq!(fx.moto.desired("hr-runners").await, 3);
    let g = fx
        .moto
        .asg()
        .describe_auto_scaling_groups()
        .auto_scaling_group_names("hr-runners")
        .send()
        .await
        .unwrap()
        .auto_scaling_groups()[0]
        .clone();
    let tag = g
        .tags()
        .iter()
        .find(|t| t.key() == Some("cci-scaler:spare-until"))
        .expect("the group is tagged");
    assert_eq!(tag.propagate_at_launch(), Some(true));
    let until: u64 = tag.value().unwrap().parse().unwrap();
    assert!(
        until > started + 3500 && until <= started + 3600 + 60,
        "{until} vs {started}"
    );
    assert_eq!(v["headroom"]["until"], until, "{v}");

    // The queue empties: spares stay, nothing is lowered.
    fx.cci.set_queue(0, 0);
    let r = run(fx.scale_bare(&["--stack", "hr", "--config", cfg])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(fx.moto.desired("hr-runners").await, 3);

    // A dry run tags nothing: a stack whose group has no tag yet.
    let off = fx.home.path().join("off.toml");
    std::fs::write(
        &off,
        "stack = \"hr-off\"\nresource_class = \"acme/linux-x64\"\n\
         [[headroom]]\nschedule = \"* * * * *\"\nduration = \"1h\"\ncount = 1\n",
    )
    .unwrap();
    let r = run(fx.scale_bare(&[
        "--stack",
        "hr-off",
        "--config",
        off.to_str().unwrap(),
        "--dry-run",
    ]))
    .await;
    assert!(r.stdout.contains("would scale-out"), "{r:?}");
    let g = fx
        .moto
        .asg()
        .describe_auto_scaling_groups()
        .auto_scaling_group_names("hr-off-runners")
        .send()
        .await
        .unwrap()
        .auto_scaling_groups()[0]
        .clone();
    assert!(
        g.tags()
            .iter()
            .all(|t| t.key() != Some("cci-scaler:spare-until"))
    );
    assert_eq!(r.code, 0, "{r:?}");
}

/// `headroom = "auto"`: a dry run writes no record; a new pool (no record)
/// gets no spares and starts its record; once the record shows this hour of
/// the week busy in an earlier week, spares are up before any job (bounded
/// by `max_spares`), the group tagged to hold them, and the record keeps
/// its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_headroom_keeps_a_record_and_learns_the_hour() {
    let fx = Fx::new().await;
    fx.moto.create_group("au-runners", 10, 0).await;
    let file = fx.home.path().join("au.toml");
    std::fs::write(
        &file,
        "stack = \"au\"\nresource_class = \"acme/linux-x64\"\nheadroom = \"auto\"\nmax_spares = 3\n",
    )
    .unwrap();
    let cfg = file.to_str().unwrap();
    let record = "/cci-scaler/au/default/demand";
    fx.cci.set_queue(0, 0);
    let r = run(fx.scale_bare(&["--stack", "au", "--config", cfg, "--dry-run"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        fx.moto.parameter(record).await,
        None,
        "a dry run writes nothing"
    );

    let r = run(fx.scale_bare(&["--stack", "au", "--config", cfg, "--output", "json"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["auto_spares"], 0, "no history, nothing seen: {v}");
    assert_eq!(fx.moto.desired("au-runners").await, 0);
    let first: Value = serde_json::from_str(&fx.moto.parameter(record).await.unwrap()).unwrap();
    assert_eq!(first["v"], 1, "{first}");

    // Last week, this hour and the next had 50 busy minutes each.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut seeded = first.clone();
    seeded["h0"] = (now / 3600 - 168).into();
    seeded["h"] = "OO".into();
    fx.moto
        .ssm()
        .put_parameter()
        .name(record)
        .value(seeded.to_string())
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .unwrap();
    let r = run(fx.scale_bare(&["--stack", "au", "--config", cfg, "--output", "json"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["auto_spares"], 3, "learnt, bounded by max_spares: {v}");
    assert_eq!(fx.moto.desired("au-runners").await, 3);
    let g = fx
        .moto
        .asg()
        .describe_auto_scaling_groups()
        .auto_scaling_group_names("au-runners")
        .send()
        .await
        .unwrap()
        .auto_scaling_groups()[0]
        .clone();
    let until: u64 = g
        .tags()
        .iter()
        .find(|t| t.key() == Some("cci-scaler:spare-until"))
        .and_then(|t| t.value())
        .expect("tagged")
        .parse()
        .unwrap();
    assert!(
        until >= now + 1700 && until <= now + 1900,
        "{until} vs {now}"
    );
    let after: Value = serde_json::from_str(&fx.moto.parameter(record).await.unwrap()).unwrap();
    assert!(after["h"].as_str().unwrap().starts_with("OO"), "{after}");
}

/// `scale --metrics` puts the poll's metrics into CloudWatch (the same ones
/// the Lambda's EMF lines make).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_puts_its_metrics_with_metrics() {
    let fx = Fx::new().await;
    fx.moto.create_group("m-runners", 10, 0).await;
    fx.cci.set_queue(3, 1);
    let r = run(fx.scale_bare(&["--stack", "m", "--resource-class", RC, "--metrics"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    let cw = aws_sdk_cloudwatch::Client::new(&fx.moto.config);
    let listed = cw
        .list_metrics()
        .namespace("cci-scaler")
        .send()
        .await
        .unwrap();
    let mut names: Vec<&str> = listed
        .metrics()
        .iter()
        .filter_map(|m| m.metric_name())
        .collect();
    names.sort();
    names.dedup();
    for want in [
        "Desired",
        "Unclaimed",
        "Running",
        "InService",
        "Starved",
        "CircleCiLatency",
    ] {
        assert!(names.contains(&want), "{want}: {names:?}");
    }
    let unclaimed = listed
        .metrics()
        .iter()
        .find(|m| m.metric_name() == Some("Unclaimed"))
        .unwrap();
    let dims: Vec<(&str, &str)> = unclaimed
        .dimensions()
        .iter()
        .map(|d| (d.name().unwrap(), d.value().unwrap()))
        .collect();
    assert!(
        dims.contains(&("stack", "m")) && dims.contains(&("pool", "m-runners")),
        "{dims:?}"
    );
}

/// `--asg`/`--resource-class` pairs for `n` pools, each with its group.
async fn many_pools(fx: &Fx, n: usize) -> Vec<String> {
    let mut args = vec![];
    for i in 0..n {
        fx.moto.create_group(&format!("pool-{i}"), 3, 0).await;
        args.extend([
            "--asg".to_string(),
            format!("pool-{i}"),
            "--resource-class".to_string(),
            format!("acme/pool-{i}"),
        ]);
    }
    args
}

/// One poll of 50 pools: at most --circleci-concurrency requests in flight
/// (it used to send all 101 at once over 101 connections), on connections
/// that are reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_of_many_pools_bounds_its_requests_to_circleci() {
    let fx = Fx::new().await;
    let args = many_pools(&fx, 50).await;
    fx.cci.set_delay(Duration::from_millis(50));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run(fx.scale_bare(&refs)).await;
    assert_eq!(r.code, 0, "{r:?}");
    let (requests, in_flight, connections) = {
        let s = fx.cci.state.lock().unwrap();
        (s.requests.len(), s.max_in_flight, s.connections)
    };
    assert_eq!(requests, 101, "two per pool, one per namespace");
    assert!(in_flight <= 16, "{in_flight} in flight at once");
    assert!(in_flight >= 8, "still concurrent: {in_flight}");
    // Reused, not one per request. hyper returns a connection to its pool
    // only after the response is handed over, so a request that gets its
    // permit in that instant may open one more: bound it loosely.
    assert!(connections <= 2 * 16, "{connections} connections");
    // A smaller bound is honoured.
    let fx = Fx::new().await;
    let args = many_pools(&fx, 10).await;
    fx.cci.set_delay(Duration::from_millis(20));
    let mut refs: Vec<&str> = args.iter().map(String::as_str).collect();
    refs.extend(["--circleci-concurrency", "3"]);
    let r = run(fx.scale_bare(&refs)).await;
    assert_eq!(r.code, 0, "{r:?}");
    let (in_flight, connections) = {
        let s = fx.cci.state.lock().unwrap();
        (s.max_in_flight, s.connections)
    };
    assert!(in_flight <= 3, "{in_flight}");
    assert!(connections <= 2 * 3, "{connections}");
    let r = run(fx.scale_bare(&[
        "--asg",
        "pool-0",
        "--resource-class",
        "acme/pool-0",
        "--circleci-concurrency",
        "0",
    ]))
    .await;
    assert_eq!(r.code, 2, "{r:?}");
}

/// CircleCI answers a burst with 429: one backoff holds every pool's
/// requests, instead of each request being throttled and retried alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_holds_back_every_pool_together() {
    let fx = Fx::new().await;
    let args = many_pools(&fx, 50).await;
    fx.cci.set_delay(Duration::from_millis(20));
    fx.cci
        .set_fault(Some(Fault::ThrottleFor(Duration::from_millis(300))));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run(fx.scale_bare(&refs)).await;
    assert_eq!(
        r.code, 0,
        "the poll succeeds after the shared backoff: {r:?}"
    );
    let s = fx.cci.state.lock().unwrap();
    assert!(
        s.throttled <= 16,
        "{} requests were throttled: only those in flight when the first 429 came back may be",
        s.throttled
    );
}
