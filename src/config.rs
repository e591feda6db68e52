//! The stack's settings: one validated struct from the stack file
//! (`cci-scaler.toml`) and flags, flags winning. Everything is checked here,
//! before any call is made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::circleci::validate_resource_class;
use crate::render::{self, parse_go_duration, validate_stack};

/// Canonical's Ubuntu 22.04 LTS (amd64), through its public SSM parameter.
pub const DEFAULT_IMAGE: &str =
    "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id";
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.medium";
pub const DEFAULT_STACK_FILE: &str = "cci-scaler.toml";

/// The stack file. Every key is optional; flags override it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StackFile {
    pub stack: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
    pub resource_class: Option<String>,
    pub description: Option<String>,
    pub max_instances: Option<u32>,
    pub instance_type: Option<String>,
    pub image: Option<String>,
    pub subnets: Option<Vec<String>>,
    pub key_pair: Option<String>,
    pub root_volume_gb: Option<u32>,
    pub imds_hop_limit: Option<u32>,
    pub poll_interval: Option<String>,
    pub poll_window: Option<String>,
    pub boot_timeout: Option<String>,
    #[serde(default)]
    pub runner: RunnerFile,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunnerFile {
    pub idle_timeout: Option<String>,
    pub max_run_time: Option<String>,
    pub working_directory: Option<String>,
    /// Relative to the stack file's folder.
    pub setup_script: Option<PathBuf>,
    pub apt_packages: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the stack file {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("the stack file {path} is not valid: {detail}")]
    Parse { path: String, detail: String },
    /// A value that is missing or not valid, named by its stack-file key
    /// (flags carry the same name with dashes: `max_instances`, `--max-instances`).
    #[error("{key}: {detail}")]
    Invalid { key: String, detail: String },
}

impl ConfigError {
    fn invalid(key: &str, detail: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            detail: detail.into(),
        }
    }

    /// The stack-file key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageSource {
    Ami(String),
    SsmParameter(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunnerSettings {
    pub idle_timeout: String,
    pub max_run_time: String,
    pub working_directory: String,
    #[serde(skip)]
    pub setup_script: Option<String>,
    pub setup_script_path: Option<PathBuf>,
    pub apt_packages: Vec<String>,
}

/// Validated settings of one stack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackSettings {
    pub stack: String,
    pub resource_class: String,
    pub description: String,
    pub max_instances: u32,
    pub instance_type: String,
    pub image: ImageSource,
    /// Empty: the default VPC's default subnets.
    pub subnets: Vec<String>,
    pub key_pair: Option<String>,
    pub root_volume_gb: u32,
    pub imds_hop_limit: u32,
    pub poll_interval: Duration,
    pub poll_window: Duration,
    pub boot_timeout: Duration,
    pub runner: RunnerSettings,
}

impl StackFile {
    pub fn load(path: &Path) -> Result<StackFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// A stack file's text; `path` names it in errors and anchors relative
    /// paths (the setup script).
    pub fn parse(text: &str, path: &Path) -> Result<StackFile, ConfigError> {
        let mut file: StackFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            detail: e.to_string().replace('\n', " "),
        })?;
        if let (Some(script), Some(dir)) = (&file.runner.setup_script, path.parent())
            && script.is_relative()
        {
            file.runner.setup_script = Some(dir.join(script));
        }
        Ok(file)
    }

    /// Flags (given as another `StackFile`) win over the file.
    pub fn merged(self, flags: StackFile) -> StackFile {
        macro_rules! pick {
            ($($f:ident),*) => { StackFile { $($f: flags.$f.or(self.$f),)* runner: RunnerFile {
                idle_timeout: flags.runner.idle_timeout.or(self.runner.idle_timeout),
                max_run_time: flags.runner.max_run_time.or(self.runner.max_run_time),
                working_directory: flags.runner.working_directory.or(self.runner.working_directory),
                setup_script: flags.runner.setup_script.or(self.runner.setup_script),
                apt_packages: flags.runner.apt_packages.or(self.runner.apt_packages),
            } } };
        }
        pick!(
            stack,
            region,
            profile,
            resource_class,
            description,
            max_instances,
            instance_type,
            image,
            subnets,
            key_pair,
            root_volume_gb,
            imds_hop_limit,
            poll_interval,
            poll_window,
            boot_timeout
        )
    }

    /// Check every value; read the setup script. An error names the key.
    pub fn settings(&self) -> Result<StackSettings, ConfigError> {
        fn bad(key: &str, detail: impl Into<String>) -> ConfigError {
            ConfigError::invalid(key, detail)
        }
        let stack = self.stack.clone().ok_or_else(|| {
            bad(
                "stack",
                "no stack name: pass --stack or set `stack` in the stack file",
            )
        })?;
        validate_stack(&stack).map_err(|e| bad("stack", e.to_string()))?;
        let resource_class = self.resource_class.clone().ok_or_else(|| {
            bad(
                "resource_class",
                "no resource class: pass --resource-class NAMESPACE/NAME or set `resource_class`",
            )
        })?;
        validate_resource_class(&resource_class).map_err(|e| bad("resource_class", e))?;
        if let Some(d) = &self.description
            && (d.len() > 255 || d.chars().any(char::is_control))
        {
            return Err(bad(
                "description",
                "at most 255 characters, no control characters",
            ));
        }
        let max_instances = self.max_instances.unwrap_or(10);
        if !(1..=1000).contains(&max_instances) {
            return Err(bad(
                "max_instances",
                format!("{max_instances} is out of range: must be 1 to 1000"),
            ));
        }
        let instance_type = self
            .instance_type
            .clone()
            .unwrap_or_else(|| DEFAULT_INSTANCE_TYPE.into());
        let it_ok = instance_type.len() <= 64
            && instance_type.split_once('.').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && instance_type.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'
                    })
            });
        if !it_ok {
            return Err(bad(
                "instance_type",
                format!("instance type {instance_type:?}: expected a name such as t3.medium"),
            ));
        }
        let image = match self.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into()) {
            i if i.starts_with("ami-")
                && (12..=21).contains(&i.len())
                && i[4..].chars().all(|c| c.is_ascii_hexdigit()) =>
            {
                ImageSource::Ami(i)
            }
            i if i.starts_with('/')
                && i.len() <= 2048
                && !i.contains(|c: char| c.is_whitespace() || c.is_control()) =>
            {
                ImageSource::SsmParameter(i)
            }
            i => {
                return Err(bad(
                    "image",
                    format!(
                        "image {i:?}: expected an AMI id (ami-...) or an SSM parameter name (/...)"
                    ),
                ));
            }
        };
        let subnets = self.subnets.clone().unwrap_or_default();
        for s in &subnets {
            if !(s.starts_with("subnet-")
                && (15..=24).contains(&s.len())
                && s[7..].chars().all(|c| c.is_ascii_hexdigit()))
            {
                return Err(bad(
                    "subnets",
                    format!("subnet {s:?}: expected a subnet id (subnet-...)"),
                ));
            }
        }
        if let Some(k) = &self.key_pair
            && (k.is_empty() || k.len() > 255 || k.chars().any(|c| c.is_control() || c == '\''))
        {
            return Err(bad(
                "key_pair",
                format!("key pair {k:?}: not a key pair name"),
            ));
        }
        let root_volume_gb = self.root_volume_gb.unwrap_or(30);
        if !(8..=16384).contains(&root_volume_gb) {
            return Err(bad(
                "root_volume_gb",
                format!("root volume {root_volume_gb} GB: must be 8 to 16384"),
            ));
        }
        let imds_hop_limit = self.imds_hop_limit.unwrap_or(1);
        if !(1..=64).contains(&imds_hop_limit) {
            return Err(bad(
                "imds_hop_limit",
                format!("IMDS hop limit {imds_hop_limit}: must be 1 to 64"),
            ));
        }
        let dur = |key: &str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => humantime::parse_duration(s)
                .map_err(|e| bad(key, format!("{s:?}: {e} (examples: 10s, 50s, 10m)"))),
        };
        let poll_interval = dur(
            "poll_interval",
            &self.poll_interval,
            Duration::from_secs(10),
        )?;
        let poll_window = dur("poll_window", &self.poll_window, Duration::from_secs(50))?;
        let boot_timeout = dur("boot_timeout", &self.boot_timeout, Duration::from_secs(600))?;
        if poll_window > Duration::from_secs(840) {
            return Err(bad(
                "poll_window",
                "poll window must be at most 14m (the Lambda timeout is 15m)",
            ));
        }
        if poll_interval < Duration::from_secs(1) {
            return Err(bad("poll_interval", "poll interval must be at least 1s"));
        }
        if poll_interval > poll_window.max(Duration::from_secs(60)) {
            // Name the key the file (or a flag) set: the other is a default.
            let key = if self.poll_interval.is_none() {
                "poll_window"
            } else {
                "poll_interval"
            };
            return Err(bad(
                key,
                format!(
                    "the poll interval ({}) must be at most the poll window ({})",
                    humantime::format_duration(poll_interval),
                    humantime::format_duration(poll_window)
                ),
            ));
        }
        if boot_timeout < Duration::from_secs(60) || boot_timeout > Duration::from_secs(86_400) {
            return Err(bad(
                "boot_timeout",
                "boot timeout must be at least 1m and at most 24h",
            ));
        }
        let r = &self.runner;
        let idle_timeout = r
            .idle_timeout
            .clone()
            .unwrap_or_else(|| render::DEFAULT_IDLE_TIMEOUT.into());
        let max_run_time = r
            .max_run_time
            .clone()
            .unwrap_or_else(|| render::DEFAULT_MAX_RUN_TIME.into());
        parse_go_duration("idle timeout", &idle_timeout)
            .map_err(|e| bad("runner.idle_timeout", e.to_string()))?;
        parse_go_duration("max run time", &max_run_time)
            .map_err(|e| bad("runner.max_run_time", e.to_string()))?;
        let setup_script = r
            .setup_script
            .as_ref()
            .map(|p| {
                std::fs::read_to_string(p).map_err(|e| {
                    bad(
                        "runner.setup_script",
                        format!("cannot read the setup script {}: {e}", p.display()),
                    )
                })
            })
            .transpose()?;
        let working_directory = r
            .working_directory
            .clone()
            .unwrap_or_else(|| render::DEFAULT_WORKING_DIRECTORY.into());
        let apt_packages = r.apt_packages.clone().unwrap_or_default();
        // The runner's user data must render with these values (the region is
        // checked where it is known): every runner key is checked here, before
        // any call, rather than at launch-template time.
        render::render_user_data(&render::UserDataInput {
            stack: stack.clone(),
            group: crate::names::group(&stack),
            region: "us-east-1".into(),
            resource_class: resource_class.clone(),
            token_secret_id: crate::names::runner_token_secret(&stack),
            idle_timeout: idle_timeout.clone(),
            max_run_time: max_run_time.clone(),
            working_directory: working_directory.clone(),
            setup_script: setup_script.clone(),
            apt_packages: apt_packages.clone(),
            embedded_token: None,
        })
        .map_err(|e| {
            let key = match &e {
                render::RenderError::Invalid { field, .. } => match *field {
                    "working directory" => "runner.working_directory",
                    "apt package" => "runner.apt_packages",
                    "idle timeout" => "runner.idle_timeout",
                    "max run time" => "runner.max_run_time",
                    "resource class" => "resource_class",
                    "stack name" | "group name" | "runner-token secret id" => "stack",
                    _ => "runner",
                },
                _ => "runner.setup_script",
            };
            bad(key, e.to_string())
        })?;
        Ok(StackSettings {
            description: self
                .description
                .clone()
                .unwrap_or_else(|| format!("cci-scaler stack {stack}")),
            stack,
            resource_class,
            max_instances,
            instance_type,
            image,
            subnets,
            key_pair: self.key_pair.clone(),
            root_volume_gb,
            imds_hop_limit,
            poll_interval,
            poll_window,
            boot_timeout,
            runner: RunnerSettings {
                idle_timeout,
                max_run_time,
                working_directory,
                setup_script,
                setup_script_path: r.setup_script.clone(),
                apt_packages,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> StackFile {
        StackFile {
            stack: Some("demo".into()),
            resource_class: Some("acme/linux".into()),
            ..StackFile::default()
        }
    }

    #[test]
    fn defaults_and_flags_win() {
        let file: StackFile = toml::from_str(
            "stack = \"demo\"\nresource_class = \"acme/linux\"\nmax_instances = 4\n[runner]\nidle_timeout = \"5m\"\n",
        )
        .unwrap();
        let flags = StackFile {
            max_instances: Some(7),
            ..StackFile::default()
        };
        let s = file.merged(flags).settings().unwrap();
        assert_eq!(s.max_instances, 7);
        assert_eq!(s.runner.idle_timeout, "5m");
        assert_eq!(s.image, ImageSource::SsmParameter(DEFAULT_IMAGE.into()));
        assert_eq!(s.instance_type, DEFAULT_INSTANCE_TYPE);
        assert_eq!(s.imds_hop_limit, 1);
    }

    #[test]
    fn bad_values_are_refused() {
        let cases: Vec<(StackFile, &str)> = vec![
            (
                StackFile {
                    stack: None,
                    ..base()
                },
                "no stack name",
            ),
            (
                StackFile {
                    max_instances: Some(0),
                    ..base()
                },
                "max_instances: 0 is out of range",
            ),
            (
                StackFile {
                    instance_type: Some("big".into()),
                    ..base()
                },
                "instance type",
            ),
            (
                StackFile {
                    image: Some("ubuntu".into()),
                    ..base()
                },
                "image",
            ),
            (
                StackFile {
                    subnets: Some(vec!["sn-1".into()]),
                    ..base()
                },
                "subnet",
            ),
            (
                StackFile {
                    root_volume_gb: Some(2),
                    ..base()
                },
                "root volume",
            ),
            (
                StackFile {
                    imds_hop_limit: Some(0),
                    ..base()
                },
                "hop limit",
            ),
            (
                StackFile {
                    poll_interval: Some("0s".into()),
                    ..base()
                },
                "poll interval",
            ),
            (
                StackFile {
                    resource_class: Some("x".into()),
                    ..base()
                },
                "invalid resource class",
            ),
        ];
        for (f, want) in cases {
            let e = f.settings().unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        assert!(
            toml::from_str::<StackFile>("stak = \"x\"").is_err(),
            "unknown keys are refused"
        );
    }
}

/// Any stack file either loads into valid settings or gives an error that
/// names one of its keys (or the required key it lacks).
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Key, how many of its candidate values (the first ones) are valid, and
    /// candidate TOML values: valid, invalid, of the wrong type.
    type Candidates = (&'static str, usize, &'static [&'static str]);

    const TOP: &[Candidates] = &[
        (
            "stack",
            2,
            &[
                "\"demo\"",
                "\"ci-2\"",
                "\"\"",
                "\"1st\"",
                "\"a b\"",
                "\"a-name-that-is-far-too-long-for-a-stack\"",
                "7",
            ],
        ),
        ("region", 1, &["\"eu-west-1\"", "3"]),
        ("profile", 1, &["\"ops\"", "[1]"]),
        (
            "resource_class",
            2,
            &[
                "\"acme/linux\"",
                "\"acme/linux-arm64\"",
                "\"acme\"",
                "\"a/b/c\"",
                "\"acme/li nux\"",
                "[]",
            ],
        ),
        ("description", 1, &["\"CI fleet\"", "\"tab\\there\"", "1"]),
        (
            "max_instances",
            3,
            &["1", "10", "1000", "0", "1001", "-3", "\"10\"", "4294967296"],
        ),
        (
            "instance_type",
            2,
            &[
                "\"t3.medium\"",
                "\"c7g.large\"",
                "\"big\"",
                "\"T3.LARGE\"",
                "\".x\"",
                "5",
            ],
        ),
        (
            "image",
            2,
            &[
                "\"ami-0123456789abcdef0\"",
                "\"/aws/service/x\"",
                "\"ubuntu\"",
                "\"ami-xyz\"",
                "\"/a b\"",
                "true",
            ],
        ),
        (
            "subnets",
            2,
            &[
                "[]",
                "[\"subnet-0123abcd\"]",
                "[\"sn-1\"]",
                "\"subnet-0123abcd\"",
                "[1]",
            ],
        ),
        ("key_pair", 1, &["\"ops\"", "\"\"", "\"a'b\""]),
        ("root_volume_gb", 2, &["30", "8", "7", "16385", "\"30\""]),
        ("imds_hop_limit", 2, &["1", "2", "0", "65"]),
        (
            "poll_interval",
            2,
            &["\"10s\"", "\"1s\"", "\"0s\"", "\"soon\"", "\"2h\"", "10"],
        ),
        (
            "poll_window",
            2,
            &["\"50s\"", "\"14m\"", "\"5s\"", "\"15m\"", "\"x\""],
        ),
        (
            "boot_timeout",
            1,
            &["\"10m\"", "\"30s\"", "\"2d\"", "\"never\""],
        ),
        ("stak", 0, &["\"typo\""]),
    ];
    const RUNNER: &[Candidates] = &[
        (
            "idle_timeout",
            3,
            &[
                "\"1m\"",
                "\"90s\"",
                "\"1h30m\"",
                "\"soon\"",
                "\"1 m\"",
                "\"\"",
                "60",
            ],
        ),
        ("max_run_time", 1, &["\"5h\"", "\"5x\""]),
        (
            "working_directory",
            1,
            &[
                "\"/var/opt/w\"",
                "\"relative\"",
                "\"/a/../b\"",
                "\"/\"",
                "\"/a b\"",
            ],
        ),
        ("setup_script", 0, &["\"missing-setup.sh\""]),
        (
            "apt_packages",
            2,
            &[
                "[\"jq\"]",
                "[]",
                "[\"Bad\"]",
                "[\"a\"]",
                "[\"jq; rm\"]",
                "\"jq\"",
            ],
        ),
        ("idle", 0, &["\"1m\""]),
    ];

    /// Per key: absent, or the index of one of its values (valid ones likelier).
    fn picks(table: &'static [Candidates]) -> Vec<BoxedStrategy<Option<usize>>> {
        table
            .iter()
            .map(|(key, valid, values)| {
                let any = 0..values.len();
                let value = if *valid > 0 {
                    prop_oneof![3 => 0..*valid, 1 => any].boxed()
                } else {
                    any.boxed()
                };
                let present = match (*key, *valid) {
                    ("stack" | "resource_class", _) => 0.9,
                    (_, 0) => 0.03,
                    _ => 0.5,
                };
                prop::option::weighted(present, value).boxed()
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn any_stack_file_loads_or_names_a_key(top in picks(TOP), runner in picks(RUNNER)) {
            let mut text = String::new();
            let mut keys: Vec<String> = Vec::new();
            for ((key, _, values), pick) in TOP.iter().zip(&top) {
                if let Some(i) = pick {
                    text.push_str(&format!("{key} = {}\n", values[*i]));
                    keys.push(key.to_string());
                }
            }
            if runner.iter().any(Option::is_some) {
                text.push_str("[runner]\n");
            }
            for ((key, _, values), pick) in RUNNER.iter().zip(&runner) {
                if let Some(i) = pick {
                    text.push_str(&format!("{key} = {}\n", values[*i]));
                    keys.push(format!("runner.{key}"));
                }
            }
            let path = Path::new("/nonexistent-folder/cci-scaler.toml");
            match StackFile::parse(&text, path).and_then(|f| f.settings()) {
                Ok(s) => {
                    prop_assert!(keys.iter().any(|k| k == "stack"));
                    prop_assert!(keys.iter().any(|k| k == "resource_class"));
                    prop_assert!((1..=1000).contains(&s.max_instances));
                    prop_assert!((8..=16384).contains(&s.root_volume_gb));
                    prop_assert!((1..=64).contains(&s.imds_hop_limit));
                    prop_assert!(s.poll_interval >= Duration::from_secs(1));
                    prop_assert!(s.poll_interval <= s.poll_window.max(Duration::from_secs(60)));
                    prop_assert!(s.poll_window <= Duration::from_secs(840));
                    prop_assert!(s.boot_timeout >= Duration::from_secs(60));
                }
                Err(ConfigError::Invalid { key, detail }) => {
                    let required_missing =
                        matches!(key.as_str(), "stack" | "resource_class") && !keys.contains(&key);
                    prop_assert!(
                        keys.contains(&key) || required_missing,
                        "error names {key:?} ({detail}), not a key of:\n{text}"
                    );
                }
                Err(ConfigError::Parse { detail, .. }) => {
                    prop_assert!(
                        keys.iter().any(|k| detail.contains(k.rsplit('.').next().unwrap())),
                        "parse error names no key ({detail}):\n{text}"
                    );
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }
}
