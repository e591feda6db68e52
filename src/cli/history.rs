//! `cci-scaler history`: an organisation's job runs from CircleCI's Usage
//! API, written as one CSV row per job run of its self-hosted resource
//! classes, which `simulate --jobs` replays.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::SecretString;

use cci_scaler::circleci::usage::{ExportWait, MAX_AGE_S, windows};
use cci_scaler::circleci::{HttpLimits, RunnerApi};
use cci_scaler::simulate::usage::{self, Export};

use super::{GlobalArgs, Output, parse_duration};

use cci_scaler::circleci::usage::DEFAULT_API_URL;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The organisation's id (CircleCI: Organization Settings, Overview).
    #[arg(long, value_name = "ORG_ID")]
    pub org: String,
    /// From this long ago (at most 13 months; longer windows than 32 days
    /// take several exports).
    #[arg(long, default_value = "30d", value_parser = parse_duration, value_name = "DURATION")]
    pub since: Duration,
    /// To this long ago.
    #[arg(long, default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub until: Duration,
    /// Where to write the job runs (CSV; replaced only once all is read).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// CircleCI's v2 API.
    #[arg(long, env = "CIRCLECI_API_URL", default_value = DEFAULT_API_URL, value_name = "URL")]
    pub circleci_api_url: String,
    /// Give up an export after this long.
    #[arg(long, default_value = "30m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// How often to ask whether an export is done.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION", hide = true)]
    pub poll_interval: Duration,
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

pub async fn run(global: &GlobalArgs, args: HistoryArgs) -> anyhow::Result<ExitCode> {
    if args.org.trim().is_empty() || args.org.contains('/') {
        crate::usage!("--org {:?}: expected the organisation's id", args.org);
    }
    if args.since <= args.until {
        crate::usage!("--since must reach further back than --until");
    }
    if args.since.as_secs() as i64 > MAX_AGE_S {
        crate::usage!(
            "--since {}: CircleCI keeps 13 months of usage; at most 395d",
            humantime::format_duration(args.since)
        );
    }
    let token = cci_scaler::token::TOKEN_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|t| !t.trim().is_empty()))
        .context("no CircleCI personal API token: set CIRCLECI_TOKEN (or CIRCLECI_CLI_TOKEN) to a token of a member of the organisation")?;
    let api = RunnerApi::new(
        &args.circleci_api_url,
        SecretString::from(token.trim().to_string()),
        HttpLimits::default(),
    )?;
    let end = now() - args.until.as_secs() as i64;
    let start = now() - args.since.as_secs() as i64;
    let spans = windows(start, end);

    let bar = if global.output == Output::Text && std::io::stderr().is_terminal() {
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.enable_steady_tick(Duration::from_millis(100));
        pb
    } else {
        ProgressBar::hidden()
    };
    let quiet = bar.is_hidden() && global.output == Output::Json;
    let say = |m: &str| {
        if bar.is_hidden() {
            if !quiet {
                eprintln!("  ... {m}");
            }
        } else {
            bar.set_message(m.to_string());
        }
    };
    let wait = ExportWait {
        poll: args.poll_interval,
        timeout: args.timeout,
    };
    let mut export = Export::default();
    for (i, span) in spans.iter().enumerate() {
        say(&format!(
            "export {} of {}: asking CircleCI",
            i + 1,
            spans.len()
        ));
        let files = api.usage_export(&args.org, *span, wait, &say).await?;
        for f in files {
            let text = usage::read_maybe_gzip(&f).context("a file of the usage export")?;
            if text.trim().is_empty() {
                continue;
            }
            export.extend(usage::parse(&text).context("a file of the usage export")?);
        }
    }
    bar.finish_and_clear();

    export.runs.sort_by_key(|r| r.queued);
    write_runs(&args.out, &export)?;
    let mut classes = std::collections::BTreeMap::<&str, usize>::new();
    for r in &export.runs {
        *classes.entry(r.resource_class.as_str()).or_default() += 1;
    }
    match global.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "file": args.out.display().to_string(),
                "exports": spans.len(),
                "runs": export.runs.len(),
                "classes": classes,
                "cloud_rows": export.cloud_rows,
                "unfinished": export.unfinished,
            })
        ),
        Output::Text => {
            println!(
                "{} job run(s) of self-hosted classes, from {} export(s), written to {}",
                export.runs.len(),
                spans.len(),
                args.out.display()
            );
            for (c, n) in &classes {
                println!("  {c}: {n}");
            }
            println!(
                "left out: {} run(s) of cloud resource classes, {} that never started or stopped",
                export.cloud_rows, export.unfinished
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The runs as CSV (the usage export's own column names, so `simulate
/// --jobs` reads it), written beside the target and renamed into place.
fn write_runs(path: &std::path::Path, export: &Export) -> anyhow::Result<()> {
    let time = |s: i64| {
        jiff::Timestamp::from_second(s)
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "JOB_RUN_QUEUED_AT",
        "JOB_RUN_STARTED_AT",
        "JOB_RUN_STOPPED_AT",
        "RESOURCE_CLASS",
        "PROJECT_NAME",
        "WORKFLOW_NAME",
        "JOB_NAME",
    ])?;
    for r in &export.runs {
        w.write_record([
            time(r.queued),
            time(r.started),
            time(r.stopped),
            r.resource_class.clone(),
            r.project.clone(),
            r.workflow.clone(),
            r.job.clone(),
        ])?;
    }
    let bytes = w.into_inner().context("writing the CSV")?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
