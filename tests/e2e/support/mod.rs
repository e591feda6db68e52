//! Shared test rig: the moto AWS emulator, a CircleCI runner-API stand-in and a
//! Lambda Runtime API stand-in, each a real server on 127.0.0.1 that is stopped
//! when its guard is dropped.
#![allow(dead_code)]

pub mod circleci;
pub mod lambda_api;
pub mod moto;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

pub const TOKEN: &str = "cci-test-token-4f1b2e9a-SHOULD-NEVER-BE-PRINTED";
pub const REGION: &str = "us-east-1";

pub fn bin(name: &str) -> PathBuf {
    match name {
        "cci-scaler" => PathBuf::from(env!("CARGO_BIN_EXE_cci-scaler")),
        "cci-scaler-lambda" => PathBuf::from(env!("CARGO_BIN_EXE_cci-scaler-lambda")),
        other => panic!("unknown binary {other}"),
    }
}

/// A command with a clean environment: nothing from the developer's AWS or
/// CircleCI setup leaks into a test, and HOME is an empty folder.
pub fn command(name: &str, home: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin(name));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("NO_COLOR", "1")
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
