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
        bake: false,
        spot: false,
        unsafe_retries: false,
        job_sudo: false,
        warm_pool: false,
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
        bake: false,
        spot: false,
        unsafe_retries: false,
        job_sudo: false,
        warm_pool: false,
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
            "spot",
            render_user_data(&UserDataInput {
                spot: true,
                unsafe_retries: true,
                job_sudo: false,
                warm_pool: false,
                ..default_input()
            })
            .unwrap(),
        ),
        (
            "spares",
            render_user_data(&UserDataInput {
                spares: true,
                bake: false,
                spot: false,
                unsafe_retries: false,
                job_sudo: false,
                warm_pool: false,
                ..default_input()
            })
            .unwrap(),
        ),
        (
            "warm-pool",
            render_user_data(&UserDataInput {
                spares: true,
                warm_pool: true,
                ..default_input()
            })
            .unwrap(),
        ),
    ]
}

fn tool(name: &str) -> PathBuf {
    // Where an unprivileged PATH may not look: iptables is in /usr/sbin.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|f| f.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "{name} is not installed: scripts/test-env.sh installs it (apt-get install shellcheck bubblewrap iptables)"
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
        // The embedded scripts (exit hook, signed-call helpers, spot
        // watcher) are scripts of their own: check them too.
        for marker in ["EXIT_HOOK", "AWS_SH", "SPOT_WATCHER", "IMDS_FIREWALL"] {
            let open = format!("<<'{marker}'\n");
            if !script.contains(&open) {
                continue;
            }
            let part = extract(&script, &open, &format!("\n{marker}\n"));
            let path = dir.path().join(format!("{name}-{marker}.sh"));
            std::fs::write(&path, part).unwrap();
            let out = Command::new(tool("shellcheck"))
                .args(["-s", "bash"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name} {marker}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
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
        r#"# With STUB_REAL_IMDS, instance metadata is asked of the real curl (a
# stand-in metadata service in the sandbox's own network).
if [ -n "${STUB_REAL_IMDS:-}" ]; then
  case " $* " in *" http://169.254.169.254/"*) exec /usr/bin/curl "$@" ;; esac
fi
# Instance metadata, and signed AWS calls: recorded as
# "sigv4 SERVICE ACTION" and answered as STUB_* say; with STUB_REAL_AWS the
# signed calls go to the real curl (an emulator on 127.0.0.1).
out="" sigv4="" target="" body="" url=""
args=("$@")
# answer STATUS BODY: as curl -sS [-o FILE -w '%{http_code}'] would.
answer() {
  if [ -n "$out" ]; then
    printf '%s' "$2" > "$out"
    printf '%s' "$1"
    exit 0
  fi
  if [ "$1" = 200 ]; then printf '%s' "$2"; exit 0; fi
  exit 22
}
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out=$2; shift ;;
    --aws-sigv4) sigv4=$2; shift ;;
    -H) case "$2" in X-Amz-Target:*) target=${2#X-Amz-Target: } ;; esac; shift ;;
    --data-binary) body=$2; shift ;;
    */latest/api/token) answer 200 'imds-session-token' ;;
    */meta-data/instance-id) answer 200 "${STUB_INSTANCE_ID:-i-0123456789abcdef0}" ;;
    */meta-data/iam/security-credentials/) answer 200 'cci-scaler-demo-runner' ;;
    */meta-data/iam/security-credentials/*)
      answer 200 '{
  "Code" : "Success",
  "AccessKeyId" : "ASIASTUB",
  "SecretAccessKey" : "stub-secret-key",
  "Token" : "stub-session-token"
}' ;;
    */meta-data/spot/instance-action)
      n=$(cat /tmp/.spot-polls 2>/dev/null || echo 0); echo $((n + 1)) > /tmp/.spot-polls
      if [ -n "${STUB_SPOT_AFTER:-}" ] && [ "$n" -ge "$STUB_SPOT_AFTER" ]; then
        answer 200 '{"action": "terminate", "time": "2026-11-29T03:00:00Z"}'
      fi
      answer 404 '' ;;
    */meta-data/events/recommendations/rebalance) answer 404 '' ;;
    */meta-data/tags/instance/cci-scaler:spare-until)
      if [ -n "${STUB_SPARE_UNTIL:-}" ]; then answer 200 "$STUB_SPARE_UNTIL"; else answer 404 ''; fi ;;
    http*) url=$1 ;;
  esac
  shift
done
if [ -n "$sigv4" ]; then
  service=${sigv4##*:}
  action=${target:-$(sed -n 's/.*Action=\([A-Za-z]*\).*/\1/p' <<<"$body")}
  case "$body" in
    *ShouldDecrementDesiredCapacity=true*) what=decrement ;;
    *ShouldDecrementDesiredCapacity=false*) what=no-decrement ;;
    *SetInstanceHealth*) what=health ;;
    *Action=CreateTags*) what=tag ;;
    *) what=secret ;;
  esac
  printf 'sigv4 %s %s %s
' "$service" "$action" "$what" >> /tmp/calls.log
  # The credentials reach curl on its config pipe, never as arguments.
  case " ${args[*]} " in *stub-secret-key*|*stub-session-token*) echo "credentials in arguments" >&2; exit 99 ;; esac
  if [ -n "${STUB_REAL_AWS:-}" ]; then exec /usr/bin/curl "${args[@]}"; fi
  cat > /dev/null
  respond() { if [ -n "$out" ]; then printf '%s' "$2" > "$out"; fi; printf '%s' "$1"; exit 0; }
  n=$(cat /tmp/.throttled 2>/dev/null || echo 0)
  if [ "$service" = autoscaling ] && [ "$n" -lt "${STUB_THROTTLE:-0}" ]; then
    echo $((n + 1)) > /tmp/.throttled
    respond 400 '<ErrorResponse><Error><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>'
  fi
  # A transient failure of the first secret read (HTTP 500), then the token.
  if [ "$what" = secret ] && [ -n "${STUB_SECRET_5XX_ONCE:-}" ] && [ ! -e /tmp/.secret-failed ]; then
    touch /tmp/.secret-failed
    respond 500 '{"__type":"InternalFailure","message":"stub internal error"}'
  fi
  case ",${STUB_FAIL:-}," in *",$what,"*)
    respond 400 '<ErrorResponse><Error><Code>ValidationError</Code><Message>stub failure</Message></Error></ErrorResponse>' ;;
  esac
  if [ "$what" = secret ]; then
    respond 200 "{\"ARN\":\"arn:stub\",\"Name\":\"x\",\"SecretString\":\"$STUB_RUNNER_TOKEN\"}"
  fi
  respond 200 '<Response/>'
fi
printf '%s
' "curl-download $url" >> /tmp/calls.log
if [ -n "$out" ]; then printf '#!/bin/bash\necho "repository added (stub)"\n' > "$out"; fi
exit 0"#,
    ),
    (
        "systemctl",
        r#"# With STUB_IPTABLES (the real iptables), the rules in force when the
# runner is started are recorded.
case " $* " in *" start "*circleci-runner*)
  if [ -n "${STUB_IPTABLES:-}" ]; then
    "$STUB_IPTABLES" -w -S OUTPUT | sed 's/^/rule at runner start: /' >> /tmp/calls.log
  fi ;;
esac
exit 0"#,
    ),
    (
        "iptables",
        r#"if [ -n "${STUB_IPTABLES:-}" ]; then exec "$STUB_IPTABLES" "$@"; fi
exit 0"#,
    ),
    (
        "ip6tables",
        r#"if [ -n "${STUB_IPTABLES:-}" ]; then exec "${STUB_IPTABLES%iptables}ip6tables" "$@"; fi
exit 0"#,
    ),
    (
        "id",
        r#"# STUB_CIRCLECI_GROUPS: the image has a user circleci in these groups.
if [ -n "${STUB_CIRCLECI_GROUPS:-}" ]; then
  case "$*" in
    circleci) echo "uid=1001(circleci) gid=1001(circleci)"; exit 0 ;;
    "-nG circleci") echo "$STUB_CIRCLECI_GROUPS"; exit 0 ;;
  esac
fi
exec /usr/bin/id "$@""#,
    ),
    (
        "sudo",
        r#"printf '%s\n' "${STUB_SUDO_LIST:-User circleci is not allowed to run sudo.}""#,
    ),
    (".circleci-runner", "exit 0"),
    ("shutdown", "exit 0"),
    ("sleep", "exit 0"),
    ("snap", "exit 0"),
];

struct Sandbox {
    dir: tempfile::TempDir,
    /// Share the host's network (loopback: an emulator on 127.0.0.1).
    net: bool,
    /// Its own network namespace in which it may set addresses and firewall
    /// rules and switch users (root, with those capabilities only).
    netadmin: bool,
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
        Sandbox {
            dir,
            net: false,
            netadmin: false,
        }
    }

    /// A sandbox with its own network, firewall and users: it runs as root
    /// (the test's user, or through password-less sudo, as the test setup
    /// installs packages) with the network and user-switching capabilities.
    fn with_netadmin() -> Sandbox {
        Sandbox {
            netadmin: true,
            ..Sandbox::new()
        }
    }

    /// A sandbox that may reach the host's loopback (an emulator).
    fn with_loopback() -> Sandbox {
        Sandbox {
            net: true,
            ..Sandbox::new()
        }
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
        let mut cmd = if !self.netadmin || is_root() {
            Command::new(tool("bwrap"))
        } else {
            let sudo = Command::new("sudo").args(["-n", "true"]).status();
            assert!(
                sudo.is_ok_and(|s| s.success()),
                "this test needs root or password-less sudo (as the test setup does) to give its sandbox a firewall"
            );
            let mut c = Command::new("sudo");
            c.arg("-n").arg(tool("bwrap"));
            c
        };
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
            .args(["--unshare-pid", "--die-with-parent", "--clearenv"]);
        if !self.net {
            cmd.arg("--unshare-net");
        }
        if self.netadmin {
            // iptables' lock lives in /run; Debian's iptables is a link
            // through /etc/alternatives.
            cmd.args(["--tmpfs", "/run"]);
            if Path::new("/etc/alternatives").is_dir() {
                cmd.args(["--ro-bind", "/etc/alternatives", "/etc/alternatives"]);
            }
            for cap in [
                "CAP_NET_ADMIN",
                "CAP_NET_RAW",
                "CAP_NET_BIND_SERVICE",
                "CAP_SETUID",
                "CAP_SETGID",
            ] {
                cmd.args(["--cap-add", cap]);
            }
        }
        cmd.args([
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
        let _ = std::fs::remove_file(self.path("/tmp/.spot-polls"));
    }
}

/// Comment lines of pseudo-random hex, `bytes` long: gzip halves them at best.
fn incompressible(bytes: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = String::new();
    while out.len() < bytes {
        out.push_str("# ");
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push_str(&format!("{x:016x}"));
        }
        out.push('\n');
    }
    out
}

/// A script over EC2's 16 KB goes gzip-compressed (cloud-init inflates it):
/// the same bytes every time, and back to the very script.
#[test]
fn long_scripts_are_packed_with_gzip_and_short_ones_stay_plain() {
    use std::io::Read;
    let short = render_user_data(&default_input()).unwrap();
    assert_eq!(
        cci_scaler::render::pack_user_data(&short).unwrap(),
        short.as_bytes()
    );
    let mut input = default_input();
    // A long but ordinary setup script: 12 KB of apt and config lines.
    input.setup_script = Some(
        (0..300)
            .map(|i| format!("echo 'setting {i} of the job environment' >> /etc/ci.conf\n"))
            .collect(),
    );
    let long = render_user_data(&input).unwrap();
    assert!(
        long.len() > cci_scaler::render::USER_DATA_LIMIT,
        "{}",
        long.len()
    );
    let packed = cci_scaler::render::pack_user_data(&long).unwrap();
    assert_eq!(&packed[..2], [0x1f, 0x8b], "gzip magic");
    assert!(packed.len() <= cci_scaler::render::USER_DATA_LIMIT);
    assert_eq!(cci_scaler::render::pack_user_data(&long).unwrap(), packed);
    let mut back = String::new();
    flate2::read::GzDecoder::new(&packed[..])
        .read_to_string(&mut back)
        .unwrap();
    assert_eq!(back, long);
    // What does not fit even compressed is refused, saying so.
    input.setup_script = Some(incompressible(40_000));
    let e = render_user_data(&input).unwrap_err().to_string();
    assert!(e.contains("even gzip-compressed"), "{e}");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
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
    // The token: one signed GetSecretValue with the role's IMDS credentials.
    let secret = position(&calls, "sigv4 secretsmanager secretsmanager.GetSecretValue");
    let request = &calls[secret - 1];
    assert!(
        request.contains(r#"{"SecretId":"cci-scaler/demo/runner-token"}"#),
        "{calls:#?}"
    );
    assert!(
        request.contains("--aws-sigv4 aws:amz:us-east-1:secretsmanager"),
        "{calls:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.contains("meta-data/iam/security-credentials/cci-scaler-demo-runner")),
        "{calls:#?}"
    );
    // No AWS CLI anywhere on the boot path.
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("aws ") || c.starts_with("snap ")),
        "{calls:#?}"
    );
    assert!(!script.contains("awscli") && !script.contains("aws-cli"));
    // Installed before use; setup before the runner starts; the runner last.
    let install = position(&calls, "apt-get install -y -q circleci-runner");
    let setup = position(&calls, "setup ran");
    let enable = position(
        &calls,
        "systemctl enable cci-scaler-imds-firewall.service circleci-runner.service",
    );
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
        bake: false,
        spot: false,
        unsafe_retries: false,
        job_sudo: false,
        warm_pool: false,
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

/// The boot path's signed calls for real, against the emulator: the token
/// read with GetSecretValue, the exit hook's TerminateInstanceInAutoScalingGroup
/// with decrement. Only instance metadata is stood in (the role's credentials
/// and the instance id); curl signs and sends the requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_calls_from_the_sandbox_reach_the_emulator() {
    let moto = crate::support::moto::Moto::start().await;
    moto.create_secret("cci-scaler/demo/runner-token", RUNNER_TOKEN)
        .await;
    moto.create_group("demo-runners", 2, 1).await;
    let (_, instances) = moto.group("demo-runners").await;
    let id = instances[0].instance_id().unwrap().to_string();
    let sb = Sandbox::with_loopback();
    let script = render_user_data(&default_input()).unwrap();
    let env = [
        ("STUB_REAL_AWS", "1"),
        ("CCI_SCALER_AWS_ENDPOINT", moto.url.as_str()),
        ("STUB_INSTANCE_ID", id.as_str()),
        ("STUB_RUNNER_TOKEN", "not-this-one"),
    ];
    let r = tokio::task::block_in_place(|| sb.boot(&script, &env));
    assert_eq!(r.code, 0, "{r:?}");
    let config = sb.read("/etc/circleci-runner/circleci-runner-config.yaml");
    assert!(
        config.contains(&format!("auth_token: {RUNNER_TOKEN}")),
        "{config}"
    );
    let log = sb.read("/var/log/cci-scaler-boot.log");
    assert!(!log.contains(RUNNER_TOKEN), "{log}");

    let r = tokio::task::block_in_place(|| sb.run("/usr/local/lib/cci-scaler/exit-hook", &env));
    assert_eq!(r.code, 0, "{r:?}");
    let exit_log = sb.read("/var/log/cci-scaler-exit.log");
    assert!(
        exit_log.contains(&format!("terminating {id} with decrement")),
        "{exit_log}"
    );
    assert_eq!(moto.desired("demo-runners").await, 0);
}

/// Installs and downloads on the boot path: an unbaked boot installs the
/// packages and the runner; a boot on a runner-ready image (the same install
/// hash baked in) installs and downloads nothing. Bake mode runs the install
/// half only, marks the image and stops the builder.
#[test]
fn baked_images_boot_without_installs_and_bake_mode_stops_the_builder() {
    let input = default_input();
    let script = render_user_data(&input).unwrap();
    let installs = |calls: &[String]| {
        calls
            .iter()
            .filter(|c| {
                c.starts_with("apt-get") || c.starts_with("snap") || c.starts_with("curl-download")
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    let sb = Sandbox::new();
    let r = sb.boot(&script, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let unbaked = installs(&sb.calls());
    assert_eq!(
        unbaked,
        [
            "apt-get update -q",
            "apt-get install -y -q curl ca-certificates",
            "curl-download https://packagecloud.io/install/repositories/circleci/runner/script.deb.sh?any=true",
            "apt-get install -y -q circleci-runner",
        ],
        "{unbaked:#?}"
    );

    // Bake mode: the install half, the marker, then the builder stops.
    let bake = render_user_data(&UserDataInput {
        bake: true,
        spot: false,
        unsafe_retries: false,
        job_sudo: false,
        warm_pool: false,
        setup_script: Some(RECORDING_SETUP.into()),
        ..default_input()
    })
    .unwrap();
    assert!(!bake.contains("GetSecretValue") && !bake.contains("systemctl"));
    let builder = Sandbox::new();
    let r = builder.boot(&bake, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let calls = builder.calls();
    assert!(calls.iter().any(|c| c == "setup ran"), "{calls:#?}");
    assert_eq!(
        calls.last().map(String::as_str),
        Some("shutdown -h now"),
        "{calls:#?}"
    );
    assert!(!calls.iter().any(|c| c.starts_with("sigv4")), "{calls:#?}");
    let hash = builder.read("/var/lib/cci-scaler/install-hash");
    let baked_input = UserDataInput {
        setup_script: Some(RECORDING_SETUP.into()),
        ..default_input()
    };
    assert_eq!(hash.trim(), baked_input.install_hash());

    // A boot on that image: nothing installed or downloaded, the setup not
    // run again; the token read and the runner started as ever.
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("/var/lib/cci-scaler")).unwrap();
    std::fs::write(sb.path("/var/lib/cci-scaler/install-hash"), &hash).unwrap();
    let r = sb.boot(&render_user_data(&baked_input).unwrap(), &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let calls = sb.calls();
    assert_eq!(installs(&calls), Vec::<String>::new(), "{calls:#?}");
    assert!(!calls.iter().any(|c| c == "setup ran"), "{calls:#?}");
    assert!(calls.iter().any(|c| c.starts_with("sigv4 secretsmanager")));
    assert!(
        sb.read("/var/log/cci-scaler-boot.log")
            .contains("runner-ready image: nothing to install")
    );
    assert_eq!(
        calls.last().map(String::as_str),
        Some("systemctl start --no-block circleci-runner.service")
    );

    // Another setup script: the image is stale, so the boot installs.
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("/var/lib/cci-scaler")).unwrap();
    std::fs::write(sb.path("/var/lib/cci-scaler/install-hash"), &hash).unwrap();
    let r = sb.boot(&script, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(installs(&sb.calls()), unbaked);
}

/// A spot pool: the watcher is installed and enabled at boot; given a fake
/// instance metadata service that starts returning an interruption notice at
/// its third poll, it tags the instance interrupted and stops the runner
/// (whose exit hook then leaves the group with decrement). Unsafe retries
/// reach the runner's config.
#[test]
fn sandboxed_spot_watcher_stops_the_runner_on_a_notice() {
    let input = UserDataInput {
        spot: true,
        unsafe_retries: true,
        job_sudo: false,
        warm_pool: false,
        ..default_input()
    };
    let sb = Sandbox::new();
    let r = sb.boot(&render_user_data(&input).unwrap(), &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let config = sb.read("/etc/circleci-runner/circleci-runner-config.yaml");
    assert!(
        config.contains("  enable_unsafe_retries: true\n"),
        "{config}"
    );
    let calls = sb.calls();
    let watcher = position(
        &calls,
        "systemctl enable --now cci-scaler-spot-watcher.service",
    );
    let start = position(&calls, "systemctl start --no-block circleci-runner.service");
    assert!(watcher < start, "{calls:#?}");

    sb.clear_calls();
    let r = sb.run(
        "/usr/local/lib/cci-scaler/spot-watcher",
        &[("STUB_SPOT_AFTER", "2")],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let calls: Vec<String> = sb
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("sigv4") || c.starts_with("systemctl") || c.starts_with("sleep"))
        .collect();
    assert_eq!(
        calls,
        [
            "sleep 5",
            "sleep 5",
            "sigv4 ec2 CreateTags tag",
            "systemctl stop circleci-runner.service"
        ],
        "{calls:#?}"
    );
    let log = sb.read("/var/log/cci-scaler-spot.log");
    assert!(log.contains("spot interruption notice"), "{log}");
    assert!(log.contains("\"action\": \"terminate\""), "{log}");

    // On demand pools have neither.
    let plain = render_user_data(&default_input()).unwrap();
    assert!(!plain.contains("spot-watcher") && !plain.contains("enable_unsafe_retries"));
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
    // AWS's answer is named, and an answer that will not change is asked once.
    assert!(
        log.contains("GetSecretValue cci-scaler/demo/runner-token failed: <ErrorResponse><Error><Code>ValidationError</Code>"),
        "{log}"
    );
    assert!(log.contains("not retried"), "{log}");
    let calls = sb.calls();
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("sigv4 secretsmanager"))
            .count(),
        1,
        "{calls:#?}"
    );
    assert!(!calls.iter().any(|c| c.starts_with("systemctl")));
    // The failed boot gives its capacity back at once (the exit hook).
    assert!(
        calls.contains(
            &"sigv4 autoscaling TerminateInstanceInAutoScalingGroup decrement".to_string()
        ),
        "{calls:#?}"
    );
    assert!(
        !sb.path("/etc/circleci-runner/circleci-runner-config.yaml")
            .exists()
    );
}

/// One transient failure (HTTP 500) of the token read, then the token: the
/// boot goes on with the token, not with the retry's log lines mixed into it
/// (which used to fail it as "missing or malformed").
#[test]
fn sandboxed_boot_survives_one_transient_secret_failure() {
    let sb = Sandbox::new();
    let r = sb.boot(
        &render_user_data(&default_input()).unwrap(),
        &[("STUB_SECRET_5XX_ONCE", "1")],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let log = sb.read("/var/log/cci-scaler-boot.log");
    assert!(log.contains("\"InternalFailure\""), "{log}");
    assert!(log.contains("attempt 1 of 5 failed: read_token"), "{log}");
    assert!(!log.contains("boot FAILED"), "{log}");
    let config = sb.read("/etc/circleci-runner/circleci-runner-config.yaml");
    assert!(
        config.contains(&format!("auth_token: {RUNNER_TOKEN}\n")),
        "{config}"
    );
    assert_eq!(
        sb.calls()
            .iter()
            .filter(|c| c.starts_with("sigv4 secretsmanager"))
            .count(),
        2
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

/// A stand-in of the instance metadata service (IMDSv2: a PUT for a session
/// token, then reads with it), for the sandbox's own 169.254.169.254.
const METADATA_STANDIN: &str = r#"import http.server, sys
TOKEN = "imds-session-token"
PATHS = {
    "/latest/meta-data/instance-id": "i-0123456789abcdef0",
    "/latest/meta-data/iam/security-credentials/": "cci-scaler-demo-runner",
    "/latest/meta-data/iam/security-credentials/cci-scaler-demo-runner":
        '{"Code": "Success", "AccessKeyId": "ASIASTUB", "SecretAccessKey": "stub-secret-key", "Token": "stub-session-token"}',
}
class H(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body=""):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_PUT(self):
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self.reply(200, TOKEN)
        else:
            self.reply(400)
    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            self.reply(401)
        elif self.path in PATHS:
            self.reply(200, PATHS[self.path])
        else:
            self.reply(404)
    def log_message(self, fmt, *args):
        with open("/tmp/metadata.log", "a") as f:
            f.write("%s %s\n" % (self.command, self.path))
http.server.ThreadingHTTPServer(("169.254.169.254", 80), H).serve_forever()
"#;

/// Boots the user data in a network of its own holding a stand-in metadata
/// service on 169.254.169.254, with the real iptables; then asks the service
/// as an unprivileged user (a job) and as root (the runner).
const METADATA_DRIVER: &str = r#"set -u
ip link set lo up
ip addr add 169.254.169.254/32 dev lo
python3 /tmp/metadata.py & standin=$!
for _ in $(seq 100); do
  /usr/bin/curl -s -o /dev/null http://169.254.169.254/ && break
  /usr/bin/sleep 0.1
done
ask() {
  local tok
  tok=$("$@" /usr/bin/curl -sS --connect-timeout 2 -m 3 -X PUT http://169.254.169.254/latest/api/token \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 60') &&
    "$@" /usr/bin/curl -fsS --connect-timeout 2 -m 3 -H "X-aws-ec2-metadata-token: $tok" \
      http://169.254.169.254/latest/meta-data/iam/security-credentials/
}
job=(setpriv --reuid 1001 --regid 1001 --clear-groups)
{
  echo "before boot, job: $(ask "${job[@]}" 2>&1; echo " exit $?")"
  bash /tmp/user-data.sh >/tmp/boot.out 2>&1
  echo "boot exit $?"
  echo "job: $(ask "${job[@]}" 2>&1; echo " exit $?")"
  echo "root: $(ask 2>&1; echo " exit $?")"
  # A reboot: the unit's script runs again; the rule is not doubled.
  /usr/local/lib/cci-scaler/imds-firewall && echo "reapplied"
  echo "job after reboot: $(ask "${job[@]}" 2>&1; echo " exit $?")"
  /usr/local/lib/cci-scaler/exit-hook
  echo "exit hook $?"
  "$STUB_IPTABLES" -w -S | sed 's/^/rule: /'
} > /tmp/result 2>&1
kill "$standin"
wait "$standin" 2>/dev/null
chmod 0644 /tmp/result /tmp/calls.log
"#;

/// Jobs cannot reach the instance metadata service (so not the instance
/// role's credentials, nor through them the runner token); root can.
#[test]
fn sandboxed_boot_closes_instance_metadata_to_jobs() {
    let sb = Sandbox::with_netadmin();
    std::fs::write(sb.path("/tmp/metadata.py"), METADATA_STANDIN).unwrap();
    std::fs::write(sb.path("/tmp/driver.sh"), METADATA_DRIVER).unwrap();
    std::fs::write(
        sb.path("/tmp/user-data.sh"),
        render_user_data(&default_input()).unwrap(),
    )
    .unwrap();
    let iptables = tool("iptables");
    let r = sb.run(
        "/tmp/driver.sh",
        &[
            ("STUB_REAL_IMDS", "1"),
            ("STUB_IPTABLES", iptables.to_str().unwrap()),
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let result = sb.read("/tmp/result");
    let line = |prefix: &str| -> String {
        result
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{result}"))
            .to_string()
    };
    // Before the boot the stand-in answers anyone (as the real one does).
    assert!(
        line("before boot, job:").contains("cci-scaler-demo-runner exit 0"),
        "{result}"
    );
    assert_eq!(line("boot exit"), "boot exit 0", "{result}");
    // After it: a job is refused, root (the runner) answered.
    let job = line("job:");
    assert!(
        !job.ends_with(" exit 0"),
        "a job reached the metadata: {job}"
    );
    assert!(!job.contains("cci-scaler-demo-runner"), "{job}");
    assert!(
        line("root:").contains("cci-scaler-demo-runner exit 0"),
        "{result}"
    );
    // The boot itself (root) read its identity and credentials there.
    let log = sb.read("/tmp/metadata.log");
    assert!(
        log.contains("GET /latest/meta-data/iam/security-credentials/cci-scaler-demo-runner"),
        "{log}"
    );
    assert!(
        sb.read("/var/log/cci-scaler-boot.log")
            .contains("instance metadata closed to jobs"),
        "{result}"
    );
    // Applied again (the unit, at a reboot): still closed, and not doubled.
    assert!(result.contains("\nreapplied\n"), "{result}");
    assert!(!line("job after reboot:").ends_with(" exit 0"), "{result}");
    let jumps: Vec<&str> = result
        .lines()
        .filter(|l| l.contains("-A OUTPUT -d 169.254.169.254/32 -j CCI_SCALER_IMDS"))
        .collect();
    assert_eq!(jumps.len(), 1, "{result}");
    assert!(
        result.contains("rule: -A CCI_SCALER_IMDS -m owner --uid-owner 0 -j RETURN"),
        "{result}"
    );
    // The exit hook (root) still reaches the metadata and leaves the group.
    assert_eq!(line("exit hook"), "exit hook 0", "{result}");
    let calls = sb.calls();
    position(
        &calls,
        "sigv4 autoscaling TerminateInstanceInAutoScalingGroup decrement",
    );
    // The rule was in force when the runner was started (the start call
    // itself records the rules, right after its own line).
    let rule = position(
        &calls,
        "rule at runner start: -A OUTPUT -d 169.254.169.254/32 -j CCI_SCALER_IMDS",
    );
    let start = position(&calls, "systemctl start --no-block circleci-runner.service");
    assert_eq!(rule, start + 2, "{calls:#?}");
    assert_eq!(calls[start + 1], "rule at runner start: -P OUTPUT ACCEPT");
    // The unit that applies it at every boot, and the runner's need of it.
    let unit = sb.read("/etc/systemd/system/cci-scaler-imds-firewall.service");
    assert!(
        unit.contains("Before=network-pre.target circleci-runner.service"),
        "{unit}"
    );
    assert!(
        unit.contains("ExecStart=/usr/local/lib/cci-scaler/imds-firewall"),
        "{unit}"
    );
    let dropin = sb.read("/etc/systemd/system/circleci-runner.service.d/cci-scaler.conf");
    assert!(
        dropin.contains(
            "Requires=cci-scaler-imds-firewall.service\nAfter=cci-scaler-imds-firewall.service\n"
        ),
        "{dropin}"
    );
    // The token file stays root-only.
    let meta =
        std::fs::metadata(sb.path("/etc/circleci-runner/circleci-runner-config.yaml")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
}

/// A firewall that cannot be applied stops the boot: no runner without it.
#[test]
fn sandboxed_boot_stops_without_the_metadata_rule() {
    let sb = Sandbox::new();
    let script = render_user_data(&default_input()).unwrap();
    // iptables fails (as it would in a kernel without netfilter).
    std::fs::write(
        sb.path("/tmp/stubs/iptables"),
        "#!/bin/bash\necho \"iptables $*\" >> /tmp/calls.log\nexit 4\n",
    )
    .unwrap();
    let r = sb.boot(&script, &[]);
    assert_ne!(r.code, 0, "{r:?}");
    let log = sb.read("/var/log/cci-scaler-boot.log");
    assert!(
        log.contains("could not close instance metadata to jobs"),
        "{log}"
    );
    let calls = sb.calls();
    assert!(
        !calls.iter().any(|c| c.contains("start --no-block")),
        "{calls:#?}"
    );
    assert!(
        !calls.iter().any(|c| c.starts_with("sigv4")),
        "no token read: {calls:#?}"
    );
}

/// `job_sudo`: jobs get password-less sudo (and the log says the metadata
/// rule is advisory); without it, an image or setup script that gave them
/// sudo stops the boot.
#[test]
fn sandboxed_boot_gives_sudo_only_with_job_sudo() {
    let sb = Sandbox::new();
    let script = render_user_data(&UserDataInput {
        job_sudo: true,
        warm_pool: false,
        ..default_input()
    })
    .unwrap();
    let r = sb.boot(&script, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let sudoers = "/etc/sudoers.d/90-cci-scaler-job-sudo";
    assert_eq!(sb.read(sudoers), "circleci ALL=(ALL) NOPASSWD:ALL\n");
    assert_eq!(
        std::fs::metadata(sb.path(sudoers)).unwrap().mode() & 0o777,
        0o440
    );
    let log = sb.read("/var/log/cci-scaler-boot.log");
    assert!(log.contains("the metadata rule is advisory"), "{log}");

    let sb = Sandbox::new();
    let r = sb.boot(
        &render_user_data(&default_input()).unwrap(),
        &[
            ("STUB_CIRCLECI_GROUPS", "circleci docker"),
            (
                "STUB_SUDO_LIST",
                "User circleci may run the following commands:\n    (ALL) NOPASSWD: ALL",
            ),
        ],
    );
    assert_ne!(r.code, 0, "{r:?}");
    let log = sb.read("/var/log/cci-scaler-boot.log");
    assert!(
        log.contains("user circleci has password-less sudo") && log.contains("set job_sudo = true"),
        "{log}"
    );
    assert!(!sb.path(sudoers).exists());
    let calls = sb.calls();
    assert!(
        !calls.iter().any(|c| c.contains("start --no-block")),
        "{calls:#?}"
    );

    // In the docker group: a warning (jobs can start root containers).
    let sb = Sandbox::new();
    let r = sb.boot(
        &render_user_data(&default_input()).unwrap(),
        &[("STUB_CIRCLECI_GROUPS", "circleci docker")],
    );
    let log = sb.read("/var/log/cci-scaler-boot.log");
    assert!(log.contains("is in the docker or lxd group"), "{r:?} {log}");
}

#[test]
fn exit_hook_walks_the_fallback_ladder() {
    let sb = Sandbox::new();
    let r = sb.boot(&render_user_data(&default_input()).unwrap(), &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let hook = "/usr/local/lib/cci-scaler/exit-hook";
    let dec = "sigv4 autoscaling TerminateInstanceInAutoScalingGroup decrement".to_string();
    let nodec = "sigv4 autoscaling TerminateInstanceInAutoScalingGroup no-decrement".to_string();
    let health = "sigv4 autoscaling SetInstanceHealth health".to_string();
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
            .filter(|c| c.starts_with("sigv4") || c.starts_with("shutdown"))
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
    assert!(
        log.contains("TerminateInstanceInAutoScalingGroup: attempt 1 failed")
            && log.contains("Throttling"),
        "{log}"
    );
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
    // Does not compress below the limit either (pseudo-random hex).
    std::fs::write(&big, incompressible(40_000)).unwrap();
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
    assert!(r.stderr.contains("bytes even gzip-compressed, "), "{r:?}");
}
