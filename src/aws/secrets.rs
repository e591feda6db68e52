//! The scaler's Secrets Manager secret: `{"resource_class": ..., "circle_token": ...}`,
//! the shape the CircleCI tutorial uses. Values are never echoed in errors.

use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use secrecy::SecretString;
use serde_json::Value;

use super::AwsError;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret '{0}' not found: check --secret-id (name or ARN) and the region")]
    NotFound(String),
    #[error(
        "secret '{id}' is malformed: {problem}; expected JSON {{\"resource_class\": \"namespace/name\", \"circle_token\": \"<personal API token>\"}}"
    )]
    Malformed { id: String, problem: &'static str },
    #[error(transparent)]
    Aws(#[from] AwsError),
}

pub struct ScalerSecret {
    pub resource_class: Option<String>,
    pub circle_token: SecretString,
}

impl std::fmt::Debug for ScalerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScalerSecret")
            .field("resource_class", &self.resource_class)
            .field("circle_token", &"[redacted]")
            .finish()
    }
}

pub async fn read_scaler_secret(
    client: &aws_sdk_secretsmanager::Client,
    id: &str,
) -> Result<ScalerSecret, SecretError> {
    let out = match client.get_secret_value().secret_id(id).send().await {
        Ok(o) => o,
        Err(e) => {
            if matches!(
                e.as_service_error(),
                Some(GetSecretValueError::ResourceNotFoundException(_))
            ) {
                return Err(SecretError::NotFound(id.to_string()));
            }
            return Err(AwsError::call("secretsmanager:GetSecretValue", id, &e).into());
        }
    };
    let text = match (out.secret_string(), out.secret_binary()) {
        (Some(s), _) => s.to_string(),
        (None, Some(b)) => {
            String::from_utf8(b.as_ref().to_vec()).map_err(|_| SecretError::Malformed {
                id: id.to_string(),
                problem: "its binary value is not UTF-8 text",
            })?
        }
        (None, None) => {
            return Err(SecretError::Malformed {
                id: id.to_string(),
                problem: "it has no value",
            });
        }
    };
    parse_scaler_secret(id, &text)
}

/// Parse without letting serde quote any value back in an error message.
pub fn parse_scaler_secret(id: &str, text: &str) -> Result<ScalerSecret, SecretError> {
    let bad = |problem| SecretError::Malformed {
        id: id.to_string(),
        problem,
    };
    let value: Value = serde_json::from_str(text).map_err(|_| bad("it is not valid JSON"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad("it is not a JSON object"))?;
    let token = match obj.get("circle_token") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::String(_)) => return Err(bad("\"circle_token\" is empty")),
        Some(_) => return Err(bad("\"circle_token\" is not a string")),
        None => return Err(bad("\"circle_token\" is missing")),
    };
    let resource_class = match obj.get("resource_class") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        None | Some(Value::Null) => None,
        Some(Value::String(_)) => None,
        Some(_) => return Err(bad("\"resource_class\" is not a string")),
    };
    Ok(ScalerSecret {
        resource_class,
        circle_token: SecretString::from(token),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn parses_the_tutorial_shape() {
        let s =
            parse_scaler_secret("x", r#"{"resource_class":"a/b","circle_token":"tok"}"#).unwrap();
        assert_eq!(s.resource_class.as_deref(), Some("a/b"));
        assert_eq!(s.circle_token.expose_secret(), "tok");
        assert!(!format!("{s:?}").contains("tok\""));
    }

    #[test]
    fn malformed_secrets_never_echo_values() {
        for text in [
            "not json SECRETVALUE",
            r#"["SECRETVALUE"]"#,
            r#"{"resource_class":"a/b"}"#,
            r#"{"circle_token": 123456789}"#,
            r#"{"circle_token": ""}"#,
            r#"{"circle_token": "SECRETVALUE", "resource_class": 5}"#,
        ] {
            let err = parse_scaler_secret("id", text).unwrap_err().to_string();
            assert!(err.contains("secret 'id' is malformed"), "{err}");
            assert!(
                !err.contains("SECRETVALUE") && !err.contains("123456789"),
                "{err}"
            );
        }
    }
}
