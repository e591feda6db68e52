//! Any stack file either loads into valid settings or gives an error that
//! names one of its keys (or the required key it lacks).

use super::*;
use proptest::prelude::*;
use std::path::Path;

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
    (
        "job_role",
        1,
        &[
            "{ org_id = \"8a1c3f0e-2b4d-4e6f-9a8b-7c6d5e4f3a2b\", policy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"] }",
            "{ org_id = \"acme\", policy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"] }",
            "{ policy_arns = [] }",
            "{ org_id = \"8a1c3f0e-2b4d-4e6f-9a8b-7c6d5e4f3a2b\", policy_arns = [\"x\"], projects = [\"p\"] }",
            "{ role = 1 }",
            "3",
        ],
    ),
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
    ("log_retention_days", 2, &["30", "7", "31", "0", "\"30\""]),
    ("circleci_concurrency", 2, &["16", "1", "0", "257", "\"8\""]),
    (
        "usage_org",
        2,
        &["\"5e6f7a8b-1c2d\"", "\"org_1\"", "\"\"", "\"acme/x\"", "7"],
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
    ("job_sudo", 2, &["true", "false", "\"yes\""]),
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

/// A parse error names one of the keys written (an `Invalid` one is
/// checked by each test, which knows which keys may be missing).
fn parse_error_names_a_key(
    e: ConfigError,
    keys: &[String],
    text: &str,
) -> Result<(), TestCaseError> {
    match e {
        ConfigError::Parse { detail, .. } => {
            prop_assert!(
                keys.iter()
                    .any(|k| detail.contains(k.rsplit('.').next().unwrap())),
                "parse error names no key ({detail}):\n{text}"
            );
        }
        e => prop_assert!(false, "{e}"),
    }
    Ok(())
}

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
                ("name", _) => 0.3,
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
        match StackFile::parse(&text, path).and_then(|f| f.pools()).map(|mut p| p.remove(0)) {
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
                // A key inside a table that was given (`job_role.org_id`).
                let in_table = keys.iter().any(|k| key.starts_with(&format!("{k}.")));
                prop_assert!(
                    keys.contains(&key) || required_missing || in_table,
                    "error names {key:?} ({detail}), not a key of:\n{text}"
                );
            }
            Err(e) => parse_error_names_a_key(e, &keys, &text)?,
        }
    }

    #[test]
    fn any_pool_file_loads_or_names_a_key(
        top in picks(POOL_TOP),
        defaults in prop::option::weighted(0.5, picks(POOL)),
        pools in prop::collection::vec(picks(POOL), 1..4),
    ) {
        let mut text = String::new();
        let mut keys: Vec<String> = Vec::new();
        let mut table = |text: &mut String, prefix: &str, cand: &[Candidates], picks: &[Option<usize>]| {
            for ((key, _, values), pick) in cand.iter().zip(picks) {
                if let Some(i) = pick {
                    text.push_str(&format!("{key} = {}\n", values[*i]));
                    keys.push(format!("{prefix}{key}"));
                }
            }
        };
        table(&mut text, "", POOL_TOP, &top);
        if let Some(d) = &defaults {
            text.push_str("[defaults]\n");
            table(&mut text, "defaults.", POOL, d);
        }
        for (i, p) in pools.iter().enumerate() {
            text.push_str("[[pool]]\n");
            table(&mut text, &format!("pool[{}].", i + 1), POOL, p);
        }
        let path = Path::new("/nonexistent-folder/cci-scaler.toml");
        match StackFile::parse(&text, path).and_then(|f| f.pools()) {
            Ok(all) => {
                prop_assert_eq!(all.len(), pools.len());
                for (i, s) in all.iter().enumerate() {
                    let rc_key = format!("pool[{}].resource_class", i + 1);
                    prop_assert!(keys.contains(&rc_key));
                    prop_assert!(s.pool.is_some());
                    prop_assert!((1..=1000).contains(&s.max_instances));
                    prop_assert!(!s.instance_types.is_empty());
                }
                let mut names: Vec<_> = all.iter().map(|s| s.pool.clone()).collect();
                names.dedup();
                prop_assert_eq!(names.len(), all.len());
            }
            Err(ConfigError::Invalid { key, detail }) => {
                let required_missing = (key == "stack"
                    || (key.starts_with("pool[") && key.ends_with(".resource_class")))
                    && !keys.contains(&key);
                prop_assert!(
                    keys.contains(&key) || required_missing,
                    "error names {key:?} ({detail}), not a key of:\n{text}"
                );
            }
            Err(e) => parse_error_names_a_key(e, &keys, &text)?,
        }
    }
}

/// Top-level keys of a stack file with pools: stack-wide ones, and a
/// pool key that belongs in [defaults] instead.
const POOL_TOP: &[Candidates] = &[
    ("stack", 1, &["\"ci\"", "\"1st\""]),
    ("poll_interval", 1, &["\"10s\"", "\"0s\""]),
    ("max_instances", 0, &["5"]),
];
/// Keys of a [[pool]] table (and [defaults]).
const POOL: &[Candidates] = &[
    (
        "name",
        2,
        &["\"small\"", "\"arm\"", "\"Big\"", "\"a_b\"", "3"],
    ),
    (
        "resource_class",
        3,
        &[
            "\"acme/linux-x64\"",
            "\"acme/linux-arm64\"",
            "\"acme/linux-large\"",
            "\"acme/Linux_X\"",
            "\"acme\"",
        ],
    ),
    ("max_instances", 2, &["4", "10", "0", "\"4\""]),
    (
        "instance_types",
        2,
        &[
            "[\"c7g.large\"]",
            "[\"c7i.large\", \"m7i.large\"]",
            "[]",
            "[\"big\"]",
            "[\"c7g.large\", \"c7g.large\"]",
            "\"c7g.large\"",
        ],
    ),
    ("instance_type", 1, &["\"t3.medium\"", "\"x\""]),
    ("image", 1, &["\"ami-0123456789abcdef0\"", "\"ubuntu\""]),
    ("idle_timeout", 1, &["\"1m\"", "\"soon\""]),
    ("apt_packages", 1, &["[\"jq\"]", "[\"Bad\"]"]),
    ("typo", 0, &["1"]),
];
