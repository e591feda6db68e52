//! A validator of CloudWatch Embedded Metric Format documents, after the
//! published specification: a root `_aws` object with a millisecond
//! `Timestamp` and `CloudWatchMetrics` directives; each directive a
//! `Namespace` (1 to 255 characters), `Dimensions` (arrays of at most 30
//! dimension names, each a top-level member holding a string) and `Metrics`
//! (at most 100, each a `Name` of 1 to 255 characters that is a top-level
//! member holding a number or an array of at most 100 numbers, and a `Unit`
//! from CloudWatch's list, or none).

use serde_json::Value;

const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// Every way `doc` breaks the specification (empty: valid).
pub fn problems(doc: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let Some(root) = doc.as_object() else {
        return vec!["the document is not a JSON object".into()];
    };
    let Some(aws) = root.get("_aws").and_then(Value::as_object) else {
        return vec!["no `_aws` object".into()];
    };
    match aws.get("Timestamp") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|t| t > 1_000_000_000_000) => {}
        other => p.push(format!(
            "`_aws.Timestamp` is not epoch milliseconds: {other:?}"
        )),
    }
    let Some(directives) = aws.get("CloudWatchMetrics").and_then(Value::as_array) else {
        p.push("no `_aws.CloudWatchMetrics` array".into());
        return p;
    };
    if directives.is_empty() {
        p.push("`CloudWatchMetrics` is empty".into());
    }
    for (i, d) in directives.iter().enumerate() {
        match d.get("Namespace").and_then(Value::as_str) {
            Some(ns) if (1..=255).contains(&ns.len()) => {}
            other => p.push(format!("directive {i}: bad Namespace {other:?}")),
        }
        match d.get("Dimensions").and_then(Value::as_array) {
            Some(sets) => {
                for set in sets {
                    let Some(names) = set.as_array() else {
                        p.push(format!("directive {i}: a dimension set is not an array"));
                        continue;
                    };
                    if names.len() > 30 {
                        p.push(format!("directive {i}: more than 30 dimensions in a set"));
                    }
                    for n in names {
                        let name = n.as_str().unwrap_or("");
                        if !root.get(name).is_some_and(Value::is_string) {
                            p.push(format!(
                                "dimension {name:?} is not a top-level string member"
                            ));
                        }
                    }
                }
            }
            None => p.push(format!("directive {i}: no Dimensions array")),
        }
        match d.get("Metrics").and_then(Value::as_array) {
            Some(metrics) => {
                if metrics.len() > 100 {
                    p.push(format!("directive {i}: more than 100 metrics"));
                }
                for m in metrics {
                    let name = m.get("Name").and_then(Value::as_str).unwrap_or("");
                    if !(1..=255).contains(&name.len()) {
                        p.push(format!("directive {i}: a metric without a valid Name: {m}"));
                    }
                    if let Some(unit) = m.get("Unit")
                        && !unit.as_str().is_some_and(|u| UNITS.contains(&u))
                    {
                        p.push(format!(
                            "metric {name}: unit {unit} is not a CloudWatch unit"
                        ));
                    }
                    match root.get(name) {
                        Some(Value::Number(_)) => {}
                        Some(Value::Array(a))
                            if a.len() <= 100 && a.iter().all(Value::is_number) => {}
                        other => p.push(format!("metric {name}: value {other:?} is not a number")),
                    }
                }
            }
            None => p.push(format!("directive {i}: no Metrics array")),
        }
    }
    p
}

#[test]
fn the_validator_catches_what_the_specification_forbids() {
    let good = serde_json::json!({"_aws": {"Timestamp": 1_764_000_000_000u64, "CloudWatchMetrics": [
        {"Namespace": "n", "Dimensions": [["stack"]], "Metrics": [{"Name": "A", "Unit": "Count"}]}]},
        "stack": "s", "A": 1});
    assert!(problems(&good).is_empty(), "{:?}", problems(&good));
    for (bad, want) in [
        (serde_json::json!({"A": 1}), "no `_aws`"),
        (
            serde_json::json!({"_aws": {"Timestamp": 5, "CloudWatchMetrics": []}}),
            "Timestamp",
        ),
        (
            serde_json::json!({"_aws": {"Timestamp": 1_764_000_000_000u64, "CloudWatchMetrics": [
                {"Namespace": "n", "Dimensions": [["stack"]], "Metrics": [{"Name": "A", "Unit": "Things"}]}]}, "A": "x"}),
            "not a CloudWatch unit",
        ),
    ] {
        let p = problems(&bad);
        assert!(p.iter().any(|x| x.contains(want)), "{want}: {p:?}");
    }
}
