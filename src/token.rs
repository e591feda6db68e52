//! Where the CircleCI personal API token and the resource class come from:
//! the scaler's Secrets Manager secret, or the environment. Never a flag value.

use secrecy::SecretString;

use crate::aws::secrets::{ScalerSecret, SecretError, read_scaler_secret};
use crate::circleci::validate_resource_class;

/// Environment variables holding a personal API token, in order of preference
/// (`CIRCLECI_CLI_TOKEN` is the CircleCI CLI's own).
pub const TOKEN_VARS: [&str; 2] = ["CIRCLECI_TOKEN", "CIRCLECI_CLI_TOKEN"];

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "no CircleCI personal API token: set CIRCLECI_TOKEN (or CIRCLECI_CLI_TOKEN), or pass --secret-id naming a Secrets Manager secret that holds it"
    )]
    Missing,
    #[error(
        "no resource class: pass --resource-class NAMESPACE/NAME or put \"resource_class\" in the secret"
    )]
    NoResourceClass,
    #[error(
        "--resource-class {flag} differs from the secret's resource_class {secret}; drop the flag or fix the secret"
    )]
    Conflict { flag: String, secret: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// The token `init` stores for the scaler when it should not get init's own
/// (an organisation admin's): a dedicated user's, for reading the queue.
pub const SCALER_TOKEN_VAR: &str = "CIRCLECI_SCALER_TOKEN";

pub fn scaler_token_from_env() -> Option<SecretString> {
    std::env::var(SCALER_TOKEN_VAR)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .map(SecretString::from)
}

pub fn token_from_env() -> Option<SecretString> {
    TOKEN_VARS.iter().find_map(|v| {
        std::env::var(v)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .map(SecretString::from)
    })
}

/// The resource class to scale: the flag, else the secret's; both must agree.
pub fn resolve_resource_class(
    flag: Option<&str>,
    from_secret: Option<&str>,
) -> Result<String, TokenError> {
    let rc = match (flag, from_secret) {
        (Some(f), Some(s)) if f != s => {
            return Err(TokenError::Conflict {
                flag: f.to_string(),
                secret: s.to_string(),
            });
        }
        (Some(f), _) => f,
        (None, Some(s)) => s,
        (None, None) => return Err(TokenError::NoResourceClass),
    };
    validate_resource_class(rc).map_err(TokenError::Invalid)?;
    Ok(rc.to_string())
}

/// The token alone (several pools: each names its own resource class): from
/// the secret when one is named, else from the environment.
pub async fn resolve_token(
    secrets: Option<(&aws_sdk_secretsmanager::Client, &str)>,
) -> Result<SecretString, TokenError> {
    match secrets {
        Some((client, id)) => Ok(read_scaler_secret(client, id).await?.circle_token),
        None => token_from_env().ok_or(TokenError::Missing),
    }
}

/// Token and resource class: from the secret when one is named, else from the
/// environment.
pub async fn resolve(
    secrets: Option<(&aws_sdk_secretsmanager::Client, &str)>,
    resource_class_flag: Option<&str>,
) -> Result<(SecretString, String), TokenError> {
    match secrets {
        Some((client, id)) => {
            let ScalerSecret {
                resource_class,
                circle_token,
            } = read_scaler_secret(client, id).await?;
            let rc = resolve_resource_class(resource_class_flag, resource_class.as_deref())?;
            Ok((circle_token, rc))
        }
        None => {
            let token = token_from_env().ok_or(TokenError::Missing)?;
            let rc = resolve_resource_class(resource_class_flag, None)?;
            Ok((token, rc))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_class_sources() {
        assert_eq!(resolve_resource_class(Some("a/b"), None).unwrap(), "a/b");
        assert_eq!(resolve_resource_class(None, Some("a/b")).unwrap(), "a/b");
        assert_eq!(
            resolve_resource_class(Some("a/b"), Some("a/b")).unwrap(),
            "a/b"
        );
        assert!(matches!(
            resolve_resource_class(Some("a/b"), Some("a/c")),
            Err(TokenError::Conflict { .. })
        ));
        assert!(matches!(
            resolve_resource_class(None, None),
            Err(TokenError::NoResourceClass)
        ));
        assert!(matches!(
            resolve_resource_class(Some("a;b"), None),
            Err(TokenError::Invalid(_))
        ));
    }
}
