//! The command line itself: each command offers only the flags that apply
//! to it, a stack file that does not check is bad usage (exit 2) everywhere,
//! and the shell completions and man page come from the same definitions.

use crate::support::{command, run};

async fn help(args: &[&str]) -> String {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = command("cci-scaler", home.path());
    cmd.args(args).arg("--help");
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout
}

#[tokio::test]
async fn each_command_offers_only_the_flags_that_apply() {
    // No AWS call: no AWS flags.
    for cmd in [&["simulate"][..], &["render", "user-data"]] {
        let h = help(cmd).await;
        for flag in ["--profile", "--endpoint-url"] {
            assert!(!h.contains(flag), "{cmd:?} offers {flag}:\n{h}");
        }
    }
    // render keeps --region: it is written into the script.
    assert!(help(&["render", "user-data"]).await.contains("--region"));
    assert!(!help(&["simulate"]).await.contains("--region"));
    // --pool where a pool can be picked, not on init (which converges all).
    assert!(!help(&["init"]).await.contains("--pool"));
    for cmd in [
        &["status"][..],
        &["teardown"],
        &["scale"],
        &["image", "build"],
    ] {
        assert!(help(cmd).await.contains("--pool"), "{cmd:?}");
    }
    // The commands that call AWS take the AWS CLI's flags.
    for cmd in [&["init"][..], &["status"], &["teardown"], &["scale"]] {
        let h = help(cmd).await;
        for flag in ["--profile", "--region", "--endpoint-url"] {
            assert!(h.contains(flag), "{cmd:?} lacks {flag}");
        }
    }
}

#[tokio::test]
async fn a_stack_file_of_the_wrong_type_is_bad_usage_everywhere() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("cci-scaler.toml");
    std::fs::write(
        &file,
        "stack = \"demo\"\nresource_class = \"acme/a\"\nmax_instances = \"ten\"\n",
    )
    .unwrap();
    for args in [
        &["init"][..],
        &["status"],
        &["teardown", "--yes"],
        &["scale", "--once"],
    ] {
        let mut cmd = command("cci-scaler", home.path());
        cmd.args(args)
            .args(["--config", file.to_str().unwrap()])
            .env("CIRCLECI_TOKEN", "not-used")
            .env("AWS_REGION", "us-east-1")
            // Nothing may be reached: a closed port.
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("CIRCLECI_RUNNER_API_URL", "http://127.0.0.1:9");
        let r = run(cmd).await;
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("max_instances") && r.stderr.contains("expected u32"),
            "{args:?}: {r:?}"
        );
    }
}

/// Without a stack name, or with a bad one, status and teardown say so as
/// bad usage, before any call.
#[tokio::test]
async fn a_missing_or_bad_stack_name_is_bad_usage() {
    let home = tempfile::tempdir().unwrap();
    for (args, want) in [
        (&["status"][..], "no stack name: pass --stack"),
        (&["teardown", "--yes"], "no stack name: pass --stack"),
        (&["status", "--stack", "1st"], "stack"),
        (
            &["status", "--stack", "ok", "--resource-class", "nons"],
            "resource class",
        ),
    ] {
        let mut cmd = command("cci-scaler", home.path());
        cmd.args(args)
            .current_dir(home.path())
            .env("CIRCLECI_TOKEN", "not-used")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
        let r = run(cmd).await;
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains(want), "{args:?}: {r:?}");
    }
}

#[tokio::test]
async fn completions_and_the_man_page() {
    let home = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef cci-scaler"),
        ("fish", "complete -c cci-scaler"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let mut cmd = command("cci-scaler", home.path());
        cmd.args(["completions", shell]);
        let r = run(cmd).await;
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stdout.contains(marker), "{shell}: {}", &r.stdout[..200]);
        assert!(r.stdout.contains("teardown"), "{shell}");
    }
    // bash can load what it prints.
    let mut cmd = command("cci-scaler", home.path());
    cmd.args(["completions", "bash"]);
    let script = run(cmd).await.stdout;
    let path = home.path().join("cci-scaler.bash");
    std::fs::write(&path, script).unwrap();
    let out = std::process::Command::new("bash")
        .args([
            "-c",
            &format!("source {} && complete -p cci-scaler", path.display()),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let mut cmd = command("cci-scaler", home.path());
    cmd.arg("man");
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(".TH cci-scaler 1"),
        "{}",
        &r.stdout[..200]
    );
    let dir = home.path().join("man");
    let mut cmd = command("cci-scaler", home.path());
    cmd.args(["man", "--out-dir", dir.to_str().unwrap()]);
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{r:?}");
    for page in ["cci-scaler.1", "cci-scaler-init.1", "cci-scaler-scale.1"] {
        assert!(dir.join(page).is_file(), "{page}");
    }
}
