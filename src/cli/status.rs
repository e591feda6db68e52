//! `cci-scaler status`: the stack's resources, the queue, the group and runners.

use std::process::ExitCode;

use clap::Args;

use cci_scaler::config::StackFile;
use std::io::{IsTerminal, Write};

use cci_scaler::provision::{self, PoolHistory, Quiet, StackStatus};

use super::stack::{PoolArg, StackArgs, connect, describe, require_stack, stack_pools};
use super::{GlobalArgs, Output, parse_duration};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub pool: PoolArg,
    /// Also sum up the pools' metrics over this period (peak queue and
    /// capacity, instance-hours, reaps, errors, a sparkline of the queue).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub since: Option<std::time::Duration>,
    /// Refresh every --interval until Ctrl-C, redrawn in place.
    #[arg(long)]
    pub watch: bool,
    /// How often --watch refreshes.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: std::time::Duration,
}

pub async fn run(global: &GlobalArgs, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let file = args.stack.file(StackFile::default())?;
    let (stack, rc) = require_stack(&file)?;
    let mut api = None;
    let ctx = connect(
        &args.stack.aws,
        &file,
        &stack,
        &args.stack.circleci_url,
        true,
        &Quiet,
        &mut api,
    )
    .await?;
    if args.watch && args.interval < std::time::Duration::from_secs(1) {
        anyhow::bail!("--interval must be at least 1s");
    }
    let pools = stack_pools(&ctx, rc, args.pool.pool.as_deref()).await?;
    let image_max_age = file.image_max_age()?;
    let terminal = std::io::stdout().is_terminal() && global.output == Output::Text;
    // Listening from the start: a Ctrl-C while a refresh reads is not lost.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut first = true;
    loop {
        let st = provision::status(&ctx, &pools, image_max_age).await?;
        let history = match args.since {
            Some(since) => Some(provision::history(&ctx, &pools, since).await?),
            None => None,
        };
        let mut text = String::new();
        match global.output {
            Output::Json => {
                let mut v = serde_json::json!({"stack": stack, "region": ctx.region});
                if let (Some(obj), serde_json::Value::Object(more)) =
                    (v.as_object_mut(), serde_json::to_value(&st)?)
                {
                    obj.extend(more);
                }
                if let Some(h) = &history {
                    v["history"] = serde_json::to_value(h)?;
                }
                text = format!("{v}\n");
            }
            Output::Text if args.watch => {
                print_watch(&mut text, &stack, &ctx.region, &st, args.interval);
                if let (Some(h), Some(since)) = (&history, args.since) {
                    print_history(&mut text, h, since);
                }
            }
            Output::Text => {
                print_text(&mut text, &stack, &ctx.region, &st);
                if let (Some(h), Some(since)) = (&history, args.since) {
                    print_history(&mut text, h, since);
                }
            }
        }
        let mut out = std::io::stdout().lock();
        if args.watch && terminal {
            // Redraw in place: home, each line cleared to its end, the rest
            // of the screen cleared; no blank frame between two.
            let framed: String = text.lines().map(|l| format!("{l}\x1b[K\n")).collect();
            write!(
                out,
                "\x1b[H{}{framed}\x1b[J",
                if first { "\x1b[2J\x1b[H" } else { "" }
            )?;
        } else {
            write!(out, "{text}")?;
        }
        out.flush()?;
        first = false;
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = interrupt.recv() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// The pools' metrics over the period, with a sparkline of the queue.
fn print_history(o: &mut String, history: &[PoolHistory], since: std::time::Duration) {
    use std::fmt::Write;
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    for h in history {
        let name = h.pool.as_deref().unwrap_or("fleet");
        if h.points == 0 {
            let _ = writeln!(
                o,
                "last {} ({name}): no metrics in this period (the scaler puts them on each poll: is its schedule enabled?)",
                humantime::format_duration(since)
            );
            continue;
        }
        let _ = writeln!(
            o,
            "last {} ({name}): peak queue {}, peak desired {}, {:.1} instance-hours, {} reaped, {} error(s)",
            humantime::format_duration(since),
            h.peak_unclaimed,
            h.peak_desired,
            h.instance_hours,
            h.reaped,
            h.errors
        );
        let top = h.unclaimed.iter().cloned().fold(0.0, f64::max);
        let line: String = h
            .unclaimed
            .iter()
            .map(|v| {
                if top <= 0.0 {
                    BARS[0]
                } else {
                    BARS[((v / top) * 7.0).round().clamp(0.0, 7.0) as usize]
                }
            })
            .collect();
        let _ = writeln!(o, "  queue {line} (every {}s, max {top})", h.step_seconds);
        print_real_waits(o, h);
    }
}

/// The waits jobs really had, per day (from CircleCI's usage export, as
/// the scaler reported them with `usage_org`).
fn print_real_waits(o: &mut String, h: &PoolHistory) {
    use std::fmt::Write;
    if h.real_waits.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "  queue wait jobs really had (CircleCI usage export, UTC days): p50 / p95 / max"
    );
    for d in &h.real_waits {
        let day = jiff::Timestamp::from_second(d.day)
            .map(|t| t.strftime("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let sim = d
            .sim_p95_s
            .map(|s| format!(", simulated p95 {}", cci_scaler::simulate::hms(s as u64)))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "    {day}  {:>7} {:>7} {:>7}  ({} jobs{sim})",
            cci_scaler::simulate::hms(d.p50_s as u64),
            cci_scaler::simulate::hms(d.p95_s as u64),
            cci_scaler::simulate::hms(d.max_s as u64),
            d.jobs
        );
    }
}

/// The operator's live view (`--watch`): the inventory folded to one line,
/// then per pool the queue, the group, each instance (state, age, runner)
/// and the Lambda's last decisions for it.
fn print_watch(
    o: &mut String,
    stack: &str,
    region: &str,
    st: &StackStatus,
    interval: std::time::Duration,
) {
    use cci_scaler::provision::Action;
    use std::fmt::Write;
    macro_rules! println {
        ($($a:tt)*) => {{
            let _ = writeln!(o, $($a)*);
        }};
    }
    let now = std::time::SystemTime::now();
    let clock = humantime::format_rfc3339_seconds(now).to_string();
    println!(
        "stack {stack} in {region}  {}  every {} (Ctrl-C stops)",
        clock.replace('T', " ").trim_end_matches('Z'),
        humantime::format_duration(interval)
    );
    let count = |a: Action| st.resources.iter().filter(|i| i.action == a).count();
    let schedule = match st.schedule_enabled {
        Some(true) => "schedule enabled",
        Some(false) => "schedule DISABLED",
        None => "schedule missing",
    };
    let runs = &st.lambda_runs;
    let lambda = match &runs.unreadable {
        Some(_) => "Lambda logs unreadable (status shows why)".to_string(),
        None => format!(
            "Lambda {} poll(s), {} failed in 15m",
            runs.polls, runs.errors
        ),
    };
    println!(
        "inventory: {} present, {} absent, {} not ours | {schedule} | {lambda}",
        count(Action::Keep),
        count(Action::Absent),
        count(Action::Foreign)
    );
    for w in &st.warnings {
        // One line each: the whole sentence is on `status`.
        let short: String = w.chars().take(110).collect();
        let more = if w.chars().count() > 110 { "..." } else { "" };
        println!("warning: {short}{more}");
    }
    let epoch = cci_scaler::scale::spot::epoch(now);
    for p in &st.pools {
        let name = p.pool.as_deref().unwrap_or(stack);
        let rc = p
            .resource_class
            .as_deref()
            .unwrap_or("resource class unknown");
        println!();
        let Some(f) = &p.fleet else {
            println!("pool {name} ({rc}): no Auto Scaling group {}", p.group);
            continue;
        };
        let queue = match (f.unclaimed_tasks, f.running_tasks) {
            (Some(u), Some(r)) => format!("queue {u} unclaimed, {r} running"),
            _ => format!(
                "queue unavailable ({})",
                f.circleci_error.as_deref().unwrap_or_default()
            ),
        };
        let in_service = f
            .instances
            .iter()
            .filter(|i| i.lifecycle == "InService")
            .count();
        let spares = match (&p.headroom, f.spares_up) {
            (Some(h), up) => format!(
                " | headroom {} wanted, {} up",
                h.count,
                up.map(|u| u.to_string()).unwrap_or_else(|| "?".into())
            ),
            _ => String::new(),
        };
        let warm = warm_pool_text(f)
            .map(|w| format!(" | {w}"))
            .unwrap_or_default();
        println!(
            "pool {name} ({rc}): {queue} | desired {} (max {}) | {in_service} in service of {}{spares}{warm}",
            f.desired,
            f.max,
            f.instances.len()
        );
        if !f.instances.is_empty() {
            println!("  {:<21} {:<22} {:>7}  runner", "instance", "state", "age");
        }
        for i in &f.instances {
            let age = i
                .launched
                .map(|t| cci_scaler::simulate::hms(epoch.saturating_sub(t)))
                .unwrap_or_else(|| "?".into());
            let runner = match (i.registered, f.registered_runners.is_some()) {
                (true, _) => "registered",
                (false, true) => "not registered",
                (false, false) => "unknown (queue unavailable)",
            };
            let health = if i.health == "Healthy" || i.health.is_empty() {
                String::new()
            } else {
                format!(" ({})", i.health)
            };
            println!(
                "  {:<21} {:<22} {:>7}  {runner}",
                i.id,
                format!("{}{health}", i.lifecycle),
                age
            );
        }
        let mine: Vec<_> = runs.recent.iter().filter(|d| d.asg == p.group).collect();
        if !mine.is_empty() {
            println!("  last decisions:");
        }
        for d in mine.iter().rev().take(3).rev() {
            let time = d.time.split('T').nth(1).unwrap_or(&d.time);
            println!(
                "    {:<12} {:<18} desired {} -> {}  queue {}+{}  {}",
                time.get(..12).unwrap_or(time),
                d.action,
                d.desired_before,
                d.desired_after,
                d.unclaimed,
                d.running,
                d.reason
            );
        }
    }
    if let Some(e) = &runs.last_error {
        println!();
        println!("last Lambda error: {e}");
    }
}

fn print_text(o: &mut String, stack: &str, region: &str, st: &StackStatus) {
    use std::fmt::Write;
    macro_rules! println {
        ($($a:tt)*) => {{
            let _ = writeln!(o, $($a)*);
        }};
    }
    for w in &st.warnings {
        println!("warning: {w}");
    }
    match st.pools.as_slice() {
        [p] if p.pool.is_none() => {
            let rc = p
                .resource_class
                .as_deref()
                .unwrap_or("resource class unknown");
            println!("stack {stack} ({rc}) in {region}");
        }
        _ => println!("stack {stack} in {region}"),
    }
    for i in &st.resources {
        let line = describe(i, false).replacen("unchanged", "present  ", 1);
        println!("  {line}");
    }
    for p in &st.pools {
        let indent = if let Some(name) = &p.pool {
            let rc = p
                .resource_class
                .as_deref()
                .unwrap_or("resource class unknown");
            println!("pool {name} ({rc}):");
            "  "
        } else {
            ""
        };
        let Some(f) = &p.fleet else {
            println!("{indent}no Auto Scaling group ({})", p.group);
            continue;
        };
        match (f.unclaimed_tasks, f.running_tasks) {
            (Some(u), Some(r)) => println!("{indent}queue: {u} unclaimed, {r} running"),
            _ => println!(
                "{indent}queue: unavailable ({})",
                f.circleci_error.as_deref().unwrap_or_default()
            ),
        }
        match (&p.headroom, f.spares_up) {
            (Some(h), spares) => println!(
                "{indent}headroom: period {} active until {}: {} spare(s) wanted, {} up",
                h.period + 1,
                humantime::format_rfc3339_seconds(h.until),
                h.count,
                spares
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "? (queue unavailable)".into())
            ),
            (None, Some(s)) if s > 0 => {
                println!("{indent}headroom: no period active; {s} idle runner(s) up")
            }
            _ => {}
        }
        println!(
            "{indent}group: desired {} (min {}, max {}), {} instance(s)",
            f.desired,
            f.min,
            f.max,
            f.instances.len()
        );
        if let Some(w) = warm_pool_text(f) {
            println!("{indent}{w}");
        }
        for i in &f.instances {
            println!(
                "{indent}  {} {} {}{}{}",
                i.id,
                i.lifecycle,
                i.health,
                if i.protected { " protected" } else { "" },
                if i.registered {
                    " registered"
                } else {
                    " not registered"
                }
            );
        }
        if let Some(list) = &p.interrupted {
            let ids: Vec<String> = list
                .iter()
                .map(|(id, at)| {
                    format!(
                        "{id} at {}",
                        humantime::format_rfc3339_seconds(cci_scaler::scale::spot::from_epoch(*at))
                    )
                })
                .collect();
            println!(
                "{indent}spot interruptions in the last hour: {}",
                if ids.is_empty() {
                    "none".into()
                } else {
                    ids.join(", ")
                }
            );
        }
        if let Some(r) = &f.registered_runners {
            println!(
                "{indent}registered runners: {}",
                if r.is_empty() {
                    "none".into()
                } else {
                    r.join(", ")
                }
            );
        }
    }
    match st.schedule_enabled {
        Some(true) => println!("schedule: enabled"),
        Some(false) => println!("schedule: DISABLED"),
        None => println!("schedule: missing"),
    }
    let runs = &st.lambda_runs;
    match &runs.unreadable {
        Some(why) => println!("Lambda runs: {why}"),
        None => {
            println!(
                "Lambda runs (last 15 minutes): {} poll(s), {} failed invocation(s)",
                runs.polls, runs.errors
            );
            if let Some(p) = &runs.last_poll {
                println!("  last poll: {p}");
            }
            if let Some(e) = &runs.last_error {
                println!("  last error: {e}");
            }
        }
    }
}

/// `warm pool N wanted, K warmed of M` (`None`: the group has no warm pool).
fn warm_pool_text(f: &provision::Fleet) -> Option<String> {
    let w = f.warm_pool.as_ref()?;
    let warmed = w
        .instances
        .iter()
        .filter(|(_, s)| s.starts_with("Warmed:Stopped"))
        .count();
    Some(format!(
        "warm pool {} wanted, {warmed} warmed of {}",
        w.size,
        w.instances.len()
    ))
}
