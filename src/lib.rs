//! cci-scaler: provision and operate autoscaling fleets of CircleCI self-hosted
//! machine runners on AWS.
//!
//! The scaling path (`scale`, the Lambda) is [`scale::run_once`] over
//! [`circleci::RunnerApi`] and [`aws::autoscaling::AsgClient`].

pub mod aws;
pub mod circleci;
pub mod scale;
pub mod token;
