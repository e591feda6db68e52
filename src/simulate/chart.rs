//! The SVG chart of a simulated day (plotters, SVG backend): a legend strip
//! above the data; per policy, the day's queue, desired capacity and
//! in-service instances, with headroom periods and on-demand fallback hours
//! shaded; then the two policies' waits side by side, as a distribution.
//! Counts are whole numbers on whole-number axes, the grid is light.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::{Report, hms};

const WIDTH: u32 = 1000;
const LEGEND_H: u32 = 64;
const DAY_H: u32 = 250;
const WAITS_H: u32 = 300;

const IN_SERVICE: RGBColor = RGBColor(44, 160, 44);
const DESIRED: RGBColor = RGBColor(31, 119, 180);
const QUEUED: RGBColor = RGBColor(214, 39, 40);
const HEADROOM: RGBColor = RGBColor(255, 214, 64);
const FALLBACK: RGBColor = RGBColor(255, 127, 14);
const GRID: RGBColor = RGBColor(228, 228, 228);
const TEXT: RGBColor = RGBColor(40, 40, 40);
/// The bars of the two policies' waits: ours, then the tutorial's.
const POLICY_BARS: [RGBColor; 2] = [RGBColor(31, 119, 180), RGBColor(150, 150, 150)];

/// The wait buckets of the distribution: label, and the longest wait (s)
/// each holds (the last is open).
const BUCKETS: [(&str, u64); 9] = [
    ("0s", 0),
    ("1-30s", 30),
    ("30s-1m", 60),
    ("1-2m", 120),
    ("2-3m", 180),
    ("3-4m", 240),
    ("4-5m", 300),
    ("5-10m", 600),
    (">10m", u64::MAX),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Draw the reports (ours first, then the tutorial's) into an SVG document.
pub fn svg(reports: &[&Report], title: &str) -> Result<String, String> {
    let mut out = String::new();
    {
        let height = LEGEND_H + DAY_H * reports.len() as u32 + WAITS_H;
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (legend, rest) = root.split_vertically(LEGEND_H);
        let (days, waits) = rest.split_vertically(DAY_H * reports.len() as u32);
        draw_legend(&legend, title)?;
        let hours = reports
            .iter()
            .flat_map(|r| r.timeline.last())
            .map(|s| s.t_s as f64 / 3600.0)
            .fold(24.0_f64, f64::max);
        let peak = reports
            .iter()
            .flat_map(|r| r.timeline.iter())
            .map(|s| s.queued.max(s.desired).max(s.in_service))
            .max()
            .unwrap_or(1);
        let top = (peak as f64 * 1.1).ceil() as i32 + 1;
        for (panel, report) in days
            .split_evenly((reports.len().max(1), 1))
            .iter()
            .zip(reports)
        {
            draw_day(panel, report, hours, top)?;
        }
        draw_waits(&waits, reports)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

/// The title, and what each colour means, above the data.
fn draw_legend(area: &Area, title: &str) -> Result<(), String> {
    area.draw(&Text::new(
        title.to_string(),
        (14, 8),
        ("sans-serif", 20).into_font().color(&TEXT),
    ))
    .map_err(err)?;
    let items: [(&str, ShapeStyle); 5] = [
        ("in-service instances", IN_SERVICE.mix(0.35).filled()),
        ("desired capacity", DESIRED.filled()),
        ("queued jobs", QUEUED.filled()),
        ("headroom period (spares)", HEADROOM.mix(0.45).filled()),
        ("on-demand fallback", FALLBACK.mix(0.35).filled()),
    ];
    let mut x = 14;
    for (label, style) in items {
        let y = 40;
        area.draw(&Rectangle::new([(x, y), (x + 22, y + 12)], style))
            .map_err(err)?;
        area.draw(&Text::new(
            label,
            (x + 28, y - 1),
            ("sans-serif", 14).into_font().color(&TEXT),
        ))
        .map_err(err)?;
        x += 34 + 8 * label.len() as i32;
    }
    Ok(())
}

/// One policy's day: shaded periods, then in-service (an area), desired and
/// the queue (lines).
fn draw_day(area: &Area, report: &Report, hours: f64, top: i32) -> Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{}: waits p50 {}, p95 {}",
                report.policy.name(),
                hms(report.waits.p50_s),
                hms(report.waits.p95_s)
            ),
            ("sans-serif", 16).into_font().color(&TEXT),
        )
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(44)
        .build_cartesian_2d(0.0..hours, 0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .axis_style(RGBColor(160, 160, 160))
        .x_labels(13)
        .y_labels((top as usize).clamp(2, 8))
        .x_label_formatter(&|h| format!("{:02}:00", (*h as u64) % 24))
        .y_label_formatter(&|v| v.to_string())
        .y_desc("count")
        .label_style(("sans-serif", 12).into_font().color(&TEXT))
        .draw()
        .map_err(err)?;
    let step_h = 60.0 / 3600.0;
    for (flag, colour) in [
        (
            (|s: &super::Sample| s.spare) as fn(&super::Sample) -> bool,
            HEADROOM.mix(0.45),
        ),
        (|s: &super::Sample| s.fallback, FALLBACK.mix(0.35)),
    ] {
        let spans = spans(report.timeline.iter().map(|s| (s.t_s, flag(s))));
        chart
            .draw_series(spans.into_iter().map(|(from, to)| {
                Rectangle::new(
                    [
                        (from as f64 / 3600.0, 0),
                        (to as f64 / 3600.0 + step_h, top),
                    ],
                    colour.filled(),
                )
            }))
            .map_err(err)?;
    }
    let points = |f: fn(&super::Sample) -> u32| {
        report
            .timeline
            .iter()
            .map(move |s| (s.t_s as f64 / 3600.0, f(s) as i32))
    };
    chart
        .draw_series(AreaSeries::new(
            points(|s| s.in_service),
            0,
            IN_SERVICE.mix(0.35),
        ))
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            points(|s| s.desired),
            DESIRED.stroke_width(2),
        ))
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            points(|s| s.queued),
            QUEUED.stroke_width(2),
        ))
        .map_err(err)?;
    Ok(())
}

/// The runs of consecutive samples where `flag` holds: (first, last) time.
fn spans(samples: impl Iterator<Item = (u64, bool)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut open: Option<(u64, u64)> = None;
    for (t, on) in samples {
        open = match (open, on) {
            (None, true) => Some((t, t)),
            (Some((from, _)), true) => Some((from, t)),
            (Some(span), false) => {
                out.push(span);
                None
            }
            (None, false) => None,
        };
    }
    out.extend(open);
    out
}

/// How many of the waits fall in each bucket.
fn histogram(waits: &[u64]) -> [u32; BUCKETS.len()] {
    let mut counts = [0; BUCKETS.len()];
    for w in waits {
        let i = BUCKETS
            .iter()
            .position(|(_, most)| w <= most)
            .unwrap_or(BUCKETS.len() - 1);
        counts[i] += 1;
    }
    counts
}

/// The policies' waits side by side, bucket by bucket.
fn draw_waits(area: &Area, reports: &[&Report]) -> Result<(), String> {
    let counts: Vec<[u32; BUCKETS.len()]> =
        reports.iter().map(|r| histogram(&r.wait_list)).collect();
    let peak = counts.iter().flatten().copied().max().unwrap_or(1).max(1);
    let top = (peak as f64 * 1.1).ceil() as i32 + 1;
    let n = BUCKETS.len() as f64;
    let names: Vec<String> = reports
        .iter()
        .map(|r| {
            format!(
                "{} (p50 {}, p95 {})",
                r.policy.name(),
                hms(r.waits.p50_s),
                hms(r.waits.p95_s)
            )
        })
        .collect();
    // The bars' key in a strip of its own, above the bars.
    let (key, area) = area.split_vertically(30);
    key.draw(&Text::new(
        "how long jobs waited:",
        (14, 8),
        ("sans-serif", 16).into_font().color(&TEXT),
    ))
    .map_err(err)?;
    let mut x = 190;
    for (name, colour) in names.iter().zip(POLICY_BARS) {
        key.draw(&Rectangle::new([(x, 10), (x + 22, 22)], colour.filled()))
            .map_err(err)?;
        key.draw(&Text::new(
            name.clone(),
            (x + 28, 8),
            ("sans-serif", 14).into_font().color(&TEXT),
        ))
        .map_err(err)?;
        x += 40 + 8 * name.len() as i32;
    }
    let mut chart = ChartBuilder::on(&area)
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(44)
        .build_cartesian_2d(-0.5..n - 0.5, 0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .disable_x_mesh()
        .axis_style(RGBColor(160, 160, 160))
        .x_labels(BUCKETS.len() + 1)
        .y_labels((top as usize).clamp(2, 8))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                BUCKETS
                    .get(i as usize)
                    .map(|b| b.0.to_string())
                    .unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| v.to_string())
        .y_desc("jobs")
        .label_style(("sans-serif", 12).into_font().color(&TEXT))
        .draw()
        .map_err(err)?;
    let width = 0.8 / reports.len().max(1) as f64;
    for (k, (c, colour)) in counts.iter().zip(POLICY_BARS).enumerate() {
        chart
            .draw_series(c.iter().enumerate().map(|(i, v)| {
                let x0 = i as f64 - 0.4 + k as f64 * width;
                Rectangle::new(
                    [(x0 + 0.02, 0), (x0 + width - 0.02, *v as i32)],
                    colour.filled(),
                )
            }))
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_buckets() {
        let s = spans(
            [
                (0, false),
                (60, true),
                (120, true),
                (180, false),
                (240, true),
            ]
            .into_iter(),
        );
        assert_eq!(s, [(60, 120), (240, 240)]);
        assert_eq!(
            histogram(&[0, 0, 5, 30, 31, 3600]),
            [2, 2, 1, 0, 0, 0, 0, 0, 1]
        );
    }
}
