//! The generated IAM policies enforced on every call the scaler and the
//! runners make. moto enforces nothing by default (and, where it does, checks
//! most services against resource `*` and ignores Conditions), so the calls
//! go through the rig's gateway (`tests/e2e/rig/gateway.py`): it checks each
//! SigV4 signature, works out the resource ARN AWS authorises each call on
//! (the Service Authorization Reference: a log group's `:log-stream:`, the
//! group an instance belongs to, every resource a launch template names
//! behind UpdateAutoScalingGroup, iam:PassRole), evaluates the caller's
//! policies there, and answers AccessDenied as AWS would. Outcomes that hang
//! on a Condition the gateway does not model are reported as undecided,
//! never counted as allowed.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use cci_scaler::aws::autoscaling::AsgClient;
use cci_scaler::circleci::{HttpLimits, RunnerApi};
use cci_scaler::scale::decide::{LaunchFailure, Policy};
use cci_scaler::scale::{ScaleSettings, run_once};

use crate::support::circleci::CircleCi;
use crate::support::lambda_api::LambdaApi;
use crate::support::moto::Moto;
use crate::support::rig::{Rig, RoleCreds};
use crate::support::{TOKEN, command, eventually, run};

const OD: &str = "acme/linux-od";
const SP: &str = "acme/linux-sp";
const IMAGE: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";

/// Two pools (on demand with auto headroom and a period, spot), both with a
/// key pair.
fn stack_file() -> String {
    format!(
        "stack = \"demo\"\n[defaults]\nmax_instances = 4\nkey_pair = \"ops\"\nimage = \"{IMAGE}\"\n\n\
         [[pool]]\nresource_class = \"{OD}\"\ninstance_types = [\"c7i.large\"]\n\
         headroom = [\"auto\", {{ schedule = \"* * * * *\", duration = \"2h\", count = 1 }}]\n\n\
         [[pool]]\nresource_class = \"{SP}\"\ninstance_types = [\"c7i.large\", \"m7i.large\"]\nmarket = \"spot\"\n"
    )
}

struct Fx {
    moto: Moto,
    cci: CircleCi,
    rig: Rig,
    home: tempfile::TempDir,
}

impl Fx {
    async fn new() -> Fx {
        let moto = Moto::start().await;
        let cci = CircleCi::start().await;
        let home = tempfile::tempdir().unwrap();
        aws_sdk_ec2::Client::new(&moto.config)
            .create_key_pair()
            .key_name("ops")
            .send()
            .await
            .unwrap();
        std::fs::write(home.path().join("cci-scaler.toml"), stack_file()).unwrap();
        let zip = crate::init::fake_zip(home.path());
        let rig = Rig::start(&moto, None);
        let fx = Fx {
            moto,
            cci,
            rig,
            home,
        };
        let r = run(fx.admin(&[
            "--output",
            "json",
            "init",
            "--lambda-zip",
            zip.to_str().unwrap(),
        ]))
        .await;
        assert_eq!(r.code, 0, "{r:?}");
        // Another stack's group and secret, which no role of ours may touch.
        fx.moto.create_group("other-runners", 3, 1).await;
        fx.moto
            .create_secret("cci-scaler/other/runner-token", "other-token-0123456789")
            .await;
        fx
    }

    /// cci-scaler with the emulator's admin credentials (init, teardown).
    fn admin(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = command("cci-scaler", self.home.path());
        self.moto.env(&mut cmd);
        cmd.env("CIRCLECI_TOKEN", TOKEN)
            .env("CIRCLECI_RUNNER_API_URL", &self.cci.url)
            .current_dir(self.home.path())
            .args(args);
        cmd
    }

    /// cci-scaler as `creds` through the gateway.
    fn as_role(&self, creds: &RoleCreds, args: &[&str]) -> tokio::process::Command {
        let mut cmd = command("cci-scaler", self.home.path());
        role_env(&mut cmd, &self.rig, creds);
        cmd.env("CIRCLECI_RUNNER_API_URL", &self.cci.url)
            .current_dir(self.home.path())
            .args(args);
        cmd
    }

    async fn instances(&self, group: &str) -> Vec<String> {
        self.moto
            .group(group)
            .await
            .1
            .iter()
            .map(|i| i.instance_id().unwrap().to_string())
            .collect()
    }
}

fn role_env(cmd: &mut tokio::process::Command, rig: &Rig, c: &RoleCreds) {
    cmd.env("AWS_ENDPOINT_URL", &rig.aws_url)
        .env("AWS_ACCESS_KEY_ID", &c.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &c.secret_access_key)
        .env("AWS_SESSION_TOKEN", &c.session_token)
        .env("AWS_REGION", crate::support::REGION);
}

/// The gateway's record, summarised: (action, decision) per call, and the
/// checks that were undecided.
fn summary(calls: &[Value]) -> (Vec<(String, String)>, Vec<Value>) {
    let mut out = vec![];
    let mut undecided = vec![];
    for c in calls {
        assert_ne!(c["decision"], "refused", "bad signature: {c}");
        out.push((
            c["action"].as_str().unwrap_or("?").to_string(),
            c["decision"].as_str().unwrap_or("?").to_string(),
        ));
        for ch in c["checks"].as_array().into_iter().flatten() {
            if ch["decision"] == "undecided" {
                undecided.push(ch.clone());
            }
        }
    }
    (out, undecided)
}

fn assert_all_allowed(calls: &[Value], who: &str) {
    for c in calls {
        assert_eq!(
            c["decision"], "allow",
            "{who}'s policy must allow its own call: {c:#}"
        );
    }
}

/// The scaler's calls (scale --once over every pool: an on-demand pool with
/// headroom, a spot pool; reaping; the spot fallback and back; the Lambda
/// under the Runtime API stand-in, and the log delivery Lambda does with the
/// function's role) are allowed by its generated policy; what is not its
/// own is denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scalers_calls_pass_its_policy_and_nothing_else_does() {
    let fx = Fx::new().await;
    let scaler = fx.rig.assume(&fx.moto, "cci-scaler-demo-scaler").await;

    // scale --once over the stack: queues raise both groups; the headroom
    // pool's group is tagged with its spare-until.
    fx.cci.set_class_queue(OD, 2, 0);
    fx.cci.set_class_queue(SP, 1, 0);
    let r = run(fx.as_role(
        &scaler,
        &["--output", "json", "scale", "--once", "--stack", "demo"],
    ))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(fx.moto.desired("demo-linux-od-runners").await >= 2, "{r:?}");
    assert_eq!(fx.moto.desired("demo-linux-sp-runners").await, 1, "{r:?}");
    let calls = fx.rig.calls().await;
    let (acts, undecided) = summary(&calls);
    assert_all_allowed(&calls, "the scaler");
    for want in [
        "secretsmanager:GetSecretValue",
        "autoscaling:DescribeAutoScalingGroups",
        "autoscaling:SetDesiredCapacity",
        "autoscaling:CreateOrUpdateTags",
        // headroom = "auto": the pool's demand record.
        "ssm:GetParameter",
        "ssm:PutParameter",
    ] {
        assert!(acts.iter().any(|(a, _)| a == want), "no {want}: {acts:?}");
    }
    assert!(undecided.is_empty(), "{undecided:#?}");
    // Only its own pools' records: another stack's is denied.
    let ssm = aws_sdk_ssm::Client::new(&fx.rig.config(&scaler).await);
    let denied = ssm
        .put_parameter()
        .name("/cci-scaler/other/default/demand")
        .value("{}")
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .overwrite(true)
        .send()
        .await;
    assert!(denied.is_err(), "another stack's record: {denied:?}");
    assert!(
        fx.moto
            .ssm()
            .get_parameter()
            .name("/cci-scaler/demo/linux-od/demand")
            .send()
            .await
            .is_ok(),
        "the auto pool's record is written"
    );

    // Reaping: instances unregistered past the boot timeout are terminated.
    fx.rig.reset_calls().await;
    fx.cci.set_class_queue(OD, 0, 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = run(fx.as_role(
        &scaler,
        &[
            "--output",
            "json",
            "scale",
            "--once",
            "--asg",
            "demo-linux-od-runners",
            "--resource-class",
            OD,
            "--secret-id",
            "cci-scaler/demo/scaler",
            "--boot-timeout",
            "1s",
        ],
    ))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let calls = fx.rig.calls().await;
    assert_all_allowed(&calls, "the scaler");
    let (acts, _) = summary(&calls);
    assert!(
        acts.iter()
            .any(|(a, _)| a == "autoscaling:TerminateInstanceInAutoScalingGroup"),
        "reaped through the gateway: {acts:?} {r:?}"
    );

    // The spot fallback and back, with the real AsgClient as the scaler role.
    fx.rig.reset_calls().await;
    let cfg = fx.rig.config(&scaler).await;
    fallback_round_trip(&fx, &cfg).await;
    let calls = fx.rig.calls().await;
    assert_all_allowed(&calls, "the scaler");
    assert!(
        calls
            .iter()
            .any(|c| c["action"] == "autoscaling:DescribeScalingActivities"),
        "{calls:#?}"
    );
    let updates: Vec<&Value> = calls
        .iter()
        .filter(|c| c["action"] == "autoscaling:UpdateAutoScalingGroup")
        .collect();
    assert_eq!(updates.len(), 2, "to on demand and back: {calls:#?}");
    for u in &updates {
        let checks = u["checks"].as_array().unwrap();
        let run_on = |kind: &str| {
            checks.iter().any(|c| {
                c["action"] == "ec2:RunInstances"
                    && c["resource"].as_str().unwrap().contains(kind)
                    && c["decision"] == "allow"
            })
        };
        for kind in [
            ":launch-template/",
            ":key-pair/ops",
            ":security-group/",
            "::image/",
            ":instance/*",
            ":volume/*",
        ] {
            assert!(run_on(kind), "RunInstances on {kind} not allowed: {u:#}");
        }
        assert!(
            checks
                .iter()
                .any(|c| c["action"] == "iam:PassRole" && c["decision"] == "allow"),
            "{u:#}"
        );
    }

    // The Lambda under the Runtime API stand-in, as the scaler role.
    fx.rig.reset_calls().await;
    lambda_once(&fx, &scaler).await;
    let calls = fx.rig.calls().await;
    assert_all_allowed(&calls, "the scaler");
    assert!(
        calls
            .iter()
            .any(|c| c["action"] == "autoscaling:DescribeAutoScalingGroups"),
        "{calls:#?}"
    );
    // What Lambda does with the function's role to deliver its logs (even
    // when init's log group was deleted): create the group, a stream, events.
    fx.rig.reset_calls().await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&cfg);
    let group = "/aws/lambda/cci-scaler-demo-scaler";
    aws_sdk_cloudwatchlogs::Client::new(&fx.moto.config)
        .delete_log_group()
        .log_group_name(group)
        .send()
        .await
        .unwrap();
    logs.create_log_group()
        .log_group_name(group)
        .send()
        .await
        .expect("the function's role may create its log group");
    logs.create_log_stream()
        .log_group_name(group)
        .log_stream_name("2026/12/01/[$LATEST]abc")
        .send()
        .await
        .expect("and a stream in it");
    logs.put_log_events()
        .log_group_name(group)
        .log_stream_name("2026/12/01/[$LATEST]abc")
        .log_events(
            aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                .timestamp(now_ms())
                .message("{\"poll\":1}")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("and write events");
    let calls = fx.rig.calls().await;
    let create = calls
        .iter()
        .find(|c| c["action"] == "logs:CreateLogGroup")
        .unwrap();
    assert!(
        create["checks"][0]["resource"]
            .as_str()
            .unwrap()
            .ends_with(":log-group:/aws/lambda/cci-scaler-demo-scaler:log-stream:"),
        "{create}"
    );
    // Another function's logs: denied.
    let e = logs
        .create_log_group()
        .log_group_name("/aws/lambda/someone-else")
        .send()
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("AccessDenied"), "{e:?}");

    // Denied: another stack's group, a runner token, the scaler's own
    // group-changing calls beyond its groups.
    let asg = aws_sdk_autoscaling::Client::new(&cfg);
    let e = asg
        .set_desired_capacity()
        .auto_scaling_group_name("other-runners")
        .desired_capacity(0)
        .send()
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("AccessDenied"), "{e:?}");
    let sm = aws_sdk_secretsmanager::Client::new(&cfg);
    for secret in [
        "cci-scaler/demo/linux-od/runner-token",
        "cci-scaler/other/runner-token",
    ] {
        let e = sm
            .get_secret_value()
            .secret_id(secret)
            .send()
            .await
            .unwrap_err();
        assert!(format!("{e:?}").contains("AccessDenied"), "{secret}: {e:?}");
    }
    assert_eq!(fx.moto.desired("other-runners").await, 1, "untouched");
}

/// CreateTags of one tag on one instance.
async fn tag_instance(
    ec2: &aws_sdk_ec2::Client,
    id: &str,
    key: &str,
    value: &str,
) -> Result<(), String> {
    ec2.create_tags()
        .resources(id)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(key)
                .value(value)
                .build(),
        )
        .send()
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn fallback_round_trip(fx: &Fx, cfg: &aws_config::SdkConfig) {
    let group = "demo-linux-sp-runners";
    fx.moto
        .asg()
        .set_desired_capacity()
        .auto_scaling_group_name(group)
        .desired_capacity(3)
        .send()
        .await
        .unwrap();
    fx.cci.set_class_queue(SP, 3, 0);
    let queue =
        RunnerApi::new(&fx.cci.url, TOKEN.to_string().into(), HttpLimits::default()).unwrap();
    let settings = ScaleSettings {
        asg: group.into(),
        resource_class: SP.into(),
        policy: Policy {
            spot_grace: Duration::from_secs(10),
            spot_cooldown: Duration::from_secs(1),
            ..Policy::default()
        },
        headroom: Default::default(),
        auto: None,
        dry_run: false,
    };
    // The real read of launch failures (moto keeps no activities, so the
    // rounds below are given them), as the scaler role.
    AsgClient::new(cfg)
        .launch_failures(group)
        .await
        .expect("DescribeScalingActivities as the scaler role");
    let mut api = crate::spot::Short {
        inner: AsgClient::new(cfg),
        keep: 1,
        failures: [240, 30]
            .into_iter()
            .map(|ago| LaunchFailure {
                time: SystemTime::now() - Duration::from_secs(ago),
                reason: "Could not launch Spot Instances. InsufficientInstanceCapacity".into(),
            })
            .collect(),
    };
    let round = run_once(&queue, &api, &settings).await.unwrap();
    let line = serde_json::to_value(&round).unwrap();
    assert_eq!(line["spot"]["fallback"], "start", "{line}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    api.failures.clear();
    let round = run_once(&queue, &api, &settings).await.unwrap();
    assert!(round.reason.contains("back to spot"), "{}", round.reason);
}

/// One invocation of the Lambda binary as the scaler role, via the gateway.
async fn lambda_once(fx: &Fx, scaler: &RoleCreds) {
    let api = LambdaApi::start().await;
    let env = crate::support::function_env(&fx.moto.config, "cci-scaler-demo-scaler").await;
    let mut cmd = command("cci-scaler-lambda", fx.home.path());
    role_env(&mut cmd, &fx.rig, scaler);
    api.env(&mut cmd);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    cmd.env("CIRCLECI_RUNNER_API_URL", &fx.cci.url)
        .env("CCI_SCALER_POLL_INTERVAL", "1s")
        .env("CCI_SCALER_POLL_WINDOW", "1s")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn lambda");
    let id = "iam-1";
    api.push_scheduled_event(id, Duration::from_secs(30));
    let outcome = eventually("the invocation", Duration::from_secs(60), || async {
        api.outcome(id)
    })
    .await;
    let _ = child.start_kill();
    let out = child.wait_with_output().await.unwrap();
    assert!(
        matches!(outcome, crate::support::lambda_api::Outcome::Response(_)),
        "{outcome:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each pool's runners (their own role) may read their own token, leave and
/// mark their own group, tag their own interruption; nothing of another
/// pool's or stack's, no scaler secret, no SetDesiredCapacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runners_calls_pass_its_pools_policy_and_reach_nothing_else() {
    let fx = Fx::new().await;
    for g in ["demo-linux-od-runners", "demo-linux-sp-runners"] {
        fx.moto
            .asg()
            .set_desired_capacity()
            .auto_scaling_group_name(g)
            .desired_capacity(2)
            .send()
            .await
            .unwrap();
    }
    let od = fx.instances("demo-linux-od-runners").await;
    let sp = fx.instances("demo-linux-sp-runners").await;
    let other = fx.instances("other-runners").await;
    let runner = fx
        .rig
        .assume(&fx.moto, "cci-scaler-demo-linux-sp-runner")
        .await;
    let cfg = fx.rig.config(&runner).await;
    let sm = aws_sdk_secretsmanager::Client::new(&cfg);
    let asg = aws_sdk_autoscaling::Client::new(&cfg);
    let ec2 = aws_sdk_ec2::Client::new(&cfg);

    // Allowed: its own token, its own instances, its interruption tag.
    let v = sm
        .get_secret_value()
        .secret_id("cci-scaler/demo/linux-sp/runner-token")
        .send()
        .await
        .expect("own token");
    assert!(v.secret_string().is_some());
    asg.set_instance_health()
        .instance_id(&sp[0])
        .health_status("Healthy")
        .send()
        .await
        .expect("own health");
    tag_instance(&ec2, &sp[0], "cci-scaler:interrupted", "1")
        .await
        .expect("own interruption tag");
    asg.terminate_instance_in_auto_scaling_group()
        .instance_id(&sp[0])
        .should_decrement_desired_capacity(false)
        .send()
        .await
        .expect("leave without decrement");
    asg.terminate_instance_in_auto_scaling_group()
        .instance_id(&sp[1])
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .expect("leave with decrement");
    let allowed = fx.rig.calls().await;
    assert_all_allowed(&allowed, "the runner");
    let tag = allowed
        .iter()
        .find(|c| c["action"] == "ec2:CreateTags")
        .unwrap();
    assert_eq!(tag["checks"][0]["why"], "MarkOwnInterruption", "{tag}");
    fx.rig.reset_calls().await;

    // Denied.
    let denied = |what: &str, e: String| {
        assert!(
            e.contains("AccessDenied") || e.contains("UnauthorizedOperation"),
            "{what} must be denied: {e}"
        );
    };
    for secret in [
        "cci-scaler/demo/linux-od/runner-token",
        "cci-scaler/demo/scaler",
        "cci-scaler/other/runner-token",
    ] {
        let e = sm
            .get_secret_value()
            .secret_id(secret)
            .send()
            .await
            .unwrap_err();
        denied(secret, format!("{e:?}"));
    }
    for (what, id) in [("another pool's", &od[0]), ("another stack's", &other[0])] {
        let e = asg
            .terminate_instance_in_auto_scaling_group()
            .instance_id(id)
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .unwrap_err();
        denied(&format!("terminating {what} instance"), format!("{e:?}"));
        let e = asg
            .set_instance_health()
            .instance_id(id)
            .health_status("Unhealthy")
            .send()
            .await
            .unwrap_err();
        denied(&format!("marking {what} instance"), format!("{e:?}"));
    }
    let e = asg
        .set_desired_capacity()
        .auto_scaling_group_name("demo-linux-sp-runners")
        .desired_capacity(4)
        .send()
        .await
        .unwrap_err();
    denied("SetDesiredCapacity", format!("{e:?}"));
    // A tag other than the interruption one, or on another stack's instance.
    let e = tag_instance(&ec2, &od[1], "cci-scaler:stack", "other")
        .await
        .unwrap_err();
    denied("another tag key", e);
    let e = tag_instance(&ec2, &other[0], "cci-scaler:interrupted", "1")
        .await
        .unwrap_err();
    denied("tagging another stack's instance", e);
    let (_, undecided) = summary(&fx.rig.calls().await);
    assert!(undecided.is_empty(), "{undecided:#?}");
    assert_eq!(fx.instances("demo-linux-od-runners").await.len(), 2);
    assert_eq!(fx.moto.desired("other-runners").await, 1);

    // The on-demand pool's runners: their own token, not the spot pool's.
    let od_runner = fx
        .rig
        .assume(&fx.moto, "cci-scaler-demo-linux-od-runner")
        .await;
    let sm = aws_sdk_secretsmanager::Client::new(&fx.rig.config(&od_runner).await);
    sm.get_secret_value()
        .secret_id("cci-scaler/demo/linux-od/runner-token")
        .send()
        .await
        .expect("own token");
    let e = sm
        .get_secret_value()
        .secret_id("cci-scaler/demo/linux-sp/runner-token")
        .send()
        .await
        .unwrap_err();
    denied("the spot pool's token", format!("{e:?}"));
}

/// The gateway itself: a request signed with a wrong secret, or without the
/// session token, is refused as AWS refuses it (so a signing mistake in our
/// code could not pass unnoticed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_bad_signatures_and_missing_session_tokens() {
    let moto = Moto::start().await;
    let rig = Rig::start(&moto, None);
    let good = RoleCreds {
        role: "nobody".into(),
        access_key_id: "ASIAEXAMPLE0000001".into(),
        secret_access_key: "right-secret".into(),
        session_token: "the-session".into(),
    };
    rig.register(&good).await;
    let wrong = RoleCreds {
        secret_access_key: "wrong-secret".into(),
        ..good.clone()
    };
    let rig = &rig;
    let describe = |c: RoleCreds| async move {
        let e = aws_sdk_autoscaling::Client::new(&rig.config(&c).await)
            .describe_auto_scaling_groups()
            .send()
            .await
            .unwrap_err();
        format!("{e:?}")
    };
    let e = describe(wrong).await;
    assert!(e.contains("SignatureDoesNotMatch"), "{e}");
    let no_session = RoleCreds {
        session_token: "another-session".into(),
        ..good.clone()
    };
    let e = describe(no_session).await;
    assert!(e.contains("InvalidClientTokenId"), "{e}");
    // Signed right: reaches the evaluator (a role without policies: denied).
    let e = describe(good).await;
    assert!(e.contains("AccessDenied"), "{e}");
}

/// A stack of pools made before each pool had its own runner role has one
/// shared role and instance profile: init keeps them while an instance still
/// uses the profile (its exit hook needs the role to leave its group), then
/// removes them; the pools' launch templates use their own profiles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_runner_role_of_older_stacks_is_retired_once_unused() {
    let fx = Fx::new().await;
    let iam = aws_sdk_iam::Client::new(&fx.moto.config);
    let tag = aws_sdk_iam::types::Tag::builder()
        .key("cci-scaler:stack")
        .value("demo")
        .build()
        .unwrap();
    iam.create_role()
        .role_name("cci-scaler-demo-runner")
        .assume_role_policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
        )
        .tags(tag.clone())
        .send()
        .await
        .unwrap();
    let profile = iam
        .create_instance_profile()
        .instance_profile_name("cci-scaler-demo-runner")
        .tags(tag)
        .send()
        .await
        .unwrap()
        .instance_profile()
        .unwrap()
        .arn()
        .to_string();
    iam.add_role_to_instance_profile()
        .instance_profile_name("cci-scaler-demo-runner")
        .role_name("cci-scaler-demo-runner")
        .send()
        .await
        .unwrap();
    // An instance launched by the older release, still running.
    let ec2 = aws_sdk_ec2::Client::new(&fx.moto.config);
    let old = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1)
        .iam_instance_profile(
            aws_sdk_ec2::types::IamInstanceProfileSpecification::builder()
                .arn(&profile)
                .build(),
        )
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("cci-scaler:stack")
                        .value("demo")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap()
        .instances()[0]
        .instance_id()
        .unwrap()
        .to_string();
    let zip = crate::init::fake_zip(fx.home.path());
    let init = || {
        fx.admin(&[
            "--output",
            "json",
            "init",
            "--lambda-zip",
            zip.to_str().unwrap(),
        ])
    };
    let r = run(init()).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("1 instance(s) still use it"),
        "kept while in use: {r:?}"
    );
    assert!(
        iam.get_role()
            .role_name("cci-scaler-demo-runner")
            .send()
            .await
            .is_ok()
    );
    ec2.terminate_instances()
        .instance_ids(&old)
        .send()
        .await
        .unwrap();
    let r = run(init()).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        iam.get_role()
            .role_name("cci-scaler-demo-runner")
            .send()
            .await
            .is_err(),
        "removed once unused: {r:?}"
    );
    assert!(
        iam.get_instance_profile()
            .instance_profile_name("cci-scaler-demo-runner")
            .send()
            .await
            .is_err()
    );
    // Each pool's template names its own profile.
    for (lt, profile) in [
        (
            "cci-scaler-demo-linux-od-runner",
            "cci-scaler-demo-linux-od-runner",
        ),
        (
            "cci-scaler-demo-linux-sp-runner",
            "cci-scaler-demo-linux-sp-runner",
        ),
    ] {
        let data = crate::support::template_data(&ec2, lt).await;
        assert_eq!(
            data.iam_instance_profile().and_then(|p| p.name()),
            Some(profile),
            "{lt}"
        );
    }
    // Teardown removes every pool's role and profile.
    let r = run(fx.admin(&["--output", "json", "teardown", "--stack", "demo", "--yes"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    let roles = iam.list_roles().send().await.unwrap();
    assert!(
        roles
            .roles()
            .iter()
            .all(|r| !r.role_name().starts_with("cci-scaler-demo")),
        "{roles:?}"
    );
}
