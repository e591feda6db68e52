//! Spot pools against the emulator: the policy created, read back, converged
//! in place; the on-demand fallback end to end, with the scaling activities
//! (which the emulator does not keep) stood in at the `GroupApi` trait.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use cci_scaler::aws::autoscaling::AsgClient;
use cci_scaler::circleci::{HttpLimits, RunnerApi};
use cci_scaler::scale::decide::{GroupState, LaunchFailure, Policy};
use cci_scaler::scale::{ApiError, GroupApi, ScaleSettings, run_once};

use crate::support::circleci::CircleCi;
use crate::support::moto::Moto;
use crate::support::{TOKEN, command, run};

const X64_IMAGE: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";

fn stack_file(market: &str) -> String {
    let spot = if market == "spot" {
        "on_demand_base = 1\nspot_allocation = \"price-capacity-optimized\"\nretry_interrupted_jobs = true\n"
    } else {
        ""
    };
    format!(
        "stack = \"sp\"\nresource_class = \"acme/spot\"\nimage = \"{X64_IMAGE}\"\nmax_instances = 5\n\
         market = \"{market}\"\ninstance_types = [\"c7i.large\", \"c6i.large\", \"m7i.large\"]\n{spot}"
    )
}

async fn group(moto: &Moto, name: &str) -> aws_sdk_autoscaling::types::AutoScalingGroup {
    moto.asg()
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .unwrap()
        .auto_scaling_groups()[0]
        .clone()
}

/// (base, percentage above base, spot allocation) of the group's policy.
fn distribution(g: &aws_sdk_autoscaling::types::AutoScalingGroup) -> (i32, i32, Option<String>) {
    let d = g
        .mixed_instances_policy()
        .and_then(|m| m.instances_distribution())
        .unwrap();
    (
        d.on_demand_base_capacity().unwrap_or(0),
        d.on_demand_percentage_above_base_capacity().unwrap_or(-1),
        d.spot_allocation_strategy().map(String::from),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_pool_is_created_read_back_and_converged_in_place() {
    let moto = Moto::start().await;
    let cci = CircleCi::start().await;
    let home = tempfile::tempdir().unwrap();
    let zip = crate::init::fake_zip(home.path());
    let init = |home: &std::path::Path| {
        let mut cmd = command("cci-scaler", home);
        moto.env(&mut cmd);
        cmd.env("CIRCLECI_TOKEN", TOKEN)
            .env("CIRCLECI_RUNNER_API_URL", &cci.url)
            .current_dir(home)
            .args([
                "--output",
                "json",
                "init",
                "--lambda-zip",
                zip.to_str().unwrap(),
            ]);
        cmd
    };
    std::fs::write(home.path().join("cci-scaler.toml"), stack_file("spot")).unwrap();
    let r = run(init(home.path())).await;
    assert_eq!(r.code, 0, "{r:?}");
    let g = group(&moto, "sp-runners").await;
    assert_eq!(
        distribution(&g),
        (1, 0, Some("price-capacity-optimized".into()))
    );
    let types: Vec<&str> = g
        .mixed_instances_policy()
        .and_then(|m| m.launch_template())
        .map(|l| {
            l.overrides()
                .iter()
                .filter_map(|o| o.instance_type())
                .collect()
        })
        .unwrap();
    assert_eq!(types, ["c7i.large", "c6i.large", "m7i.large"]);
    // The scaler may switch that group's policy, and launch with its template
    // only; parliament finds nothing.
    let iam = aws_sdk_iam::Client::new(&moto.config);
    let policy = crate::support::role_policy(&iam, "cci-scaler-sp-scaler").await;
    let sids: Vec<&str> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["Sid"].as_str())
        .collect();
    for sid in [
        "SpotFallbackOfOwnGroups",
        "LaunchWithOwnTemplates",
        "PassRunnerRole",
    ] {
        assert!(sids.contains(&sid), "{sid}: {policy}");
    }
    let findings = crate::support::parliament(&policy);
    assert!(findings.is_empty(), "{findings:?}");
    // The runner may retry jobs of an interrupted instance: its config says so.
    let ec2 = aws_sdk_ec2::Client::new(&moto.config);
    let data = crate::support::template_data(&ec2, "cci-scaler-sp-runner").await;
    let ud = crate::support::user_data_text(data.user_data().unwrap());
    assert!(ud.contains("enable_unsafe_retries: true"), "unsafe retries");
    assert!(
        ud.contains("spot/instance-action"),
        "the interruption watcher"
    );

    // Converged: nothing to change.
    let r = run(init(home.path())).await;
    assert_eq!(json(&r)["changed"], false, "{r:?}");

    // Instances up, then the pool goes on demand: the same group, its
    // instances kept, the policy converged in place.
    moto.asg()
        .set_desired_capacity()
        .auto_scaling_group_name("sp-runners")
        .desired_capacity(2)
        .send()
        .await
        .unwrap();
    let before = group(&moto, "sp-runners").await;
    // An instance its watcher tagged interrupted: status lists it.
    let id = before.instances()[0].instance_id().unwrap().to_string();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ec2.create_tags()
        .resources(&id)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("cci-scaler:interrupted")
                .value(now.to_string())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mut cmd = command("cci-scaler", home.path());
    moto.env(&mut cmd);
    cmd.env("CIRCLECI_TOKEN", TOKEN)
        .env("CIRCLECI_RUNNER_API_URL", &cci.url)
        .args(["status", "--stack", "sp"]);
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("spot interruptions in the last hour: {id} at ")),
        "{r:?}"
    );
    std::fs::write(home.path().join("cci-scaler.toml"), stack_file("on-demand")).unwrap();
    let r = run(init(home.path())).await;
    assert_eq!(r.code, 0, "{r:?}");
    let after = group(&moto, "sp-runners").await;
    assert_eq!(
        after.auto_scaling_group_arn(),
        before.auto_scaling_group_arn()
    );
    assert_eq!(after.instances().len(), 2);
    assert_eq!(distribution(&after), (0, 100, None));
}

fn json(r: &crate::support::Run) -> Value {
    serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

/// The emulator's group, short of capacity: only `keep` instances of the
/// desired ones came up, and the activities say spot capacity is short.
/// The real client, with the group short of its desired capacity (only
/// `keep` instances up: moto launches all at once) and spot launch failures
/// reported (moto keeps no scaling activities).
pub(crate) struct Short {
    pub inner: AsgClient,
    pub keep: usize,
    pub failures: Vec<LaunchFailure>,
}

impl GroupApi for Short {
    fn region(&self) -> String {
        self.inner.region()
    }
    async fn describe(&self, name: &str) -> Result<GroupState, ApiError> {
        let mut g = self.inner.describe(name).await?;
        g.instances.truncate(self.keep);
        Ok(g)
    }
    async fn describe_many(
        &self,
        names: &[String],
    ) -> Result<HashMap<String, GroupState>, ApiError> {
        let mut all = self.inner.describe_many(names).await?;
        for g in all.values_mut() {
            g.instances.truncate(self.keep);
        }
        Ok(all)
    }
    async fn launch_times(&self, ids: &[String]) -> Result<HashMap<String, SystemTime>, ApiError> {
        Ok(self.inner.launch_times(ids).await?)
    }
    async fn set_desired(&self, name: &str, desired: u32) -> Result<(), ApiError> {
        Ok(self.inner.set_desired(name, desired).await?)
    }
    async fn terminate(&self, id: &str, decrement: bool) -> Result<(), ApiError> {
        Ok(self.inner.terminate(id, decrement).await?)
    }
    async fn launch_failures(&self, _name: &str) -> Result<Vec<LaunchFailure>, ApiError> {
        Ok(self.failures.clone())
    }
    async fn set_on_demand(
        &self,
        name: &str,
        pct: u32,
        until: Option<u64>,
    ) -> Result<(), ApiError> {
        Ok(self.inner.set_on_demand(name, pct, until).await?)
    }
    async fn tag(&self, name: &str, key: &str, value: &str) -> Result<(), ApiError> {
        Ok(self.inner.tag(name, key, value).await?)
    }
    async fn interrupted(
        &self,
        name: &str,
        since: SystemTime,
    ) -> Result<Vec<(String, SystemTime)>, ApiError> {
        Ok(self.inner.interrupted(name, since).await?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_shortage_falls_back_to_on_demand_and_back() {
    let moto = Moto::start().await;
    let cci = CircleCi::start().await;
    // A spot group (as init makes it) with 3 desired, of which 1 came up.
    moto.create_group("short", 5, 3).await;
    let lt = aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
        .launch_template_name("short-lt")
        .version("$Latest")
        .build();
    let spot_policy = |pct| {
        use aws_sdk_autoscaling::types as at;
        at::MixedInstancesPolicy::builder()
            .launch_template(
                at::LaunchTemplate::builder()
                    .launch_template_specification(lt.clone())
                    .overrides(
                        at::LaunchTemplateOverrides::builder()
                            .instance_type("c7i.large")
                            .build(),
                    )
                    .overrides(
                        at::LaunchTemplateOverrides::builder()
                            .instance_type("m7i.large")
                            .build(),
                    )
                    .build(),
            )
            .instances_distribution(
                at::InstancesDistribution::builder()
                    .on_demand_base_capacity(0)
                    .on_demand_percentage_above_base_capacity(pct)
                    .spot_allocation_strategy("price-capacity-optimized")
                    .build(),
            )
            .build()
    };
    moto.asg()
        .update_auto_scaling_group()
        .auto_scaling_group_name("short")
        .mixed_instances_policy(spot_policy(0))
        .send()
        .await
        .unwrap();
    cci.set_queue(3, 0);
    let queue = RunnerApi::new(&cci.url, TOKEN.to_string().into(), HttpLimits::default()).unwrap();
    let failure = |ago: u64| {
        LaunchFailure {
        time: SystemTime::now() - Duration::from_secs(ago),
        reason: "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available".into(),
    }
    };
    let mut api = Short {
        inner: AsgClient::new(&moto.config),
        keep: 1,
        failures: vec![failure(60)],
    };
    let settings = ScaleSettings {
        asg: "short".into(),
        resource_class: "acme/spot".into(),
        policy: Policy {
            spot_grace: Duration::from_secs(180),
            spot_cooldown: Duration::from_secs(2),
            ..Policy::default()
        },
        headroom: Default::default(),
        auto: None,
        dry_run: false,
    };
    // An instance whose watcher saw a notice 10 minutes ago (its tag), and
    // one from two hours ago: the poll's line counts the recent one.
    let (_, instances) = moto.group("short").await;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ec2 = aws_sdk_ec2::Client::new(&moto.config);
    for (inst, ago) in instances.iter().zip([600, 7200]) {
        ec2.create_tags()
            .resources(inst.instance_id().unwrap())
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("cci-scaler:interrupted")
                    .value((now - ago).to_string())
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    // Failing for a minute: within the grace period, nothing changes.
    let round = run_once(&queue, &api, &settings).await.unwrap();
    assert!(
        round.reason.contains("spot launches failing for 60s"),
        "{}",
        round.reason
    );
    assert_eq!(distribution(&group(&moto, "short").await).1, 0);

    // Failing for four minutes: on demand, the reason logged, the tag set.
    api.failures = vec![failure(240), failure(30)];
    let round = run_once(&queue, &api, &settings).await.unwrap();
    let line = serde_json::to_value(&round).unwrap();
    assert_eq!(line["spot"]["fallback"], "start", "{line}");
    assert!(
        round.reason.contains("1 of 3 instances up"),
        "{}",
        round.reason
    );
    let g = group(&moto, "short").await;
    assert_eq!(distribution(&g).1, 100, "on demand above the base");
    let tag = g
        .tags()
        .iter()
        .find(|t| t.key() == Some("cci-scaler:spot-fallback-until"))
        .and_then(|t| t.value())
        .expect("fallback tag");
    assert!(tag.parse::<u64>().is_ok(), "{tag}");
    // The policy's other parts are kept whole.
    let types = g
        .mixed_instances_policy()
        .and_then(|m| m.launch_template())
        .map(|l| l.overrides().len());
    assert_eq!(types, Some(2));

    // During the cool-down: kept. After it: back to spot, the tag removed.
    let round = run_once(&queue, &api, &settings).await.unwrap();
    assert_eq!(serde_json::to_value(&round).unwrap().get("spot"), None);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    api.failures.clear();
    let round = run_once(&queue, &api, &settings).await.unwrap();
    assert!(round.reason.contains("back to spot"), "{}", round.reason);
    let g = group(&moto, "short").await;
    assert_eq!(distribution(&g).1, 0);
    assert!(
        g.tags()
            .iter()
            .all(|t| t.key() != Some("cci-scaler:spot-fallback-until"))
    );
}
