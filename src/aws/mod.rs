//! AWS access: one shared SDK configuration and one small module per service.
//! The configuration follows the AWS CLI: the standard credential chain,
//! `--profile`, `--region`, `--endpoint-url`/`AWS_ENDPOINT_URL`.

pub mod autoscaling;
pub mod metrics;
pub mod secrets;

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// What the user chose on the command line (or the environment, for the Lambda).
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    pub profile: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AwsError {
    #[error(
        "no AWS region configured: pass --region, set AWS_REGION, or set a region in the AWS profile"
    )]
    NoRegion,
    #[error(
        "AWS profile '{name}' gave no credentials ({detail}): check that it exists in ~/.aws/config or ~/.aws/credentials and holds credentials, a role or SSO settings"
    )]
    Profile { name: String, detail: String },
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

/// The scaling core's terms for an AWS failure.
impl From<AwsError> for crate::scale::ApiError {
    fn from(e: AwsError) -> Self {
        match e {
            AwsError::GroupNotFound { name, region } => {
                crate::scale::ApiError::GroupNotFound { name, region }
            }
            e => crate::scale::ApiError::Failed(e.to_string()),
        }
    }
}

impl AwsError {
    /// Wrap an SDK error with what we were doing; adds a hint for the usual causes.
    pub fn call(
        operation: &'static str,
        target: impl Into<String>,
        err: &(dyn std::error::Error + 'static),
    ) -> Self {
        let mut detail = crate::error_chain(err);
        let lower = detail.to_ascii_lowercase();
        let hint = if lower.contains("credential") {
            detail = "no AWS credentials could be loaded".into();
            "; configure credentials as for the AWS CLI (AWS_PROFILE or --profile, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, aws sso login)"
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

/// Build the SDK configuration; fails early when no region can be found.
pub async fn load_config(opts: &AwsOptions) -> Result<SdkConfig, AwsError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(p) = &opts.profile {
        // As in the AWS CLI, an explicit profile wins over credentials in the
        // environment (AWS_ACCESS_KEY_ID...), which the default chain puts first.
        loader = loader.profile_name(p).credentials_provider(
            aws_config::profile::ProfileFileCredentialsProvider::builder()
                .profile_name(p)
                .build(),
        );
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
    if let (Some(name), Some(provider)) = (&opts.profile, config.credentials_provider()) {
        // A named profile is read from local files: check it now, so a typo is
        // reported as such rather than as a failed AWS call.
        use aws_credential_types::provider::ProvideCredentials;
        if let Err(e) = provider.provide_credentials().await {
            return Err(AwsError::Profile {
                name: name.clone(),
                detail: crate::error_chain(&e),
            });
        }
    }
    Ok(config)
}
