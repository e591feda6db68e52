//! `headroom = "auto"`: spare runners sized from the pool's own demand, with
//! no schedule. Pure: the caller passes what it has seen.
//!
//! A single-task runner serves one job, so every job that arrives while a
//! spare is idle takes that spare, and the next one must be launched. Enough
//! spares cover the jobs that arrive while a replacement boots: the arrival
//! rate times the lead time (launch to registered runner, plus a poll). The
//! rate is the largest of what the pool sees now (the last 15 minutes, or a
//! burst: at least [`BURST_MIN_JOBS`] in the last 2 minutes) and what it saw
//! at this hour of the week in recent weeks (the median week), so spares are
//! up before the morning's first burst, not after it. A rate under
//! [`MIN_RATE_PER_MIN`] wants no spares (one would idle longer than it
//! saves), except one while the pool has had a job in the last half hour.
//! Arrivals are what the scaler can see: the rise of `unclaimed + running`
//! between two polls, plus the jobs that ended meanwhile (their instances
//! left the group).

/// What [`spares`] needs.
#[derive(Debug, Clone, Copy)]
pub struct AutoInputs<'a> {
    /// Jobs that arrived between consecutive polls, oldest first, over at
    /// least the last [`MEMORY_S`]: (seconds since the epoch of the poll,
    /// arrivals).
    pub recent: &'a [(u64, u32)],
    /// Now, in seconds since the epoch.
    pub now: u64,
    /// The peak arrival rate (jobs a minute, over a [`BURST_WINDOW_S`]) seen
    /// in this hour of the week and the next, in each recent week that has
    /// data; empty: no history.
    pub history: &'a [f64],
    /// Launch to registered runner, seconds (what boots have taken).
    pub lead_s: u64,
    /// The scaler's poll interval, seconds.
    pub poll_s: u64,
    /// At most this many spares.
    pub max_spares: u32,
}

/// The burst window and how many jobs in it make a burst.
pub const BURST_WINDOW_S: u64 = 120;
pub const BURST_MIN_JOBS: u32 = 3;
/// The steady window.
pub const STEADY_WINDOW_S: u64 = 900;
/// Under this rate (jobs a minute) no spares but the one below.
pub const MIN_RATE_PER_MIN: f64 = 0.2;
/// One spare while the pool has had a job this recently.
pub const IN_USE_WINDOW_S: u64 = 1800;
/// How far back `recent` must reach.
pub const MEMORY_S: u64 = IN_USE_WINDOW_S;

/// Arrivals in the last `window_s` seconds.
pub fn arrivals(recent: &[(u64, u32)], now: u64, window_s: u64) -> u32 {
    let since = now.saturating_sub(window_s);
    recent
        .iter()
        .filter(|(t, _)| *t > since && *t <= now)
        .map(|(_, a)| a)
        .sum()
}

/// Arrivals a minute over the last `window_s` seconds.
fn rate(recent: &[(u64, u32)], now: u64, window_s: u64) -> f64 {
    f64::from(arrivals(recent, now, window_s)) * 60.0 / window_s as f64
}

/// Spares wanted now.
pub fn spares(i: &AutoInputs) -> u32 {
    let burst = if arrivals(i.recent, i.now, BURST_WINDOW_S) >= BURST_MIN_JOBS {
        rate(i.recent, i.now, BURST_WINDOW_S)
    } else {
        0.0
    };
    // History: the median week, so one unusual week neither starves nor
    // floods the pool.
    let past = {
        let mut h: Vec<f64> = i
            .history
            .iter()
            .copied()
            .filter(|r| r.is_finite())
            .collect();
        h.sort_by(f64::total_cmp);
        h.get(h.len() / 2).copied().unwrap_or(0.0)
    };
    let per_minute = burst.max(rate(i.recent, i.now, STEADY_WINDOW_S)).max(past);
    let lead_min = (i.lead_s + i.poll_s) as f64 / 60.0;
    let by_rate = if per_minute < MIN_RATE_PER_MIN {
        0
    } else {
        (per_minute * lead_min).ceil() as u32
    };
    let in_use = u32::from(arrivals(i.recent, i.now, IN_USE_WINDOW_S) > 0);
    by_rate.max(in_use).min(i.max_spares)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(recent: &'a [(u64, u32)], history: &'a [f64]) -> AutoInputs<'a> {
        AutoInputs {
            recent,
            now: 10_000,
            history,
            lead_s: 50,
            poll_s: 10,
            max_spares: 6,
        }
    }

    #[test]
    fn spares_follow_demand() {
        let quiet: &[(u64, u32)] = &[];
        // One job a minute for 15 minutes.
        let steady: Vec<(u64, u32)> = (0..90)
            .map(|k| (10_000 - k * 10, u32::from(k % 6 == 0)))
            .collect();
        // Three jobs a minute.
        let busy: Vec<(u64, u32)> = (0..90)
            .map(|k| (10_000 - k * 10, u32::from(k % 2 == 0)))
            .collect();
        let burst: &[(u64, u32)] = &[(9_990, 8), (10_000, 12)];
        let lone: &[(u64, u32)] = &[(9_990, 1)];
        let two: &[(u64, u32)] = &[(9_990, 2)];
        let old: &[(u64, u32)] = &[(8_000, 30)];
        // (recent arrivals, history, spares, why)
        type Case<'a> = (&'a [(u64, u32)], &'a [f64], u32, &'a str);
        let cases: &[Case] = &[
            (quiet, &[], 0, "no history, nothing seen: as today"),
            (lone, &[], 1, "a pool in use keeps one spare"),
            (two, &[], 1, "two jobs are no burst"),
            (
                &steady,
                &[],
                1,
                "one a minute, a one-minute lead: one spare",
            ),
            (&busy, &[], 3, "three a minute: three"),
            (burst, &[], 6, "a burst: as many as allowed"),
            (old, &[], 0, "a burst over half an hour ago is forgotten"),
            (
                quiet,
                &[2.0, 2.0, 3.0],
                2,
                "history alone: up before the first job",
            ),
            (quiet, &[0.0, 9.0, 0.0], 0, "one odd week does not count"),
            (quiet, &[0.1, 0.1], 0, "a trickle wants no spare"),
            (&steady, &[3.0, 3.0], 3, "the larger of now and history"),
        ];
        for (recent, history, want, why) in cases {
            assert_eq!(spares(&inputs(recent, history)), *want, "{why}");
        }
    }
}
