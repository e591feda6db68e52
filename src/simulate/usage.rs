//! CircleCI's usage export (the Usage API's CSV files, gzip or plain) as
//! jobs to replay: one job per job run of a self-hosted resource class
//! (`namespace/name`), arriving when it was queued, running from its start
//! to its stop. Rows of cloud resource classes, and runs that never started
//! or stopped (cancelled while queued, still running), are left out and
//! counted.

use std::collections::BTreeMap;
use std::io::Read;

use super::workload::{Job, WorkloadError};

/// The columns read (CircleCI's names).
const QUEUED: &str = "JOB_RUN_QUEUED_AT";
const STARTED: &str = "JOB_RUN_STARTED_AT";
const STOPPED: &str = "JOB_RUN_STOPPED_AT";
const RESOURCE_CLASS: &str = "RESOURCE_CLASS";
const PROJECT: &str = "PROJECT_NAME";
const WORKFLOW: &str = "WORKFLOW_NAME";
const JOB: &str = "JOB_NAME";

/// One job run of a self-hosted resource class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Seconds since the epoch.
    pub queued: i64,
    pub started: i64,
    pub stopped: i64,
    pub resource_class: String,
    pub project: String,
    pub workflow: String,
    pub job: String,
}

/// What a usage export held.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Export {
    pub runs: Vec<Run>,
    /// Rows of cloud resource classes (not `namespace/name`).
    pub cloud_rows: usize,
    /// Self-hosted runs without a start or a stop.
    pub unfinished: usize,
}

/// Whether `text` starts like a usage export (its header names the columns).
pub fn is_usage_export(text: &str) -> bool {
    text.lines()
        .next()
        .is_some_and(|h| h.contains(QUEUED) && h.contains(RESOURCE_CLASS))
}

/// The bytes of a file, inflated when gzip.
pub fn read_maybe_gzip(bytes: &[u8]) -> std::io::Result<String> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = String::new();
        flate2::read::MultiGzDecoder::new(bytes).read_to_string(&mut out)?;
        Ok(out)
    } else {
        String::from_utf8(bytes.to_vec())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

/// A time as the export writes it (`2024-08-01 10:00:00.123`, UTC) or in
/// RFC 3339; `\N` and empty are none.
fn time(s: &str) -> Result<Option<i64>, String> {
    let s = s.trim();
    if s.is_empty() || s == "\\N" {
        return Ok(None);
    }
    if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        return Ok(Some(ts.as_second()));
    }
    let dt: jiff::civil::DateTime = s
        .parse()
        .map_err(|_| format!("{s:?} is not a time (expected YYYY-MM-DD HH:MM:SS, UTC)"))?;
    dt.to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| Some(z.timestamp().as_second()))
        .map_err(|e| format!("{s:?}: {e}"))
}

/// Parse one export file (its own header row; several parts are parsed one
/// by one and their exports joined with [`Export::extend`]).
pub fn parse(text: &str) -> Result<Export, WorkloadError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let bad = |line: usize, why: String| WorkloadError::Csv { line, why };
    let headers = reader
        .headers()
        .map_err(|e| bad(1, format!("the header row: {e}")))?
        .clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| bad(1, format!("no {name} column: not a CircleCI usage export")))
    };
    let (q, s, t, rc) = (
        col(QUEUED)?,
        col(STARTED)?,
        col(STOPPED)?,
        col(RESOURCE_CLASS)?,
    );
    let optional = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (p, w, j) = (optional(PROJECT), optional(WORKFLOW), optional(JOB));
    let mut out = Export::default();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let r = record.map_err(|e| bad(line, e.to_string()))?;
        let field = |k: usize| r.get(k).unwrap_or("").trim();
        let class = field(rc);
        if crate::circleci::validate_resource_class(class).is_err() {
            out.cloud_rows += 1;
            continue;
        }
        let at = |k: usize| time(field(k)).map_err(|why| bad(line, why));
        let (queued, started, stopped) = (at(q)?, at(s)?, at(t)?);
        let (Some(queued), Some(started), Some(stopped)) = (queued, started, stopped) else {
            out.unfinished += 1;
            continue;
        };
        let text = |k: Option<usize>| k.map(|k| field(k).to_string()).unwrap_or_default();
        out.runs.push(Run {
            queued,
            started: started.max(queued),
            stopped: stopped.max(started),
            resource_class: class.to_string(),
            project: text(p),
            workflow: text(w),
            job: text(j),
        });
    }
    Ok(out)
}

impl Export {
    pub fn extend(&mut self, other: Export) {
        self.runs.extend(other.runs);
        self.cloud_rows += other.cloud_rows;
        self.unfinished += other.unfinished;
    }

    /// The runs as jobs by resource class. Time 0 is the Thursday midnight
    /// (UTC) on or before the first run's queue time, so that simulated
    /// time keeps each run's weekday and time of day (simulated time 0 is
    /// the epoch, itself a Thursday midnight).
    pub fn jobs_by_class(&self) -> Result<BTreeMap<Option<String>, Vec<Job>>, WorkloadError> {
        let first = self
            .runs
            .iter()
            .map(|r| r.queued)
            .min()
            .ok_or(WorkloadError::Empty)?;
        const WEEK: i64 = 7 * 86_400;
        let t0 = first.div_euclid(WEEK) * WEEK;
        let mut out: BTreeMap<Option<String>, Vec<Job>> = BTreeMap::new();
        for r in &self.runs {
            out.entry(Some(r.resource_class.clone()))
                .or_default()
                .push(Job {
                    arrival_s: (r.queued - t0) as u64,
                    duration_s: ((r.stopped - r.started) as u64).max(1),
                });
        }
        for jobs in out.values_mut() {
            jobs.sort_by_key(|j| j.arrival_s);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_becomes_jobs_of_self_hosted_classes() {
        let text = "JOB_ID,PROJECT_NAME,WORKFLOW_NAME,JOB_NAME,RESOURCE_CLASS,EXECUTOR,JOB_RUN_QUEUED_AT,JOB_RUN_STARTED_AT,JOB_RUN_STOPPED_AT\n\
            1,api,build,\"test, unit\",acme/linux,machine,2024-08-01 10:00:00.000,2024-08-01 10:00:30.500,2024-08-01 10:06:30.500\n\
            2,api,build,lint,large,docker,2024-08-01 10:01:00.000,2024-08-01 10:01:05.000,2024-08-01 10:02:00.000\n\
            3,web,deploy,ship,acme/linux,machine,2024-08-01T10:02:00Z,\\N,\\N\n\
            4,web,deploy,e2e,acme/arm,machine,2024-08-02 09:00:00,2024-08-02 09:01:00,2024-08-02 09:11:00\n";
        assert!(is_usage_export(text));
        let e = parse(text).unwrap();
        assert_eq!(e.runs.len(), 2);
        assert_eq!(e.cloud_rows, 1);
        assert_eq!(e.unfinished, 1);
        assert_eq!(e.runs[0].job, "test, unit", "quoted commas");
        assert_eq!(e.runs[0].project, "api");
        let jobs = e.jobs_by_class().unwrap();
        let linux = &jobs[&Some("acme/linux".to_string())];
        // 2024-08-01 is a Thursday: time 0 is its midnight.
        assert_eq!(linux[0].arrival_s, 10 * 3600);
        assert_eq!(linux[0].duration_s, 360);
        let arm = &jobs[&Some("acme/arm".to_string())];
        assert_eq!(arm[0].arrival_s, 86_400 + 9 * 3600);
        // gzip reads the same.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
        assert_eq!(read_maybe_gzip(&gz.finish().unwrap()).unwrap(), text);
    }

    #[test]
    fn bad_exports_name_the_line() {
        let e = parse("JOB_ID,RESOURCE_CLASS\n1,a/b\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no JOB_RUN_QUEUED_AT column"), "{e}");
        let e = parse("RESOURCE_CLASS,JOB_RUN_QUEUED_AT,JOB_RUN_STARTED_AT,JOB_RUN_STOPPED_AT\na/b,yesterday,\\N,\\N\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 2:") && e.contains("not a time"), "{e}");
        assert!(matches!(
            Export::default().jobs_by_class(),
            Err(WorkloadError::Empty)
        ));
    }
}
