//! An SVG chart of queue depth, desired capacity and in-service instances over
//! the simulated day, one panel per policy (plotters, SVG backend).

use plotters::prelude::*;

use super::{Report, Sample};

/// A line of the chart: its label, colour, width and value at a sample.
type Series = (&'static str, RGBColor, u32, fn(&Sample) -> u32);

/// Draw the reports' timelines, one panel each, into an SVG document.
pub fn svg(reports: &[&Report], title: &str) -> Result<String, String> {
    let mut out = String::new();
    {
        let height = 320 * reports.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut out, (1000, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let panels = root.split_evenly((reports.len().max(1), 1));
        let hours = reports
            .iter()
            .flat_map(|r| r.timeline.last())
            .map(|s| s.t_s as f64 / 3600.0)
            .fold(24.0_f64, f64::max);
        let top = reports
            .iter()
            .flat_map(|r| r.timeline.iter())
            .map(|s| s.queued.max(s.desired).max(s.in_service))
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.1;
        for (panel, report) in panels.iter().zip(reports) {
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    format!("{title}: {}", report.policy.name()),
                    ("sans-serif", 18),
                )
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(40)
                .build_cartesian_2d(0.0..hours, 0.0..top)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("hour of day")
                .y_desc("count")
                .draw()
                .map_err(|e| e.to_string())?;
            // In-service is drawn wide and first, so desired stays visible on it
            // where the two agree.
            let series: [Series; 3] = [
                ("in-service instances", GREEN, 4, |s| s.in_service),
                ("desired capacity", BLUE, 1, |s| s.desired),
                ("queued jobs", RED, 1, |s| s.queued),
            ];
            for (label, color, width, value) in series {
                chart
                    .draw_series(LineSeries::new(
                        report
                            .timeline
                            .iter()
                            .map(|s| (s.t_s as f64 / 3600.0, value(s) as f64)),
                        color.stroke_width(width),
                    ))
                    .map_err(|e| e.to_string())?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            }
            chart
                .configure_series_labels()
                .border_style(BLACK)
                .background_style(WHITE.mix(0.8))
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}
