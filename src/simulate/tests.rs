//! Hand-checked scenarios: fixed 60 s boots, 60 s idle timeout, our 10 s poll
//! and the tutorial's 60 s poll. The expected figures are worked out in the
//! comments, tick by tick.

use super::workload::{Generator, Job};
use super::*;

fn fleet() -> Fleet {
    Fleet {
        min: 0,
        max: 10,
        boot_min_s: 60,
        boot_max_s: 60,
        launch_failure_rate: 0.0,
        idle_timeout_s: 60,
        interval_s: 10,
        boot_timeout_s: 600,
        price_per_hour: 3.6,
        wait_threshold_s: 100,
        fail_first_launches: 0,
        tutorial_boot_min_s: 60,
        tutorial_boot_max_s: 60,
        headroom: Vec::new(),
        warm_pool: false,
        stopped_price_per_hour: 0.0,
        cancel_rate: 0.0,
        cancel_within_s: 120,
        without_spare_rule: false,
        // The hand-checked figures below are the fleet's alone.
        control_plane_per_month: 0.0,
        tutorial_control_plane_per_month: 0.0,
        ..Fleet::default()
    }
}

fn jobs(list: &[(u64, u64)]) -> Vec<Job> {
    list.iter()
        .map(|&(arrival_s, duration_s)| Job {
            arrival_s,
            duration_s,
        })
        .collect()
}

fn waits(r: &Report) -> (u64, u64) {
    (r.waits.p50_s, r.waits.max_s)
}

fn both(j: &[Job], f: &Fleet) -> (Report, Report) {
    (
        simulate(j, f, Policy::Ours, 1).unwrap(),
        simulate(j, f, Policy::Tutorial, 1).unwrap(),
    )
}

/// Seconds of instance time, from the instance-hours figure.
fn inst_s(r: &Report) -> u64 {
    (r.instance_hours * 3600.0).round() as u64
}

#[test]
fn one_job() {
    let (ours, tut) = both(&jobs(&[(5, 100)]), &fleet());
    // Ours: poll at 10 launches A (ready 70); A claims at 70 (wait 65), ends at
    // 170 and leaves with decrement. 160 instance-seconds, one boot.
    assert_eq!(waits(&ours), (65, 65));
    assert_eq!(inst_s(&ours), 160);
    assert_eq!((ours.boots, ours.replaced, ours.left_running), (1, 0, 0));
    // Tutorial: poll at 60 launches A (ready 120, wait 115); A ends at 220 and
    // shuts down while counted: the group launches B (ready 280); the poll at
    // 240 sets desired 0 but B is protected; B idles out at 340.
    assert_eq!(waits(&tut), (115, 115));
    assert_eq!(inst_s(&tut), 160 + 120);
    assert_eq!((tut.boots, tut.replaced, tut.left_running), (2, 1, 0));
    assert!((tut.idle_instance_hours * 3600.0 - 180.0).abs() < 0.5);
    assert!((tut.cost - 0.28).abs() < 1e-9, "3.6 per hour: {}", tut.cost);
    assert_eq!(ours.jobs_killed + tut.jobs_killed, 0);
}

#[test]
fn two_overlapping_jobs() {
    let (ours, tut) = both(&jobs(&[(0, 100), (30, 100)]), &fleet());
    // Ours: A at 0 (ready 60), B at 30 (ready 90): both wait 60; 2 x 160 s.
    assert_eq!(waits(&ours), (60, 60));
    assert_eq!(inst_s(&ours), 320);
    assert_eq!((ours.boots, ours.replaced), (2, 0));
    // Tutorial: A at 0 takes job 0 at 60; the poll at 60 launches B (ready
    // 120, job 1 waits 90); A leaves at 160 and is replaced by C (ready 220),
    // which idles until 280 after desired drops to 0.
    assert_eq!(waits(&tut), (60, 90));
    assert_eq!(inst_s(&tut), 160 + 160 + 120);
    assert_eq!((tut.boots, tut.replaced), (3, 1));
}

#[test]
fn burst_above_max() {
    let f = Fleet { max: 2, ..fleet() };
    let (ours, tut) = both(&jobs(&[(0, 100), (0, 100), (0, 100), (0, 100)]), &f);
    // Ours: desired 2 (max): two wait 60; they leave at 160 with decrement and
    // the poll at 160 raises desired to 2 again: the other two wait 220.
    assert_eq!((ours.waits.p50_s, ours.waits.max_s), (60, 220));
    assert_eq!(ours.waited_over_threshold, 2);
    assert_eq!(inst_s(&ours), 4 * 160);
    assert_eq!((ours.boots, ours.replaced), (4, 0));
    // Tutorial: the same waits, but each exit is a replacement: the second
    // pair is launched by the group at 160, and after the last jobs end at 320
    // two more replacements boot and idle out (440).
    assert_eq!((tut.waits.p50_s, tut.waits.max_s), (60, 220));
    assert_eq!(inst_s(&tut), 4 * 160 + 2 * 120);
    assert_eq!((tut.boots, tut.replaced), (6, 4));
}

#[test]
fn launch_failure() {
    let f = Fleet {
        fail_first_launches: 1,
        silent_boot_failures: true,
        ..fleet()
    };
    let (ours, tut) = both(&jobs(&[(5, 100)]), &f);
    // Ours: A (launched at 10) never registers; the poll at 620 (age 610 >
    // 600) reaps it with decrement and raises desired again: B launches at 620,
    // claims at 680 (wait 675), leaves at 780.
    assert_eq!(waits(&ours), (675, 675));
    assert_eq!(inst_s(&ours), 610 + 160);
    assert_eq!((ours.boots, ours.failed_boots, ours.replaced), (2, 1, 0));
    assert_eq!((ours.jobs_not_run, ours.left_running), (0, 0));
    // Tutorial: the failed instance counts as capacity forever: the job never
    // runs and the instance bills until the end.
    assert_eq!((tut.jobs_not_run, tut.left_running, tut.boots), (1, 1, 1));
}

#[test]
fn a_failed_boot_the_script_sees_gives_its_capacity_back_at_once() {
    let f = Fleet {
        fail_first_launches: 1,
        ..fleet()
    };
    let (ours, tut) = both(&jobs(&[(5, 100)]), &f);
    // Ours: A (launched at 10) fails its boot at 70 and leaves with
    // decrement; the poll at 70 raises desired again: B launches at 70,
    // claims at 130 (wait 125), leaves at 230. Instead of 675 s and 610
    // instance-seconds of a reaped instance.
    assert_eq!(waits(&ours), (125, 125));
    assert_eq!(inst_s(&ours), 60 + 160);
    assert_eq!((ours.boots, ours.failed_boots, ours.replaced), (2, 1, 0));
    assert_eq!((ours.jobs_not_run, ours.left_running), (0, 0));
    // The tutorial has no such script: as before.
    assert_eq!((tut.jobs_not_run, tut.left_running, tut.boots), (1, 1, 1));
}

#[test]
fn idle_instance_times_out_and_min_is_kept() {
    // min 1: the kept instance idles out every 120 s (60 s boot + 60 s idle)
    // and, at min, leaves without decrement, so the group replaces it.
    let f = Fleet { min: 1, ..fleet() };
    let (ours, _) = both(&jobs(&[(1000, 100)]), &f);
    // Launched at 0, 120, ..., 960 (ready 1020): the job waits 20 s.
    assert_eq!(waits(&ours), (20, 20));
    assert!(ours.replaced >= 8, "{}", ours.replaced);
    assert_eq!(ours.left_running, 1, "min 1 stays");
    // min 0: an instance with no job idles out after 60 s and is not replaced.
    let (ours0, _) = both(&jobs(&[(0, 30), (0, 30)]), &Fleet { max: 1, ..fleet() });
    assert_eq!(ours0.replaced, 0);
    assert_eq!(ours0.left_running, 0);
}

#[test]
fn embedded_workload_ours_has_no_churn_no_kills_and_is_reproducible() {
    let jobs = Generator::working_day().generate(42).unwrap();
    let f = Fleet::default();
    let ours = simulate(&jobs, &f, Policy::Ours, 42).unwrap();
    let tut = simulate(&jobs, &f, Policy::Tutorial, 42).unwrap();
    assert_eq!(ours.replaced, 0);
    assert_eq!(ours.jobs_killed, 0);
    assert_eq!(ours.left_running, 0);
    assert_eq!(ours.jobs_not_run, 0);
    assert!(tut.replaced > 0, "the tutorial's churn shows");
    assert!(ours.boots < tut.boots);
    assert!(ours.instance_hours < tut.instance_hours);
    // With room to scale (no max reached), reacting in 10 s beats 60 s at the
    // tail. (The tutorial's median can be lower: its churned replacements sit
    // booted and idle, a warm pool paid for in instance-hours.)
    let roomy = Fleet {
        max: 30,
        ..f.clone()
    };
    let (o, t) = (
        simulate(&jobs, &roomy, Policy::Ours, 42).unwrap(),
        simulate(&jobs, &roomy, Policy::Tutorial, 42).unwrap(),
    );
    assert!(
        o.waits.p95_s < t.waits.p95_s && o.waits.max_s < t.waits.max_s,
        "{:?} vs {:?}",
        o.waits,
        t.waits
    );
    assert!(o.instance_hours < t.instance_hours);
    // Same seed, same report.
    assert_eq!(ours, simulate(&jobs, &f, Policy::Ours, 42).unwrap());
    assert_eq!(tut, simulate(&jobs, &f, Policy::Tutorial, 42).unwrap());
}

#[test]
fn bad_settings_are_refused() {
    for f in [
        Fleet {
            min: 3,
            max: 2,
            ..fleet()
        },
        Fleet {
            boot_min_s: 90,
            boot_max_s: 30,
            ..fleet()
        },
        Fleet {
            launch_failure_rate: 1.5,
            ..fleet()
        },
        Fleet {
            interval_s: 0,
            ..fleet()
        },
    ] {
        assert!(simulate(&jobs(&[(0, 1)]), &f, Policy::Ours, 1).is_err());
    }
}

/// Two spares from 01:00 to 03:00 (simulated day 1, a Thursday): launched at
/// the first poll of the period, registered 60 s later, and they stay idle
/// (no churn) until the period ends plus the idle timeout. A job arriving
/// inside the period starts at once.
#[test]
fn headroom_spares_do_not_churn_and_leave_after_the_period() {
    let f = Fleet {
        headroom: vec![crate::scale::headroom::HeadroomSpec {
            schedule: "0 1 * * *".into(),
            duration: "2h".into(),
            time_zone: None,
            count: 2,
        }],
        ..fleet()
    };
    // A job at 02:00 (inside), one at 05:00 (outside).
    let j = jobs(&[(7200, 300), (18_000, 300)]);
    let ours = simulate(&j, &f, Policy::Ours, 1).unwrap();
    // Inside: a spare takes it at once. Outside: a boot (60 s) plus up to
    // one poll (10 s).
    assert_eq!(ours.waits_in_headroom.max_s, 0, "{ours:?}");
    assert_eq!(ours.jobs_in_headroom, 1);
    assert!(ours.waits_outside_headroom.max_s >= 60 && ours.waits_outside_headroom.max_s <= 70);
    // Boots: 2 spares at 01:00, 1 to refill after the 02:00 job took a spare
    // (demand 1 + 2 spares), 1 for the 05:00 job. Never more: no churn.
    assert_eq!(ours.boots, 4, "{ours:?}");
    // The spares idle from ~01:01 to 03:00 + 60 s idle timeout.
    assert!(
        ours.spare_instance_hours > 3.5 && ours.spare_instance_hours < 4.1,
        "{ours:?}"
    );
    // Nothing left at the end: the spares left within one idle timeout.
    assert_eq!(ours.left_running, 0);
    // The tutorial has no headroom.
    let tut = simulate(&j, &f, Policy::Tutorial, 1).unwrap();
    assert_eq!(tut.boots, 2);
    assert!(tut.waits_in_headroom.max_s >= 60);
}

/// Without the spare-until rule, spares would idle out every 60 s and be
/// launched again: the rule is what keeps boots per job down.
#[test]
fn spare_rule_is_what_stops_the_churn() {
    let spec = crate::scale::headroom::HeadroomSpec {
        schedule: "0 1 * * *".into(),
        duration: "2h".into(),
        time_zone: None,
        count: 2,
    };
    let j = jobs(&[(18_000, 30)]);
    let with = Fleet {
        headroom: vec![spec],
        ..fleet()
    };
    let ours = simulate(&j, &with, Policy::Ours, 1).unwrap();
    // Two spares for the two hours, then one boot for the job.
    assert_eq!(ours.boots, 3, "{ours:?}");
    // Without the rule: each spare lives boot (60 s) + idle (60 s) and is
    // replaced at the next poll: about 2 x 7200 / 130 boots.
    let without = Fleet {
        without_spare_rule: true,
        ..with
    };
    let churn = simulate(&j, &without, Policy::Ours, 1).unwrap();
    assert!(churn.boots > 100, "{churn:?}");
}

/// Cancelled jobs leave the queue; the instance launched for one sits idle
/// until its idle timeout (which the idle timeout now prices).
#[test]
fn cancelled_jobs_leave_idle_instances_behind() {
    let j: Vec<Job> = (0..200)
        .map(|i| Job {
            arrival_s: i * 600,
            duration_s: 60,
        })
        .collect();
    let all = Fleet {
        cancel_rate: 1.0,
        cancel_within_s: 30,
        ..fleet()
    };
    let r = simulate(&j, &all, Policy::Ours, 1).unwrap();
    assert_eq!(r.jobs_cancelled, 200);
    assert_eq!(r.jobs_not_run, 0);
    // Most arrivals still launched an instance (those cancelled before the
    // next poll did not).
    assert!(r.boots > 150 && r.boots <= 200, "{}", r.boots);
    let long = simulate(
        &j,
        &Fleet {
            idle_timeout_s: 600,
            ..all.clone()
        },
        Policy::Ours,
        1,
    )
    .unwrap();
    // Boot plus 60 s idle per launch, against boot plus up to 600 s.
    assert!(
        long.idle_instance_hours > r.idle_instance_hours * 2.0,
        "{} vs {}",
        long.idle_instance_hours,
        r.idle_instance_hours
    );
    // Same seed, same cancellations under either policy.
    let t = simulate(&j, &all, Policy::Tutorial, 1).unwrap();
    assert_eq!(t.jobs_cancelled, 200);
}

/// A warm pool: fast starts, and the stopped instances' disk is paid for.
#[test]
fn warm_pool_pays_for_stopped_disks() {
    let f = Fleet {
        warm_pool: true,
        stopped_price_per_hour: 0.01,
        boot_min_s: 20,
        boot_max_s: 20,
        max: 4,
        ..fleet()
    };
    let r = simulate(&jobs(&[(0, 60)]), &f, Policy::Ours, 1).unwrap();
    assert!(r.waits.max_s <= 30, "{r:?}");
    // About 4 stopped instances for the whole run, 3 while one runs.
    let hours = r.simulated_s as f64 / 3600.0;
    assert!(
        r.warm_pool_hours > 3.0 * hours && r.warm_pool_hours <= 4.0 * hours,
        "{r:?}"
    );
    assert!((r.warm_pool_cost - r.warm_pool_hours * 0.01).abs() < 1e-9);
}

/// A spot pool whose spot capacity is out for an hour: jobs arriving then
/// wait at most the grace period, a poll and an on-demand boot; the fallback
/// ends after the cool-down; spot is cheaper.
#[test]
fn spot_outage_is_bounded_by_the_fallback() {
    let f = Fleet {
        spot: true,
        interruption_rate: 0.0,
        spot_outage: Some((3600, 7200)),
        spot_grace_s: 120,
        spot_cooldown_s: 1800,
        ..fleet()
    };
    // A job every 5 minutes for three hours.
    let j: Vec<Job> = (0..36)
        .map(|i| Job {
            arrival_s: i * 300,
            duration_s: 120,
        })
        .collect();
    let r = simulate(&j, &f, Policy::Ours, 1).unwrap();
    assert_eq!(r.jobs_not_run, 0);
    // grace 120 + failures start at the first failed launch (up to a poll
    // after arrival) + poll 10 + boot 60, and some slack for the 10 s
    // failure spacing.
    assert!(
        r.waits.max_s <= 120 + 10 + 10 + 60 + 20,
        "max wait {}",
        r.waits.max_s
    );
    // Two fallbacks of 30 minutes: the outage outlasts the first cool-down,
    // spot fails again, and after the grace period it falls back again.
    assert!(
        r.fallback_hours > 0.9 && r.fallback_hours < 1.1,
        "{}",
        r.fallback_hours
    );
    assert!(r.on_demand_instance_hours > 0.0 && r.spot_instance_hours > 0.0);
    let od = simulate(
        &j,
        &Fleet {
            spot: false,
            ..f.clone()
        },
        Policy::Ours,
        1,
    )
    .unwrap();
    assert!(r.cost < od.cost, "{} vs {}", r.cost, od.cost);
}

/// Interruptions: with unsafe retries a job restarts from the beginning
/// (counted), without them it fails (counted); never silently.
#[test]
fn interrupted_jobs_are_retried_or_counted() {
    let j: Vec<Job> = (0..50)
        .map(|i| Job {
            arrival_s: i * 600,
            duration_s: 1200,
        })
        .collect();
    let f = Fleet {
        spot: true,
        interruption_rate: 2.0,
        ..fleet()
    };
    let failed = simulate(&j, &f, Policy::Ours, 3).unwrap();
    assert!(failed.jobs_interrupted > 0, "{}", failed.jobs_interrupted);
    assert_eq!(failed.jobs_failed_by_interruption, failed.jobs_interrupted);
    assert_eq!(failed.jobs_retried, 0);
    assert_eq!(failed.jobs_killed, 0, "interruptions are not silent kills");
    let retried = simulate(
        &j,
        &Fleet {
            retry_interrupted_jobs: true,
            ..f
        },
        Policy::Ours,
        3,
    )
    .unwrap();
    assert!(retried.jobs_retried > 0);
    assert_eq!(retried.jobs_failed_by_interruption, 0);
    assert_eq!(retried.jobs_not_run, 0);
}

/// `headroom = "auto"` on the embedded day with a baked image: jobs mostly
/// start at once, each boot serves a job (the spare-until rule), nothing is
/// killed or left running; without history (one day) the first job of each
/// quiet spell still waits a boot.
#[test]
fn auto_headroom_follows_the_day() {
    let jobs = Generator::working_day().generate(1).unwrap();
    let baked = Fleet {
        max: 20,
        boot_min_s: 40,
        boot_max_s: 60,
        ..Fleet::default()
    };
    let none = simulate(&jobs, &baked, Policy::Ours, 1).unwrap();
    let auto = Fleet {
        auto_headroom: true,
        ..baked.clone()
    };
    let r = simulate(&jobs, &auto, Policy::Ours, 1).unwrap();
    assert_eq!(r.waits.p50_s, 0, "{:?}", r.waits);
    assert!(
        r.waits.p95_s < none.waits.p95_s,
        "{:?} vs {:?}",
        r.waits,
        none.waits
    );
    assert!(r.boots_per_job <= 1.05, "{}", r.boots_per_job);
    assert_eq!((r.jobs_killed, r.left_running), (0, 0));
    assert!(r.spare_instance_hours > 0.0);
}

/// With weeks of history, spares are up before a daily burst: the third
/// week's 09:00 burst waits less than the first week's, which had no
/// history to go on.
#[test]
fn auto_headroom_learns_the_hour_of_the_week() {
    const DAY: u64 = 86_400;
    const WEEK: u64 = 7 * DAY;
    // Every day from 09:00, 12 jobs two minutes apart, 5 minutes each.
    let mut list = Vec::new();
    for day in 0..21 {
        for k in 0..12 {
            list.push((day * DAY + 9 * 3600 + k * 120, 300));
        }
    }
    let jobs = jobs(&list);
    let f = Fleet {
        max: 20,
        auto_headroom: true,
        max_spares: 12,
        ..fleet()
    };
    let r = simulate(&jobs, &f, Policy::Ours, 1).unwrap();
    assert_eq!(r.jobs_killed, 0);
    // The waits of each week's first burst, from the timeline of queued jobs
    // (sampled each minute) at 09:00-09:05 on that week's first day.
    let queued_at = |t: u64| {
        r.timeline
            .iter()
            .filter(|s| s.t_s >= t && s.t_s < t + 300)
            .map(|s| s.queued)
            .max()
            .unwrap_or(0)
    };
    let first = queued_at(9 * 3600);
    let third = queued_at(2 * WEEK + 9 * 3600);
    assert!(first > 0, "no history: the first burst queues");
    assert!(third < first, "learnt: {third} queued, against {first}");
}

/// A warm pool of one: a launch starts the stopped instance (20 s, not the
/// 60 s boot) and a refill warms up (60 s, billed) to take its place, so a
/// job 100 s later starts from the pool again. Worked out: each job waits
/// the 20 s start; the two refills are the launches; the pool held one
/// stopped instance all the time but while each refill warmed up.
#[test]
fn a_sized_warm_pool_starts_in_seconds_and_refills() {
    let f = Fleet {
        warm_pool_size: 1,
        warm_start_min_s: 20,
        warm_start_max_s: 20,
        ..fleet()
    };
    let j = jobs(&[(0, 30), (100, 30)]);
    let r = simulate(&j, &f, Policy::Ours, 1).unwrap();
    assert_eq!(waits(&r), (20, 20));
    assert_eq!(r.boots, 2, "the refills");
    let cold = simulate(&j, &fleet(), Policy::Ours, 1).unwrap();
    assert_eq!(waits(&cold), (60, 60));
    // Warming up: 2 x 60 s billed at 3.6 an hour; stopped: the rest.
    let warm_up_cost = 2.0 * 60.0 * 3.6 / 3600.0;
    assert!(r.warm_pool_cost >= warm_up_cost, "{}", r.warm_pool_cost);
    assert_eq!(
        ((r.warm_pool_hours * 3600.0).round() as u64),
        // Counted each tick before the tick's launches: the pool is empty
        // on 59 ticks of each 60 s warm-up.
        r.simulated_s + 1 - 2 * 59,
        "one stopped instance but while each refill warmed up"
    );
    // As AWS: no warm pool for a spot group.
    let spot = Fleet {
        spot: true,
        ..f.clone()
    };
    assert!(simulate(&j, &spot, Policy::Ours, 1).is_err());
}

/// `headroom = "auto"` against every fixed count of spares in working hours
/// (0 to 4), on the embedded day and three workloads of other shapes (teams
/// in three time zones, pipelines that fan out 40 jobs, a small team), each
/// with four earlier weeks learnt and a runner-ready image (40-60 s boots):
/// no fixed count has both a shorter p95 wait and a lower cost. Also: none
/// killed, and boots per job stay near one.
#[test]
fn auto_headroom_is_never_beaten_by_a_fixed_count() {
    use super::workload::{Named, hourly_busy_minutes};
    let seed = 1;
    for named in [
        Named::WorkingDay,
        Named::TimeZones,
        Named::FanOut,
        Named::SmallTeam,
    ] {
        let g = named.generator();
        let jobs = g.generate(seed).unwrap();
        let base = Fleet {
            max: if named == Named::FanOut { 50 } else { 20 },
            boot_min_s: 40,
            boot_max_s: 60,
            ..Fleet::default()
        };
        let auto = Fleet {
            auto_headroom: true,
            learned: (1..=4)
                .map(|w| hourly_busy_minutes(&g.earlier_week(seed, w).unwrap()))
                .collect(),
            ..base.clone()
        };
        let a = simulate(&jobs, &auto, Policy::Ours, seed).unwrap();
        assert_eq!(a.jobs_killed, 0, "{named:?}");
        assert!(a.boots_per_job < 1.5, "{named:?}: {}", a.boots_per_job);
        for n in 0..=4 {
            let fixed = Fleet {
                headroom: if n == 0 {
                    vec![]
                } else {
                    vec![crate::scale::headroom::HeadroomSpec::working_hours(n)]
                },
                ..base.clone()
            };
            let f = simulate(&jobs, &fixed, Policy::Ours, seed).unwrap();
            assert!(
                !(f.waits.p95_s < a.waits.p95_s && f.cost < a.cost),
                "{named:?}: {n} spares in working hours (p95 {} s, cost {:.2}) beat auto (p95 {} s, cost {:.2})",
                f.waits.p95_s,
                f.cost,
                a.waits.p95_s,
                a.cost
            );
        }
    }
}
