//! A stack of several pools end to end: an x86_64 pool of two instance types
//! and an arm64 pool, created, scaled one at a time, converged with no
//! change, one pool removed (from the file, then with `teardown --pool`), and
//! the stack torn down by its name alone.

use serde_json::Value;

use crate::support::circleci::CircleCi;
use crate::support::moto::Moto;
use crate::support::{Run, TOKEN, command, run};

const X64: &str = "acme/linux-x64";
const ARM: &str = "acme/linux-arm64";
const X64_IMAGE: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";
const ARM_IMAGE: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64";

fn x64_pool() -> String {
    format!(
        "[[pool]]\nresource_class = \"{X64}\"\ninstance_types = [\"c7i.large\", \"m7i.large\"]\nimage = \"{X64_IMAGE}\"\n"
    )
}

fn arm_pool(image: &str, types: &str) -> String {
    format!(
        "[[pool]]\nresource_class = \"{ARM}\"\ninstance_types = {types}\nimage = \"{image}\"\nmax_instances = 2\n"
    )
}

const HEAD: &str = "stack = \"duo\"\n[defaults]\nmax_instances = 3\nidle_timeout = \"1m\"\n";

struct Duo {
    moto: Moto,
    cci: CircleCi,
    home: tempfile::TempDir,
    zip: std::path::PathBuf,
}

impl Duo {
    async fn new() -> Duo {
        let home = tempfile::tempdir().unwrap();
        let zip = crate::init::fake_zip(home.path());
        Duo {
            moto: Moto::start().await,
            cci: CircleCi::start().await,
            home,
            zip,
        }
    }

    fn cmd(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = command("cci-scaler", self.home.path());
        self.moto.env(&mut cmd);
        cmd.env("CIRCLECI_TOKEN", TOKEN)
            .env("CIRCLECI_RUNNER_API_URL", &self.cci.url)
            .current_dir(self.home.path())
            .args(args);
        cmd
    }

    fn write(&self, text: &str) {
        std::fs::write(self.home.path().join("cci-scaler.toml"), text).unwrap();
    }

    async fn init(&self, extra: &[&str]) -> Run {
        let mut args = vec![
            "--output",
            "json",
            "init",
            "--lambda-zip",
            self.zip.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(self.cmd(&args)).await
    }

    async fn group(&self, name: &str) -> Option<aws_sdk_autoscaling::types::AutoScalingGroup> {
        self.moto
            .asg()
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .unwrap()
            .auto_scaling_groups()
            .first()
            .cloned()
    }

    async fn secret(&self, name: &str) -> Option<String> {
        aws_sdk_secretsmanager::Client::new(&self.moto.config)
            .get_secret_value()
            .secret_id(name)
            .send()
            .await
            .ok()
            .and_then(|s| s.secret_string().map(String::from))
    }

    async fn lambda_env(&self) -> std::collections::HashMap<String, String> {
        aws_sdk_lambda::Client::new(&self.moto.config)
            .get_function_configuration()
            .function_name("cci-scaler-duo-scaler")
            .send()
            .await
            .unwrap()
            .environment()
            .and_then(|e| e.variables())
            .cloned()
            .unwrap_or_default()
    }

    async fn role_policy(&self, role: &str) -> Value {
        crate::support::role_policy(&aws_sdk_iam::Client::new(&self.moto.config), role).await
    }

    /// The architecture of the image in a pool's launch template.
    async fn template_arch(&self, name: &str) -> String {
        let ec2 = aws_sdk_ec2::Client::new(&self.moto.config);
        let d = crate::support::template_data(&ec2, name).await;
        assert_eq!(
            d.instance_type().map(|t| t.as_str().to_string()),
            Some(
                if name.contains("arm64") {
                    "c7g.large"
                } else {
                    "c7i.large"
                }
                .to_string()
            )
        );
        let img = ec2
            .describe_images()
            .image_ids(d.image_id().unwrap())
            .send()
            .await
            .unwrap();
        img.images()[0].architecture().unwrap().as_str().to_string()
    }
}

fn json(r: &Run) -> Value {
    serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

fn changes(v: &Value) -> Vec<String> {
    v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["action"] != "unchanged" && i["action"] != "keep")
        .map(|i| format!("{} {} {}", i["action"], i["kind"], i["name"]))
        .collect()
}

fn resources(v: &Value) -> Vec<&Value> {
    v["resources"].as_array().unwrap().iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_are_created_scaled_converged_removed_and_torn_down() {
    let d = Duo::new().await;
    let both = format!(
        "{HEAD}{}{}",
        x64_pool(),
        arm_pool(ARM_IMAGE, "[\"c7g.large\"]")
    );

    // Refused before any write: an arm64 pool with an x86_64 image, and a
    // pool mixing architectures (the odd type named).
    d.write(&format!(
        "{HEAD}{}{}",
        x64_pool(),
        arm_pool(X64_IMAGE, "[\"c7g.large\"]")
    ));
    let r = d.init(&[]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("is x86_64 but instance type c7g.large is arm64"),
        "{r:?}"
    );
    assert_eq!(
        r.stderr.matches("is x86_64 but").count(),
        1,
        "the reason once: {r:?}"
    );
    d.write(&format!(
        "{HEAD}{}",
        arm_pool(ARM_IMAGE, "[\"c7g.large\", \"c7i.large\"]")
    ));
    let r = d.init(&[]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("instance type c7i.large is x86_64 but c7g.large is arm64"),
        "{r:?}"
    );
    assert!(d.cci.classes().is_empty(), "nothing made at CircleCI");
    assert!(d.secret("cci-scaler/duo/scaler").await.is_none());

    // Create both pools.
    d.write(&both);
    let r = d.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&r);
    assert!(!r.all().contains(TOKEN), "{r:?}");
    let mut classes = d.cci.classes();
    classes.sort();
    assert_eq!(classes, [ARM, X64]);
    let mut nicks: Vec<String> = d.cci.tokens().into_iter().map(|t| t.0).collect();
    nicks.sort();
    assert_eq!(
        nicks,
        ["cci-scaler-duo-linux-arm64", "cci-scaler-duo-linux-x64"]
    );
    // One of each shared resource, two of each per-pool one.
    let count = |kind: &str| resources(&v).iter().filter(|i| i["kind"] == kind).count();
    for (kind, n) in [
        ("resource class", 2),
        ("runner token secret", 2),
        ("launch template", 2),
        ("Auto Scaling group", 2),
        ("security group", 1),
        ("scaler secret", 1),
        ("Lambda function", 1),
    ] {
        assert_eq!(count(kind), n, "{kind}: {v}");
    }
    // Per-pool names and tags, the architecture's image, the types.
    let x = d.group("duo-linux-x64-runners").await.unwrap();
    let a = d.group("duo-linux-arm64-runners").await.unwrap();
    assert_eq!((x.max_size(), a.max_size()), (Some(3), Some(2)));
    let tag = |g: &aws_sdk_autoscaling::types::AutoScalingGroup, k: &str| {
        g.tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value().map(String::from))
    };
    assert_eq!(tag(&x, "cci-scaler:pool").as_deref(), Some("linux-x64"));
    assert_eq!(tag(&a, "cci-scaler:stack").as_deref(), Some("duo"));
    let types: Vec<&str> = x
        .mixed_instances_policy()
        .and_then(|m| m.launch_template())
        .map(|l| {
            l.overrides()
                .iter()
                .filter_map(|o| o.instance_type())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(types, ["c7i.large", "m7i.large"]);
    assert!(a.mixed_instances_policy().is_none() && a.launch_template().is_some());
    assert_eq!(
        d.template_arch("cci-scaler-duo-linux-x64-runner").await,
        "x86_64"
    );
    assert_eq!(
        d.template_arch("cci-scaler-duo-linux-arm64-runner").await,
        "arm64"
    );
    assert!(
        d.secret("cci-scaler/duo/linux-arm64/runner-token")
            .await
            .is_some()
    );
    let scaler: Value =
        serde_json::from_str(&d.secret("cci-scaler/duo/scaler").await.unwrap()).unwrap();
    assert_eq!(scaler["pools"].as_array().unwrap().len(), 2, "{scaler}");
    // One Lambda for both; roles scoped to both groups and both secrets.
    let env = d.lambda_env().await;
    let pools: Value = serde_json::from_str(&env["CCI_SCALER_POOLS"]).unwrap();
    assert_eq!(pools[1]["asg"], "duo-linux-arm64-runners", "{pools}");
    assert!(!env.contains_key("CCI_SCALER_ASG"));
    let scaler_policy = d.role_policy("cci-scaler-duo-scaler").await;
    let size = scaler_policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Sid"] == "SizeOwnGroup")
        .unwrap();
    assert_eq!(
        size["Resource"].as_array().map(Vec::len),
        Some(2),
        "{scaler_policy}"
    );
    // Each pool's runners have their own role: their own token and group.
    let findings = crate::support::parliament(&scaler_policy);
    assert!(findings.is_empty(), "{findings:?}");
    for pool in ["linux-x64", "linux-arm64"] {
        let runner_policy = d
            .role_policy(&format!("cci-scaler-duo-{pool}-runner"))
            .await;
        let read = runner_policy["Statement"][0]["Resource"].as_str().unwrap();
        assert!(
            read.contains(&format!("cci-scaler/duo/{pool}/runner-token")),
            "{runner_policy}"
        );
        let leave = runner_policy["Statement"][1]["Resource"].as_str().unwrap();
        assert!(
            leave.ends_with(&format!("autoScalingGroupName/duo-{pool}-runners")),
            "{runner_policy}"
        );
        let findings = crate::support::parliament(&runner_policy);
        assert!(findings.is_empty(), "{findings:?}");
    }

    // Converged: nothing to change.
    let r = d.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(changes(&json(&r)), Vec::<String>::new(), "{r:?}");

    // A queue on the arm64 class raises only the arm64 pool.
    d.cci.set_queue(0, 0);
    d.cci.set_class_queue(ARM, 2, 0);
    let r = run(d.cmd(&["--output", "json", "scale", "--once", "--stack", "duo"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.lines().count(), 2, "one line per pool: {r:?}");
    let desired = |g: Option<aws_sdk_autoscaling::types::AutoScalingGroup>| {
        g.and_then(|g| g.desired_capacity())
    };
    assert_eq!(desired(d.group("duo-linux-arm64-runners").await), Some(2));
    assert_eq!(desired(d.group("duo-linux-x64-runners").await), Some(0));

    // Status by the stack name alone: both pools; --pool one.
    let r = run(d.cmd(&["status", "--stack", "duo"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("pool linux-x64 (acme/linux-x64):"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("pool linux-arm64 (acme/linux-arm64):\n  queue: 2 unclaimed, 0 running\n  group: desired 2 (min 0, max 2), 2 instance(s)"),
        "{r:?}"
    );
    let r = run(d.cmd(&[
        "--output",
        "json",
        "status",
        "--stack",
        "duo",
        "--pool",
        "linux-x64",
    ]))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let st = json(&r);
    assert_eq!(st["pools"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["pools"][0]["fleet"]["desired"], 0, "{st}");

    // The arm64 pool leaves the file: off a terminal init wants --yes and
    // changes nothing; with it, only that pool goes.
    d.write(&format!("{HEAD}{}", x64_pool()));
    let r = d.init(&["--dry-run"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let planned = changes(&json(&r));
    assert!(
        planned
            .contains(&"\"delete\" \"Auto Scaling group\" \"duo-linux-arm64-runners\"".to_string()),
        "{planned:?}"
    );
    assert!(
        planned.iter().all(|c| c.contains("arm64")
            || c.contains("Lambda")
            || c.contains("alarms")
            || c.contains("dashboard")
            || c.contains("role")
            || c.contains("scaler secret")),
        "{planned:?}"
    );
    assert!(d.group("duo-linux-arm64-runners").await.is_some());
    let r = d.init(&[]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("no longer lists pool(s) linux-arm64"),
        "{r:?}"
    );
    assert!(
        r.stderr
            .contains("would delete         Auto Scaling group duo-linux-arm64-runners"),
        "{r:?}"
    );
    assert!(r.stderr.contains("pass --yes"), "{r:?}");
    assert!(d.group("duo-linux-arm64-runners").await.is_some());
    let r = d.init(&["--yes"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(d.group("duo-linux-arm64-runners").await.is_none());
    assert!(
        d.secret("cci-scaler/duo/linux-arm64/runner-token")
            .await
            .is_none()
    );
    assert_eq!(d.cci.classes(), [X64]);
    assert_eq!(d.cci.tokens().len(), 1);
    assert!(d.group("duo-linux-x64-runners").await.is_some());
    let env = d.lambda_env().await;
    assert_eq!(
        env.get("CCI_SCALER_ASG").map(String::as_str),
        Some("duo-linux-x64-runners")
    );
    let scaler: Value =
        serde_json::from_str(&d.secret("cci-scaler/duo/scaler").await.unwrap()).unwrap();
    assert_eq!(scaler["pools"].as_array().unwrap().len(), 1, "{scaler}");
    let r = d.init(&[]).await;
    assert_eq!(changes(&json(&r)), Vec::<String>::new(), "{r:?}");

    // Back again, then removed with teardown --pool: the Lambda stops
    // scaling it, the other pool stays.
    d.write(&both);
    let r = d.init(&[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let r = run(d.cmd(&[
        "--output",
        "json",
        "teardown",
        "--stack",
        "duo",
        "--pool",
        "linux-arm64",
        "--yes",
    ]))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(d.group("duo-linux-arm64-runners").await.is_none());
    assert!(d.group("duo-linux-x64-runners").await.is_some());
    assert_eq!(d.cci.classes(), [X64]);
    let pools: Value = serde_json::from_str(&d.lambda_env().await["CCI_SCALER_POOLS"]).unwrap();
    assert_eq!(pools.as_array().unwrap().len(), 1, "{pools}");
    let r = run(d.cmd(&["teardown", "--stack", "duo", "--pool", "linux-x64", "--yes"])).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("last pool of stack duo"), "{r:?}");

    // Teardown by the stack name alone removes the rest, even with the
    // stack's record (scaler secret, Lambda) deleted by hand: the pool is
    // found by its tags; its class is then unknown, so CircleCI is left
    // alone and teardown says so.
    std::fs::remove_file(d.home.path().join("cci-scaler.toml")).unwrap();
    aws_sdk_secretsmanager::Client::new(&d.moto.config)
        .delete_secret()
        .secret_id("cci-scaler/duo/scaler")
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    aws_sdk_lambda::Client::new(&d.moto.config)
        .delete_function()
        .function_name("cci-scaler-duo-scaler")
        .send()
        .await
        .unwrap();
    let r = run(d.cmd(&["--output", "json", "teardown", "--stack", "duo", "--yes"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(d.group("duo-linux-x64-runners").await.is_none());
    assert!(
        d.secret("cci-scaler/duo/linux-x64/runner-token")
            .await
            .is_none()
    );
    assert!(
        r.stderr
            .contains("pool(s) linux-x64 were found by their tags"),
        "{r:?}"
    );
    assert_eq!(d.cci.classes(), [X64]);
    let r = run(d.cmd(&["--output", "json", "status", "--stack", "duo"])).await;
    assert_eq!(r.code, 0, "{r:?}");
    let st = json(&r);
    assert!(
        st["resources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["action"] == "absent"
                || i["kind"] == "runner tokens"
                || i["kind"] == "resource class"),
        "{st}"
    );
}
