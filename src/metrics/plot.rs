//! SVG plots of migration figures, for `hybridmig bench`.
//!
//! Data enters as plain series (labels and `(x, y)` points) already taken out of the reports,
//! so this module knows nothing about migrations; each function writes one SVG file. The SVG
//! backend writes text as `<text>` elements, so no font files or font rendering are involved.

use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Errors of the plot writers.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Drawing into (or saving) an SVG file failed.
    #[error("plotting {file}: {detail}")]
    Draw {
        /// The SVG file.
        file: PathBuf,
        /// What plotters said.
        detail: String,
    },
}

/// Guest throughput of one migration, for [`throughput_svg`].
#[derive(Debug, Clone)]
pub struct ThroughputSeries {
    /// Legend label (the mode).
    pub label: String,
    /// (ms since migration start, ops in the bucket).
    pub buckets: Vec<(f64, f64)>,
    /// Source pause, ms since migration start.
    pub pause_ms: f64,
    /// Destination resume, ms since migration start.
    pub resume_ms: f64,
    /// Source released, ms since migration start.
    pub done_ms: f64,
}

/// One small bar chart of [`bars_svg`]: a title and one bar per label.
#[derive(Debug, Clone)]
pub struct BarPanel {
    /// Panel title (the metric and its unit).
    pub title: String,
    /// (label, value) per bar.
    pub bars: Vec<(String, f64)>,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// The colour of the `i`-th series, the same in every plot.
pub fn series_color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn draw_err(file: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |detail| PlotError::Draw { file: file.to_path_buf(), detail }
}

/// Upper bound of an axis: the largest value plus 5%, at least `floor`.
fn axis_max(values: impl Iterator<Item = f64>, floor: f64) -> f64 {
    let max = values.filter(|v| v.is_finite()).fold(0.0_f64, f64::max);
    (max * 1.05).max(floor)
}

/// Guest ops per bucket against time, one line per series, with vertical markers at pause
/// (thin), resume (thick) and done (dashed) in the series' colour.
pub fn throughput_svg(file: &Path, series: &[ThroughputSeries]) -> Result<(), PlotError> {
    let err = draw_err(file);
    let root = SVGBackend::new(file, (960, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let x_max = axis_max(
        series.iter().flat_map(|s| {
            s.buckets.iter().map(|b| b.0).chain([s.done_ms, s.resume_ms, s.pause_ms])
        }),
        1.0,
    );
    let y_max = axis_max(series.iter().flat_map(|s| s.buckets.iter().map(|b| b.1)), 1.0);
    let mut chart = ChartBuilder::on(&root)
        .caption("Guest throughput during the migration", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("ms since migration start (markers: pause thin, resume thick, done dashed)")
        .y_desc("ops per 10 ms")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, s) in series.iter().enumerate() {
        let color = series_color(i);
        chart
            .draw_series(LineSeries::new(s.buckets.iter().copied(), color.stroke_width(1)))
            .map_err(|e| err(e.to_string()))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        let vline = |x: f64| [(x, 0.0), (x, y_max)];
        chart
            .draw_series([
                PathElement::new(vline(s.pause_ms), color.stroke_width(1)),
                PathElement::new(vline(s.resume_ms), color.stroke_width(3)),
            ])
            .map_err(|e| err(e.to_string()))?;
        chart
            .draw_series(DashedLineSeries::new(vline(s.done_ms), 6, 4, color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?;
    }
    finish_legend(&mut chart, &err)?;
    root.present().map_err(|e| err(e.to_string()))
}

fn finish_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    err: &impl Fn(String) -> PlotError,
) -> Result<(), PlotError> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(e.to_string()))
}

/// Fault latency CDFs, one line per series: `(label, [(latency us, cumulative fraction)])`.
/// The x axis is logarithmic; series without points are left out of the plot (but keep their
/// colour).
pub fn cdf_svg(file: &Path, series: &[(String, Vec<(f64, f64)>)]) -> Result<(), PlotError> {
    let err = draw_err(file);
    let root = SVGBackend::new(file, (960, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let xs = || series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).filter(|x| *x > 0.0);
    let x_min = xs().fold(f64::INFINITY, f64::min);
    let x_min = if x_min.is_finite() { (x_min * 0.8).max(1.0) } else { 1.0 };
    let x_max = axis_max(xs(), x_min * 10.0);
    let mut chart = ChartBuilder::on(&root)
        .caption("Network fault latency (CDF)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..1.0)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("fault latency, us (log)")
        .y_desc("fraction of faults")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, (label, points)) in series.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let color = series_color(i);
        let pts = points.iter().filter(|p| p.0 > 0.0).copied();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}

/// Small bar charts side by side, one per panel; bar `i` of every panel has colour `i`.
pub fn bars_svg(file: &Path, panels: &[BarPanel]) -> Result<(), PlotError> {
    let err = draw_err(file);
    let cols = panels.len().clamp(1, 4);
    let rows = panels.len().div_ceil(cols).max(1);
    let root = SVGBackend::new(file, (300 * cols as u32, 320 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let areas = root.split_evenly((rows, cols));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        bar_panel(area, panel, &err)?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

fn bar_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    panel: &BarPanel,
    err: &impl Fn(String) -> PlotError,
) -> Result<(), PlotError> {
    let n = panel.bars.len().max(1) as f64;
    let y_max = axis_max(panel.bars.iter().map(|b| b.1), 1.0) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(10)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, 0.0..y_max)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_label_formatter(&|v| short_number(*v))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, (label, value)) in panel.bars.iter().enumerate() {
        let x0 = i as f64 + 0.15;
        let x1 = i as f64 + 0.85;
        let color = series_color(i);
        chart
            .draw_series([Rectangle::new([(x0, 0.0), (x1, *value)], color.filled())])
            .map_err(|e| err(e.to_string()))?;
        let text = format!("{label} {}", short_number(*value));
        chart
            .draw_series([Text::new(text, (x0, *value + y_max * 0.02), ("sans-serif", 12))])
            .map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}

/// `1234567` as `1.23M`, `4321` as `4.32k`, small values with up to 2 decimals.
pub fn short_number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_numbers() {
        assert_eq!(short_number(1_234_567.0), "1.23M");
        assert_eq!(short_number(43_210.0), "43.2k");
        assert_eq!(short_number(3.0), "3");
        assert_eq!(short_number(2.5), "2.50");
        assert_eq!(short_number(2.5e9), "2.50G");
    }

    #[test]
    fn plots_are_written_as_svg() {
        let dir = std::env::temp_dir().join(format!("hm-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let t = ThroughputSeries {
            label: "hybrid".into(),
            buckets: (0..50).map(|i| (f64::from(i) * 10.0, f64::from(i % 7))).collect(),
            pause_ms: 100.0,
            resume_ms: 105.0,
            done_ms: 400.0,
        };
        throughput_svg(&dir.join("t.svg"), &[t]).expect("throughput");
        let cdf = vec![("hybrid".to_string(), vec![(100.0, 0.5), (1000.0, 1.0)])];
        cdf_svg(&dir.join("c.svg"), &cdf).expect("cdf");
        cdf_svg(&dir.join("e.svg"), &[("precopy".to_string(), vec![])]).expect("empty cdf");
        let panel = BarPanel { title: "total_ms".into(), bars: vec![("a".into(), 3.0)] };
        bars_svg(&dir.join("b.svg"), &[panel.clone(), panel]).expect("bars");
        for f in ["t.svg", "c.svg", "e.svg", "b.svg"] {
            let text = std::fs::read_to_string(dir.join(f)).expect("svg written");
            assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"), "{f}");
        }
        let t = std::fs::read_to_string(dir.join("t.svg")).expect("svg");
        assert!(t.contains("hybrid"), "legend label missing");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
