//! CircleCI resource classes and runner tokens (runner API, personal token).
//! A new token's value is returned once: it goes straight into Secrets Manager.

use reqwest::Method;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::circleci::{CircleCiError, RunnerApi};

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ResourceClass {
    pub id: String,
    pub resource_class: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    pub resource_class: String,
    #[serde(default)]
    pub nickname: String,
}

#[derive(Deserialize)]
struct Items<T> {
    items: Vec<T>,
}

#[derive(Deserialize)]
struct NewToken {
    id: String,
    token: String,
}

pub async fn find_resource_class(
    api: &RunnerApi,
    rc: &str,
) -> Result<Option<ResourceClass>, CircleCiError> {
    let namespace = rc.split('/').next().unwrap_or_default();
    let list: Items<ResourceClass> = api
        .call(
            Method::GET,
            "api/v3/runner/resource",
            &[("namespace", namespace)],
            None,
            format!("resource classes of namespace {namespace} (GET /api/v3/runner/resource)"),
        )
        .await?;
    Ok(list.items.into_iter().find(|r| r.resource_class == rc))
}

pub async fn create_resource_class(
    api: &RunnerApi,
    rc: &str,
    description: &str,
) -> Result<ResourceClass, CircleCiError> {
    api.call(
        Method::POST,
        "api/v3/runner/resource",
        &[],
        Some(&json!({"resource_class": rc, "description": description})),
        format!("creating resource class {rc} (POST /api/v3/runner/resource)"),
    )
    .await
}

/// Deletes the class and its tokens.
pub async fn delete_resource_class(
    api: &RunnerApi,
    class: &ResourceClass,
) -> Result<(), CircleCiError> {
    let path = format!("api/v3/runner/resource/{}/force", class.id);
    let _: Value = api
        .call(
            Method::DELETE,
            &path,
            &[],
            None,
            format!(
                "deleting resource class {} (DELETE /{path})",
                class.resource_class
            ),
        )
        .await?;
    Ok(())
}

pub async fn list_tokens(api: &RunnerApi, rc: &str) -> Result<Vec<TokenInfo>, CircleCiError> {
    let list: Items<TokenInfo> = api
        .call(
            Method::GET,
            "api/v3/runner/token",
            &[("resource-class", rc)],
            None,
            format!("runner tokens of {rc} (GET /api/v3/runner/token)"),
        )
        .await?;
    Ok(list.items)
}

pub async fn create_token(
    api: &RunnerApi,
    rc: &str,
    nickname: &str,
) -> Result<(String, SecretString), CircleCiError> {
    let t: NewToken = api
        .call(
            Method::POST,
            "api/v3/runner/token",
            &[],
            Some(&json!({"resource_class": rc, "nickname": nickname})),
            format!("creating a runner token for {rc} (POST /api/v3/runner/token)"),
        )
        .await?;
    Ok((t.id, SecretString::from(t.token)))
}

pub async fn delete_token(api: &RunnerApi, id: &str) -> Result<(), CircleCiError> {
    let path = format!("api/v3/runner/token/{id}");
    let _: Value = api
        .call(
            Method::DELETE,
            &path,
            &[],
            None,
            format!("deleting runner token {id} (DELETE /{path})"),
        )
        .await?;
    Ok(())
}
