//! `[job_role]`: the IAM role CircleCI jobs assume through OIDC, for the
//! whole stack.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[job_role]`: an IAM OIDC provider for the CircleCI organisation and a
/// role that only its jobs (and, if given, only these projects') may assume.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobRoleFile {
    /// The CircleCI organisation's id (Organization Settings, Overview).
    pub org_id: Option<String>,
    /// Managed policies the role gets (at least one).
    pub policy_arns: Option<Vec<String>>,
    /// Project ids whose jobs may assume it [default: every project of the
    /// organisation].
    pub projects: Option<Vec<String>>,
    /// The longest session, in seconds (3600 to 43200) [default: 3600].
    pub max_session_seconds: Option<u32>,
}

/// Checked job-role settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRoleSettings {
    pub org_id: String,
    pub policy_arns: Vec<String>,
    /// Empty: every project of the organisation.
    pub projects: Vec<String>,
    pub max_session_seconds: u32,
}

/// At most this many projects in a job role's trust policy (whose size IAM
/// limits to 2,048 characters by default).
pub const MAX_JOB_ROLE_PROJECTS: usize = 12;
/// IAM attaches at most 10 managed policies to a role by default.
pub const MAX_JOB_ROLE_POLICIES: usize = 10;

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

impl JobRoleFile {
    pub(super) fn check(&self) -> Result<JobRoleSettings, ConfigError> {
        fn bad(key: &str, detail: impl Into<String>) -> ConfigError {
            ConfigError::invalid(key, detail)
        }
        let org_id = self.org_id.clone().ok_or_else(|| {
            bad(
                "job_role.org_id",
                "the CircleCI organisation id is needed (Organization Settings > Overview > Organization ID)",
            )
        })?;
        if !is_uuid(&org_id) {
            return Err(bad(
                "job_role.org_id",
                format!(
                    "{org_id:?} is not an organisation id (a UUID, as Organization Settings > Overview shows it)"
                ),
            ));
        }
        let org_id = org_id.to_ascii_lowercase();
        let policy_arns = self.policy_arns.clone().unwrap_or_default();
        if policy_arns.is_empty() || policy_arns.len() > MAX_JOB_ROLE_POLICIES {
            return Err(bad(
                "job_role.policy_arns",
                format!(
                    "give 1 to {MAX_JOB_ROLE_POLICIES} managed policy ARNs the role gets (e.g. arn:aws:iam::aws:policy/ReadOnlyAccess)"
                ),
            ));
        }
        for a in &policy_arns {
            let parts: Vec<&str> = a.split(':').collect();
            let ok = matches!(parts.as_slice(),
                [arn, partition, "iam", "", _, resource]
                    if *arn == "arn" && partition.starts_with("aws")
                        && resource.len() > 7 && resource.starts_with("policy/"));
            if !ok {
                return Err(bad(
                    "job_role.policy_arns",
                    format!("{a:?} is not a managed policy ARN (arn:aws:iam::ACCOUNT:policy/NAME)"),
                ));
            }
        }
        if policy_arns
            .iter()
            .enumerate()
            .any(|(i, a)| policy_arns[..i].contains(a))
        {
            return Err(bad("job_role.policy_arns", "a policy is listed twice"));
        }
        let projects: Vec<String> = self
            .projects
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.to_ascii_lowercase())
            .collect();
        if projects.len() > MAX_JOB_ROLE_PROJECTS {
            return Err(bad(
                "job_role.projects",
                format!(
                    "at most {MAX_JOB_ROLE_PROJECTS} projects (IAM limits the trust policy's size); leave it out to trust every project of the organisation"
                ),
            ));
        }
        if let Some(p) = projects.iter().find(|p| !is_uuid(p)) {
            return Err(bad(
                "job_role.projects",
                format!(
                    "{p:?} is not a project id (a UUID, as Project Settings > Overview shows it)"
                ),
            ));
        }
        if projects
            .iter()
            .enumerate()
            .any(|(i, p)| projects[..i].contains(p))
        {
            return Err(bad("job_role.projects", "a project is listed twice"));
        }
        let max_session_seconds = self.max_session_seconds.unwrap_or(3600);
        if !(3600..=43200).contains(&max_session_seconds) {
            return Err(bad("job_role.max_session_seconds", "3600 to 43200"));
        }
        Ok(JobRoleSettings {
            org_id,
            policy_arns,
            projects,
            max_session_seconds,
        })
    }
}
