//! cci-scaler: provision and operate autoscaling fleets of CircleCI self-hosted
//! machine runners on AWS.
//!
//! The scaling path (`scale`, the Lambda) is [`scale::run_once`] over
//! [`circleci::RunnerApi`] and [`aws::autoscaling::AsgClient`]; it never uses
//! [`render`] or any provisioning code.

pub mod aws;
pub mod circleci;
pub mod config;
pub mod names;
pub mod provision;
pub mod render;
pub mod scale;
pub mod simulate;
pub mod token;

/// An error and its causes on one line, each cause once: `a: b: c`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !t.is_empty() && !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out.replace('\n', " ")
}
