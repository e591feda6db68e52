//! Shared test rig: the moto AWS emulator, a CircleCI runner-API stand-in and a
//! Lambda Runtime API stand-in, each a real server on 127.0.0.1 that is stopped
//! when its guard is dropped.
#![allow(dead_code)]

pub mod circleci;
pub mod emf;
pub mod lambda_api;
pub mod moto;
pub mod rig;
pub mod usage_api;
pub mod vm;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

pub const TOKEN: &str = "cci-test-token-4f1b2e9a-SHOULD-NEVER-BE-PRINTED";
pub const REGION: &str = "us-east-1";

pub fn bin(name: &str) -> PathBuf {
    // `scripts/bench.sh` times the binaries of other profiles this way.
    if let Some(dir) = std::env::var_os("CCI_SCALER_BENCH_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    match name {
        "cci-scaler" => PathBuf::from(env!("CARGO_BIN_EXE_cci-scaler")),
        "cci-scaler-lambda" => PathBuf::from(env!("CARGO_BIN_EXE_cci-scaler-lambda")),
        other => panic!("unknown binary {other}"),
    }
}

/// A command with a clean environment: nothing from the developer's AWS or
/// CircleCI setup leaks into a test, and HOME is an empty folder.
pub fn command(name: &str, home: &std::path::Path) -> tokio::process::Command {
    command_at(&bin(name), home)
}

/// [`command`] for a binary given by its path (an older release, say).
pub fn command_at(program: &std::path::Path, home: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("NO_COLOR", "1")
        // The emulator runs no user data, so no builder ever finishes: init
        // bakes only where a test stands in for the builder (and unsets it).
        .env("CCI_SCALER_NO_BAKE", "1")
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    cmd
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub async fn run(mut cmd: tokio::process::Command) -> Run {
    let out: Output = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("command took over 120 s")
        .expect("spawn");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Poll `check` until it returns Some or the time is up.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > end {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An IAM finding of parliament (an independent policy linter): its severity,
/// issue code and detail.
#[derive(Debug, Clone)]
pub struct Finding {
    pub severity: String,
    pub issue: String,
    pub detail: String,
}

/// Runs parliament (installed by `scripts/test-env.sh`, which exports
/// CCI_SCALER_PARLIAMENT) on one policy document and returns every finding.
pub fn parliament(policy: &serde_json::Value) -> Vec<Finding> {
    let exe = std::env::var("CCI_SCALER_PARLIAMENT").unwrap_or_else(|_| {
        panic!(
            "CCI_SCALER_PARLIAMENT is not set: run the tests with scripts/test.sh, which installs \
             the parliament IAM linter"
        )
    });
    let out = std::process::Command::new(&exe)
        .args(["--json", "--string", &policy.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {exe}: {e}"));
    // Exit 0: no finding; 1: findings (listed on stdout); anything else: broken.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "parliament failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("parliament printed {l:?}: {e}"));
            Finding {
                severity: v["severity"].as_str().unwrap_or_default().to_string(),
                issue: v["issue"].as_str().unwrap_or_default().to_string(),
                detail: v["detail"].to_string(),
            }
        })
        .collect()
}

/// An IAM policy document as IAM returns it (URL-encoded JSON).
pub fn iam_doc(doc: &str) -> serde_json::Value {
    let doc = percent_encoding::percent_decode_str(doc).decode_utf8_lossy();
    serde_json::from_str(&doc).unwrap_or_else(|e| panic!("{e}: {doc}"))
}

/// The inline policy `cci-scaler` of a role.
pub async fn role_policy(iam: &aws_sdk_iam::Client, role: &str) -> serde_json::Value {
    let p = iam
        .get_role_policy()
        .role_name(role)
        .policy_name("cci-scaler")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{role}: {e:?}"));
    iam_doc(p.policy_document())
}

/// Who may assume a role (its trust policy).
pub async fn role_trust(iam: &aws_sdk_iam::Client, role: &str) -> serde_json::Value {
    let r = iam.get_role().role_name(role).send().await.unwrap();
    iam_doc(r.role().unwrap().assume_role_policy_document().unwrap())
}

/// A launch template's user data as text: base64, and gzip when EC2's 16 KB
/// made cci-scaler compress it.
pub fn user_data_text(b64: &str) -> String {
    use base64::Engine;
    use std::io::Read;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 user data");
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut s)
            .expect("gzip user data");
        s
    } else {
        String::from_utf8(raw).expect("UTF-8 user data")
    }
}

/// The environment of a Lambda function (moto keeps it; it never runs it).
pub async fn function_env(
    cfg: &aws_config::SdkConfig,
    name: &str,
) -> std::collections::HashMap<String, String> {
    aws_sdk_lambda::Client::new(cfg)
        .get_function_configuration()
        .function_name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{name}: {e:?}"))
        .environment()
        .and_then(|e| e.variables())
        .cloned()
        .unwrap_or_default()
}

/// The latest version of a launch template, as EC2 holds it.
pub async fn latest_template(
    ec2: &aws_sdk_ec2::Client,
    name: &str,
) -> aws_sdk_ec2::types::LaunchTemplateVersion {
    ec2.describe_launch_template_versions()
        .launch_template_name(name)
        .versions("$Latest")
        .send()
        .await
        .unwrap()
        .launch_template_versions()[0]
        .clone()
}

/// The data of a launch template's latest version.
pub async fn template_data(
    ec2: &aws_sdk_ec2::Client,
    name: &str,
) -> aws_sdk_ec2::types::ResponseLaunchTemplateData {
    latest_template(ec2, name)
        .await
        .launch_template_data()
        .unwrap()
        .clone()
}
