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

/// A pool's `headroom = "auto"` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AutoSpares {
    /// At most this many spares.
    pub max_spares: u32,
}

/// How long an auto spare waits for a job before its idle timeout starts:
/// the group's spare-until tag is set this far ahead while spares are
/// wanted, and renewed when less than [`SPARE_RENEW_S`] of it is left (so
/// the tag is written about once every 5 minutes, not every poll).
pub const SPARE_HOLD_S: u64 = 1800;
pub const SPARE_RENEW_S: u64 = 1500;

/// At most this many spares unless set.
pub const DEFAULT_MAX_SPARES: u32 = 5;

/// What [`spares`] needs.
#[derive(Debug, Clone, Copy)]
pub struct AutoInputs<'a> {
    /// Jobs that arrived between consecutive polls, oldest first, over at
    /// least the last [`MEMORY_S`]: (seconds since the epoch of the poll,
    /// arrivals).
    pub recent: &'a [(u64, u32)],
    /// Now, in seconds since the epoch.
    pub now: u64,
    /// The arrival rate (jobs a minute) of this hour of the week or the
    /// next, in each recent week that has data; empty: no history.
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
pub const BURST_MIN_JOBS: u32 = 5;
/// The steady window.
pub const STEADY_WINDOW_S: u64 = 900;
/// Under this rate (jobs a minute) no spares but the one below.
pub const MIN_RATE_PER_MIN: f64 = 0.2;
/// One spare while the pool has had a job this recently, at a rate of at
/// least [`IN_USE_MIN_RATE_PER_MIN`] (3 jobs an hour).
pub const IN_USE_WINDOW_S: u64 = 1800;
pub const IN_USE_MIN_RATE_PER_MIN: f64 = 0.05;
/// How many past weeks the hour-of-week history keeps.
pub const HISTORY_WEEKS: usize = 4;
/// A clock offset that leaves room for [`HISTORY_WEEKS`] before a
/// simulation's start (and keeps hours of the week aligned).
pub const HISTORY_OFFSET_S: u64 = HISTORY_WEEKS as u64 * 7 * 86_400;
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

/// The arrival rate (jobs a minute) that makes `busy` of `of` minutes have
/// an arrival, for arrivals at random (Poisson): a burst of 40 jobs in one
/// minute counts as one busy minute, so a pipeline that fans out does not
/// look like a steady stream.
pub fn rate_of_busy_minutes(busy: u32, of: u32) -> f64 {
    if of == 0 {
        return 0.0;
    }
    let share = f64::from(busy.min(of - 1)) / f64::from(of);
    -(1.0 - share).ln()
}

/// Spares wanted now.
pub fn spares(i: &AutoInputs) -> u32 {
    let since = i.now.saturating_sub(STEADY_WINDOW_S);
    let mut busy: Vec<u64> = i
        .recent
        .iter()
        .filter(|(t, a)| *t > since && *t <= i.now && *a > 0)
        .map(|(t, _)| t / 60)
        .collect();
    busy.dedup();
    let steady = rate_of_busy_minutes(busy.len() as u32, (STEADY_WINDOW_S / 60) as u32);
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
    let per_minute = burst.max(steady).max(past);
    let lead_min = (i.lead_s + i.poll_s) as f64 / 60.0;
    let by_rate = if per_minute < MIN_RATE_PER_MIN {
        0
    } else {
        (per_minute * lead_min).ceil() as u32
    };
    let in_use = u32::from(
        per_minute >= IN_USE_MIN_RATE_PER_MIN && arrivals(i.recent, i.now, IN_USE_WINDOW_S) > 0,
    );
    by_rate.max(in_use).min(i.max_spares)
}

/// What the scaler keeps per pool between polls for `headroom = "auto"`
/// (a few KB, saved after each poll that changed it): the last poll's
/// demand and instances, the arrivals of the last [`MEMORY_S`], the busy
/// minutes of each hour of the last [`HISTORY_WEEKS`] weeks, and how long
/// boots have taken.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DemandRecord {
    /// Format version.
    pub v: u32,
    /// The last poll (seconds since the epoch) and its demand (unclaimed +
    /// running).
    pub t: u64,
    pub d: u32,
    /// Running jobs at the last poll.
    #[serde(default)]
    pub u: u32,
    /// The group's instances at the last poll: id and launch time (seconds
    /// since the epoch), 0 once its runner has registered.
    pub i: Vec<(String, u64)>,
    /// Arrivals per poll: (poll time, jobs), only polls with arrivals.
    pub r: Vec<(u64, u32)>,
    /// The minutes with an arrival in each hour since hour `h0` (hours
    /// since the epoch), one base-62 digit an hour.
    pub h0: u64,
    pub h: String,
    /// The last minute (since the epoch) with an arrival.
    #[serde(default)]
    pub m: u64,
    /// Launch to registered runner, seconds: a moving average of what the
    /// pool's boots took (0: none seen yet).
    pub lead: u64,
}

const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
/// An hour has 60 minutes: one base-62 digit.
const HOUR_MAX: u32 = 60;
const WEEK_H: u64 = 168;

/// What one poll saw, for [`DemandRecord::observe`].
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub now: u64,
    /// Unclaimed plus running jobs, and running alone.
    pub demand: u32,
    pub running: u32,
    /// The group's live instances: id, launch time (seconds since the
    /// epoch, if known) and whether its runner is registered.
    pub instances: &'a [(String, Option<u64>, bool)],
}

impl DemandRecord {
    /// A record that already knows earlier weeks: `weeks[w - 1]` is the busy
    /// minutes of each hour of the week `w` weeks before `start` (seconds
    /// since the epoch, at least [`HISTORY_OFFSET_S`]), from that hour on.
    pub fn with_history(start: u64, weeks: &[Vec<u32>]) -> DemandRecord {
        let mut r = DemandRecord::default();
        let hour = start / 3600;
        for (w, peaks) in weeks.iter().enumerate().take(HISTORY_WEEKS).rev() {
            let Some(from) = hour.checked_sub((w as u64 + 1) * WEEK_H) else {
                continue;
            };
            for (k, &p) in peaks.iter().enumerate().take(WEEK_H as usize) {
                r.note_hour(from + k as u64, p);
            }
        }
        r
    }

    /// Read a saved record; anything unreadable (an older format, a hand
    /// edit) starts afresh rather than failing the poll.
    pub fn parse(text: &str) -> DemandRecord {
        serde_json::from_str::<DemandRecord>(text)
            .ok()
            .filter(|r| r.v == 1)
            .unwrap_or_default()
    }

    /// Whether this record (after [`Self::observe`]) says more than the
    /// saved one: anything but its clock changed, or the saved clock is so
    /// old that a scaler reading it would start afresh. So a quiet pool's
    /// record is written about every 15 minutes, not at every poll.
    pub fn worth_saving(&self, saved: Option<&DemandRecord>) -> bool {
        let Some(saved) = saved else {
            return true;
        };
        let clock_only = DemandRecord {
            t: saved.t,
            ..self.clone()
        };
        clock_only != *saved || self.t >= saved.t + MEMORY_S / 2
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Record one poll; returns the jobs that arrived since the last one:
    /// the rise of the demand plus the jobs that ended meanwhile. A
    /// single-task runner's instance leaves when its job ends, so those are
    /// the instances with a registered runner that left, at most as many as
    /// were running (an idle spare that times out is no job).
    pub fn observe(&mut self, o: &Observation) -> u32 {
        let fresh = self.v != 1 || o.now < self.t || o.now - self.t > MEMORY_S;
        let arrived = if fresh {
            // The first poll (or one after a long gap): when what is there
            // arrived is unknown, so it counts as nothing new.
            0
        } else {
            let ended = (self
                .i
                .iter()
                .filter(|(id, at)| *at == 0 && !o.instances.iter().any(|(i, _, _)| i == id))
                .count() as u32)
                .min(self.u);
            (o.demand + ended).saturating_sub(self.d)
        };
        // Boots: an instance unregistered at the last poll that is now.
        for (id, launched, registered) in o.instances {
            let was_pending = self.i.iter().any(|(i, at)| i == id && *at > 0);
            if *registered
                && was_pending
                && let Some(l) = launched
                && o.now > *l
            {
                let took = o.now - l;
                self.lead = if self.lead == 0 {
                    took
                } else {
                    (self.lead * 3 + took) / 4
                };
            }
        }
        self.v = 1;
        self.t = o.now;
        self.d = o.demand;
        self.u = o.running;
        self.i = o
            .instances
            .iter()
            .map(|(id, launched, registered)| {
                let at = if *registered {
                    0
                } else {
                    launched.unwrap_or(o.now).max(1)
                };
                (id.clone(), at)
            })
            .collect();
        if arrived > 0 {
            self.r.push((o.now, arrived));
        }
        self.r.retain(|(t, _)| t + MEMORY_S >= o.now);
        let minute = o.now / 60;
        let busy = arrived > 0 && self.m != minute;
        if busy {
            self.m = minute;
        }
        self.note_hour(o.now / 3600, u32::from(busy));
        arrived
    }

    /// Add `busy` minutes to `hour` (hours since the epoch).
    fn note_hour(&mut self, hour: u64, busy: u32) {
        let keep = (HISTORY_WEEKS as u64 * WEEK_H + 2) as usize;
        if self.h.is_empty() || hour < self.h0 {
            self.h0 = hour;
            self.h.clear();
        }
        // Edited in place (one ASCII digit an hour): this runs at every poll.
        let idx = (hour - self.h0) as usize;
        if busy == 0 && idx < self.h.len() {
            return;
        }
        let mut bytes = std::mem::take(&mut self.h).into_bytes();
        if bytes.len() <= idx {
            bytes.resize(idx + 1, DIGITS[0]);
        }
        let c = (digit_value(bytes[idx]) + busy).min(HOUR_MAX);
        bytes[idx] = DIGITS[c as usize];
        if bytes.len() > keep {
            let drop = bytes.len() - keep;
            bytes.drain(..drop);
            self.h0 += drop as u64;
        }
        self.h = String::from_utf8(bytes).expect("base-62 digits are ASCII");
    }

    /// The busy minutes of the hour `h` (`None`: not in the record).
    fn count(&self, h: u64) -> Option<u32> {
        let idx = usize::try_from(h.checked_sub(self.h0)?).ok()?;
        self.h.as_bytes().get(idx).map(|&b| digit_value(b))
    }

    /// The arrival rate (jobs a minute, from its busy minutes) of this hour
    /// of the week or the next, whichever was busier, in each earlier week
    /// the record covers.
    pub fn history(&self, now: u64) -> Vec<f64> {
        let hour = now / 3600;
        let count = |h: u64| self.count(h);
        (1..=HISTORY_WEEKS as u64)
            .filter_map(|w| {
                let h = hour.checked_sub(w * WEEK_H)?;
                let (this, next) = (count(h), count(h + 1));
                if this.is_none() && next.is_none() {
                    return None;
                }
                let most = this.unwrap_or(0).max(next.unwrap_or(0));
                Some(rate_of_busy_minutes(most, 60))
            })
            .collect()
    }

    /// Spares wanted now (after [`Self::observe`]), with `default_lead_s`
    /// until a boot has been seen.
    pub fn spares(&self, now: u64, default_lead_s: u64, poll_s: u64, max_spares: u32) -> u32 {
        let history = self.history(now);
        spares(&AutoInputs {
            recent: &self.r,
            now,
            history: &history,
            lead_s: if self.lead > 0 {
                self.lead
            } else {
                default_lead_s
            },
            poll_s,
            max_spares,
        })
    }
}

fn digit_value(c: u8) -> u32 {
    u32::from(match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'z' => c - b'a' + 10,
        b'A'..=b'Z' => c - b'A' + 36,
        _ => 0,
    })
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
        // One job every other minute for 15 minutes: 8 busy minutes of 15,
        // about 0.8 jobs a minute.
        let steady: Vec<(u64, u32)> = (0..90)
            .map(|k| (10_000 - k * 10, u32::from(k % 12 == 0)))
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
                "under one a minute, a one-minute lead: one spare",
            ),
            (&busy, &[], 3, "every minute busy: about three a minute"),
            (
                &[(9_990, 40)],
                &[],
                6,
                "a pipeline fans out: a burst, as many as allowed",
            ),
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

#[cfg(test)]
mod record_tests {
    use super::*;

    fn inst(id: &str, launched: u64, registered: bool) -> (String, Option<u64>, bool) {
        (id.to_string(), Some(launched), registered)
    }

    #[test]
    fn the_record_counts_arrivals_boots_and_hours() {
        let mut r = DemandRecord::default();
        // (now, instances, demand, running, arrivals, why)
        type Step = (
            u64,
            Vec<(String, Option<u64>, bool)>,
            u32,
            u32,
            u32,
            &'static str,
        );
        let steps: Vec<Step> = vec![
            (
                1_000,
                vec![],
                2,
                0,
                0,
                "first poll: nothing is known to be new",
            ),
            (
                1_010,
                vec![inst("i-a", 1_005, false)],
                3,
                0,
                1,
                "a rise of one",
            ),
            (
                1_020,
                vec![inst("i-a", 1_005, true), inst("i-b", 1_000, true)],
                3,
                1,
                0,
                "no change",
            ),
            (
                1_030,
                vec![inst("i-b", 1_000, true)],
                3,
                0,
                1,
                "a job ended (its instance left) and one came",
            ),
            (1_040, vec![], 3, 0, 0, "an idle runner left: no job ended"),
            (1_050, vec![], 1, 0, 0, "demand fell: nothing new"),
            (9_000, vec![], 4, 0, 0, "after a long gap: afresh"),
        ];
        for (now, instances, demand, running, want, why) in steps {
            let got = r.observe(&Observation {
                now,
                demand,
                running,
                instances: &instances,
            });
            assert_eq!(got, want, "{why}");
        }
        assert_eq!(r.lead, 15, "i-a launched at 1005, registered by 1020");
        // Saved and read back.
        let again = DemandRecord::parse(&r.to_text());
        assert_eq!(again, r);
        // A poll that changes nothing but the clock is not worth a write,
        // until the saved clock grows old.
        assert!(r.worth_saving(None));
        let mut quiet = r.clone();
        quiet.observe(&Observation {
            now: 9_010,
            demand: 4,
            running: 0,
            instances: &[],
        });
        assert!(!quiet.worth_saving(Some(&r)));
        quiet.observe(&Observation {
            now: 9_000 + MEMORY_S / 2,
            demand: 4,
            running: 0,
            instances: &[],
        });
        assert!(quiet.worth_saving(Some(&r)), "the clock is old");
        quiet.observe(&Observation {
            now: 9_000 + MEMORY_S / 2 + 10,
            demand: 6,
            running: 0,
            instances: &[],
        });
        assert!(quiet.worth_saving(Some(&r)), "arrivals");
        assert_eq!(DemandRecord::parse("{not json"), DemandRecord::default());
    }

    #[test]
    fn a_week_later_the_hour_is_remembered() {
        let mut r = DemandRecord::default();
        let monday_9 = 3600 * 24 * 4 + 9 * 3600; // a Monday, 09:00 UTC
        // 12 in one poll on Monday at 09:00.
        r.observe(&Observation {
            now: monday_9,
            demand: 0,
            running: 0,
            instances: &[],
        });
        r.observe(&Observation {
            now: monday_9 + 10,
            demand: 12,
            running: 0,
            instances: &[],
        });
        // One a minute for 48 more minutes.
        for k in 1..=48 {
            r.observe(&Observation {
                now: monday_9 + 10 + k * 60,
                demand: 12 + k as u32,
                running: 0,
                instances: &[],
            });
        }
        // A week later, 08:00 (this hour or the next): 49 busy minutes of
        // 60, about 1.7 jobs a minute.
        let next = monday_9 + 7 * 86_400 - 3600;
        assert_eq!(r.history(next), vec![rate_of_busy_minutes(49, 60)]);
        // With a 110 s lead and 10 s polls: 1.7 a minute x 2 min: 4.
        assert_eq!(r.spares(next, 110, 10, 5), 4);
        // Over four weeks on, forgotten.
        assert!(r.history(monday_9 + 5 * 7 * 86_400).is_empty());
        // The record stays small: four weeks of hours.
        for k in 0..(6 * 7 * 24) {
            r.observe(&Observation {
                now: monday_9 + k * 3600,
                demand: 0,
                running: 0,
                instances: &[],
            });
        }
        assert!(r.to_text().len() < 1_500, "{}", r.to_text().len());
    }
}
