//! The stack file's checks, by example.

use super::*;
use std::path::Path;

fn base() -> StackFile {
    let mut f = StackFile {
        stack: Some("demo".into()),
        ..StackFile::default()
    };
    f.pool.resource_class = Some("acme/linux".into());
    f
}

#[test]
fn defaults_and_flags_win() {
    let file = StackFile::parse(
        "stack = \"demo\"\nresource_class = \"acme/linux\"\nmax_instances = 4\n[runner]\nidle_timeout = \"5m\"\n",
        Path::new("x.toml"),
    )
    .unwrap();
    let mut flags = StackFile::default();
    flags.pool.max_instances = Some(7);
    let s = file.merged(flags).pools().unwrap().remove(0);
    assert_eq!(s.max_instances, 7);
    assert_eq!(s.runner.idle_timeout, "5m");
    assert_eq!(s.image, ImageSource::Default);
    assert_eq!(s.instance_types, [DEFAULT_INSTANCE_TYPE]);
    assert_eq!(s.imds_hop_limit, 1);
    assert_eq!(s.pool, None);
    assert!(!s.runner.job_sudo, "jobs get no sudo unless asked");
}

#[test]
fn pools_take_defaults_and_their_own_values() {
    let text = r#"
stack = "ci"
region = "eu-west-1"

[defaults]
max_instances = 10
idle_timeout = "1m"
job_sudo = true

[[pool]]
resource_class = "acme/linux-x64"
instance_types = ["c7i.large"]
job_sudo = false

[[pool]]
resource_class = "acme/linux-arm64"
instance_types = ["c7g.large", "m7g.large"]
max_instances = 4

[[pool]]
name = "big"
resource_class = "acme/linux_large"
instance_type = "c7i.4xlarge"
"#;
    let pools = StackFile::parse(text, Path::new("x.toml"))
        .unwrap()
        .pools()
        .unwrap();
    let names: Vec<_> = pools.iter().map(|p| p.pool.clone().unwrap()).collect();
    assert_eq!(names, ["linux-x64", "linux-arm64", "big"]);
    assert_eq!(pools[0].max_instances, 10);
    assert_eq!(pools[1].max_instances, 4);
    assert_eq!(pools[1].instance_types, ["c7g.large", "m7g.large"]);
    assert_eq!(pools[2].instance_types, ["c7i.4xlarge"]);
    assert!(pools.iter().all(|p| p.runner.idle_timeout == "1m"));
    let sudo: Vec<bool> = pools.iter().map(|p| p.runner.job_sudo).collect();
    assert_eq!(sudo, [false, true, true]);
    assert_eq!(select_pools(pools.clone(), Some("big")).unwrap().len(), 1);
    let e = select_pools(pools, Some("nope")).unwrap_err().to_string();
    assert!(
        e.contains("no pool named nope") && e.contains("linux-x64, linux-arm64, big"),
        "{e}"
    );
}

#[test]
fn job_role_is_checked() {
    const ORG: &str = "8A1C3F0E-2B4D-4E6F-9A8B-7C6D5E4F3A2B";
    const POLICY: &str = "arn:aws:iam::aws:policy/ReadOnlyAccess";
    let load = |job: &str| {
        let text = format!("stack = \"ci\"\nresource_class = \"acme/x\"\n[job_role]\n{job}");
        StackFile::parse(&text, Path::new("x.toml"))
            .and_then(|f| f.pools())
            .map(|mut p| p.remove(0).job_role.unwrap())
    };
    let ok = load(&format!(
        "org_id = \"{ORG}\"\npolicy_arns = [\"{POLICY}\"]\nprojects = [\"{ORG}\"]\n"
    ))
    .unwrap();
    assert_eq!(ok.org_id, ORG.to_ascii_lowercase());
    assert_eq!(ok.projects, [ORG.to_ascii_lowercase()]);
    assert_eq!(ok.max_session_seconds, 3600);
    let many: Vec<String> = (0..13)
        .map(|i| format!("\"{:08x}-0000-4000-8000-000000000000\"", i))
        .collect();
    let cases = [
        (
            format!("policy_arns = [\"{POLICY}\"]\n"),
            "job_role.org_id: the CircleCI organisation id is needed",
        ),
        (
            format!("org_id = \"acme\"\npolicy_arns = [\"{POLICY}\"]\n"),
            "job_role.org_id: \"acme\" is not an organisation id",
        ),
        (
            format!("org_id = \"{ORG}\"\n"),
            "job_role.policy_arns: give 1 to 10",
        ),
        (
            format!("org_id = \"{ORG}\"\npolicy_arns = [\"ReadOnlyAccess\"]\n"),
            "is not a managed policy ARN",
        ),
        (
            format!("org_id = \"{ORG}\"\npolicy_arns = [\"{POLICY}\", \"{POLICY}\"]\n"),
            "listed twice",
        ),
        (
            format!("org_id = \"{ORG}\"\npolicy_arns = [\"{POLICY}\"]\nprojects = [\"web\"]\n"),
            "job_role.projects: \"web\" is not a project id",
        ),
        (
            format!(
                "org_id = \"{ORG}\"\npolicy_arns = [\"{POLICY}\"]\nprojects = [{}]\n",
                many.join(", ")
            ),
            "job_role.projects: at most 12",
        ),
        (
            format!("org_id = \"{ORG}\"\npolicy_arns = [\"{POLICY}\"]\nmax_session_seconds = 60\n"),
            "job_role.max_session_seconds",
        ),
        (
            format!("org_id = \"{ORG}\"\npolicy_arns = [\"{POLICY}\"]\nrole = \"x\"\n"),
            "unknown field `role`",
        ),
    ];
    for (job, want) in cases {
        let e = load(&job).unwrap_err().to_string();
        assert!(e.contains(want), "{job}: {e}");
    }
}

#[test]
fn bad_pools_are_refused_by_key() {
    let cases = [
        (
            "[[pool]]\nresource_class = \"a/b\"\n[[pool]]\nresource_class = \"c/b\"\n",
            "pool[2].resource_class: two pools are named b",
        ),
        (
            "[[pool]]\nresource_class = \"a/b\"\n[[pool]]\nname = \"c\"\nresource_class = \"a/b\"\n",
            "pool[2].resource_class: a/b is served by another pool",
        ),
        (
            "[[pool]]\nmax_instances = 3\n",
            "pool[1].resource_class: every [[pool]] needs",
        ),
        (
            "[[pool]]\nresource_class = \"a/B_x\"\n",
            "pool[1].resource_class: pool name \"B_x\"",
        ),
        (
            "[defaults]\nmax_instances = 0\n[[pool]]\nresource_class = \"a/b\"\n",
            "defaults.max_instances",
        ),
        (
            "[[pool]]\nresource_class = \"a/b\"\nimage = \"x\"\n",
            "pool[1].image",
        ),
        (
            "[[pool]]\nresource_class = \"a/b\"\ninstance_types = []\n",
            "pool[1].instance_types: give 1 to 20",
        ),
        (
            "[[pool]]\nresource_class = \"a/b\"\ninstance_types = [\"c7g.large\", \"c7g.large\"]\n",
            "listed twice",
        ),
        (
            "max_instances = 3\n[[pool]]\nresource_class = \"a/b\"\n",
            "max_instances: the stack file has [[pool]] tables",
        ),
        (
            "resource_class = \"a/b\"\n[defaults]\nmax_instances = 3\n",
            "defaults: [defaults] applies to [[pool]] tables",
        ),
    ];
    for (body, want) in cases {
        let text = format!("stack = \"ci\"\n{body}");
        let e = StackFile::parse(&text, Path::new("x.toml"))
            .and_then(|f| f.pools())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn bad_values_are_refused() {
    type Change = fn(&mut StackFile);
    let cases: Vec<(Change, &str)> = vec![
        (|f: &mut StackFile| f.stack = None, "no stack name"),
        (
            |f: &mut StackFile| f.pool.max_instances = Some(0),
            "max_instances: 0 is out of range",
        ),
        (
            |f: &mut StackFile| f.pool.instance_type = Some("big".into()),
            "instance type",
        ),
        (
            |f: &mut StackFile| f.pool.image = Some("ubuntu".into()),
            "image",
        ),
        (
            |f: &mut StackFile| f.subnets = Some(vec!["sn-1".into()]),
            "subnet",
        ),
        (
            |f: &mut StackFile| f.pool.root_volume_gb = Some(2),
            "root volume",
        ),
        (
            |f: &mut StackFile| f.pool.imds_hop_limit = Some(0),
            "hop limit",
        ),
        (
            |f: &mut StackFile| f.poll_interval = Some("0s".into()),
            "poll interval",
        ),
        (
            |f: &mut StackFile| f.pool.resource_class = Some("x".into()),
            "invalid resource class",
        ),
    ];
    for (change, want) in cases {
        let mut f = base();
        change(&mut f);
        let e = f.pools().unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
    let e = StackFile::parse("stak = \"x\"", Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `stak`"), "{e}");
}

#[test]
fn wrong_types_name_their_key() {
    for (body, key) in [
        (
            "resource_class = \"a/b\"\nmax_instances = \"ten\"\n",
            "max_instances",
        ),
        (
            "resource_class = \"a/b\"\n[runner]\njob_sudo = \"yes\"\n",
            "job_sudo",
        ),
        (
            "[[pool]]\nresource_class = \"a/b\"\nmax_instances = \"ten\"\n",
            "max_instances",
        ),
        (
            "poll_interval = 10\nresource_class = \"a/b\"\n",
            "poll_interval",
        ),
        ("resource_class = \"a/b\"\nname = \"x\"\n", "name"),
        (
            "resource_class = \"a/b\"\n[runner]\nidle = \"1m\"\n",
            "idle",
        ),
    ] {
        let text = format!("stack = \"ci\"\n{body}");
        let e = StackFile::parse(&text, Path::new("x.toml"))
            .and_then(|f| f.pools())
            .unwrap_err()
            .to_string();
        eprintln!("{e}");
        assert!(e.contains(key), "{key}: {e}");
    }
}

#[test]
fn an_on_demand_pool_ignores_spot_keys_with_a_warning() {
    let text = "stack = \"ci\"\nresource_class = \"a/b\"\nmarket = \"on-demand\"\non_demand_base = 2\nretry_interrupted_jobs = true\n";
    let s = StackFile::parse(text, Path::new("x.toml"))
        .and_then(|f| f.pools())
        .unwrap()
        .remove(0);
    assert_eq!(s.spot, None);
    assert!(!s.retry_interrupted_jobs);
    assert_eq!(s.warnings.len(), 1);
    assert!(
        s.warnings[0].contains("on_demand_base, retry_interrupted_jobs")
            && s.warnings[0].contains("ignored"),
        "{:?}",
        s.warnings
    );
}

#[test]
fn headroom_is_auto_periods_or_both() {
    let period = "{ schedule = \"0 8 * * MON-FRI\", duration = \"11h\", count = 2 }";
    let parse = |body: &str| {
        StackFile::parse(
            &format!("stack = \"ci\"\nresource_class = \"a/b\"\nmax_instances = 8\n{body}"),
            Path::new("x.toml"),
        )
        .and_then(|f| f.pools())
        .map(|mut p| p.remove(0))
    };
    // (body, auto's max_spares, periods)
    let cases: Vec<(String, Option<u32>, usize)> = vec![
        (String::new(), None, 0),
        ("headroom = \"auto\"\n".into(), Some(5), 0),
        ("headroom = \"auto\"\nmax_spares = 2\n".into(), Some(2), 0),
        (format!("headroom = [\"auto\", {period}]\n"), Some(5), 1),
        (
            "[[headroom]]\nschedule = \"0 8 * * *\"\nduration = \"1h\"\ncount = 1\n".to_string(),
            None,
            1,
        ),
    ];
    for (body, auto, periods) in cases {
        let s = parse(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
        assert_eq!(s.auto_headroom.map(|a| a.max_spares), auto, "{body}");
        assert_eq!(s.headroom.len(), periods, "{body}");
        assert_eq!(s.has_spares(), auto.is_some() || periods > 0, "{body}");
    }
    // A small pool: auto's default bound is the pool's size.
    let s = parse("headroom = \"auto\"\n").unwrap();
    assert_eq!(
        s.auto_scale().unwrap().record,
        "/cci-scaler/ci/default/demand"
    );
    for (body, want) in [
        ("headroom = \"lots\"\n", "expected \"auto\""),
        ("headroom = [\"sometimes\"]\n", "expected \"auto\""),
        ("headroom = \"auto\"\nmax_spares = 9\n", "max_spares"),
        ("headroom = \"auto\"\nmax_spares = 0\n", "max_spares"),
        ("max_spares = 2\n", "not auto"),
    ] {
        let e = parse(body).unwrap_err().to_string();
        assert!(e.contains(want), "{body}: {e}");
    }
    // [defaults] auto, and a pool that sets its own periods instead.
    let pools = StackFile::parse(
        &format!(
            "stack = \"ci\"\n[defaults]\nheadroom = \"auto\"\n[[pool]]\nresource_class = \"a/b\"\n\
             [[pool]]\nresource_class = \"a/c\"\nheadroom = [{period}]\n"
        ),
        Path::new("x.toml"),
    )
    .unwrap()
    .pools()
    .unwrap();
    assert!(pools[0].auto_headroom.is_some());
    assert_eq!(
        pools[0].auto_scale().unwrap().record,
        "/cci-scaler/ci/b/demand"
    );
    assert!(pools[1].auto_headroom.is_none() && pools[1].headroom.len() == 1);
}

#[test]
fn warm_pool_is_bounded_and_on_demand_only() {
    let parse = |body: &str| {
        StackFile::parse(
            &format!("stack = \"ci\"\nresource_class = \"a/b\"\nmax_instances = 4\n{body}"),
            Path::new("x.toml"),
        )
        .and_then(|f| f.pools())
        .map(|mut p| p.remove(0))
    };
    assert_eq!(parse("").unwrap().warm_pool, 0);
    assert_eq!(parse("warm_pool = 2\n").unwrap().warm_pool, 2);
    assert_eq!(
        parse("warm_pool = 2\ninstance_types = [\"c7i.large\", \"m7i.large\"]\n")
            .unwrap()
            .warm_pool,
        2,
        "several on-demand types: allowed"
    );
    for (body, want) in [
        ("warm_pool = 5\n", "max_instances (4)"),
        ("warm_pool = 1\nmarket = \"spot\"\n", "Spot Instances"),
    ] {
        let e = parse(body).unwrap_err().to_string();
        assert!(e.contains("warm_pool") && e.contains(want), "{body}: {e}");
    }
}
