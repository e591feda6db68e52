//! The integration-test binary: the real binaries end to end against servers on
//! 127.0.0.1 (moto, a CircleCI runner-API stand-in, a Lambda Runtime API
//! stand-in) and a sandbox for the user-data script; every server a test starts
//! is stopped when the test ends.

mod build;
mod cli;
mod history;
mod iam;
mod init;
mod lambda;
mod pools;
mod real_boot;
mod scale;
mod simulate;
mod spot;
mod support;
mod user_data;
