//! Build hygiene checked by the tests themselves.

use std::collections::{BTreeMap, BTreeSet};

/// Every package of the build with its enabled features, as `cargo tree`
/// resolves them with (`all`) or without (`no-dev`) the dev-dependencies.
fn features(edges: &str) -> BTreeMap<String, BTreeSet<String>> {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "--offline",
            "--edges",
            edges,
            "--prefix",
            "none",
            "--format",
            "{p}|{f}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((pkg, feats)) = line.split_once('|') else {
            continue;
        };
        // `name vX.Y.Z (path)`: the path part only for local packages.
        let pkg = pkg.split(" (").next().unwrap().trim().to_string();
        let feats = feats.trim_end_matches(" (*)");
        map.entry(pkg)
            .or_default()
            .extend(feats.split(',').filter(|f| !f.is_empty()).map(String::from));
    }
    map
}

/// `cargo test` after `cargo build --bins` must not compile a shared crate
/// (and so the AWS SDK above hyper) a second time: the dev-dependencies may add
/// crates, but must not change the features of one the binaries use. Fix a
/// failure by adding the feature to the "feature alignment" block of Cargo.toml.
#[test]
fn tests_share_every_crate_with_the_binaries() {
    let bins = features("no-dev");
    let all = features("all");
    let differ: Vec<String> = bins
        .iter()
        .filter_map(|(pkg, f)| {
            let with_dev = &all[pkg];
            (with_dev != f).then(|| {
                let extra: Vec<_> = with_dev.difference(f).collect();
                format!("{pkg}: tests add {extra:?}")
            })
        })
        .collect();
    assert!(differ.is_empty(), "{differ:#?}");
}
