//! Real boots of the runner user data: the stack made by `init` in moto, one
//! of its group's instances booted for real under QEMU (Debian, real
//! cloud-init with its EC2 datasource, real systemd and netfilter), its
//! instance metadata served by the rig (IMDSv2 only), its AWS calls made
//! over TLS to the rig's gateway, which checks every SigV4 signature and
//! enforces the runner role's generated policy before moto sees the call.
//! The guest reaches nothing else. Each scenario is a fresh boot.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::init::Stack;
use crate::support::REGION;
use crate::support::rig::{Rig, RoleCreds};
use crate::support::vm::{Vm, image, lines_with};

const GROUP: &str = "demo-runners";
const RUNNER_ROLE: &str = "cci-scaler-demo-runner";
const BOOT: Duration = Duration::from_secs(420);

struct Boot {
    s: Stack,
    rig: Rig,
    instance: String,
    creds: RoleCreds,
}

/// `init` (with a stack file's text), one instance launched in the group,
/// its metadata (user data from the launch template, the runner role's
/// credentials from moto's STS) served by the rig.
async fn prepare(stack_file: &str, extra: &[&str]) -> Boot {
    let s = Stack::new().await;
    std::fs::write(s.home.path().join("cci-scaler.toml"), stack_file).unwrap();
    let r = s.init(extra).await;
    assert_eq!(r.code, 0, "{r:?}");
    s.moto
        .asg()
        .set_desired_capacity()
        .auto_scaling_group_name(GROUP)
        .desired_capacity(1)
        .send()
        .await
        .unwrap();
    let (_, inst) = s.moto.group(GROUP).await;
    let instance = inst[0].instance_id().unwrap().to_string();
    let img = image();
    let rig = Rig::start(&s.moto, Some((&img.join("ca.pem"), &img.join("ca.key"))));
    let creds = rig.assume(&s.moto, RUNNER_ROLE).await;
    let ud = template_user_data(&s).await;
    let expiry = (chrono_like_now() + 6 * 3600).to_string();
    let cred_doc = json!({
        "Code": "Success", "Type": "AWS-HMAC", "LastUpdated": "2026-01-01T00:00:00Z",
        "AccessKeyId": creds.access_key_id, "SecretAccessKey": creds.secret_access_key,
        "Token": creds.session_token, "Expiration": iso(expiry.parse().unwrap()),
    });
    rig.imds(json!({
        "user_data_b64": ud,
        "meta": {
            "ami-id": "ami-12c6146b",
            "instance-id": instance,
            "instance-type": "t3.medium",
            "local-hostname": "ip-10-0-0-5.ec2.internal",
            "hostname": "ip-10-0-0-5.ec2.internal",
            "local-ipv4": "169.254.169.15",
            "placement": {"availability-zone": format!("{REGION}a"), "region": REGION},
            "services": {"domain": "amazonaws.com", "partition": "aws"},
            "iam": {
                "info": json!({"Code": "Success", "InstanceProfileArn":
                    format!("arn:aws:iam::123456789012:instance-profile/{RUNNER_ROLE}")}).to_string(),
                "security-credentials": {RUNNER_ROLE: cred_doc.to_string()},
            },
            "tags": {"instance": {"Name": "demo-runner"}},
        }
    }))
    .await;
    Boot {
        s,
        rig,
        instance,
        creds,
    }
}

/// The user data of the stack's launch template, as EC2 holds it (base64).
async fn template_user_data(s: &Stack) -> String {
    let ec2 = aws_sdk_ec2::Client::new(&s.moto.config);
    crate::support::template_data(&ec2, "cci-scaler-demo-runner")
        .await
        .user_data()
        .unwrap()
        .to_string()
}

fn chrono_like_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Seconds since the epoch as an ISO 8601 UTC time.
fn iso(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Boot {
    async fn boot(&self) -> Vm {
        Vm::boot(self.rig.imds_port, self.rig.aws_https_port.unwrap()).await
    }

    /// Every call the guest made: signed right, and what IAM decided.
    async fn assert_calls_signed_and_allowed(&self) -> Vec<Value> {
        let calls = self.rig.calls().await;
        for c in &calls {
            assert_eq!(c["tls"], true, "the guest reached AWS over TLS: {c}");
            assert_ne!(c["decision"], "refused", "a request was refused: {c}");
            assert_eq!(c["principal"], RUNNER_ROLE, "{c}");
            assert!(
                c["decision"] == "allow" || c["decision"] == "fault",
                "the runner role's policy must allow its own calls: {c}"
            );
        }
        calls
    }

    async fn group(&self) -> (i32, Vec<String>) {
        let (d, inst) = self.s.moto.group(GROUP).await;
        (
            d,
            inst.iter()
                .map(|i| i.instance_id().unwrap().to_string())
                .collect(),
        )
    }
}

fn stub_line(console: &str, nth: usize) -> String {
    lines_with(console, "circleci-runner(stub): started:")
        .get(nth)
        .unwrap_or_else(|| panic!("no runner start #{nth} on the console"))
        .to_string()
}

/// The default script from cloud-init to runner start; a hard reset (the
/// runner starts again behind the metadata rule, nothing doubled, the user
/// data not run again); then the job ends and the exit hook leaves the group
/// with decrement. The console shows no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_to_runner_start_survives_a_reset_and_leaves_with_decrement() {
    let b = prepare("", &[]).await;
    let mut vm = b.boot().await;
    let console = vm.wait_for("running 'init-local'", BOOT).await;
    let cloud_init = Instant::now();
    drop(console);
    let console = vm.wait_for("circleci-runner(stub): started:", BOOT).await;
    let to_runner = cloud_init.elapsed();
    eprintln!(
        "real boot: cloud-init start to runner start {:.1} s (boot to runner {:.1} s, software emulation)",
        to_runner.as_secs_f64(),
        vm.started.elapsed().as_secs_f64()
    );
    let first = stub_line(&console, 0);
    assert!(first.contains(&format!("name={}", b.instance)), "{first}");
    assert!(first.contains("config=600 root"), "{first}");
    assert!(first.contains("imds_jumps=1 imds_rules=2"), "{first}");
    assert!(
        first.contains("job_user_imds=000"),
        "jobs must not reach metadata: {first}"
    );
    assert!(first.contains("user_data_runs=1"), "{first}");
    assert!(
        console.contains("instance metadata closed to jobs"),
        "{console}"
    );
    let tok_len = format!("token_len={}", crate::support::TOKEN.len());
    assert!(!first.contains(&tok_len) || !console.contains(crate::support::TOKEN));
    assert!(
        !console.contains(crate::support::TOKEN),
        "a token on the console"
    );

    // The reset button: no shutdown runs; the next boot starts the runner
    // again behind the rule, with nothing doubled and no second user-data run.
    vm.reset();
    let console = vm
        .wait_for_nth("circleci-runner(stub): started:", 2, BOOT)
        .await;
    let second = stub_line(&console, 1);
    assert!(second.contains("imds_jumps=1 imds_rules=2"), "{second}");
    assert!(second.contains("job_user_imds=000"), "{second}");
    assert!(second.contains("user_data_runs=1"), "{second}");
    assert_eq!(
        b.group().await.0,
        1,
        "a reset leaves the instance in its group"
    );

    // The job ends: the runner exits, the exit hook leaves with decrement.
    b.rig.imds(json!({"flags": {"runner-exit": true}})).await;
    let console = vm
        .wait_for(&format!("terminating {} with decrement", b.instance), BOOT)
        .await;
    assert!(
        console.contains("circleci-runner(stub): job done"),
        "{console}"
    );
    let (desired, instances) = b.group().await;
    assert_eq!(desired, 0, "decremented");
    assert!(!instances.contains(&b.instance), "{instances:?}");
    let calls = b.assert_calls_signed_and_allowed().await;
    let actions: Vec<&str> = calls.iter().filter_map(|c| c["action"].as_str()).collect();
    assert!(
        actions.contains(&"secretsmanager:GetSecretValue"),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"autoscaling:TerminateInstanceInAutoScalingGroup"),
        "{actions:?}"
    );
}

/// A clean reboot (systemd stops the runner: the exit hook runs and the
/// instance leaves its group; the next boot applies the rule before the
/// runner and runs nothing twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_reboot_keeps_the_rule_first_and_runs_nothing_twice() {
    let b = prepare("", &[]).await;
    let mut vm = b.boot().await;
    vm.wait_for("circleci-runner(stub): started:", BOOT).await;
    b.rig.imds(json!({"flags": {"reboot": true}})).await;
    let console = vm
        .wait_for_nth("circleci-runner(stub): started:", 2, BOOT)
        .await;
    assert!(
        console.contains("rebooting (asked by the test)"),
        "{console}"
    );
    assert!(
        console.contains(&format!("terminating {} with decrement", b.instance)),
        "a runner stopped by a reboot leaves its group: {console}"
    );
    let second = stub_line(&console, 1);
    assert!(second.contains("imds_jumps=1 imds_rules=2"), "{second}");
    assert!(second.contains("job_user_imds=000"), "{second}");
    assert!(second.contains("user_data_runs=1"), "{second}");
    b.assert_calls_signed_and_allowed().await;
}

/// User data over EC2's 16 KB (a long setup script) goes gzip-compressed;
/// cloud-init inflates and runs it. The pool has headroom, so the script
/// reads its spare-until tag from instance metadata and stays up until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_user_data_of_a_spare_is_inflated_and_reads_its_spare_until_tag() {
    let dir = tempfile::tempdir().unwrap();
    let setup = dir.path().join("setup.sh");
    let mut text = String::from("#!/bin/bash\necho setup-script-ran >/var/log/cci-test-setup\n");
    for i in 0..900 {
        text.push_str(&format!(
            "# padding line {i} so the user data is over 16 KB\n"
        ));
    }
    std::fs::write(&setup, &text).unwrap();
    let b = prepare(
        &format!(
            "[runner]\nsetup_script = {:?}\n\n[[headroom]]\nschedule = \"* * * * *\"\nduration = \"2h\"\ncount = 1\n",
            setup.display().to_string()
        ),
        &[],
    )
    .await;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(template_user_data(&b.s).await)
        .unwrap();
    assert_eq!(&raw[..2], &[0x1f, 0x8b], "gzip-compressed user data");
    let until = chrono_like_now() + 3600;
    b.rig
        .imds(json!({"set": {"tags/instance/cci-scaler:spare-until": until.to_string()}}))
        .await;
    let mut vm = b.boot().await;
    let console = vm.wait_for("circleci-runner(stub): started:", BOOT).await;
    assert!(
        console.contains("running the environment setup script"),
        "{console}"
    );
    assert!(
        console.contains(&format!("spare runner until {until}")),
        "{console}"
    );
    let line = stub_line(&console, 0);
    let idle: u64 = line
        .split("idle_timeout=")
        .nth(1)
        .and_then(|s| s.split('s').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    // Until the period ends (an hour after the test set it, less the boot),
    // plus the idle timeout.
    let elapsed = chrono_like_now() + 3600 - until;
    assert!(
        (3660 - elapsed - 5..=3660).contains(&idle),
        "a spare idles until its period ends ({elapsed} s after it was set): {line}"
    );
    b.assert_calls_signed_and_allowed().await;
}

/// Spot pool; a transient 5xx and a throttle on each call of the boot path
/// (metadata token, instance id, credentials, GetSecretValue), of the spot
/// watcher (CreateTags) and of the exit hook: the boot survives, the console
/// names each retry, the notice tags the instance, stops the runner, and the
/// instance leaves with decrement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_on_every_call_are_retried_and_a_spot_notice_ends_the_instance() {
    let b = prepare("market = \"spot\"\n", &[]).await;
    let mut faults = vec![];
    for m in [
        "imds:PUT api/token",
        "imds:GET meta-data/instance-id",
        "imds:GET meta-data/iam/security-credentials",
        "secretsmanager:GetSecretValue",
        "ec2:CreateTags",
        "autoscaling:TerminateInstanceInAutoScalingGroup",
    ] {
        faults.push(json!({"match": m, "kind": "5xx", "count": 1}));
        faults.push(json!({"match": m, "kind": "throttle", "count": 1}));
    }
    let mut vm = b.boot().await;
    // Armed once the script runs: cloud-init's own metadata reads come first
    // (a fault there fails cloud-init's datasource, not our script).
    vm.wait_for("cci-scaler[demo]: boot started for", BOOT)
        .await;
    b.rig.faults(Value::Array(faults)).await;
    let console = vm.wait_for("circleci-runner(stub): started:", BOOT).await;
    for what in [
        "instance metadata token: HTTP 500",
        "instance metadata token: HTTP 429",
        "instance metadata meta-data/instance-id: HTTP 500",
        "instance metadata meta-data/instance-id: HTTP 429",
        "GetSecretValue cci-scaler/demo/runner-token failed: {\"__type\": \"InternalFailure\"",
        "GetSecretValue cci-scaler/demo/runner-token failed: {\"__type\": \"ThrottlingException\"",
        "retrying in",
    ] {
        assert!(
            console.contains(what),
            "no {what:?} on the console:\n{console}"
        );
    }
    assert!(!console.contains("boot FAILED"), "{console}");
    assert_eq!(b.group().await.0, 1);

    b.rig
        .imds(json!({"set": {"spot": {"instance-action":
            json!({"action": "terminate", "time": "2026-12-01T12:00:00Z"}).to_string()}}}))
        .await;
    let console = vm
        .wait_for(&format!("terminating {} with decrement", b.instance), BOOT)
        .await;
    for what in [
        "spot interruption notice",
        "CreateTags: attempt 1 failed",
        "CreateTags: attempt 2 failed",
        &format!("tagged {} interrupted", b.instance),
        "circleci-runner(stub): stopping (SIGTERM)",
        "TerminateInstanceInAutoScalingGroup: attempt 1 failed",
        "TerminateInstanceInAutoScalingGroup: attempt 2 failed",
    ] {
        assert!(
            console.contains(what),
            "no {what:?} on the console:\n{console}"
        );
    }
    let tags = aws_sdk_ec2::Client::new(&b.s.moto.config)
        .describe_tags()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("resource-id")
                .values(&b.instance)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(
        tags.tags()
            .iter()
            .any(|t| t.key() == Some("cci-scaler:interrupted")),
        "{tags:?}"
    );
    let (desired, instances) = b.group().await;
    assert_eq!(desired, 0);
    assert!(!instances.contains(&b.instance));
    let calls = b.assert_calls_signed_and_allowed().await;
    // The interruption tag is allowed only through the policy's conditions
    // (the instance's stack tag, the one tag key), which the rig evaluates.
    let tag = calls
        .iter()
        .find(|c| c["action"] == "ec2:CreateTags" && c["decision"] == "allow")
        .expect("an allowed CreateTags");
    assert!(tag["checks"][0]["why"] == "MarkOwnInterruption", "{tag}");
}

/// The token's secret is gone: AWS's answer (AccessDenied) is on
/// the console, the boot fails at once (no retries of an answer that will not
/// change), and the instance gives its capacity back with decrement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_fails_at_once_naming_aws_answer_and_leaves_the_group() {
    let b = prepare("", &[]).await;
    b.s.moto.delete_secret("cci-scaler/demo/runner-token").await;
    let mut vm = b.boot().await;
    let console = vm
        .wait_for(&format!("terminating {} with decrement", b.instance), BOOT)
        .await;
    // The role's policy names the secret's ARN, and a secret that is gone
    // matches no ARN: AWS answers AccessDenied (it does not tell a caller
    // that may not read a secret whether it exists). Not retried either way.
    assert!(
        console.contains(
            "GetSecretValue cci-scaler/demo/runner-token failed: {\"__type\": \"AccessDeniedException\""
        ),
        "{console}"
    );
    assert!(console.contains("not retried"), "{console}");
    assert_eq!(
        lines_with(
            &console,
            "GetSecretValue cci-scaler/demo/runner-token failed"
        )
        .len(),
        1,
        "a non-retryable answer is asked once: {console}"
    );
    assert!(console.contains("boot FAILED"), "{console}");
    assert!(
        !console.contains("circleci-runner(stub): started"),
        "{console}"
    );
    assert_eq!(b.group().await.0, 0, "capacity given back at once");
    let _ = &b.creds;
}

/// A warm pool (`warm_pool = 1`): the launch into the pool (target state
/// Warmed:Stopped) installs, completes the launch hook with CONTINUE, reads
/// no token and starts no runner; the group's stop (a clean power-off) runs
/// no exit hook and leaves desired alone; started from the pool (target
/// InService), a unit runs the script again: it reads the token, completes
/// the hook, and only then starts the runner, whose exit leaves the group
/// with decrement as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_instance_warms_stops_and_resumes_into_service() {
    let b = prepare("warm_pool = 1\n", &[]).await;
    b.rig
        .imds(json!({"set": {"autoscaling/target-lifecycle-state": "Warmed:Stopped"}}))
        .await;
    let mut vm = b.boot().await;
    let console = vm
        .wait_for("warmed: installed, no runner started", BOOT)
        .await;
    assert!(
        !console.contains("circleci-runner(stub): started"),
        "no runner while warming: {console}"
    );
    let calls = b.assert_calls_signed_and_allowed().await;
    let completes: Vec<&Value> = calls
        .iter()
        .filter(|c| c["action"] == "autoscaling:CompleteLifecycleAction")
        .collect();
    assert_eq!(completes.len(), 1, "{calls:#?}");
    let p = &completes[0]["params"];
    assert_eq!(p["LifecycleActionResult"], "CONTINUE", "{p}");
    assert_eq!(p["LifecycleHookName"], "cci-scaler-launch", "{p}");
    assert_eq!(p["InstanceId"], b.instance.as_str(), "{p}");
    assert_eq!(p["AutoScalingGroupName"], GROUP, "{p}");
    assert!(
        !calls
            .iter()
            .any(|c| c["action"] == "secretsmanager:GetSecretValue"),
        "no token is read while warming: {calls:#?}"
    );

    // The group stops it into the pool: a clean shutdown, and nothing leaves.
    b.rig.reset_calls().await;
    b.rig.imds(json!({"flags": {"poweroff": true}})).await;
    vm.wait_exit(BOOT).await;
    let stopped = vm.console_text();
    assert!(
        !stopped.contains("leaving the group"),
        "a stop into the pool must not leave the group: {stopped}"
    );
    assert!(b.rig.calls().await.is_empty(), "no AWS call on the stop");
    assert_eq!(b.group().await.0, 1, "desired untouched");

    // Started from the pool, into service.
    b.rig
        .imds(json!({"flags": {"poweroff": false},
                     "set": {"autoscaling/target-lifecycle-state": "InService"}}))
        .await;
    vm.start_again();
    let console = vm.wait_for("circleci-runner(stub): started:", BOOT).await;
    let line = stub_line(&console, 0);
    assert!(line.contains("config=600 root"), "{line}");
    assert!(line.contains("imds_jumps=1 imds_rules=2"), "{line}");
    assert!(line.contains("job_user_imds=000"), "{line}");
    let completed = console
        .find("launch hook completed (CONTINUE)")
        .expect("the hook completed on the start");
    let started = console.find("circleci-runner(stub): started").unwrap();
    assert!(
        completed < started,
        "the hook completes before the runner starts"
    );
    assert!(
        console.contains("runner-ready image: nothing to install"),
        "the start installs nothing again: {console}"
    );
    let calls = b.assert_calls_signed_and_allowed().await;
    let actions: Vec<&str> = calls.iter().filter_map(|c| c["action"].as_str()).collect();
    assert!(
        actions.contains(&"secretsmanager:GetSecretValue")
            && actions.contains(&"autoscaling:CompleteLifecycleAction"),
        "{actions:?}"
    );

    // The job ends: the exit hook leaves with decrement.
    b.rig.imds(json!({"flags": {"runner-exit": true}})).await;
    vm.wait_for(&format!("terminating {} with decrement", b.instance), BOOT)
        .await;
    assert_eq!(b.group().await.0, 0, "decremented");
}

/// Bake mode (`image build`'s builder): the install half runs (apt against
/// the image's local archive), the setup script runs, the install hash is
/// written, and the builder powers itself off. No token is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bake_mode_installs_writes_its_hash_and_powers_off() {
    let b = prepare("", &[]).await;
    let script = cci_scaler::render::render_user_data(&cci_scaler::render::UserDataInput {
        stack: "demo".into(),
        group: GROUP.into(),
        region: REGION.into(),
        resource_class: "acme/fleet".into(),
        token_secret_id: "cci-scaler/demo/runner-token".into(),
        idle_timeout: "1m".into(),
        max_run_time: "5h".into(),
        working_directory: "/var/opt/circleci/workdir".into(),
        setup_script: Some("#!/bin/bash\necho baked-setup-ran\n".into()),
        apt_packages: vec![],
        embedded_token: None,
        spares: false,
        bake: true,
        spot: false,
        unsafe_retries: false,
        job_sudo: false,
        warm_pool: false,
    })
    .unwrap();
    let ud = base64::engine::general_purpose::STANDARD.encode(script.as_bytes());
    b.rig.imds(json!({"user_data_b64": ud})).await;
    let mut vm = b.boot().await;
    vm.wait_exit(BOOT).await;
    let console = vm.console_text();
    assert!(console.contains("baked-setup-ran"), "{console}");
    assert!(
        console.contains("bake done: stopping the builder"),
        "{console}"
    );
    assert!(!console.contains("boot FAILED"), "{console}");
    assert!(
        b.rig.calls().await.is_empty(),
        "a builder reads no secret and calls no AWS API"
    );
}
