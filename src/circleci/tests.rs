//! The client's retries and limits, by example.
use super::*;

#[test]
fn resource_class_validation() {
    assert!(validate_resource_class("acme/linux-x64").is_ok());
    for bad in [
        "acme",
        "/x",
        "acme/",
        "a/b/c",
        "a/b;rm",
        "a b/c",
        "acme/$(x)",
    ] {
        assert!(validate_resource_class(bad).is_err(), "{bad}");
    }
}

#[test]
fn debug_never_shows_the_token() {
    let api = RunnerApi::new(
        "http://127.0.0.1:1",
        SecretString::from("s3cr3t-token"),
        HttpLimits::default(),
    )
    .unwrap();
    assert!(!format!("{api:?}").contains("s3cr3t"));
}

#[test]
fn bad_urls_are_refused() {
    for bad in ["ftp://x", "not a url", "file:///etc"] {
        assert!(
            RunnerApi::new(bad, SecretString::from("t"), HttpLimits::default()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn backoff_doubles_and_is_capped() {
    let api = RunnerApi::new(
        "http://127.0.0.1:1",
        SecretString::from("t"),
        HttpLimits::default(),
    )
    .unwrap();
    assert_eq!(api.backoff(1, None), Duration::from_millis(250));
    assert_eq!(api.backoff(2, None), Duration::from_millis(500));
    assert_eq!(api.backoff(30, None), Duration::from_secs(5));
    assert_eq!(
        api.backoff(1, Some(Duration::from_secs(60))),
        Duration::from_secs(5)
    );
}
