//! PutMetricData for the CLI's `scale --metrics`: the same metrics the
//! Lambda's EMF lines make, batched (one call a poll for every pool).

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

use super::AwsError;
use crate::scale::Round;
use crate::scale::metrics::{NAMESPACE, of_round};

/// Put the metrics of one poll's rounds (dimensions stack and pool).
pub async fn put(
    client: &aws_sdk_cloudwatch::Client,
    stack: &str,
    rounds: &[(&str, &Round)],
) -> Result<(), AwsError> {
    let mut data = Vec::new();
    for (pool, round) in rounds {
        for m in of_round(round) {
            data.push(
                MetricDatum::builder()
                    .metric_name(m.name)
                    .value(m.value)
                    .unit(StandardUnit::from(m.unit))
                    .dimensions(Dimension::builder().name("stack").value(stack).build())
                    .dimensions(Dimension::builder().name("pool").value(*pool).build())
                    .build(),
            );
        }
    }
    // At most 1000 data a call.
    for chunk in data.chunks(1000) {
        client
            .put_metric_data()
            .namespace(NAMESPACE)
            .set_metric_data(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| AwsError::call("cloudwatch:PutMetricData", NAMESPACE, &e))?;
    }
    Ok(())
}
