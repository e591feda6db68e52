//! Metrics of every poll, at no extra API call: the poll's JSON log line
//! also carries CloudWatch Embedded Metric Format (namespace `cci-scaler`,
//! dimensions `stack` and `pool`), which CloudWatch Logs turns into metrics.
//! The CLI's loop can put the same values with PutMetricData.

use serde_json::{Map, Value, json};

use super::Round;

pub const NAMESPACE: &str = "cci-scaler";

/// One metric of a poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub value: f64,
}

/// The metrics of one poll (one pool).
pub fn of_round(round: &Round) -> Vec<Metric> {
    let m = |name, unit, value: f64| Metric { name, unit, value };
    let spares = (round.registered_runners as u32).saturating_sub(round.queue.running);
    let scale_out = round
        .group
        .desired_after
        .saturating_sub(round.group.desired_before);
    let starved = round.queue.unclaimed > 0 && round.group.desired_after >= round.group.max;
    vec![
        m("Unclaimed", "Count", round.queue.unclaimed.into()),
        m("Running", "Count", round.queue.running.into()),
        m("Desired", "Count", round.group.desired_after.into()),
        m("InService", "Count", round.group.in_service as f64),
        m(
            "RegisteredRunners",
            "Count",
            round.registered_runners as f64,
        ),
        m("Spares", "Count", spares.into()),
        m("Reaped", "Count", round.reaped.len() as f64),
        m("ScaleOut", "Count", scale_out.into()),
        m("Starved", "Count", if starved { 1.0 } else { 0.0 }),
        m(
            "CircleCiLatency",
            "Milliseconds",
            round.latency.circleci_ms as f64,
        ),
        m("AwsLatency", "Milliseconds", round.latency.aws_ms as f64),
    ]
}

/// `line` (a JSON object) with the EMF envelope and the metric values added,
/// for dimensions stack and pool.
pub fn emf(line: Value, stack: &str, pool: &str, metrics: &[Metric], timestamp_ms: u64) -> Value {
    let mut obj = match line {
        Value::Object(m) => m,
        other => {
            let mut m = Map::new();
            m.insert("message".into(), other);
            m
        }
    };
    obj.insert("stack".into(), json!(stack));
    obj.insert("pool".into(), json!(pool));
    for metric in metrics {
        obj.insert(metric.name.into(), json!(metric.value));
    }
    obj.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["stack", "pool"]],
                "Metrics": metrics.iter().map(|m| json!({"Name": m.name, "Unit": m.unit})).collect::<Vec<_>>(),
            }]
        }),
    );
    Value::Object(obj)
}

/// An error line's metric: `Errors` = 1 with the kind as a third dimension.
pub fn emf_error(line: Value, stack: &str, pool: &str, kind: &str, timestamp_ms: u64) -> Value {
    let mut v = emf(
        line,
        stack,
        pool,
        &[Metric {
            name: "Errors",
            unit: "Count",
            value: 1.0,
        }],
        timestamp_ms,
    );
    v["error_kind"] = json!(kind);
    v["_aws"]["CloudWatchMetrics"][0]["Dimensions"] =
        json!([["stack", "pool"], ["stack", "pool", "error_kind"]]);
    v
}
