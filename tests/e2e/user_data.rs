//! The runner user-data script: snapshots, `bash -n` and shellcheck on every
//! variant, a real run in a bubblewrap sandbox with stub commands that record
//! their calls, and the CLI's refusals of bad input.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cci_scaler::render::{UserDataInput, render_user_data};
use secrecy::SecretString;

use crate::support::{command, run};

const RUNNER_TOKEN: &str = "rt-3c9d1f0e8b7a6d5c4b3a2f1e0d9c8b7a-RUNNER-TOKEN";
const INSTANCE: &str = "i-0123456789abcdef0";

fn default_input() -> UserDataInput {
    UserDataInput {
        stack: "demo".into(),
        group: "demo-runners".into(),
        region: "us-east-1".into(),
        resource_class: "acme/linux-x64".into(),
        token_secret_id: "cci-scaler/demo/runner-token".into(),
        idle_timeout: "1m".into(),
        max_run_time: "5h".into(),
        working_directory: "/var/opt/circleci/workdir".into(),
        setup_script: None,
        apt_packages: vec![],
        embedded_token: None,
        spares: false,
    }
}

/// Customised: setup script, extra packages, other timeouts and paths.
fn custom_input(setup: &str) -> UserDataInput {
    UserDataInput {
        stack: "web-ci".into(),
        group: "web-ci-fleet".into(),
        region: "eu-west-2".into(),
        resource_class: "acme/web.large".into(),
        token_secret_id: "arn:aws:secretsmanager:eu-west-2:123456789012:secret:web/runner-AbCdEf"
            .into(),
        idle_timeout: "90s".into(),
        max_run_time: "1h30m".into(),
        working_directory: "/opt/ci/work".into(),
        setup_script: Some(setup.to_string()),
        apt_packages: vec!["nodejs".into(), "npm".into(), "g++".into()],
        embedded_token: None,
        spares: false,
    }
}

const NODE_SETUP: &str = "#!/bin/bash\nset -euo pipefail\napt-get install -y nodejs npm\n";

#[test]
fn snapshot_default() {
    insta::assert_snapshot!(
        "user_data_default",
        render_user_data(&default_input()).unwrap()
    );
}

#[test]
fn snapshot_customised() {
    insta::assert_snapshot!(
        "user_data_customised",
        render_user_data(&custom_input(NODE_SETUP)).unwrap()
    );
}

#[test]
fn rendering_is_deterministic_and_keeps_the_token_out() {
    let a = render_user_data(&custom_input(NODE_SETUP)).unwrap();
    let b = render_user_data(&custom_input(NODE_SETUP)).unwrap();
    assert_eq!(a, b);
    assert!(a.contains("readonly TOKEN_SECRET_ID="));
    assert!(!a.contains(RUNNER_TOKEN));
}

fn variants() -> Vec<(&'static str, String)> {
    let mut embed = default_input();
    embed.embedded_token = Some(SecretString::from(RUNNER_TOKEN));
    vec![
        ("default", render_user_data(&default_input()).unwrap()),
        (
            "customised",
            render_user_data(&custom_input(NODE_SETUP)).unwrap(),
        ),
        ("embedded-token", render_user_data(&embed).unwrap()),
        (
            "spares",
            render_user_data(&UserDataInput {
                spares: true,
                ..default_input()
            })
            .unwrap(),
        ),
    ]
}

fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "{name} is not installed: .ci/run installs it (apt-get install shellcheck bubblewrap)"
        )
    })
}

#[test]
fn every_variant_passes_bash_n_and_shellcheck() {
    let dir = tempfile::tempdir().unwrap();
    for (name, script) in variants() {
        let path = dir.path().join(format!("{name}.sh"));
        std::fs::write(&path, &script).unwrap();
        let out = Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{name}: bash -n: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(tool("shellcheck"))
            .args(["--shell=bash", "--severity=style", "--external-sources"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: shellcheck:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // The exit hook is a script of its own: check it too.
        let hook = extract(&script, "<<'EXIT_HOOK'\n", "\nEXIT_HOOK\n");
        let hook_path = dir.path().join(format!("{name}-exit-hook.sh"));
        std::fs::write(&hook_path, hook).unwrap();
        let out = Command::new(tool("shellcheck"))
            .arg(&hook_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} exit hook: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

fn extract<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let i = text.find(start).expect("start marker") + start.len();
    let j = text[i..].find(end).expect("end marker") + i;
    &text[i..j]
}

// ---- the sandbox ----

/// Stub commands: each records its call in /tmp/calls.log, then acts as told by
/// STUB_* variables.
const STUBS: &[(&str, &str)] = &[
    (
        "apt-get",
        r#"if [ -n "${STUB_APT_FAIL_ONCE:-}" ] && [ ! -e /tmp/.apt-failed ]; then
  touch /tmp/.apt-failed; echo "E: Could not get lock (stub)" >&2; exit 100
fi
case " $* " in *" circleci-runner "*) cp /tmp/stubs/.circleci-runner /tmp/stubs/circleci-runner ;; esac
exit 0"#,
    ),
    (
        "curl",
        r#"out=""
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out=$2; shift ;;
    */latest/api/token) printf 'imds-session-token' ;;
    */meta-data/instance-id) printf 'i-0123456789abcdef0' ;;
    */meta-data/tags/instance/cci-scaler:spare-until)
      if [ -n "${STUB_SPARE_UNTIL:-}" ]; then printf '%s' "$STUB_SPARE_UNTIL"; else exit 22; fi ;;
  esac
  shift
done
if [ -n "$out" ]; then printf '#!/bin/bash\necho "repository added (stub)"\n' > "$out"; fi
exit 0"#,
    ),
    (
        "aws",
        r#"args=" $* "
throttled() {
  local n; n=$(cat /tmp/.throttled 2>/dev/null || echo 0)
  if [ "$n" -lt "${STUB_THROTTLE:-0}" ]; then
    echo $((n + 1)) > /tmp/.throttled
    echo "An error occurred (Throttling) when calling the operation: Rate exceeded" >&2
    exit 254
  fi
}
fail_if() {
  case ",${STUB_FAIL:-}," in *",$1,"*)
    echo "An error occurred (ValidationError) when calling the operation: stub failure $1" >&2
    exit 254 ;;
  esac
}
case "$args" in
  *" secretsmanager get-secret-value "*)
    fail_if secret; printf '%s\n' "$STUB_RUNNER_TOKEN" ;;
  *" terminate-instance-in-auto-scaling-group "*" --should-decrement-desired-capacity "*)
    throttled; fail_if decrement ;;
  *" terminate-instance-in-auto-scaling-group "*" --no-should-decrement-desired-capacity "*)
    throttled; fail_if no-decrement ;;
  *" set-instance-health "*)
    throttled; fail_if health ;;
esac
exit 0"#,
    ),
    ("systemctl", "exit 0"),
    (".circleci-runner", "exit 0"),
    ("shutdown", "exit 0"),
    ("sleep", "exit 0"),
    ("snap", "exit 0"),
];

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        for d in ["etc", "var", "usr-local", "tmp/stubs"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        for (name, body) in STUBS {
            let path = dir.path().join("tmp/stubs").join(name);
            let tool = name.trim_start_matches('.');
            std::fs::write(
                &path,
                format!("#!/bin/bash\necho \"{tool} $*\" >> /tmp/calls.log\n{body}\n"),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Sandbox { dir }
    }

    fn path(&self, inside: &str) -> PathBuf {
        let p = inside.trim_start_matches('/');
        let (top, rest) = p.split_once('/').unwrap_or((p, ""));
        let top = match top {
            "usr" => {
                return self
                    .dir
                    .path()
                    .join("usr-local")
                    .join(rest.trim_start_matches("local/"));
            }
            t => t,
        };
        self.dir.path().join(top).join(rest)
    }

    /// Run a file inside the sandbox: its own /etc, /var, /usr/local and /tmp,
    /// no network, stubs first on PATH.
    fn run(&self, script_inside: &str, env: &[(&str, &str)]) -> crate::support::Run {
        let t = self.dir.path();
        let mut cmd = Command::new(tool("bwrap"));
        cmd.args(["--ro-bind", "/", "/"])
            .arg("--bind")
            .arg(t.join("etc"))
            .arg("/etc")
            .args(["--ro-bind", "/etc/passwd", "/etc/passwd"])
            .args(["--ro-bind", "/etc/group", "/etc/group"])
            .arg("--bind")
            .arg(t.join("var"))
            .arg("/var")
            .arg("--bind")
            .arg(t.join("usr-local"))
            .arg("/usr/local")
            .arg("--bind")
            .arg(t.join("tmp"))
            .arg("/tmp")
            .args(["--dev", "/dev", "--proc", "/proc"])
            .args([
                "--unshare-pid",
                "--unshare-net",
                "--die-with-parent",
                "--clearenv",
            ])
            .args([
                "--setenv",
                "PATH",
                "/tmp/stubs:/usr/sbin:/usr/bin:/sbin:/bin",
            ])
            .args(["--setenv", "HOME", "/root"])
            .args(["--setenv", "STUB_RUNNER_TOKEN", RUNNER_TOKEN]);
        for (k, v) in env {
            cmd.args(["--setenv", k, v]);
        }
        cmd.args(["bash", script_inside]);
        let out = cmd.output().expect("run bwrap");
        crate::support::Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn boot(&self, script: &str, env: &[(&str, &str)]) -> crate::support::Run {
        std::fs::write(self.path("/tmp/user-data.sh"), script).unwrap();
        self.run("/tmp/user-data.sh", env)
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("/tmp/calls.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    fn read(&self, inside: &str) -> String {
        std::fs::read_to_string(self.path(inside)).unwrap_or_else(|e| panic!("{inside}: {e}"))
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.path("/tmp/calls.log"));
        let _ = std::fs::remove_file(self.path("/tmp/.throttled"));
    }
}

fn position(calls: &[String], prefix: &str) -> usize {
    calls
        .iter()
        .position(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("no call {prefix:?} in {calls:#?}"))
}

const RECORDING_SETUP: &str = "echo \"setup ran\" >> /tmp/calls.log\n";

#[test]
fn sandboxed_boot_configures_and_starts_the_runner() {
    let sb = Sandbox::new();
    let mut input = default_input();
    input.setup_script = Some(RECORDING_SETUP.into());
    let script = render_user_data(&input).unwrap();
    let r = sb.boot(&script, &[]);
    assert_eq!(r.code, 0, "{r:?}");

    // The config file: exact content, root, 0600; the token from the secret.
    let config = sb.read("/etc/circleci-runner/circleci-runner-config.yaml");
    assert_eq!(
        config,
        format!(
            "api:\n  auth_token: {RUNNER_TOKEN}\nrunner:\n  name: {INSTANCE}\n  mode: single-task\n  \
             idle_timeout: 1m\n  max_run_time: 5h\n  working_directory: /var/opt/circleci/workdir\n  \
             cleanup_working_directory: true\n  command_prefix: [\"sudo\", \"-niHu\", \"circleci\", \"--\"]\n"
        )
    );
    let meta =
        std::fs::metadata(sb.path("/etc/circleci-runner/circleci-runner-config.yaml")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);
    // No temporary copy left beside it.
    let leftovers: Vec<_> = std::fs::read_dir(sb.path("/etc/circleci-runner"))
        .unwrap()
        .collect();
    assert_eq!(leftovers.len(), 1);

    let calls = sb.calls();
    let secret = position(&calls, "aws secretsmanager get-secret-value");
    assert!(
        calls[secret].contains("--secret-id cci-scaler/demo/runner-token"),
        "{calls:#?}"
    );
    assert!(calls[secret].contains("--region us-east-1"), "{calls:#?}");
    // Installed before use; setup before the runner starts; the runner last.
    let install = position(&calls, "apt-get install -y -q circleci-runner");
    let setup = position(&calls, "setup ran");
    let enable = position(&calls, "systemctl enable circleci-runner.service");
    let start = position(&calls, "systemctl start --no-block circleci-runner.service");
    assert!(
        install < setup && setup < enable && enable < start,
        "{calls:#?}"
    );
    assert_eq!(start, calls.len() - 1, "the runner starts last: {calls:#?}");

    // The token is in no log, no output, no recorded call.
    let log = sb.read("/var/log/cci-scaler-boot.log");
    assert!(log.contains("runner started"), "{log}");
    assert!(log.contains(&format!("runner name: {INSTANCE}")), "{log}");
    for text in [&log, &r.stdout, &r.stderr, &calls.join("\n"), &script] {
        assert!(!text.contains(RUNNER_TOKEN), "token leaked into:\n{text}");
    }

    // The unit drop-in.
    let dropin = sb.read("/etc/systemd/system/circleci-runner.service.d/cci-scaler.conf");
    assert!(dropin.contains("Restart=no\n"), "{dropin}");
    assert!(
        dropin.contains("TimeoutStopSec=18300\n"),
        "5h + 5m: {dropin}"
    );
    assert!(
        dropin.contains("ExecStopPost=/usr/local/lib/cci-scaler/exit-hook\n"),
        "{dropin}"
    );
    let hook = std::fs::metadata(sb.path("/usr/local/lib/cci-scaler/exit-hook")).unwrap();
    assert_eq!(hook.mode() & 0o777, 0o755);
}

/// A pool with headroom: an instance launched during a period (the group's
/// spare-until tag, from instance metadata) keeps its runner idle until the
/// period ends plus the idle timeout; one launched outside any period (no
/// tag, or a past one) gets the plain idle timeout.
#[test]
fn sandboxed_spare_stays_until_its_period_ends() {
    let script = render_user_data(&UserDataInput {
        spares: true,
        ..default_input()
    })
    .unwrap();
    let idle = |sb: &Sandbox| {
        let config = sb.read("/etc/circleci-runner/circleci-runner-config.yaml");
        config
            .lines()
            .find_map(|l| l.trim().strip_prefix("idle_timeout: "))
            .unwrap()
            .to_string()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sb = Sandbox::new();
    let until = (now + 3600).to_string();
    let r = sb.boot(&script, &[("STUB_SPARE_UNTIL", &until)]);
    assert_eq!(r.code, 0, "{r:?}");
    // One hour to the period's end plus the 1m idle timeout (a second or two
    // may pass between the two clocks).
    let secs: u64 = idle(&sb).trim_end_matches('s').parse().unwrap();
    assert!((3655..=3660).contains(&secs), "{secs}");
    assert!(
        sb.read("/var/log/cci-scaler-boot.log")
            .contains("spare runner until")
    );

    for env in [
        vec![],
        vec![("STUB_SPARE_UNTIL", "1000")],
        vec![("STUB_SPARE_UNTIL", "x; rm -rf /")],
    ] {
        let sb = Sandbox::new();
        let r = sb.boot(&script, &env);
        assert_eq!(r.code, 0, "{env:?}: {r:?}");
        assert_eq!(idle(&sb), "1m", "{env:?}");
    }
    // Without headroom the script does not look.
    let sb = Sandbox::new();
    let r = sb.boot(
        &render_user_data(&default_input()).unwrap(),
        &[("STUB_SPARE_UNTIL", &until)],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(idle(&sb), "1m");
    assert!(!sb.calls().iter().any(|c| c.contains("spare-until")));
}

#[test]
fn sandboxed_boot_retries_transient_apt_failures() {
    let sb = Sandbox::new();
    let r = sb.boot(
        &render_user_data(&default_input()).unwrap(),
        &[("STUB_APT_FAIL_ONCE", "1")],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let calls = sb.calls();
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("apt-get update"))
            .count(),
        2,
        "{calls:#?}"
    );
    assert!(calls.iter().any(|c| c.starts_with("sleep 2")), "{calls:#?}");
}

#[test]
fn sandboxed_boot_stops_when_the_setup_fails() {
    let sb = Sandbox::new();
    let mut input = default_input();
    input.setup_script = Some("echo \"setup ran\" >> /tmp/calls.log\nexit 3\n".into());
    let r = sb.boot(&render_user_data(&input).unwrap(), &[]);
    assert_ne!(r.code, 0, "{r:?}");
    let log = sb.read("/var/log/cci-scaler-boot.log");
    assert!(
        log.contains("boot FAILED: the environment setup script failed"),
        "{log}"
    );
    let calls = sb.calls();
    assert!(calls.iter().any(|c| c == "setup ran"), "{calls:#?}");
    assert!(
        !calls.iter().any(|c| c.starts_with("systemctl")),
        "runner must not start: {calls:#?}"
    );
}

#[test]
fn sandboxed_boot_fails_loudly_without_the_secret() {
    let sb = Sandbox::new();
    let r = sb.boot(
        &render_user_data(&default_input()).unwrap(),
        &[("STUB_FAIL", "secret")],
    );
    assert_ne!(r.code, 0, "{r:?}");
    let log = sb.read("/var/log/cci-scaler-boot.log");
    assert!(log.contains("boot FAILED at line"), "{log}");
    assert!(!sb.calls().iter().any(|c| c.starts_with("systemctl")));
    assert!(
        !sb.path("/etc/circleci-runner/circleci-runner-config.yaml")
            .exists()
    );
}

#[test]
fn sandboxed_boot_with_embedded_token_reads_no_secret() {
    let sb = Sandbox::new();
    let mut input = default_input();
    input.embedded_token = Some(SecretString::from(RUNNER_TOKEN));
    let r = sb.boot(
        &render_user_data(&input).unwrap(),
        &[("STUB_RUNNER_TOKEN", "unused")],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!sb.calls().iter().any(|c| c.contains("secretsmanager")));
    assert!(
        sb.read("/etc/circleci-runner/circleci-runner-config.yaml")
            .contains(RUNNER_TOKEN)
    );
    assert!(
        !sb.read("/var/log/cci-scaler-boot.log")
            .contains(RUNNER_TOKEN)
    );
}

#[test]
fn exit_hook_walks_the_fallback_ladder() {
    let sb = Sandbox::new();
    let r = sb.boot(&render_user_data(&default_input()).unwrap(), &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let hook = "/usr/local/lib/cci-scaler/exit-hook";
    let dec = format!(
        "aws --region us-east-1 autoscaling terminate-instance-in-auto-scaling-group --instance-id {INSTANCE} --should-decrement-desired-capacity"
    );
    let nodec = format!(
        "aws --region us-east-1 autoscaling terminate-instance-in-auto-scaling-group --instance-id {INSTANCE} --no-should-decrement-desired-capacity"
    );
    let health = format!(
        "aws --region us-east-1 autoscaling set-instance-health --instance-id {INSTANCE} --health-status Unhealthy"
    );
    let shutdown = "shutdown -h now".to_string();
    let cases: Vec<(&str, &str, Vec<&String>)> = vec![
        ("", "0", vec![&dec]),
        ("decrement", "0", vec![&dec, &nodec]),
        ("decrement,no-decrement", "0", vec![&dec, &nodec, &health]),
        (
            "decrement,no-decrement,health",
            "0",
            vec![&dec, &nodec, &health, &shutdown],
        ),
    ];
    for (fail, throttle, want) in cases {
        sb.clear_calls();
        let r = sb.run(hook, &[("STUB_FAIL", fail), ("STUB_THROTTLE", throttle)]);
        assert_eq!(r.code, 0, "{fail}: {r:?}");
        let calls: Vec<String> = sb
            .calls()
            .into_iter()
            .filter(|c| !c.starts_with("sleep"))
            .collect();
        let want: Vec<String> = want.into_iter().cloned().collect();
        assert_eq!(calls, want, "failing {fail:?}");
    }

    // Throttling is retried (bounded, with backoff) before falling back.
    sb.clear_calls();
    let r = sb.run(hook, &[("STUB_THROTTLE", "2")]);
    assert_eq!(r.code, 0, "{r:?}");
    let calls = sb.calls();
    assert_eq!(calls.iter().filter(|c| **c == dec).count(), 3, "{calls:#?}");
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("sleep")).count(),
        2,
        "{calls:#?}"
    );
    assert!(!calls.contains(&nodec), "{calls:#?}");
    let log = sb.read("/var/log/cci-scaler-exit.log");
    assert!(log.contains("throttled"), "{log}");
}

// ---- the CLI ----

fn render_cmd(home: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = command("cci-scaler", home);
    cmd.args(["render", "user-data", "--region", "us-east-1"])
        .args(args);
    cmd
}

#[tokio::test]
async fn cli_renders_to_stdout_and_to_a_file() {
    let home = tempfile::tempdir().unwrap();
    let r = run(render_cmd(
        home.path(),
        &["--stack", "demo", "--resource-class", "acme/linux-x64"],
    ))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, render_user_data(&default_input()).unwrap());

    let out = home.path().join("ud.sh");
    let setup = home.path().join("setup.sh");
    std::fs::write(&setup, NODE_SETUP).unwrap();
    let r = run(render_cmd(
        home.path(),
        &[
            "--stack",
            "demo",
            "--resource-class",
            "acme/linux-x64",
            "--setup-script",
            setup.to_str().unwrap(),
            "--apt-package",
            "jq",
            "--out",
            out.to_str().unwrap(),
        ],
    ))
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(written.contains("apt-get install -y nodejs npm"));
    assert!(written.contains(" 'jq'"));

    // --embed-token: warns, reads the token from the environment, writes 0600.
    let secret_out = home.path().join("embedded.sh");
    let mut cmd = render_cmd(
        home.path(),
        &[
            "--stack",
            "demo",
            "--resource-class",
            "acme/linux-x64",
            "--embed-token",
            "--out",
            secret_out.to_str().unwrap(),
        ],
    );
    cmd.env("CIRCLECI_RUNNER_TOKEN", RUNNER_TOKEN);
    let r = run(cmd).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("warning: --embed-token puts the runner token"),
        "{r:?}"
    );
    assert!(!r.all().contains(RUNNER_TOKEN));
    assert_eq!(
        std::fs::metadata(&secret_out).unwrap().mode() & 0o777,
        0o600
    );
    assert!(
        std::fs::read_to_string(&secret_out)
            .unwrap()
            .contains(RUNNER_TOKEN)
    );
}

#[tokio::test]
async fn cli_refuses_bad_input_and_writes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("ud.sh");
    let big = home.path().join("big.sh");
    std::fs::write(&big, "# padding\n".repeat(1700)).unwrap();
    let delim = home.path().join("delim.sh");
    std::fs::write(&delim, "echo hi\nCCI_SCALER_SETUP_SCRIPT\nrm -rf /\n").unwrap();
    let o = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--stack", "demo", "--resource-class", "acme/x;reboot"],
            "invalid resource class",
        ),
        (
            vec!["--stack", "demo", "--resource-class", "acme/$(id)"],
            "invalid resource class",
        ),
        (
            vec!["--stack", "de mo", "--resource-class", "acme/x"],
            "invalid stack name",
        ),
        (
            vec!["--stack", "demo`x`", "--resource-class", "acme/x"],
            "invalid stack name",
        ),
        (
            vec![
                "--stack",
                "demo",
                "--resource-class",
                "acme/x",
                "--asg",
                "a'b",
            ],
            "invalid group name",
        ),
        (
            vec![
                "--stack",
                "demo",
                "--resource-class",
                "acme/x",
                "--apt-package",
                "x;y",
            ],
            "invalid apt package",
        ),
        (
            vec![
                "--stack",
                "demo",
                "--resource-class",
                "acme/x",
                "--working-directory",
                "relative",
            ],
            "invalid working directory",
        ),
        (
            vec![
                "--stack",
                "demo",
                "--resource-class",
                "acme/x",
                "--idle-timeout",
                "soon",
            ],
            "invalid idle timeout",
        ),
        (
            vec![
                "--stack",
                "demo",
                "--resource-class",
                "acme/x",
                "--setup-script",
                "/nonexistent/setup.sh",
            ],
            "cannot read the setup script /nonexistent/setup.sh",
        ),
        (
            vec![
                "--stack",
                "demo",
                "--resource-class",
                "acme/x",
                "--setup-script",
                big.to_str().unwrap(),
            ],
            "bytes over EC2's 16384-byte limit",
        ),
        (
            vec![
                "--stack",
                "demo",
                "--resource-class",
                "acme/x",
                "--setup-script",
                delim.to_str().unwrap(),
            ],
            "the setup script cannot be embedded",
        ),
        (
            vec![
                "--stack",
                "demo",
                "--resource-class",
                "acme/x",
                "--embed-token",
            ],
            "needs the runner token in CIRCLECI_RUNNER_TOKEN",
        ),
    ];
    for (mut args, want) in cases {
        args.extend(["--out", o]);
        let r = run(render_cmd(home.path(), &args)).await;
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(r.stderr.contains(want), "{args:?}: want {want:?}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "one-line error: {r:?}");
        assert!(!out.exists(), "{args:?} wrote a file");
        let names: Vec<_> = std::fs::read_dir(home.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    }
    // Too large says by how much.
    let r = run(render_cmd(
        home.path(),
        &[
            "--stack",
            "demo",
            "--resource-class",
            "acme/x",
            "--setup-script",
            big.to_str().unwrap(),
        ],
    ))
    .await;
    assert!(r.stderr.contains("bytes, "), "{r:?}");
}
