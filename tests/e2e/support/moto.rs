//! The moto AWS emulator in server mode on 127.0.0.1, one per test, killed on drop.
//! `scripts/test-env.sh` installs it and exports CCI_SCALER_MOTO_SERVER.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_autoscaling::types::Instance;

use super::REGION;

pub struct Moto {
    child: Child,
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    pub config: SdkConfig,
}

fn moto_server_path() -> String {
    std::env::var("CCI_SCALER_MOTO_SERVER").unwrap_or_else(|_| {
        panic!(
            "CCI_SCALER_MOTO_SERVER is not set: run the tests with scripts/test.sh, or \
             eval \"$(scripts/test-env.sh)\" first (it installs the moto emulator)"
        )
    })
}

impl Moto {
    pub async fn start() -> Moto {
        let path = moto_server_path();
        let mut child = Command::new(&path)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {path}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let requests2 = requests.clone();
        // Drain stderr for the server's whole life, or it blocks on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("Running on http://").nth(1)
                    && let Some(t) = tx.take()
                {
                    let _ = t.send(rest.trim().to_string());
                }
                if line.contains(" HTTP/1.1") {
                    requests2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let mut l = log2.lock().unwrap();
                if l.len() > 200 {
                    l.remove(0);
                }
                l.push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("moto did not report its address within 30 s");
        assert!(addr.starts_with("127.0.0.1:"), "moto bound {addr}");
        let url = format!("http://{addr}");
        let config = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&url)
            .credentials_provider(aws_sdk_autoscaling::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .load()
            .await;
        let moto = Moto {
            child,
            url,
            log,
            requests,
            config,
        };
        moto.wait_ready().await;
        // Lambda functions are stored, never run (no Docker here).
        reqwest::Client::new()
            .post(format!("{}/moto-api/config", moto.url))
            .json(&serde_json::json!({"lambda": {"use_docker": false}}))
            .send()
            .await
            .expect("configure moto");
        moto
    }

    async fn wait_ready(&self) {
        let start = Instant::now();
        let client = aws_sdk_autoscaling::Client::new(&self.config);
        while client.describe_auto_scaling_groups().send().await.is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "moto not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Environment for a child process to use this emulator.
    pub fn env(&self, cmd: &mut tokio::process::Command) {
        cmd.env("AWS_ENDPOINT_URL", &self.url)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", REGION);
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Requests moto has served so far (from its access log).
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn log_tail(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn asg(&self) -> aws_sdk_autoscaling::Client {
        aws_sdk_autoscaling::Client::new(&self.config)
    }

    /// A launch template and a group (min 0, given max/desired, protected).
    pub async fn create_group(&self, name: &str, max: i32, desired: i32) {
        let ec2 = aws_sdk_ec2::Client::new(&self.config);
        ec2.create_launch_template()
            .launch_template_name(format!("{name}-lt"))
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id("ami-12c6146b")
                    .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                    .build(),
            )
            .send()
            .await
            .expect("create launch template");
        self.asg()
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_template(
                aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                    .launch_template_name(format!("{name}-lt"))
                    .build(),
            )
            .min_size(0)
            .max_size(max)
            .desired_capacity(desired)
            .availability_zones("us-east-1a")
            .new_instances_protected_from_scale_in(true)
            .send()
            .await
            .expect("create group");
    }

    pub fn ssm(&self) -> aws_sdk_ssm::Client {
        aws_sdk_ssm::Client::new(&self.config)
    }

    /// A parameter's value, if it exists.
    pub async fn parameter(&self, name: &str) -> Option<String> {
        self.ssm()
            .get_parameter()
            .name(name)
            .send()
            .await
            .ok()
            .and_then(|o| o.parameter().and_then(|p| p.value()).map(str::to_string))
    }

    pub async fn desired(&self, name: &str) -> i32 {
        self.group(name).await.0
    }

    /// (desired, instances in the group).
    pub async fn group(&self, name: &str) -> (i32, Vec<Instance>) {
        let out = self
            .asg()
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .expect("describe group");
        let g = &out.auto_scaling_groups()[0];
        (g.desired_capacity().unwrap(), g.instances().to_vec())
    }

    pub async fn create_secret(&self, name: &str, value: &str) -> String {
        aws_sdk_secretsmanager::Client::new(&self.config)
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .expect("create secret")
            .arn()
            .unwrap()
            .to_string()
    }

    pub async fn delete_secret(&self, name: &str) {
        aws_sdk_secretsmanager::Client::new(&self.config)
            .delete_secret()
            .secret_id(name)
            .force_delete_without_recovery(true)
            .send()
            .await
            .expect("delete secret");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}
