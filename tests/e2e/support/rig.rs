//! The rig for what moto cannot see (`tests/e2e/rig/gateway.py`): an AWS
//! gateway in front of moto that checks SigV4 signatures and enforces the
//! caller's IAM policies on each call's real resource ARN, an IMDSv2
//! stand-in, and fault injection. One process per test, stopped on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::moto::Moto;

pub struct Rig {
    child: Child,
    pub aws_url: String,
    pub aws_https_port: Option<u16>,
    pub imds_port: u16,
    control: String,
    _dir: tempfile::TempDir,
}

/// The virtualenv's Python (it has boto3 and cryptography, moto's own
/// dependencies), next to the moto server `scripts/test-env.sh` installed.
pub fn python() -> std::path::PathBuf {
    let moto = std::env::var("CCI_SCALER_MOTO_SERVER").expect(
        "CCI_SCALER_MOTO_SERVER is not set: run the tests with scripts/test.sh (it installs the rig's Python)",
    );
    std::path::Path::new(&moto).with_file_name("python")
}

/// Credentials of an assumed role (moto's STS), for a client of the gateway.
#[derive(Clone, Debug)]
pub struct RoleCreds {
    pub role: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

impl Rig {
    /// `ca`: the VM image's test CA (cert, key) for the TLS listener.
    pub fn start(moto: &Moto, ca: Option<(&std::path::Path, &std::path::Path)>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = json!({"moto_url": moto.url, "region": super::REGION});
        if let Some((cert, key)) = ca {
            cfg["ca_cert"] = json!(cert);
            cfg["ca_key"] = json!(key);
        }
        let cfg_path = dir.path().join("rig.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/rig/gateway.py");
        let mut child = Command::new(python())
            .arg(&script)
            .arg(&cfg_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the rig");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("the rig did not start ({e}): {line:?}"));
        let port = |k: &str| ports[k].as_u64().map(|p| p as u16);
        Rig {
            child,
            aws_url: format!("http://127.0.0.1:{}", port("aws_http").unwrap()),
            aws_https_port: port("aws_https"),
            imds_port: port("imds").unwrap(),
            control: format!("http://127.0.0.1:{}", port("control").unwrap()),
            _dir: dir,
        }
    }

    async fn post(&self, path: &str, body: Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.control))
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("rig control");
        assert!(r.status().is_success(), "rig {path}: {}", r.status());
    }

    async fn get(&self, path: &str) -> Value {
        reqwest::Client::new()
            .get(format!("{}{path}", self.control))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("rig control")
            .json()
            .await
            .unwrap()
    }

    /// Assume `role` in moto and let the gateway know its credentials.
    pub async fn assume(&self, moto: &Moto, role: &str) -> RoleCreds {
        let out = aws_sdk_sts::Client::new(&moto.config)
            .assume_role()
            .role_arn(format!("arn:aws:iam::123456789012:role/{role}"))
            .role_session_name("test")
            .send()
            .await
            .expect("assume role");
        let c = out.credentials().unwrap();
        let creds = RoleCreds {
            role: role.to_string(),
            access_key_id: c.access_key_id().to_string(),
            secret_access_key: c.secret_access_key().to_string(),
            session_token: c.session_token().to_string(),
        };
        self.register(&creds).await;
        creds
    }

    pub async fn register(&self, c: &RoleCreds) {
        self.post(
            "/creds",
            json!({"access_key_id": c.access_key_id, "secret_access_key": c.secret_access_key,
                   "session_token": c.session_token, "role": c.role}),
        )
        .await;
    }

    /// Faults: `[{"match": "secretsmanager:GetSecretValue" | "imds:GET meta-data/instance-id"
    /// | "imds:PUT api/token", "kind": "5xx" | "throttle", "count": N}]`.
    pub async fn faults(&self, f: Value) {
        self.post("/faults", f).await;
    }

    /// Instance metadata: `{"meta": {...}, "user_data_b64": ..., "set": {"path": value|null},
    /// "flags": {"runner-exit": true}}`.
    pub async fn imds(&self, v: Value) {
        self.post("/imds", v).await;
    }

    /// Every call the gateway saw: principal, action, checks, decision, status.
    pub async fn calls(&self) -> Vec<Value> {
        self.get("/calls")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn imds_requests(&self) -> Vec<Value> {
        self.get("/imds-requests")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn reset_calls(&self) {
        self.post("/reset-calls", json!({})).await;
    }

    /// An SDK config for `creds` through the gateway.
    pub async fn config(&self, c: &RoleCreds) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(super::REGION))
            .endpoint_url(&self.aws_url)
            .credentials_provider(aws_sdk_sts::config::Credentials::new(
                &c.access_key_id,
                &c.secret_access_key,
                Some(c.session_token.clone()),
                None,
                "rig",
            ))
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .load()
            .await
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
