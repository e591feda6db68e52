//! Names of the resources a stack owns, derived from the stack name.

/// The stack's Auto Scaling group.
pub fn group(stack: &str) -> String {
    format!("{stack}-runners")
}

/// The secret holding the runner (resource-class) token the instances read.
pub fn runner_token_secret(stack: &str) -> String {
    format!("cci-scaler/{stack}/runner-token")
}

/// The secret holding the scaler's CircleCI personal token and resource class.
pub fn scaler_secret(stack: &str) -> String {
    format!("cci-scaler/{stack}/scaler")
}
