//! `init`, `teardown` and `status` end to end against moto and the CircleCI
//! stand-in; every property is read back through the AWS API.

use std::io::Write;
use std::time::Instant;

use base64::Engine;
use serde_json::Value;

use crate::support::circleci::{CircleCi, Fault};
use crate::support::moto::Moto;
use crate::support::{REGION, Run, TOKEN, run};

const RC: &str = "acme/fleet";
const IMAGE: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";

pub(crate) struct Stack {
    pub(crate) moto: Moto,
    pub(crate) cci: CircleCi,
    pub(crate) home: tempfile::TempDir,
    zip: std::path::PathBuf,
}

/// A small stand-in for the Lambda zip: an x86-64 ELF header asking for glibc
/// 2.34 (moto stores functions, never runs them).
pub(crate) fn fake_zip(dir: &std::path::Path) -> std::path::PathBuf {
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[18] = 0x3e;
    elf.extend_from_slice(b"GLIBC_2.34\0cci-scaler-lambda");
    let path = dir.join("lambda.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    zip.start_file(
        "bootstrap",
        zip::write::SimpleFileOptions::default().unix_permissions(0o755),
    )
    .unwrap();
    zip.write_all(&elf).unwrap();
    zip.finish().unwrap();
    path
}

impl Stack {
    pub(crate) async fn new() -> Stack {
        let home = tempfile::tempdir().unwrap();
        let zip = fake_zip(home.path());
        Stack {
            moto: Moto::start().await,
            cci: CircleCi::start().await,
            home,
            zip,
        }
    }

    pub(crate) fn cmd(&self, args: &[&str]) -> tokio::process::Command {
        self.cmd_of(&crate::support::bin("cci-scaler"), args)
    }

    /// A command of another build of cci-scaler (an older release).
    fn cmd_of(&self, program: &std::path::Path, args: &[&str]) -> tokio::process::Command {
        let mut cmd = crate::support::command_at(program, self.home.path());
        self.moto.env(&mut cmd);
        cmd.env("CIRCLECI_TOKEN", TOKEN)
            .env("CIRCLECI_RUNNER_API_URL", &self.cci.url)
            .current_dir(self.home.path())
            .args(args);
        cmd
    }

    /// `init` (or `step NAME`) with the test's stack settings, JSON output.
    fn converge(&self, command: &[&str], extra: &[&str]) -> tokio::process::Command {
        self.converge_with(&crate::support::bin("cci-scaler"), command, extra)
    }

    fn converge_with(
        &self,
        program: &std::path::Path,
        command: &[&str],
        extra: &[&str],
    ) -> tokio::process::Command {
        let zip = self.zip.to_str().unwrap();
        let mut args = vec!["--output", "json"];
        args.extend_from_slice(command);
        args.extend_from_slice(&[
            "--stack",
            "demo",
            "--resource-class",
            RC,
            "--image",
            IMAGE,
            "--max-instances",
            "6",
            "--lambda-zip",
            zip,
        ]);
        args.extend_from_slice(extra);
        self.cmd_of(program, &args)
    }

    pub(crate) async fn init(&self, extra: &[&str]) -> Run {
        run(self.converge(&["init"], extra)).await
    }

    /// `teardown` naming the resource class too, JSON output.
    fn teardown_with_class(&self, flag: &str) -> tokio::process::Command {
        self.cmd(&[
            "--output",
            "json",
            "teardown",
            "--stack",
            "demo",
            "--resource-class",
            RC,
            flag,
        ])
    }

    /// Teardown by the stack name alone: the stack knows its resource class.
    pub(crate) async fn teardown(&self) -> Run {
        run(self.cmd(&["--output", "json", "teardown", "--stack", "demo", "--yes"])).await
    }
}

fn json(r: &Run) -> Value {
    serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

fn actions(v: &Value) -> Vec<(String, String)> {
    v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap().to_string(),
                i["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The first resource of `kind` in a JSON result.
fn item(v: &Value, kind: &str) -> Value {
    v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {v}"))
        .clone()
}

fn assert_action(acts: &[(String, String)], kind: &str, action: &str) {
    assert!(
        acts.iter().any(|(k, a)| k == kind && a == action),
        "no {kind} {action} in {acts:?}"
    );
}

fn assert_no_secrets(r: &Run, stack: &Stack) {
    let all = r.all();
    assert!(!all.contains(TOKEN), "personal token leaked: {r:?}");
    for (_, t) in stack.cci.tokens() {
        assert!(!all.contains(&t), "runner token leaked: {r:?}");
    }
}

/// Every statement that allows a mutating action names a resource, not `*`.
fn assert_least_privilege(policy: &Value) {
    for st in policy["Statement"].as_array().unwrap() {
        let actions: Vec<&str> = match &st["Action"] {
            Value::String(a) => vec![a.as_str()],
            Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
            _ => panic!("{st}"),
        };
        assert!(
            actions.iter().all(|a| !a.contains('*')),
            "wildcard action in {st}"
        );
        if st["Resource"] == "*" {
            assert!(
                actions.iter().all(|a| a
                    .split(':')
                    .nth(1)
                    .is_some_and(|n| n.starts_with("Describe"))),
                "mutating action on *: {st}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_creates_everything_converges_and_teardown_removes_it() {
    let s = Stack::new().await;
    let cfg = &s.moto.config;

    // Dry run first: a plan, and nothing written.
    let r = s.init(&["--dry-run"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let plan = json(&r);
    assert!(actions(&plan).iter().all(|(_, a)| a == "create"), "{plan}");
    assert!(s.cci.classes().is_empty() && s.cci.tokens().is_empty());

    // A fresh init.
    let before = s.moto.requests();
    let started = Instant::now();
    let r = s.init(&[]).await;
    let fresh = (s.moto.requests() - before, started.elapsed());
    assert_eq!(r.code, 0, "{r:?}");
    assert_no_secrets(&r, &s);
    let v = json(&r);
    assert_eq!(v["changed"], true);
    assert!(actions(&v).iter().all(|(_, a)| a == "create"), "{v}");
    assert!(
        v["circleci_config"]
            .as_str()
            .unwrap()
            .contains(&format!("resource_class: {RC}"))
    );

    // CircleCI: the class and one token, stored in its secret.
    assert_eq!(s.cci.classes(), vec![RC.to_string()]);
    let tokens = s.cci.tokens();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].0, "cci-scaler-demo");
    let sm = aws_sdk_secretsmanager::Client::new(cfg);
    let stored = sm
        .get_secret_value()
        .secret_id("cci-scaler/demo/runner-token")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.secret_string(), Some(tokens[0].1.as_str()));
    let scaler = sm
        .get_secret_value()
        .secret_id("cci-scaler/demo/scaler")
        .send()
        .await
        .unwrap();
    let scaler: Value = serde_json::from_str(scaler.secret_string().unwrap()).unwrap();
    assert_eq!(scaler["circle_token"], TOKEN);
    assert_eq!(scaler["resource_class"], RC);

    // Security group: no ingress.
    let ec2 = aws_sdk_ec2::Client::new(cfg);
    let sgs = ec2
        .describe_security_groups()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("group-name")
                .values("cci-scaler-demo-runner")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let sg = &sgs.security_groups()[0];
    assert!(
        sg.ip_permissions().is_empty(),
        "ingress: {:?}",
        sg.ip_permissions()
    );
    let sg_id = sg.group_id().unwrap().to_string();

    // IAM: least privilege, no `*` on a mutating action.
    let iam = aws_sdk_iam::Client::new(cfg);
    for (role, service) in [
        ("cci-scaler-demo-runner", "ec2.amazonaws.com"),
        ("cci-scaler-demo-scaler", "lambda.amazonaws.com"),
    ] {
        let trust = crate::support::role_trust(&iam, role).await.to_string();
        assert!(trust.contains(service), "{trust}");
        let doc = crate::support::role_policy(&iam, role).await;
        assert_least_privilege(&doc);
        // An independent check: parliament finds nothing above "low".
        let findings = crate::support::parliament(&doc);
        let serious: Vec<_> = findings
            .iter()
            .filter(|f| !matches!(f.severity.as_str(), "LOW" | "INFO"))
            .collect();
        assert!(serious.is_empty(), "{role}: {serious:?}\n{doc:#}");
        let text = doc.to_string();
        if role.ends_with("runner") {
            assert!(
                text.contains("secretsmanager:GetSecretValue")
                    && text.contains("cci-scaler/demo/runner-token"),
                "{text}"
            );
            assert!(
                text.contains("autoscaling:TerminateInstanceInAutoScalingGroup")
                    && text.contains("autoScalingGroupName/demo-runners"),
                "{text}"
            );
            assert!(text.contains("autoscaling:SetInstanceHealth"), "{text}");
        } else {
            assert!(
                text.contains("autoscaling:SetDesiredCapacity")
                    && text.contains("cci-scaler/demo/scaler"),
                "{text}"
            );
            assert!(
                text.contains("log-group:/aws/lambda/cci-scaler-demo-scaler"),
                "{text}"
            );
        }
    }
    let profile = iam
        .get_instance_profile()
        .instance_profile_name("cci-scaler-demo-runner")
        .send()
        .await
        .unwrap();
    assert_eq!(
        profile.instance_profile().unwrap().roles()[0].role_name(),
        "cci-scaler-demo-runner"
    );

    // Launch template.
    let ver = latest_template(&ec2).await;
    assert_eq!(ver.version_number(), Some(1));
    let d = ver.launch_template_data().unwrap();
    let user_data = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(d.user_data().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(user_data.starts_with("#!/bin/bash\n"));
    assert!(user_data.contains("readonly TOKEN_SECRET_ID='cci-scaler/demo/runner-token'"));
    assert!(
        !user_data.contains(&tokens[0].1),
        "the runner token is not in the user data"
    );
    let md = d.metadata_options().unwrap();
    assert_eq!(md.http_tokens().map(|t| t.as_str()), Some("required"));
    assert_eq!(md.http_put_response_hop_limit(), Some(1));
    assert_eq!(
        d.instance_initiated_shutdown_behavior().map(|b| b.as_str()),
        Some("terminate")
    );
    assert_eq!(
        d.iam_instance_profile().and_then(|p| p.name()),
        Some("cci-scaler-demo-runner")
    );
    assert_eq!(d.security_group_ids(), std::slice::from_ref(&sg_id));
    assert_eq!(d.instance_type().map(|t| t.as_str()), Some("t3.medium"));
    let ebs = d.block_device_mappings()[0].ebs().unwrap();
    assert_eq!((ebs.encrypted(), ebs.volume_size()), (Some(true), Some(30)));
    assert_eq!(ebs.volume_type().map(|t| t.as_str()), Some("gp3"));
    let specs: Vec<&str> = d
        .tag_specifications()
        .iter()
        .filter_map(|t| t.resource_type())
        .map(|r| r.as_str())
        .collect();
    assert!(
        specs.contains(&"instance") && specs.contains(&"volume"),
        "{specs:?}"
    );

    // The group.
    let (desired, _) = s.moto.group("demo-runners").await;
    assert_eq!(desired, 0);
    let g = s
        .moto
        .asg()
        .describe_auto_scaling_groups()
        .auto_scaling_group_names("demo-runners")
        .send()
        .await
        .unwrap();
    let g = &g.auto_scaling_groups()[0];
    assert_eq!((g.min_size(), g.max_size()), (Some(0), Some(6)));
    assert_eq!(g.new_instances_protected_from_scale_in(), Some(true));
    assert!(
        g.suspended_processes()
            .iter()
            .any(|p| p.process_name() == Some("AZRebalance"))
    );
    assert_eq!(
        g.launch_template().and_then(|l| l.version()),
        Some("$Latest")
    );
    assert!(
        g.tags()
            .iter()
            .any(|t| t.key() == Some("cci-scaler:stack") && t.propagate_at_launch() == Some(true))
    );

    // The Lambda and its schedule.
    let lambda = aws_sdk_lambda::Client::new(cfg);
    let f = lambda
        .get_function()
        .function_name("cci-scaler-demo-scaler")
        .send()
        .await
        .unwrap();
    let c = f.configuration().unwrap();
    assert_eq!(c.runtime().map(|r| r.as_str()), Some("provided.al2023"));
    assert_eq!(c.handler(), Some("bootstrap"));
    assert_eq!(c.timeout(), Some(60));
    let env = c.environment().unwrap().variables().unwrap();
    assert_eq!(env["CCI_SCALER_ASG"], "demo-runners");
    assert_eq!(env["CCI_SCALER_POLL_INTERVAL"], "10s");
    assert_eq!(env["CCI_SCALER_POLL_WINDOW"], "50s");
    assert!(env["CCI_SCALER_SECRET_ID"].contains("cci-scaler/demo/scaler"));
    assert!(!env.values().any(|v| v.contains(TOKEN)));
    let conc = lambda
        .get_function_concurrency()
        .function_name("cci-scaler-demo-scaler")
        .send()
        .await
        .unwrap();
    assert_eq!(conc.reserved_concurrent_executions(), Some(1));
    let events = aws_sdk_eventbridge::Client::new(cfg);
    let rule = events
        .describe_rule()
        .name("cci-scaler-demo-schedule")
        .send()
        .await
        .unwrap();
    assert_eq!(rule.schedule_expression(), Some("rate(1 minute)"));
    assert_eq!(rule.state().map(|s| s.as_str()), Some("ENABLED"));
    let targets = events
        .list_targets_by_rule()
        .rule("cci-scaler-demo-schedule")
        .send()
        .await
        .unwrap();
    assert_eq!(Some(targets.targets()[0].arn()), c.function_arn());
    let policy = lambda
        .get_policy()
        .function_name("cci-scaler-demo-scaler")
        .send()
        .await
        .unwrap();
    assert!(policy.policy().unwrap().contains("events.amazonaws.com"));

    // A second init changes nothing.
    let before = s.moto.requests();
    let started = Instant::now();
    let r = s.init(&[]).await;
    let rerun = (s.moto.requests() - before, started.elapsed());
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r);
    assert_eq!(v["changed"], false, "{v}");
    assert!(actions(&v).iter().all(|(_, a)| a == "keep"), "{v}");
    assert_eq!(s.cci.tokens().len(), 1, "no new token");
    eprintln!(
        "fresh init: {} AWS calls, {:.2} s; no-change re-run: {} AWS calls, {:.2} s",
        fresh.0,
        fresh.1.as_secs_f64(),
        rerun.0,
        rerun.1.as_secs_f64()
    );

    // Scale-out from the template (before a second version exists: moto 5.2.5
    // crashes launching from a version created by CreateLaunchTemplateVersion).
    // Teardown must terminate these instances.
    s.cci.set_queue(2, 0);
    let r = run(s.cmd(&[
        "scale",
        "--once",
        "--asg",
        "demo-runners",
        "--resource-class",
        RC,
    ]))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s.moto.group("demo-runners").await.1.len(), 2);

    // A changed instance type: a new template version, nothing else.
    let r = s.init(&["--instance-type", "t3.large"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let changed: Vec<_> = actions(&json(&r))
        .into_iter()
        .filter(|(_, a)| a != "keep")
        .collect();
    assert_eq!(
        changed,
        vec![("launch template".to_string(), "update".to_string())]
    );
    let ver = latest_template(&ec2).await;
    assert_eq!(ver.version_number(), Some(2));
    let d = ver.launch_template_data().unwrap();
    assert_eq!(d.instance_type().map(|t| t.as_str()), Some("t3.large"));
    assert!(
        d.user_data().is_some() && d.iam_instance_profile().is_some(),
        "full data in the new version"
    );

    // Status, with two polls and a failed invocation in the Lambda's logs.
    let logs = aws_sdk_cloudwatchlogs::Client::new(cfg);
    let group = "/aws/lambda/cci-scaler-demo-scaler";
    // init made the Lambda's log group: tagged, with the default retention.
    let lg = logs
        .describe_log_groups()
        .log_group_name_prefix(group)
        .send()
        .await
        .unwrap();
    let lg = &lg.log_groups()[0];
    assert_eq!(lg.log_group_name(), Some(group));
    assert_eq!(lg.retention_in_days(), Some(30));
    let tags = logs
        .list_tags_for_resource()
        .resource_arn(lg.arn().unwrap().trim_end_matches(":*"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        tags.tags()
            .unwrap()
            .get("cci-scaler:stack")
            .map(String::as_str),
        Some("demo")
    );
    logs.create_log_stream()
        .log_group_name(group)
        .log_stream_name("s")
        .send()
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let line = |m: &str, dt: i64| {
        aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
            .timestamp(now - dt)
            .message(m)
            .build()
            .unwrap()
    };
    logs.put_log_events()
        .log_group_name(group)
        .log_stream_name("s")
        .log_events(line(r#"{"poll":1,"time":"2026-12-01T10:00:01.000Z","asg":"demo-runners","action":"scale-out","reason":"2 job(s) queued","queue":{"unclaimed":2,"running":0},"group":{"desired_before":0,"desired_after":2}}"#, 3000))
        .log_events(line(r#"{"level":"error","error_type":"ScaleError","error":"CircleCI failed (HTTP 503)"}"#, 2000))
        .log_events(line(r#"{"poll":1,"time":"2026-12-01T10:00:11.000Z","asg":"demo-runners","action":"none","reason":"demand 2 (2 unclaimed + 0 running) within desired 2","queue":{"unclaimed":2,"running":0},"group":{"desired_before":2,"desired_after":2}}"#, 1000))
        .send()
        .await
        .unwrap();
    // Status by the stack name alone: the stack knows its resource class.
    let r = run(s.cmd(&["status", "--stack", "demo"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains(&format!("stack demo ({RC})")), "{r:?}");
    assert!(
        r.stdout
            .contains("Lambda runs (last 15 minutes): 2 poll(s), 1 failed invocation(s)"),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains("last poll: 2026-12-01T10:00:11.000Z none (desired 2 -> 2)"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("last error: CircleCI failed (HTTP 503)"),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains("group: desired 2 (min 0, max 6), 2 instance(s)"),
        "{r:?}"
    );
    assert!(r.stdout.contains("queue: 2 unclaimed, 0 running"), "{r:?}");
    assert!(r.stdout.contains("schedule: enabled"), "{r:?}");

    // The live view: the inventory on one line, the pool's queue, group,
    // instances (state, age, runner) and its last decisions; refreshed.
    let mut cmd = s.cmd(&["status", "--stack", "demo", "--watch", "--interval", "1s"]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Read the frames as they come; stop once two are out (however slowly
    // the machine refreshes while other tests boot VMs), at most 2 min.
    let mut stdout = child.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = seen.clone();
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf).await {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let frames = || {
        String::from_utf8_lossy(&seen.lock().unwrap())
            .matches("inventory: ")
            .count()
    };
    let started = std::time::Instant::now();
    while frames() < 2 && started.elapsed() < std::time::Duration::from_secs(120) {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Ctrl-C, as an operator stops it.
    let pid = child.id().unwrap() as i32;
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let status = child.wait().await.unwrap();
    reader.await.unwrap();
    let screen = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
    assert_eq!(status.code(), Some(0), "{screen}");
    assert!(
        screen.matches("inventory: ").count() >= 2,
        "refreshed: {screen}"
    );
    for want in [
        "present, 0 absent, 0 not ours | schedule enabled | Lambda 2 poll(s), 1 failed in 15m",
        &format!(
            "pool demo ({RC}): queue 2 unclaimed, 0 running | desired 2 (max 6) | 2 in service of 2"
        ),
        "instance              state                      age  runner",
        "InService",
        "not registered",
        "last decisions:",
        "10:00:01.000 scale-out          desired 0 -> 2  queue 2+0  2 job(s) queued",
        "last Lambda error: CircleCI failed (HTTP 503)",
    ] {
        assert!(screen.contains(want), "{want}:\n{screen}");
    }
    assert!(
        !screen.contains("launch template"),
        "the inventory is folded: {screen}"
    );
    // The last frame (shown with --nocapture; the README's capture).
    let last = screen.rfind("stack demo in ").unwrap_or(0);
    eprintln!("status --watch, last frame:\n{}", &screen[last..]);

    // A dry-run teardown: the plan, nothing removed.
    let r = run(s.teardown_with_class("--dry-run")).await;
    assert_eq!(r.code, 0, "{r:?}");
    let plan = json(&r);
    assert_eq!(plan["dry_run"], true);
    assert!(actions(&plan).iter().all(|(_, a)| a == "delete"), "{plan}");
    assert_eq!(
        s.moto.group("demo-runners").await.1.len(),
        2,
        "nothing removed"
    );
    assert_eq!(s.cci.tokens().len(), 1);
    // Without --yes and without a terminal, teardown refuses.
    let r = run(s.cmd(&["teardown", "--stack", "demo", "--resource-class", RC])).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("pass --yes to confirm"), "{r:?}");

    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_no_secrets(&r, &s);
    assert!(r.stdout.contains("2 instance(s) terminated"), "{r:?}");
    let v = json(&r);
    assert!(actions(&v).iter().all(|(_, a)| a == "delete"), "{v}");
    assert_no_stack_left(&s).await;
    // Idempotent: nothing left on AWS; the stack recorded no class any more,
    // so CircleCI is not looked at (and says so).
    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r);
    assert_eq!(v["changed"], false, "{v}");
    assert!(
        actions(&v)
            .iter()
            .all(|(k, a)| a == "absent" || (k.contains("resource class") || k == "runner tokens")),
        "{r:?}"
    );
    // With the class given, CircleCI is looked at too: nothing there either.
    let r = run(s.teardown_with_class("--yes")).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        actions(&json(&r)).iter().all(|(_, a)| a == "absent"),
        "{r:?}"
    );
}

async fn latest_template(ec2: &aws_sdk_ec2::Client) -> aws_sdk_ec2::types::LaunchTemplateVersion {
    crate::support::latest_template(ec2, "cci-scaler-demo-runner").await
}

async fn assert_no_stack_left(s: &Stack) {
    let cfg = &s.moto.config;
    let ec2 = aws_sdk_ec2::Client::new(cfg);
    let tagged = |name: &str| {
        aws_sdk_ec2::types::Filter::builder()
            .name(name)
            .values("demo")
            .build()
    };
    let sgs = ec2
        .describe_security_groups()
        .filters(tagged("tag:cci-scaler:stack"))
        .send()
        .await
        .unwrap();
    assert!(sgs.security_groups().is_empty(), "security group left");
    let lts = ec2
        .describe_launch_templates()
        .filters(tagged("tag:cci-scaler:stack"))
        .send()
        .await
        .unwrap();
    assert!(lts.launch_templates().is_empty(), "launch template left");
    let running = ec2
        .describe_instances()
        .filters(tagged("tag:cci-scaler:stack"))
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("instance-state-name")
                .values("running")
                .values("pending")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        running
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .count(),
        0,
        "instances left running"
    );
    let groups = s
        .moto
        .asg()
        .describe_auto_scaling_groups()
        .auto_scaling_group_names("demo-runners")
        .send()
        .await
        .unwrap();
    assert!(groups.auto_scaling_groups().is_empty(), "group left");
    let iam = aws_sdk_iam::Client::new(cfg);
    for role in ["cci-scaler-demo-runner", "cci-scaler-demo-scaler"] {
        assert!(
            iam.get_role().role_name(role).send().await.is_err(),
            "{role} left"
        );
    }
    assert!(
        iam.get_instance_profile()
            .instance_profile_name("cci-scaler-demo-runner")
            .send()
            .await
            .is_err()
    );
    let sm = aws_sdk_secretsmanager::Client::new(cfg);
    let secrets = sm.list_secrets().send().await.unwrap();
    assert!(
        secrets.secret_list().is_empty(),
        "secrets left: {:?}",
        secrets.secret_list()
    );
    let lambda = aws_sdk_lambda::Client::new(cfg);
    assert!(
        lambda
            .get_function()
            .function_name("cci-scaler-demo-scaler")
            .send()
            .await
            .is_err()
    );
    let events = aws_sdk_eventbridge::Client::new(cfg);
    assert!(
        events
            .describe_rule()
            .name("cci-scaler-demo-schedule")
            .send()
            .await
            .is_err()
    );
    assert!(s.cci.tokens().is_empty(), "runner token left");
    assert!(s.cci.classes().is_empty(), "resource class left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_resource_is_refused_and_teardown_cleans_a_partial_init() {
    let s = Stack::new().await;
    // A launch template with our name, not tagged as ours.
    aws_sdk_ec2::Client::new(&s.moto.config)
        .create_launch_template()
        .launch_template_name("cci-scaler-demo-runner")
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id("ami-12c6146b")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let r = s.init(&[]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("launch template 'cci-scaler-demo-runner' exists but is not tagged cci-scaler:stack=demo"),
        "{r:?}"
    );
    // The steps before it ran: a partial stack.
    assert_eq!(s.cci.tokens().len(), 1);
    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r);
    let lt = actions(&v)
        .into_iter()
        .find(|(k, _)| k == "launch template")
        .unwrap();
    assert_eq!(lt.1, "foreign", "left alone");
    assert!(r.stderr.contains("left alone"), "{r:?}");
    let lts = aws_sdk_ec2::Client::new(&s.moto.config)
        .describe_launch_templates()
        .send()
        .await
        .unwrap();
    assert_eq!(
        lts.launch_templates().len(),
        1,
        "the foreign template is untouched"
    );
    // Everything tagged is gone.
    let sm = aws_sdk_secretsmanager::Client::new(&s.moto.config);
    assert!(
        sm.list_secrets()
            .send()
            .await
            .unwrap()
            .secret_list()
            .is_empty()
    );
    assert!(s.cci.tokens().is_empty());
}

/// A group of our name in another VPC, not ours, neither hides ours from
/// teardown nor is touched by it (teardown used to find the group by name
/// alone, stop at the foreign one and leave ours behind on every run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_removes_our_security_group_beside_a_foreign_one_of_the_same_name() {
    let s = Stack::new().await;
    let ec2 = aws_sdk_ec2::Client::new(&s.moto.config);
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.9.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_string();
    let foreign = ec2
        .create_security_group()
        .group_name("cci-scaler-demo-runner")
        .description("someone else's")
        .vpc_id(&vpc)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string();
    let r = s.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let named = |ec2: aws_sdk_ec2::Client| async move {
        let mut ids: Vec<String> = ec2
            .describe_security_groups()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("group-name")
                    .values("cci-scaler-demo-runner")
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .security_groups()
            .iter()
            .map(|g| g.group_id().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        named(ec2.clone()).await.len(),
        2,
        "ours and the foreign one"
    );
    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        item(&json(&r), "security group")["action"],
        "delete",
        "{r:?}"
    );
    assert_no_stack_left(&s).await;
    assert_eq!(
        named(ec2.clone()).await,
        vec![foreign.clone()],
        "the foreign one is untouched"
    );
    // A second teardown: ours is absent, the foreign one reported, not touched.
    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        item(&json(&r), "security group")["action"],
        "foreign",
        "{r:?}"
    );
    assert_eq!(named(ec2).await, vec![foreign]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_errors_are_clear_and_write_nothing() {
    let s = Stack::new().await;
    let nothing_written = || async {
        let sm = aws_sdk_secretsmanager::Client::new(&s.moto.config);
        assert!(
            sm.list_secrets()
                .send()
                .await
                .unwrap()
                .secret_list()
                .is_empty()
        );
        assert!(s.cci.classes().is_empty() && s.cci.tokens().is_empty());
    };

    s.cci.set_fault(Some(Fault::Status(401)));
    let r = s.init(&[]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("rejected the personal API token (HTTP 401)"),
        "{r:?}"
    );
    nothing_written().await;
    s.cci.set_fault(None);

    let r = s.init(&["--subnet", "subnet-0badbad0"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("subnet subnet-0badbad0 not found in us-east-1"),
        "{r:?}"
    );
    nothing_written().await;

    let mut cmd = s.cmd(&[
        "init",
        "--stack",
        "demo",
        "--resource-class",
        RC,
        "--lambda-zip",
        s.zip.to_str().unwrap(),
    ]);
    cmd.env_remove("AWS_REGION");
    let r = run(cmd).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no AWS region configured"), "{r:?}");

    let mut cmd = s.cmd(&[
        "init",
        "--stack",
        "demo",
        "--resource-class",
        RC,
        "--lambda-zip",
        s.zip.to_str().unwrap(),
    ]);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let r = run(cmd).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("no AWS credentials could be loaded"),
        "{r:?}"
    );

    for (args, want) in [
        (vec!["--root-volume-gb", "2"], "root volume 2 GB"),
        (vec!["--instance-type", "big"], "instance type \"big\""),
        (vec!["--idle-timeout", "soon"], "invalid idle timeout"),
    ] {
        let r = s.init(&args).await;
        assert_eq!(r.code, 2, "bad usage: {args:?}: {r:?}");
        assert!(r.stderr.contains(want), "{args:?}: {r:?}");
    }
    nothing_written().await;

    // The stack file, with flags winning over it.
    std::fs::write(
        s.home.path().join("cci-scaler.toml"),
        format!(
            "stack = \"filed\"\nresource_class = \"{RC}\"\nimage = \"{IMAGE}\"\nmax_instances = 3\n"
        ),
    )
    .unwrap();
    let r = run(s.cmd(&[
        "--output",
        "json",
        "init",
        "--dry-run",
        "--max-instances",
        "4",
        "--lambda-zip",
        s.zip.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r);
    assert_eq!(v["stack"], "filed");
    assert_eq!(v["settings"]["max_instances"], 4);
    nothing_written().await;
    let _ = REGION;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_run_one_at_a_time_and_add_up_to_init() {
    let s = Stack::new().await;
    let step = |name: &'static str| run(s.converge(&["step", name], &[]));
    // A step whose prerequisite is missing says which step to run first.
    let r = step("group").await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(
            "step group needs the launch template: run `cci-scaler step launch-template`"
        ),
        "{r:?}"
    );

    let expect = [
        (
            "resource-class",
            vec!["resource class", "runner token secret"],
        ),
        ("secrets", vec!["scaler secret"]),
        ("launch-template", vec!["security group", "launch template"]),
        ("group", vec!["Auto Scaling group"]),
        ("iam", vec!["IAM role", "instance profile", "IAM role"]),
        ("lambda", vec!["log group", "Lambda function"]),
        ("schedule", vec!["EventBridge rule"]),
        ("alarms", vec!["alarms", "dashboard"]),
    ];
    for (name, kinds) in expect {
        let r = step(name).await;
        assert_eq!(r.code, 0, "{name}: {r:?}");
        let v = json(&r);
        let got: Vec<(String, String)> = actions(&v);
        assert_eq!(
            got.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            kinds,
            "{name}"
        );
        assert!(got.iter().all(|(_, a)| a == "create"), "{name}: {got:?}");
        // Repeating a step changes nothing.
        let again = json(&step(name).await);
        assert_eq!(again["changed"], false, "{name} again: {again}");
    }
    // The steps add up to the whole stack: init has nothing left to do.
    let v = json(&s.init(&[]).await);
    assert_eq!(v["changed"], false, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_init_is_completed_by_a_rerun_and_removed_by_teardown() {
    let s = Stack::new().await;
    // The stand-in holds its answer to the runner-token request open (the
    // token exists at CircleCI, init has not stored it yet) until the signal
    // has been sent: the interrupt lands at that exact point whatever the
    // machine's load.
    s.cci.hold("POST /api/v3/runner/token:answered");
    let mut cmd = s.converge(&["init"], &[]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    s.cci.wait_held(std::time::Duration::from_secs(60)).await;
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().await.unwrap();
    s.cci.release();
    assert!(!out.status.success(), "init was interrupted: {out:?}");
    let orphan = s.cci.tokens();
    assert_eq!(orphan.len(), 1, "the token was created: {orphan:?}");

    // A re-run completes the stack.
    let r = s.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r);
    assert!(
        actions(&v).iter().any(|(_, a)| a == "create"),
        "something was left to do: {v}"
    );
    assert_eq!(s.init(&[]).await.code, 0);
    assert_eq!(json(&s.init(&[]).await)["changed"], false);
    // The token that never reached its secret was revoked; one token is left.
    let tokens = s.cci.tokens();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_ne!(tokens[0].1, orphan[0].1, "the orphaned token was revoked");
    // Teardown removes all of it.
    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_no_stack_left(&s).await;
}

/// The IAM check above is not vacuous: parliament runs and reports a policy
/// whose resource cannot match its action as "MEDIUM".
#[test]
fn parliament_reports_a_mismatched_policy() {
    let bad = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Action": "s3:GetObject", "Resource": "arn:aws:s3:::bucket"}]});
    let findings = crate::support::parliament(&bad);
    assert!(
        findings
            .iter()
            .any(|f| f.severity == "MEDIUM" && f.issue == "RESOURCE_MISMATCH"),
        "{findings:?}"
    );
}

/// Off EC2 with no region: one clean error line, none of the SDK's IMDS
/// diagnostics (they are behind -v). A stand-in metadata service on loopback
/// answers every request with an error page, as a non-EC2 network might.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_region_off_ec2_prints_one_line() {
    let s = Stack::new().await;
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::FORBIDDEN,
            "<html>\n<body>\nnot a metadata service\n</body>\n</html>\n",
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let imds = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    for verbose in [false, true] {
        let mut cmd = s.converge(&["init"], if verbose { &["-v"] } else { &[] });
        cmd.env_remove("AWS_REGION")
            .env_remove("AWS_EC2_METADATA_DISABLED")
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds);
        let r = run(cmd).await;
        assert_eq!(r.code, 1, "{r:?}");
        if verbose {
            assert!(r.stderr.lines().count() > 1, "-v shows diagnostics: {r:?}");
        } else {
            assert_eq!(r.stderr.trim_end().lines().count(), 1, "{r:?}");
            assert!(
                r.stderr.starts_with("error: no AWS region configured"),
                "{r:?}"
            );
        }
    }
    server.abort();
}

/// Teardown by the stack name alone, of a stack interrupted right after its
/// runner token was made (the scaler secret, made first, recorded the class):
/// the token and the class are removed too. A stack that recorded nothing
/// (never created, or gone) is no error, and says what it did not look at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_by_name_removes_a_partial_stack_and_its_tokens() {
    let s = Stack::new().await;
    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("was not looked at"), "{r:?}");
    assert!(r.stderr.contains("--resource-class"), "{r:?}");

    s.cci.hold("POST /api/v3/runner/token:answered");
    let mut cmd = s.converge(&["init"], &[]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    s.cci.wait_held(std::time::Duration::from_secs(60)).await;
    child.kill().await.unwrap();
    s.cci.release();
    assert_eq!(s.cci.tokens().len(), 1);

    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(s.cci.tokens().is_empty(), "{r:?}");
    assert!(s.cci.classes().is_empty(), "{r:?}");
    assert_no_stack_left(&s).await;
}

/// A stack made before pools existed keeps every name and setting: init of
/// the new code on it changes nothing. With CCI_SCALER_UPGRADE_FROM (the
/// path of an older cci-scaler; `scripts/upgrade-check.sh REV` builds one)
/// the stack is made by that binary; without it, by this one, and the
/// names and shapes a stack without pools had are checked one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_without_pools_upgrades_with_no_change() {
    let s = Stack::new().await;
    let cfg = &s.moto.config;
    let old = std::env::var_os("CCI_SCALER_UPGRADE_FROM").map(std::path::PathBuf::from);
    let first = old
        .clone()
        .unwrap_or_else(|| crate::support::bin("cci-scaler"));
    let r = run(s.converge_with(&first, &["init"], &[])).await;
    assert_eq!(r.code, 0, "{r:?}");
    // Scaled out, so the group has instances and a desired capacity the
    // upgrade must not touch.
    s.moto
        .asg()
        .set_desired_capacity()
        .auto_scaling_group_name("demo-runners")
        .desired_capacity(2)
        .send()
        .await
        .unwrap();

    let r = s.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r);
    let changed: Vec<_> = actions(&v)
        .into_iter()
        .filter(|(_, a)| a != "unchanged" && a != "keep")
        .collect();
    if old.is_some() {
        // From an older build (default 2c1d267): the launch template gets a
        // new version (new user data) and the Lambda a new setting (its
        // stack, a metric dimension); kinds added since (the alarms and
        // their dashboard, on by default) are created; nothing else changes.
        assert!(
            changed.iter().all(|(k, a)| match a.as_str() {
                "update" => k == "launch template" || k == "Lambda function",
                "create" => k == "alarms" || k == "dashboard",
                _ => false,
            }),
            "upgrade changed {changed:?}: {v}"
        );
    } else {
        assert!(changed.is_empty(), "upgrade changed {changed:?}: {v}");
        assert_eq!(v["changed"], false);
    }
    assert_eq!(s.moto.desired("demo-runners").await, 2);

    // The names and shapes of a stack without pools.
    let names: Vec<(String, String)> = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap().to_string(),
                i["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (kind, name) in [
        ("resource class", RC),
        ("runner token secret", "cci-scaler/demo/runner-token"),
        ("launch template", "cci-scaler-demo-runner"),
        ("Auto Scaling group", "demo-runners"),
        ("scaler secret", "cci-scaler/demo/scaler"),
        ("Lambda function", "cci-scaler-demo-scaler"),
    ] {
        assert!(
            names.contains(&(kind.to_string(), name.to_string())),
            "{kind} {name}: {names:?}"
        );
    }
    assert_eq!(s.cci.tokens()[0].0, "cci-scaler-demo");
    let sm = aws_sdk_secretsmanager::Client::new(cfg);
    let scaler = sm
        .get_secret_value()
        .secret_id("cci-scaler/demo/scaler")
        .send()
        .await
        .unwrap();
    let scaler: Value = serde_json::from_str(scaler.secret_string().unwrap()).unwrap();
    let mut keys: Vec<&String> = scaler.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["circle_token", "resource_class"]);
    let env = crate::support::function_env(cfg, "cci-scaler-demo-scaler").await;
    assert_eq!(env["CCI_SCALER_ASG"], "demo-runners");
    assert_eq!(env["CCI_SCALER_RESOURCE_CLASS"], RC);
    assert!(!env.contains_key("CCI_SCALER_POOLS"));
    let g = s
        .moto
        .asg()
        .describe_auto_scaling_groups()
        .auto_scaling_group_names("demo-runners")
        .send()
        .await
        .unwrap()
        .auto_scaling_groups()[0]
        .clone();
    assert!(g.mixed_instances_policy().is_none());
    assert!(
        g.tags().iter().all(|t| t.key() != Some("cci-scaler:pool")),
        "{:?}",
        g.tags()
    );
    let iam = aws_sdk_iam::Client::new(cfg);
    let policy = crate::support::role_policy(&iam, "cci-scaler-demo-runner").await;
    for st in policy["Statement"].as_array().unwrap() {
        assert!(st["Resource"].is_string(), "{policy}");
    }
    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
}

/// A stack with headroom: the Lambda gets the periods, its role may tag its
/// group (nothing more), the launch template lets instances read their tags,
/// the user data looks at spare-until; converged, nothing changes; status
/// names the active period and the spares up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_with_headroom_and_status_of_spares() {
    let s = Stack::new().await;
    let cfg = &s.moto.config;
    std::fs::write(
        s.home.path().join("cci-scaler.toml"),
        "[[headroom]]\nschedule = \"* * * * *\"\nduration = \"2h\"\ntime_zone = \"Europe/Berlin\"\ncount = 2\n",
    )
    .unwrap();
    let r = s.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let env = crate::support::function_env(cfg, "cci-scaler-demo-scaler").await;
    let hr: Value = serde_json::from_str(&env["CCI_SCALER_HEADROOM"]).unwrap();
    assert_eq!(hr[0]["count"], 2);
    assert_eq!(hr[0]["time_zone"], "Europe/Berlin");
    let iam = aws_sdk_iam::Client::new(cfg);
    let policy = crate::support::role_policy(&iam, "cci-scaler-demo-scaler").await;
    let tag = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["Sid"] == "TagSparesOfOwnGroups")
        .expect("tag permission");
    assert_eq!(tag["Action"], "autoscaling:CreateOrUpdateTags");
    assert!(
        tag["Resource"]
            .as_str()
            .unwrap()
            .contains(":autoScalingGroup:"),
        "{tag}"
    );
    assert_least_privilege(&policy);
    let findings = crate::support::parliament(&policy);
    assert!(findings.is_empty(), "{findings:?}");
    let ec2 = aws_sdk_ec2::Client::new(cfg);
    let d = crate::support::template_data(&ec2, "cci-scaler-demo-runner").await;
    assert_eq!(
        d.metadata_options()
            .and_then(|m| m.instance_metadata_tags())
            .map(|t| t.as_str()),
        Some("enabled")
    );
    let ud = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(d.user_data().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(ud.contains("meta-data/tags/instance/cci-scaler:spare-until"));

    let r = s.init(&[]).await;
    let v = json(&r);
    assert_eq!(v["changed"], false, "{v}");

    // Status: the period is active; two runners registered, one running a
    // task: one spare up.
    s.moto
        .asg()
        .set_desired_capacity()
        .auto_scaling_group_name("demo-runners")
        .desired_capacity(2)
        .send()
        .await
        .unwrap();
    s.cci.set_queue(0, 1);
    s.cci.set_runners(&["i-1", "i-2"]);
    let r = run(s.cmd(&["status", "--stack", "demo"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("headroom: period 1 active until"),
        "{r:?}"
    );
    assert!(r.stdout.contains("2 spare(s) wanted, 1 up"), "{r:?}");
    let r = run(s.cmd(&["--output", "json", "status", "--stack", "demo"])).await;
    let st = json(&r);
    assert_eq!(st["pools"][0]["headroom"]["count"], 2, "{st}");
    assert_eq!(st["pools"][0]["fleet"]["spares_up"], 1, "{st}");
    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
}

/// The running builder of `image build`, once it is up.
async fn builder(s: &Stack) -> String {
    let ec2 = aws_sdk_ec2::Client::new(&s.moto.config);
    crate::support::eventually(
        "a running builder",
        std::time::Duration::from_secs(60),
        || {
            let ec2 = ec2.clone();
            async move {
                let out = ec2
                    .describe_instances()
                    .filters(
                        aws_sdk_ec2::types::Filter::builder()
                            .name("tag:cci-scaler:role")
                            .values("builder")
                            .build(),
                    )
                    .filters(
                        aws_sdk_ec2::types::Filter::builder()
                            .name("instance-state-name")
                            .values("running")
                            .build(),
                    )
                    .send()
                    .await
                    .ok()?;
                out.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .find_map(|i| i.instance_id().map(String::from))
            }
        },
    )
    .await
}

async fn instance_state(s: &Stack, id: &str) -> String {
    let out = aws_sdk_ec2::Client::new(&s.moto.config)
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    out.reservations()[0].instances()[0]
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_default()
}

/// `image build` against the emulator, the builder's "done" (it stops
/// itself) stood in by the test; `init` then launches from the image; a
/// builder that never finishes is terminated with its console output in the
/// error; `image prune` keeps the newest; teardown removes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_build_bakes_an_image_that_init_uses() {
    let s = Stack::new().await;
    std::fs::write(
        s.home.path().join("cci-scaler.toml"),
        format!(
            "stack = \"demo\"\nresource_class = \"{RC}\"\nimage = \"{IMAGE}\"\nmax_instances = 6\n"
        ),
    )
    .unwrap();
    let r = s.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let ec2 = aws_sdk_ec2::Client::new(&s.moto.config);

    let build = |timeout: &str| {
        s.cmd(&[
            "--output",
            "json",
            "image",
            "build",
            "--poll-interval",
            "1s",
            "--timeout",
            timeout,
        ])
    };
    // A builder that never signals: terminated, with its console output.
    let r = run(build("3s")).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("did not finish within 3s"), "{r:?}");
    assert!(r.stderr.contains("console output ends"), "{r:?}");
    let failed = builder_ids(&s).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(instance_state(&s, &failed[0]).await, "terminated");

    // A builder that finishes (stops itself; the test stands in for it).
    let mut images = Vec::new();
    for _ in 0..2 {
        let child = tokio::spawn(run(build("120s")));
        let id = builder(&s).await;
        ec2.stop_instances().instance_ids(&id).send().await.unwrap();
        let r = child.await.unwrap();
        assert_eq!(r.code, 0, "{r:?}");
        let v = json(&r);
        let image = v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["kind"] == "baked image")
            .and_then(|i| i["id"].as_str())
            .unwrap()
            .to_string();
        assert_eq!(
            instance_state(&s, &id).await,
            "terminated",
            "no builder left"
        );
        images.push(image);
    }
    let img = ec2
        .describe_images()
        .image_ids(&images[1])
        .send()
        .await
        .unwrap()
        .images()[0]
        .clone();
    let tag = |k: &str| {
        img.tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value().map(String::from))
    };
    assert_eq!(tag("cci-scaler:stack").as_deref(), Some("demo"));
    assert_eq!(tag("cci-scaler:image-of").as_deref(), Some("demo-runners"));
    assert_eq!(tag("cci-scaler:install-hash").map(|h| h.len()), Some(16));

    // init launches from the newest baked image.
    let r = s.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("launching from the baked image {}", images[1])),
        "{r:?}"
    );
    let d = crate::support::template_data(&ec2, "cci-scaler-demo-runner").await;
    assert_eq!(d.image_id(), Some(images[1].as_str()));

    // Prune keeps the newest one.
    let r = run(s.cmd(&["--output", "json", "image", "prune", "--keep", "1"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    let pruned: Vec<String> = json(&r)["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(pruned, [images[0].clone()]);

    // Teardown removes the stack's images with the rest.
    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
    let left = ec2
        .describe_images()
        .owners("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:cci-scaler:stack")
                .values("demo")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(left.images().is_empty(), "{:?}", left.images());
}

async fn builder_ids(s: &Stack) -> Vec<String> {
    let out = aws_sdk_ec2::Client::new(&s.moto.config)
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:cci-scaler:role")
                .values("builder")
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(String::from))
        .collect()
}

/// Alarms, their topic and the dashboard: created with the stack, read back,
/// converged, changed with the settings, and removed by teardown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_topic_and_dashboard_are_made_converged_and_removed() {
    let s = Stack::new().await;
    let cfg = &s.moto.config;
    std::fs::write(
        s.home.path().join("cci-scaler.toml"),
        "usage_org = \"org-1\"\n[alarms]\nemail = \"ops@example.com\"\nstarved_minutes = 15\n",
    )
    .unwrap();
    let r = s.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    // usage_org: the Lambda reports real waits into its own record, and
    // may read and write that record only.
    let env = crate::support::function_env(cfg, "cci-scaler-demo-scaler").await;
    assert_eq!(env["CCI_SCALER_USAGE_ORG"], "org-1");
    assert_eq!(env["CCI_SCALER_USAGE_RECORD"], "/cci-scaler/demo/usage");
    let model: Value = serde_json::from_str(&env["CCI_SCALER_MODEL"]).unwrap();
    assert_eq!(model["max_instances"], 6, "{model}");
    assert_eq!(model["idle_timeout_s"], 60, "{model}");
    let policy =
        crate::support::role_policy(&aws_sdk_iam::Client::new(cfg), "cci-scaler-demo-scaler").await;
    let ssm = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["Sid"] == "DemandRecordsOfOwnPools")
        .unwrap_or_else(|| panic!("{policy}"));
    assert!(
        ssm["Resource"]
            .to_string()
            .contains(":parameter/cci-scaler/demo/usage"),
        "{ssm}"
    );
    let cw = aws_sdk_cloudwatch::Client::new(cfg);
    let alarms = cw
        .describe_alarms()
        .alarm_name_prefix("cci-scaler-demo-")
        .send()
        .await
        .unwrap();
    let mut names: Vec<&str> = alarms
        .metric_alarms()
        .iter()
        .filter_map(|a| a.alarm_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cci-scaler-demo-boots-failing",
            "cci-scaler-demo-scaler-failing",
            "cci-scaler-demo-starved"
        ]
    );
    let starved = alarms
        .metric_alarms()
        .iter()
        .find(|a| a.alarm_name() == Some("cci-scaler-demo-starved"))
        .unwrap();
    assert_eq!(starved.namespace(), Some("cci-scaler"));
    assert_eq!(starved.metric_name(), Some("Starved"));
    assert_eq!(starved.evaluation_periods(), Some(15));
    assert!(
        starved
            .alarm_description()
            .unwrap()
            .contains("raise max_instances")
    );
    let dims: Vec<(&str, &str)> = starved
        .dimensions()
        .iter()
        .map(|d| (d.name().unwrap(), d.value().unwrap()))
        .collect();
    assert!(
        dims.contains(&("pool", "demo-runners")) && dims.contains(&("stack", "demo")),
        "{dims:?}"
    );
    let failing = alarms
        .metric_alarms()
        .iter()
        .find(|a| a.alarm_name() == Some("cci-scaler-demo-scaler-failing"))
        .unwrap();
    assert_eq!(failing.namespace(), Some("AWS/Lambda"));
    assert_eq!(failing.datapoints_to_alarm(), Some(3));
    let topic = failing.alarm_actions()[0].clone();
    assert!(topic.ends_with(":cci-scaler-demo-alarms"), "{topic}");
    let sns = aws_sdk_sns::Client::new(cfg);
    let subs = sns
        .list_subscriptions_by_topic()
        .topic_arn(&topic)
        .send()
        .await
        .unwrap();
    assert_eq!(subs.subscriptions()[0].endpoint(), Some("ops@example.com"));
    let dash = cw
        .get_dashboard()
        .dashboard_name("cci-scaler-demo")
        .send()
        .await
        .unwrap();
    let body: Value = serde_json::from_str(dash.dashboard_body().unwrap()).unwrap();
    assert!(body["widgets"].as_array().unwrap().len() >= 5, "{body}");
    assert!(
        body.to_string().contains("RealWaitP95") && body.to_string().contains("SimWaitP95"),
        "a widget of the waits jobs really had: {body}"
    );

    // Converged: nothing changes.
    let r = s.init(&[]).await;
    assert_eq!(json(&r)["changed"], false, "{r:?}");

    // Before any metric: said plainly, not "-0.0 instance-hours".
    let r = run(s.cmd(&["status", "--stack", "demo", "--since", "1h"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("last 1h (fleet): no metrics in this period")
            && !r.stdout.contains(" -0"),
        "{r:?}"
    );
    // status --since sums up the metrics (put here as the Lambda's EMF
    // lines would make them).
    let now = std::time::SystemTime::now();
    for (ago_min, unclaimed, desired, reaped) in [
        (50u64, 2.0, 2.0, 0.0),
        (30, 7.0, 5.0, 1.0),
        (10, 1.0, 5.0, 1.0),
    ] {
        let at = aws_sdk_cloudwatch::primitives::DateTime::from(
            now - std::time::Duration::from_secs(ago_min * 60),
        );
        let datum = |name: &str, v: f64| {
            aws_sdk_cloudwatch::types::MetricDatum::builder()
                .metric_name(name)
                .value(v)
                .timestamp(at)
                .dimensions(
                    aws_sdk_cloudwatch::types::Dimension::builder()
                        .name("stack")
                        .value("demo")
                        .build(),
                )
                .dimensions(
                    aws_sdk_cloudwatch::types::Dimension::builder()
                        .name("pool")
                        .value("demo-runners")
                        .build(),
                )
                .build()
        };
        cw.put_metric_data()
            .namespace("cci-scaler")
            .metric_data(datum("Unclaimed", unclaimed))
            .metric_data(datum("Desired", desired))
            .metric_data(datum("InService", desired))
            .metric_data(datum("Reaped", reaped))
            .send()
            .await
            .unwrap();
        if ago_min == 50 {
            // Yesterday's real waits, dated at its noon as the Lambda's
            // daily report dates them.
            let secs = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            let noon = secs - secs % 86_400 - 86_400 + 43_200;
            let at = aws_sdk_cloudwatch::primitives::DateTime::from_secs(noon as i64);
            let real = |name: &str, v: f64| {
                let d = datum(name, v);
                aws_sdk_cloudwatch::types::MetricDatum::builder()
                    .metric_name(name)
                    .value(v)
                    .timestamp(at)
                    .set_dimensions(Some(d.dimensions().to_vec()))
                    .build()
            };
            cw.put_metric_data()
                .namespace("cci-scaler")
                .metric_data(real("RealWaitP50", 20.0))
                .metric_data(real("RealWaitP95", 75.0))
                .metric_data(real("RealWaitMax", 190.0))
                .metric_data(real("RealJobs", 42.0))
                .metric_data(real("SimWaitP95", 58.0))
                .send()
                .await
                .unwrap();
        }
    }
    let r = run(s.cmd(&[
        "--output", "json", "status", "--stack", "demo", "--since", "2h",
    ]))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let h = &json(&r)["history"][0];
    assert_eq!(h["peak_unclaimed"], 7.0, "{h}");
    assert_eq!(h["peak_desired"], 5.0, "{h}");
    assert_eq!(h["reaped"], 2.0, "{h}");
    assert_eq!(h["step_seconds"], 120, "{h}");
    let r = run(s.cmd(&["status", "--stack", "demo", "--since", "2h"])).await;
    assert!(
        r.stdout
            .contains("last 2h (fleet): peak queue 7, peak desired 5"),
        "{r:?}"
    );
    // Over two days: yesterday's real waits beside the scaler's figures.
    let r = run(s.cmd(&[
        "--output", "json", "status", "--stack", "demo", "--since", "2d",
    ]))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let real = &json(&r)["history"][0]["real_waits"];
    assert_eq!(real.as_array().map(Vec::len), Some(1), "{real}");
    assert_eq!(real[0]["p95_s"], 75.0, "{real}");
    assert_eq!(real[0]["jobs"], 42.0, "{real}");
    assert_eq!(real[0]["sim_p95_s"], 58.0, "{real}");
    let r = run(s.cmd(&["status", "--stack", "demo", "--since", "2d"])).await;
    assert!(
        r.stdout.contains("queue wait jobs really had")
            && r.stdout
                .contains("20s   1m15s   3m10s  (42 jobs, simulated p95 58s)"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("  queue ") && r.stdout.contains('█'),
        "{r:?}"
    );

    // No email any more: the topic goes, the alarms lose their actions.
    std::fs::write(
        s.home.path().join("cci-scaler.toml"),
        "[alarms]\nstarved_minutes = 15\n",
    )
    .unwrap();
    let r = s.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r);
    assert!(
        actions(&v).contains(&("alarm topic".to_string(), "delete".to_string())),
        "{v}"
    );
    let failing = cw
        .describe_alarms()
        .alarm_names("cci-scaler-demo-scaler-failing")
        .send()
        .await
        .unwrap();
    assert!(failing.metric_alarms()[0].alarm_actions().is_empty());

    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
    let left = cw
        .describe_alarms()
        .alarm_name_prefix("cci-scaler-demo-")
        .send()
        .await
        .unwrap();
    assert!(left.metric_alarms().is_empty());
    assert!(
        cw.get_dashboard()
            .dashboard_name("cci-scaler-demo")
            .send()
            .await
            .is_err()
    );
}

const ORG: &str = "8a1c3f0e-2b4d-4e6f-9a8b-7c6d5e4f3a2b";
const PROJECT_A: &str = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
const PROJECT_B: &str = "11111111-2222-4333-8444-555555555555";

async fn attached(iam: &aws_sdk_iam::Client, role: &str) -> Vec<String> {
    let out = iam
        .list_attached_role_policies()
        .role_name(role)
        .send()
        .await
        .unwrap();
    out.attached_policies()
        .iter()
        .filter_map(|p| p.policy_arn().map(String::from))
        .collect()
}

async fn managed_policy(iam: &aws_sdk_iam::Client, name: &str) -> String {
    let doc = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::artifacts/*"}]}"#;
    iam.create_policy()
        .policy_name(name)
        .policy_document(doc)
        .send()
        .await
        .unwrap()
        .policy()
        .unwrap()
        .arn()
        .unwrap()
        .to_string()
}

/// `[job_role]`: the OIDC provider for the CircleCI organisation and a role
/// only its jobs (of the listed projects) may assume; converged, printed,
/// handed over when another stack still uses the provider, removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_role_and_oidc_provider_are_made_converged_and_removed() {
    let s = Stack::new().await;
    let iam = aws_sdk_iam::Client::new(&s.moto.config);
    let deploy = managed_policy(&iam, "ci-deploy").await;
    let read = managed_policy(&iam, "ci-read").await;
    let file = |projects: &str, policy: &str| {
        std::fs::write(
            s.home.path().join("cci-scaler.toml"),
            format!(
                "[runner]\njob_sudo = true\n\n[job_role]\norg_id = \"{ORG}\"\npolicy_arns = [\"{policy}\"]\n{projects}"
            ),
        )
        .unwrap();
    };
    file(
        &format!(
            "projects = [\"{PROJECT_A}\", \"{}\"]\n",
            PROJECT_B.to_uppercase()
        ),
        &deploy,
    );
    // The plan names both; nothing is made.
    let r = s.init(&["--dry-run"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let acts = actions(&json(&r));
    assert_action(&acts, "OIDC provider", "create");
    assert_action(&acts, "job role", "create");
    let none = iam.list_open_id_connect_providers().send().await.unwrap();
    assert!(none.open_id_connect_provider_list().is_empty());
    let r = s.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    // job_sudo: one warning line.
    let warnings: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning: job_sudo"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", r.stderr);
    assert!(
        warnings[0].contains("instance role's credentials"),
        "{}",
        r.stderr
    );
    let v = json(&r);
    let acts = actions(&v);
    assert_action(&acts, "OIDC provider", "create");
    assert_action(&acts, "job role", "create");
    let role_arn = v["job_role_arn"].as_str().unwrap().to_string();
    assert!(
        role_arn.ends_with(":role/cci-scaler-demo-job"),
        "{role_arn}"
    );
    // The config snippet assumes it through the aws-cli orb.
    let snippet = v["circleci_config"].as_str().unwrap();
    assert!(snippet.contains("aws-cli: circleci/aws-cli@5"), "{snippet}");
    assert!(
        snippet.contains(&format!(
            "- aws-cli/setup:\n          role_arn: {role_arn}\n"
        )),
        "{snippet}"
    );

    // The provider: issuer, audience, tag.
    let account = "123456789012";
    let provider_arn = format!("arn:aws:iam::{account}:oidc-provider/oidc.circleci.com/org/{ORG}");
    let p = iam
        .get_open_id_connect_provider()
        .open_id_connect_provider_arn(&provider_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(
        p.url(),
        Some(format!("oidc.circleci.com/org/{ORG}").as_str())
    );
    assert_eq!(p.client_id_list(), [ORG]);
    assert!(
        p.tags()
            .iter()
            .any(|t| t.key() == "cci-scaler:stack" && t.value() == "demo"),
        "{:?}",
        p.tags()
    );
    // The role: only the organisation's tokens, only those projects.
    let trust = crate::support::role_trust(&iam, "cci-scaler-demo-job").await;
    let st = &trust["Statement"][0];
    assert_eq!(st["Principal"]["Federated"], provider_arn.as_str());
    assert_eq!(st["Action"], "sts:AssumeRoleWithWebIdentity");
    let iss = format!("oidc.circleci.com/org/{ORG}");
    assert_eq!(st["Condition"]["StringEquals"][format!("{iss}:aud")], ORG);
    assert_eq!(
        st["Condition"]["StringLike"][format!("{iss}:sub")],
        serde_json::json!([
            format!("org/{ORG}/project/{PROJECT_A}/user/*"),
            format!("org/{ORG}/project/{PROJECT_B}/user/*")
        ])
    );
    assert_eq!(
        attached(&iam, "cci-scaler-demo-job").await,
        [deploy.as_str()]
    );
    let role = iam
        .get_role()
        .role_name("cci-scaler-demo-job")
        .send()
        .await
        .unwrap();
    assert_eq!(role.role().unwrap().max_session_duration(), Some(3600));
    // The runner role is not touched by it: jobs get AWS only through OIDC.
    assert!(
        !crate::support::role_trust(&iam, "cci-scaler-demo-runner")
            .await
            .to_string()
            .contains("oidc")
    );

    // Converged: nothing changes.
    let r = s.init(&[]).await;
    assert_eq!(json(&r)["changed"], false, "{r:?}");

    // Fewer projects, another policy: the trust and the policies follow.
    file(&format!("projects = [\"{PROJECT_A}\"]\n"), &read);
    let r = s.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_action(&actions(&json(&r)), "job role", "update");
    let trust = crate::support::role_trust(&iam, "cci-scaler-demo-job").await;
    assert_eq!(
        trust["Statement"][0]["Condition"]["StringLike"][format!("{iss}:sub")],
        serde_json::json!([format!("org/{ORG}/project/{PROJECT_A}/user/*")])
    );
    assert_eq!(attached(&iam, "cci-scaler-demo-job").await, [read.as_str()]);
    // No projects: every project of the organisation (still only it).
    file("", &read);
    let r = s.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let trust = crate::support::role_trust(&iam, "cci-scaler-demo-job").await;
    let cond = &trust["Statement"][0]["Condition"];
    assert_eq!(
        cond["StringLike"][format!("{iss}:sub")],
        serde_json::json!([format!("org/{ORG}/project/*")])
    );
    assert_eq!(cond["StringEquals"][format!("{iss}:aud")], ORG);

    // Another stack's job role trusts the same provider: teardown hands the
    // provider over instead of breaking that role; that stack's teardown
    // removes it.
    iam.create_role()
        .role_name("cci-scaler-other-job")
        .assume_role_policy_document(trust.to_string())
        .tags(
            aws_sdk_iam::types::Tag::builder()
                .key("cci-scaler:stack")
                .value("other")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r);
    let acts = actions(&v);
    assert_action(&acts, "job role", "delete");
    assert_action(&acts, "OIDC provider", "keep");
    assert!(
        iam.get_role()
            .role_name("cci-scaler-demo-job")
            .send()
            .await
            .is_err()
    );
    let p = iam
        .get_open_id_connect_provider()
        .open_id_connect_provider_arn(&provider_arn)
        .send()
        .await
        .unwrap();
    assert!(
        p.tags()
            .iter()
            .any(|t| t.key() == "cci-scaler:stack" && t.value() == "other"),
        "handed over: {:?}",
        p.tags()
    );
    let r = run(s.cmd(&["--output", "json", "teardown", "--stack", "other", "--yes"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        iam.get_open_id_connect_provider()
            .open_id_connect_provider_arn(&provider_arn)
            .send()
            .await
            .is_err(),
        "the last stack's teardown removes the provider"
    );
    assert!(
        iam.get_role()
            .role_name("cci-scaler-other-job")
            .send()
            .await
            .is_err()
    );

    // A provider made elsewhere (not tagged): used as it is, never removed.
    iam.create_open_id_connect_provider()
        .url(format!("https://oidc.circleci.com/org/{ORG}"))
        .client_id_list(ORG)
        .send()
        .await
        .unwrap();
    let r = s.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let provider = item(&json(&r), "OIDC provider");
    assert_eq!(provider["action"], "foreign", "{provider}");
    assert!(
        provider["detail"]
            .as_str()
            .unwrap()
            .contains("never removed"),
        "{provider}"
    );
    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
    iam.get_open_id_connect_provider()
        .open_id_connect_provider_arn(&provider_arn)
        .send()
        .await
        .expect("a provider made elsewhere stays");
    assert!(
        iam.get_role()
            .role_name("cci-scaler-demo-job")
            .send()
            .await
            .is_err()
    );
}

/// The scaler's CircleCI token: init's own is an organisation admin's
/// (creating resource classes needs one), so status warns until the scaler
/// has a dedicated user's token (CIRCLECI_SCALER_TOKEN), which later inits keep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaler_token_is_a_dedicated_users_and_status_warns_otherwise() {
    const DEDICATED: &str = "CCIPAT_dedicated-reader-0123456789abcdef";
    let s = Stack::new().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&s.moto.config);
    let secret = || async {
        let v = secrets
            .get_secret_value()
            .secret_id("cci-scaler/demo/scaler")
            .send()
            .await
            .unwrap();
        serde_json::from_str::<Value>(v.secret_string().unwrap()).unwrap()
    };
    let status = || async {
        let r = run(s.cmd(&["--output", "json", "status", "--stack", "demo"])).await;
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            !r.all().contains(TOKEN) && !r.all().contains(DEDICATED),
            "{r:?}"
        );
        json(&r)["warnings"].clone()
    };

    let r = s.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let secret_item = item(&json(&r), "scaler secret");
    assert!(
        secret_item["detail"]
            .as_str()
            .unwrap()
            .contains("an organisation admin's"),
        "{secret_item}"
    );
    assert_eq!(secret().await["circle_token"], TOKEN);
    let w = status().await;
    assert_eq!(w.as_array().unwrap().len(), 1, "{w}");
    assert!(
        w[0].as_str().unwrap().contains("organisation admin")
            && w[0].as_str().unwrap().contains("CIRCLECI_SCALER_TOKEN"),
        "{w}"
    );

    let mut c = s.converge(&["init"], &[]);
    c.env("CIRCLECI_SCALER_TOKEN", DEDICATED);
    let r = run(c).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.all().contains(DEDICATED), "{r:?}");
    let secret_item = item(&json(&r), "scaler secret");
    assert_eq!(secret_item["action"], "update", "{secret_item}");
    let v = secret().await;
    assert_eq!(v["circle_token"], DEDICATED);
    assert_eq!(v["dedicated_token"], true);
    assert_eq!(status().await, serde_json::json!([]));

    // A later init without it keeps the dedicated token.
    let r = s.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(item(&json(&r), "scaler secret")["action"], "keep", "{r:?}");
    assert_eq!(secret().await["circle_token"], DEDICATED);
    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
}

/// A setup script that takes the user data over EC2's 16 KB: the launch
/// template gets it gzip-compressed (cloud-init inflates it), and a second
/// init finds it unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_setup_script_reaches_the_launch_template_gzip_compressed() {
    use std::io::Read;
    let s = Stack::new().await;
    let ec2 = aws_sdk_ec2::Client::new(&s.moto.config);
    let setup = s.home.path().join("setup.sh");
    let lines: String = (0..300)
        .map(|i| format!("echo 'setting {i} of the job environment' >> /etc/ci.conf\n"))
        .collect();
    std::fs::write(&setup, format!("{lines}echo long-setup-done\n")).unwrap();
    let r = s.init(&["--setup-script", setup.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let ver = latest_template(&ec2).await;
    let packed = base64::engine::general_purpose::STANDARD
        .decode(ver.launch_template_data().unwrap().user_data().unwrap())
        .unwrap();
    assert_eq!(&packed[..2], [0x1f, 0x8b], "gzip");
    assert!(packed.len() <= 16 * 1024, "{}", packed.len());
    let mut script = String::new();
    flate2::read::GzDecoder::new(&packed[..])
        .read_to_string(&mut script)
        .unwrap();
    assert!(script.starts_with("#!/bin/bash\n"));
    assert!(script.len() > 16 * 1024, "{}", script.len());
    assert!(script.contains("echo long-setup-done\n"));
    let r = s.init(&["--setup-script", setup.to_str().unwrap()]).await;
    assert_eq!(json(&r)["changed"], false, "{r:?}");
    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
}

/// The demo group's warm pool settings (`None`: no pool).
async fn warm_pool_of(s: &Stack) -> Option<aws_sdk_autoscaling::types::WarmPoolConfiguration> {
    s.moto
        .asg()
        .describe_warm_pool()
        .auto_scaling_group_name("demo-runners")
        .send()
        .await
        .unwrap()
        .warm_pool_configuration()
        .cloned()
}

/// The demo group's lifecycle hooks.
async fn launch_hooks_of(s: &Stack) -> Vec<aws_sdk_autoscaling::types::LifecycleHook> {
    s.moto
        .asg()
        .describe_lifecycle_hooks()
        .auto_scaling_group_name("demo-runners")
        .send()
        .await
        .unwrap()
        .lifecycle_hooks()
        .to_vec()
}

/// `warm_pool = 2`: init gives the group a warm pool of 2 stopped instances
/// (its size fixed: `MinSize` = `MaxGroupPreparedCapacity` = 2, no reuse on
/// scale-in) and the launch hook its instances complete (ABANDON after the
/// boot timeout); `status` shows the pool; without the key init removes pool
/// and hook; a spot pool with a warm pool is refused before any call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_is_made_shown_and_removed() {
    let s = Stack::new().await;
    let file = s.home.path().join("cci-scaler.toml");
    std::fs::write(&file, "warm_pool = 2\n").unwrap();
    let r = s.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let c = warm_pool_of(&s).await.expect("a warm pool");
    assert_eq!(c.min_size(), Some(2));
    assert_eq!(c.max_group_prepared_capacity(), Some(2));
    assert_ne!(
        c.instance_reuse_policy()
            .and_then(|p| p.reuse_on_scale_in()),
        Some(true)
    );
    let hooks = launch_hooks_of(&s).await;
    let h = &hooks[0];
    assert_eq!(h.lifecycle_hook_name(), Some("cci-scaler-launch"));
    assert_eq!(
        h.lifecycle_transition(),
        Some("autoscaling:EC2_INSTANCE_LAUNCHING")
    );
    assert_eq!(h.default_result(), Some("ABANDON"));
    // Again: nothing changes.
    let again = s.init(&[]).await;
    assert_eq!(again.code, 0, "{again:?}");
    let v = json(&again);
    assert!(
        actions(&v)
            .iter()
            .any(|(k, a)| k == "Auto Scaling group" && a == "keep"),
        "{v}"
    );
    let r = run(s.cmd(&["status", "--stack", "demo"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("warm pool 2 wanted, 0 warmed of 0"),
        "{r:?}"
    );

    // The key removed: pool and hook go.
    std::fs::write(&file, "").unwrap();
    let r = s.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(warm_pool_of(&s).await.is_none());
    assert!(launch_hooks_of(&s).await.is_empty());

    // A spot pool cannot have one: refused, naming the key.
    std::fs::write(&file, "warm_pool = 1\nmarket = \"spot\"\n").unwrap();
    let r = s.init(&[]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("warm_pool") && r.stderr.contains("Spot"),
        "{r:?}"
    );
    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
}

/// By default `init` bakes a pool's runner-ready image when none matches its
/// install inputs (the builder's "done", it stopping itself, stood in by the
/// test), says so, and launches from it; run again, it bakes nothing; a new
/// setup script bakes again; `--no-bake` skips and says the instances
/// install at boot; a dry run plans the bake. `status` warns about an image
/// older than `image_max_age`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_bakes_an_image_when_the_install_inputs_change() {
    let s = Stack::new().await;
    let file = s.home.path().join("cci-scaler.toml");
    std::fs::write(&file, "").unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&s.moto.config);
    let init = |extra: &'static [&'static str]| {
        let mut cmd = s.converge(&["init"], extra);
        cmd.env_remove("CCI_SCALER_NO_BAKE").args([
            "--bake-poll-interval",
            "1s",
            "--bake-timeout",
            "120s",
        ]);
        cmd
    };
    let plan = run(init(&["--dry-run"])).await;
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(
        actions(&json(&plan)).contains(&("baked image".to_string(), "create".to_string())),
        "{plan:?}"
    );
    assert!(
        builder_ids(&s).await.is_empty(),
        "a dry run launches nothing"
    );

    // The first init: the stack, then a bake before the launch template.
    let baked = |r: &Run| {
        json(r)["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["kind"] == "baked image")
            .and_then(|i| i["id"].as_str().map(String::from))
    };
    let child = tokio::spawn(run(init(&[])));
    let id = builder(&s).await;
    ec2.stop_instances().instance_ids(&id).send().await.unwrap();
    let r = child.await.unwrap();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("no runner-ready image yet: init bakes one"),
        "{r:?}"
    );
    let first = baked(&r).expect("a baked image");
    let d = crate::support::template_data(&ec2, "cci-scaler-demo-runner").await;
    assert_eq!(d.image_id(), Some(first.as_str()));
    assert_eq!(
        instance_state(&s, &id).await,
        "terminated",
        "no builder left"
    );

    // Again: the image matches, nothing is baked.
    let r = run(init(&[])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(baked(&r), None, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("launching from the baked image {first}")),
        "{r:?}"
    );

    // A setup script changes the install inputs: baked again.
    std::fs::write(s.home.path().join("setup.sh"), "#!/bin/bash\necho tools\n").unwrap();
    std::fs::write(&file, "[runner]\nsetup_script = \"setup.sh\"\n").unwrap();
    let r = run({
        let mut c = s.converge(&["init"], &["--no-bake"]);
        c.env_remove("CCI_SCALER_NO_BAKE");
        c
    })
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("--no-bake: instances install at boot"),
        "{r:?}"
    );
    let child = tokio::spawn(run(init(&[])));
    let id = builder(&s).await;
    ec2.stop_instances().instance_ids(&id).send().await.unwrap();
    let r = child.await.unwrap();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("other install inputs"), "{r:?}");
    let second = baked(&r).expect("baked again");
    assert_ne!(second, first);

    // status: the image is new; a max age of a day passes, and a bad one is
    // refused naming the key.
    let r = run(s.cmd(&["--output", "json", "status", "--stack", "demo"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r);
    assert_eq!(v["pools"][0]["image"]["id"], second.as_str(), "{v}");
    assert!(
        v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| !w.as_str().unwrap().contains("days old")),
        "{v}"
    );
    std::fs::write(
        &file,
        "image_max_age = \"1h\"\n[runner]\nsetup_script = \"setup.sh\"\n",
    )
    .unwrap();
    let r = run(s.cmd(&["status", "--stack", "demo"])).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("image_max_age"), "{r:?}");
    let r = s.teardown().await;
    assert_eq!(r.code, 0, "{r:?}");
}
