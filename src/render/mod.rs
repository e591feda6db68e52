//! The runner's user-data script, rendered from `templates/user-data.sh.j2` by
//! minijinja. Pure and deterministic: the same input gives the same bytes.
//! Every value is validated, then single-quoted for the shell.

use std::time::Duration;

use minijinja::{Environment, UndefinedBehavior, context};
use secrecy::{ExposeSecret, SecretString};

const TEMPLATE: &str = include_str!("../../templates/user-data.sh.j2");
const SETUP_DELIMITER: &str = "CCI_SCALER_SETUP_SCRIPT";

/// EC2 refuses user data above 16 KB (before base64). A longer script goes
/// gzip-compressed, which cloud-init reads ([`pack_user_data`]).
pub const USER_DATA_LIMIT: usize = 16 * 1024;

pub const DEFAULT_IDLE_TIMEOUT: &str = "1m";
pub const DEFAULT_MAX_RUN_TIME: &str = "5h";
pub const DEFAULT_WORKING_DIRECTORY: &str = "/var/opt/circleci/workdir";

/// Extra time, past the runner's max run time, before systemd kills the service.
const STOP_MARGIN: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("invalid {field} {value:?}: {why}")]
    Invalid {
        field: &'static str,
        value: String,
        why: String,
    },
    #[error("the runner token given for --embed-token is malformed (its value is not shown): {0}")]
    BadToken(&'static str),
    #[error("the setup script cannot be embedded: {0}")]
    SetupScript(String),
    #[error(
        "the rendered user data is {size} bytes even gzip-compressed, {over} bytes over EC2's {USER_DATA_LIMIT}-byte limit; shorten the setup script or install from a package or an image instead"
    )]
    TooLarge { size: usize, over: usize },
    #[error("rendering the user-data template failed: {0}")]
    Template(String),
}

/// What the script is rendered from.
#[derive(Debug, Clone)]
pub struct UserDataInput {
    pub stack: String,
    pub group: String,
    pub region: String,
    pub resource_class: String,
    /// The runner-token secret the instance reads at boot.
    pub token_secret_id: String,
    /// Runner idle timeout, Go duration syntax (`1m`, `90s`).
    pub idle_timeout: String,
    pub max_run_time: String,
    pub working_directory: String,
    /// The user's environment setup script (its text), run before the runner.
    pub setup_script: Option<String>,
    pub apt_packages: Vec<String>,
    /// The tutorial's way: the token inside the script. Only for --embed-token.
    pub embedded_token: Option<SecretString>,
    /// The pool has headroom: an instance launched during a period (its
    /// `cci-scaler:spare-until` tag, read from instance metadata) keeps its
    /// runner idle until the period ends, then the usual idle timeout.
    pub spares: bool,
    /// Bake mode (`cci-scaler image build`): only the install half, then mark
    /// the image runner-ready and stop the instance.
    pub bake: bool,
    /// A spot pool: install the interruption watcher.
    pub spot: bool,
    /// The runner's `enable_unsafe_retries` (retry_interrupted_jobs).
    pub unsafe_retries: bool,
    /// Jobs (user `circleci`) get password-less sudo; the instance-metadata
    /// rule is then advisory only.
    pub job_sudo: bool,
    /// The group has a warm pool: a launch into it installs and is stopped
    /// without starting a runner; a start into service runs the runner.
    pub warm_pool: bool,
}

/// Bumped when the install half of the template changes what it installs.
const INSTALL_VERSION: &str = "1";

impl UserDataInput {
    /// A hash of what the install half installs (packages, the runner, the
    /// setup script): a baked image carries it, and a boot that finds the
    /// same hash on its image skips the install half.
    pub fn install_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(INSTALL_VERSION);
        for p in &self.apt_packages {
            h.update([0]);
            h.update(p);
        }
        h.update([1]);
        if let Some(s) = &self.setup_script {
            h.update(s.replace("\r\n", "\n").trim_end_matches('\n'));
        }
        let d = h.finalize();
        d.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

fn invalid(field: &'static str, value: &str, why: impl Into<String>) -> RenderError {
    RenderError::Invalid {
        field,
        value: value.chars().take(80).collect(),
        why: why.into(),
    }
}

fn check_chars(
    field: &'static str,
    value: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
    what: &str,
) -> Result<(), RenderError> {
    if value.is_empty() || value.len() > max {
        return Err(invalid(
            field,
            value,
            format!("must be 1 to {max} characters"),
        ));
    }
    if let Some(c) = value.chars().find(|c| !allowed(*c)) {
        return Err(invalid(
            field,
            value,
            format!("{c:?} is not allowed; use {what}"),
        ));
    }
    Ok(())
}

/// A stack name: letters, digits and '-', starting with a letter, at most 32.
pub fn validate_stack(stack: &str) -> Result<(), RenderError> {
    check_chars(
        "stack name",
        stack,
        32,
        |c| c.is_ascii_alphanumeric() || c == '-',
        "letters, digits and '-'",
    )?;
    if !stack.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(invalid("stack name", stack, "must start with a letter"));
    }
    Ok(())
}

/// A duration in the runner's (Go) syntax, e.g. `1m`, `90s`, `5h`, `1h30m`.
pub fn parse_go_duration(field: &'static str, value: &str) -> Result<Duration, RenderError> {
    let bad = || {
        invalid(
            field,
            value,
            "expected a duration such as 30s, 1m, 5h or 1h30m",
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = value;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return Err(bad());
        };
        total += unit * n as u32;
        rest = &rest[len..];
    }
    if total.is_zero() {
        return Err(invalid(field, value, "must be above zero"));
    }
    Ok(total)
}

impl UserDataInput {
    fn validate(&self) -> Result<Duration, RenderError> {
        validate_stack(&self.stack)?;
        check_chars(
            "group name",
            &self.group,
            255,
            |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'),
            "letters, digits, '-', '_' and '.'",
        )?;
        let region_ok = {
            let parts: Vec<&str> = self.region.split('-').collect();
            parts.len() >= 3
                && parts.iter().all(|p| {
                    !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                })
                && parts
                    .last()
                    .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
        };
        if !region_ok {
            return Err(invalid(
                "region",
                &self.region,
                "expected an AWS region such as us-east-1",
            ));
        }
        crate::circleci::validate_resource_class(&self.resource_class).map_err(|why| {
            RenderError::Invalid {
                field: "resource class",
                value: self.resource_class.chars().take(80).collect(),
                why,
            }
        })?;
        check_chars(
            "runner-token secret id",
            &self.token_secret_id,
            2048,
            |c| c.is_ascii_alphanumeric() || "/_+=.@:-".contains(c),
            "a secret name or ARN (letters, digits, /_+=.@:-)",
        )?;
        parse_go_duration("idle timeout", &self.idle_timeout)?;
        let max_run = parse_go_duration("max run time", &self.max_run_time)?;
        check_chars(
            "working directory",
            &self.working_directory,
            255,
            |c| c.is_ascii_alphanumeric() || "/_.-".contains(c),
            "an absolute path of letters, digits, '/', '_', '.' and '-'",
        )?;
        if !self.working_directory.starts_with('/')
            || self.working_directory.split('/').any(|p| p == "..")
            || self.working_directory == "/"
        {
            return Err(invalid(
                "working directory",
                &self.working_directory,
                "must be an absolute path below / without '..'",
            ));
        }
        for p in &self.apt_packages {
            check_chars(
                "apt package",
                p,
                100,
                |c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c),
                "a Debian package name (lower-case letters, digits, '+', '.', '-')",
            )?;
            if !p.starts_with(|c: char| c.is_ascii_alphanumeric()) || p.len() < 2 {
                return Err(invalid(
                    "apt package",
                    p,
                    "must start with a letter or digit",
                ));
            }
        }
        if let Some(script) = &self.setup_script {
            if script.contains('\0') {
                return Err(RenderError::SetupScript("it contains a NUL byte".into()));
            }
            if script
                .lines()
                .any(|l| l.trim_end_matches('\r') == SETUP_DELIMITER)
            {
                return Err(RenderError::SetupScript(format!(
                    "it contains a line \"{SETUP_DELIMITER}\", which ends the embedded file"
                )));
            }
        }
        if let Some(t) = &self.embedded_token {
            let t = t.expose_secret();
            if t.len() < 16 || t.len() > 512 {
                return Err(RenderError::BadToken("expected 16 to 512 characters"));
            }
            if !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(RenderError::BadToken(
                    "expected letters, digits, '.', '_' and '-'",
                ));
            }
        }
        Ok(max_run + STOP_MARGIN)
    }
}

/// Single-quote a value for the shell; refuse what cannot be quoted safely.
fn shell_quote(value: &str) -> Result<String, minijinja::Error> {
    if value.chars().any(|c| c.is_control()) {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            "a control character cannot be quoted safely",
        ));
    }
    shlex::try_quote(value)
        .map(|q| {
            // Always quote, even where shlex would leave a plain word.
            if q.starts_with('\'') || q.starts_with('"') {
                q.into_owned()
            } else {
                format!("'{q}'")
            }
        })
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))
}

/// Render the user-data script.
pub fn render_user_data(input: &UserDataInput) -> Result<String, RenderError> {
    let stop_timeout = input.validate()?;
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .map_err(|e| RenderError::Template(e.to_string()))?,
    );
    env.add_filter("sq", |v: String| shell_quote(&v));
    env.add_template("user-data", TEMPLATE)
        .map_err(|e| RenderError::Template(e.to_string()))?;
    let setup = input
        .setup_script
        .as_ref()
        .map(|s| s.replace("\r\n", "\n").trim_end_matches('\n').to_string());
    let idle_secs = parse_go_duration("idle timeout", &input.idle_timeout)?.as_secs();
    let out = env
        .get_template("user-data")
        .and_then(|t| {
            t.render(context! {
                stack => &input.stack,
                group => &input.group,
                region => &input.region,
                resource_class => &input.resource_class,
                token_secret_id => &input.token_secret_id,
                idle_timeout => &input.idle_timeout,
                max_run_time => &input.max_run_time,
                working_directory => &input.working_directory,
                setup_script => setup,
                apt_packages => &input.apt_packages,
                embedded_token => input.embedded_token.as_ref().map(|t| t.expose_secret().to_string()),
                stop_timeout_secs => stop_timeout.as_secs(),
                spares => input.spares,
                bake => input.bake,
                spot => input.spot,
                unsafe_retries => input.unsafe_retries,
                job_sudo => input.job_sudo,
                warm_pool => input.warm_pool,
                install_hash => input.install_hash(),
                idle_timeout_secs => idle_secs,
            })
        })
        .map_err(|e| RenderError::Template(e.to_string()))?;
    pack_user_data(&out)?;
    Ok(out)
}

/// The bytes EC2 is given for a script: the script itself when it fits in
/// [`USER_DATA_LIMIT`] (readable in the console, as before), else the
/// script gzip-compressed (cloud-init recognises and inflates gzip user
/// data), or an error when even that does not fit. Deterministic: the same
/// script gives the same bytes (no time or name in the gzip header).
pub fn pack_user_data(script: &str) -> Result<Vec<u8>, RenderError> {
    use std::io::Write;
    if script.len() <= USER_DATA_LIMIT {
        return Ok(script.as_bytes().to_vec());
    }
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(3)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(script.as_bytes())
        .and_then(|_| gz.finish())
        .map_err(|e| RenderError::Template(format!("gzip: {e}")))
        .and_then(|packed| {
            if packed.len() > USER_DATA_LIMIT {
                Err(RenderError::TooLarge {
                    size: packed.len(),
                    over: packed.len() - USER_DATA_LIMIT,
                })
            } else {
                Ok(packed)
            }
        })
}
