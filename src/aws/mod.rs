//! AWS access: one shared SDK configuration and one small module per service.
//! The configuration follows the AWS CLI: the standard credential chain,
//! `--profile`, `--region`, `--endpoint-url`/`AWS_ENDPOINT_URL`.

pub mod autoscaling;
pub mod secrets;

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// What the user chose on the command line (or the environment, for the Lambda).
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    pub profile: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error(
        "no AWS region configured: pass --region, set AWS_REGION, or set a region in the AWS profile"
    )]
    NoRegion,
    #[error("Auto Scaling group '{name}' not found in {region}: check --asg and --region")]
    GroupNotFound { name: String, region: String },
    #[error("AWS {operation} for {target} failed: {detail}{hint}")]
    Call {
        operation: &'static str,
        target: String,
        detail: String,
        hint: &'static str,
    },
}

impl AwsError {
    /// Wrap an SDK error with what we were doing; adds a hint for the usual causes.
    pub fn call(
        operation: &'static str,
        target: impl Into<String>,
        err: &(dyn std::error::Error + 'static),
    ) -> Self {
        let detail = sdk_error_text(err);
        let lower = detail.to_ascii_lowercase();
        let hint = if lower.contains("credential") {
            "; check AWS credentials (AWS_PROFILE or --profile, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, SSO login)"
        } else if lower.contains("accessdenied") || lower.contains("not authorized") {
            "; the caller's IAM policy does not allow this action"
        } else if lower.contains("dispatch failure") || lower.contains("connect") {
            "; check the network, the region and AWS_ENDPOINT_URL"
        } else {
            ""
        };
        AwsError::Call {
            operation,
            target: target.into(),
            detail,
            hint,
        }
    }
}

/// The SDK's error with its cause chain on one line.
fn sdk_error_text(err: &(dyn std::error::Error + 'static)) -> String {
    aws_sdk_autoscaling::error::DisplayErrorContext(err)
        .to_string()
        .replace('\n', " ")
}

/// Build the SDK configuration; fails early when no region can be found.
pub async fn load_config(opts: &AwsOptions) -> Result<SdkConfig, AwsError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(p) = &opts.profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = &opts.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(e) = &opts.endpoint_url {
        loader = loader.endpoint_url(e);
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return Err(AwsError::NoRegion);
    }
    Ok(config)
}
