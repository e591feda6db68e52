//! Names of the resources a stack owns, derived from the stack name and, for
//! a stack with `[[pool]]` tables, the pool's name. A pool of `None` is the
//! one pool of a stack file without pools: its names are those of a stack
//! made before pools existed, so such a stack upgrades without a change.

/// A pool's Auto Scaling group.
pub fn group(stack: &str, pool: Option<&str>) -> String {
    match pool {
        None => format!("{stack}-runners"),
        Some(p) => format!("{stack}-{p}-runners"),
    }
}

/// Where the scaler keeps a pool's demand record for `headroom = "auto"`
/// (an SSM parameter; every one of a stack is under [`records_path`]).
pub fn demand_record(stack: &str, pool: Option<&str>) -> String {
    format!(
        "{}{}/demand",
        records_path(stack),
        pool.unwrap_or("default")
    )
}

/// Where the scaler keeps how far its daily report of real queue waits
/// (`usage_org`) has got.
pub fn usage_record(stack: &str) -> String {
    format!("{}usage", records_path(stack))
}

/// The SSM parameter path of a stack's demand records.
pub fn records_path(stack: &str) -> String {
    format!("/cci-scaler/{stack}/")
}

/// The secret holding a pool's runner (resource-class) token the instances read.
pub fn runner_token_secret(stack: &str, pool: Option<&str>) -> String {
    match pool {
        None => format!("cci-scaler/{stack}/runner-token"),
        Some(p) => format!("cci-scaler/{stack}/{p}/runner-token"),
    }
}

/// The secret holding the scaler's CircleCI personal token and resource class.
pub fn scaler_secret(stack: &str) -> String {
    format!("cci-scaler/{stack}/scaler")
}

/// A pool name: 1 to 24 lowercase letters, digits and '-', starting with a
/// letter (it becomes part of the pool's resource names).
pub fn validate_pool(name: &str) -> Result<(), String> {
    let ok = (1..=24).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "pool name {name:?}: 1 to 24 lowercase letters, digits and '-', starting with a letter"
        ))
    }
}
