//! Plots, as PNG and SVG, drawn with an embedded font (no system font
//! libraries): the experiment's telemetry graph — GPU utilization (green)
//! and power (orange) over time with the phases shaded and labelled —
//! token throughput over time, latency CDFs per phase, and a sweep's
//! throughput–latency curve with its knees.

use std::path::{Path, PathBuf};

use plotters::{
    coord::Shift,
    prelude::*,
    style::{FontStyle, register_font},
};

use crate::{
    results::{PhaseResult, Results},
    stats::Latency,
};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const GREEN: RGBColor = RGBColor(0, 150, 60);
const ORANGE: RGBColor = RGBColor(240, 130, 0);
const PHASE_COLORS: [RGBColor; 3] = [
    RGBColor(70, 110, 200),
    RGBColor(150, 150, 150),
    RGBColor(200, 70, 70),
];
const SIZE: (u32, u32) = (1200, 560);

type Fallible = Result<(), String>;

fn font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draws with both backends: `NAME.png` and `NAME.svg` in `dir` (the same
/// drawing function, instantiated for each).
fn both(
    dir: &Path,
    name: &str,
    png: impl FnOnce(DrawingArea<BitMapBackend, Shift>) -> Fallible,
    svg: impl FnOnce(DrawingArea<SVGBackend, Shift>) -> Fallible,
) -> Result<Vec<PathBuf>, String> {
    font();
    let png_path = dir.join(format!("{name}.png"));
    let svg_path = dir.join(format!("{name}.svg"));
    png(BitMapBackend::new(&png_path, SIZE).into_drawing_area())?;
    svg(SVGBackend::new(&svg_path, SIZE).into_drawing_area())?;
    Ok(vec![png_path, svg_path])
}

fn e<E: std::fmt::Debug>(err: E) -> String {
    format!("{err:?}")
}

/// Every plot the results allow; returns the files written.
pub(crate) fn all(
    results: &Results,
    latencies: &[(String, [&Latency; 3])],
    dir: &Path,
) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    let telemetry = &results.timeseries.telemetry;
    if telemetry
        .iter()
        .any(|s| s.utilization.is_some() || s.power_w.is_some())
    {
        files.extend(both(
            dir,
            "telemetry",
            |a| telemetry_chart(a, results),
            |a| telemetry_chart(a, results),
        )?);
    }
    if !results.timeseries.per_second.is_empty() {
        files.extend(both(
            dir,
            "throughput",
            |a| throughput_chart(a, results),
            |a| throughput_chart(a, results),
        )?);
    }
    if let Some(sweep) = results.sweep.as_ref().filter(|s| !s.steps.is_empty()) {
        files.extend(both(
            dir,
            "sweep",
            |a| sweep_chart(a, sweep),
            |a| sweep_chart(a, sweep),
        )?);
    }
    if latencies
        .iter()
        .any(|(_, l)| l.iter().any(|h| h.summary().is_some()))
    {
        files.extend(both(
            dir,
            "latency_cdf",
            |a| cdf_chart(a, latencies),
            |a| cdf_chart(a, latencies),
        )?);
    }
    Ok(files)
}

fn run_end(results: &Results) -> f64 {
    let phases = results.phases.iter().map(|p| p.end_s).fold(0.0, f64::max);
    let telemetry = results
        .timeseries
        .telemetry
        .iter()
        .map(|s| s.t_ns as f64 / 1e9)
        .fold(0.0, f64::max);
    phases.max(telemetry).max(1.0)
}

/// Shades each phase and writes its name at the top of the band.
fn shade_phases<DB: DrawingBackend, Y>(
    chart: &mut ChartContext<DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    phases: &[PhaseResult],
    top: Y::ValueType,
    bottom: Y::ValueType,
) -> Fallible
where
    Y: Ranged,
    Y::ValueType: Clone + 'static,
{
    for (i, p) in phases.iter().enumerate() {
        let c = PHASE_COLORS[i % PHASE_COLORS.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(p.start_s, top.clone()), (p.end_s, bottom.clone())],
                c.mix(0.12).filled(),
            )))
            .map_err(e)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{} ({})", p.name, p.kind.name().replace('_', " ")),
                (p.start_s, top.clone()),
                ("sans-serif", 15).into_font().color(&c),
            )))
            .map_err(e)?;
    }
    Ok(())
}

fn telemetry_chart<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, r: &Results) -> Fallible {
    root.fill(&WHITE).map_err(e)?;
    let end = run_end(r);
    let samples = &r.timeseries.telemetry;
    let max_power = samples
        .iter()
        .filter_map(|s| s.power_w)
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption("GPU utilization and power", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0f64..end, 0f64..110f64)
        .map_err(e)?
        .set_secondary_coord(0f64..end, 0f64..max_power);
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("GPU utilization (%)")
        .light_line_style(TRANSPARENT)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    chart
        .configure_secondary_axes()
        .y_desc("power (W)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    shade_phases(&mut chart, &r.phases, 108.0, 0.0)?;
    let t = |ns: u64| ns as f64 / 1e9;
    chart
        .draw_series(LineSeries::new(
            samples
                .iter()
                .filter_map(|s| Some((t(s.t_ns), s.utilization? * 100.0))),
            GREEN.stroke_width(2),
        ))
        .map_err(e)?
        .label("GPU utilization (%)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN.stroke_width(2)));
    chart
        .draw_secondary_series(LineSeries::new(
            samples.iter().filter_map(|s| Some((t(s.t_ns), s.power_w?))),
            ORANGE.stroke_width(2),
        ))
        .map_err(e)?
        .label("power (W)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ORANGE.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}

fn throughput_chart<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, r: &Results) -> Fallible {
    root.fill(&WHITE).map_err(e)?;
    let end = run_end(r);
    let top = r
        .timeseries
        .per_second
        .iter()
        .map(|p| p[1] as f64)
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption("Output token throughput", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..end, 0f64..top)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("tokens per second")
        .light_line_style(TRANSPARENT)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    shade_phases(&mut chart, &r.phases, top * 0.98, 0.0)?;
    chart
        .draw_series(LineSeries::new(
            r.timeseries
                .per_second
                .iter()
                .map(|p| (p[0] as f64 + 0.5, p[1] as f64)),
            BLUE.stroke_width(2),
        ))
        .map_err(e)?;
    root.present().map_err(e)
}

fn cdf_chart<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    latencies: &[(String, [&Latency; 3])],
) -> Fallible {
    root.fill(&WHITE).map_err(e)?;
    let panels = root.split_evenly((1, 3));
    for (k, (panel, title)) in panels
        .iter()
        .zip(["TTFT", "inter-token latency", "end-to-end latency"])
        .enumerate()
    {
        let curves: Vec<(String, Vec<(f64, f64)>)> = latencies
            .iter()
            .map(|(name, l)| (name.clone(), l[k].cdf(200)))
            .filter(|(_, c)| !c.is_empty())
            .collect();
        if curves.is_empty() {
            // Not streamed: no inter-token latency to draw.
            panel
                .draw(&Text::new(
                    format!("{title}: no data"),
                    (40, 40),
                    ("sans-serif", 16),
                ))
                .map_err(e)?;
            continue;
        }
        let lo = curves
            .iter()
            .flat_map(|(_, c)| c.iter().map(|p| p.0))
            .fold(f64::INFINITY, f64::min)
            .max(1e-6);
        let hi = curves
            .iter()
            .flat_map(|(_, c)| c.iter().map(|p| p.0))
            .fold(0.0, f64::max)
            .max(lo * 10.0);
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(45)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("seconds (log)")
            .y_desc("fraction")
            .label_style(("sans-serif", 12))
            .light_line_style(TRANSPARENT)
            .x_labels(5)
            .x_label_formatter(&|v| short(*v))
            .draw()
            .map_err(e)?;
        for (i, (name, points)) in curves.iter().enumerate() {
            let c = PHASE_COLORS[i % PHASE_COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|(x, y)| (x.max(lo), *y)),
                    c.stroke_width(2),
                ))
                .map_err(e)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)
}

/// A latency axis label: 3 significant digits, no trailing zeros.
fn short(v: f64) -> String {
    let text = format!("{:.*}", (2 - v.log10().floor() as i32).max(0) as usize, v);
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// A sweep: output tokens/s (and goodput) over the loads above, P99 TTFT
/// and E2E below, on the same x axis (one position per step, labelled
/// with its load); dashed lines at the knees.
fn sweep_chart<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    s: &crate::sweep::SweepResult,
) -> Fallible {
    root.fill(&WHITE).map_err(e)?;
    let (upper, lower) = root.split_vertically(SIZE.1 / 2);
    let loads: Vec<f64> = s.steps.iter().map(|st| st.load).collect();
    let axis = StepAxis::new(&loads, s.kind);
    let marks: Vec<(f64, RGBColor)> = [(s.knee.slo_load, RED), (s.knee.saturation_load, BLUE)]
        .into_iter()
        .filter_map(|(l, c)| Some((axis.at(l?), c)))
        .collect();
    let line = |name: &str, color, pick: fn(&crate::sweep::Step) -> Option<f64>| {
        let points = s
            .steps
            .iter()
            .filter_map(|st| pick(st).map(|v| (axis.at(st.load), v)))
            .collect();
        (name.to_string(), color, points)
    };
    axis.panel(
        &upper,
        Some("Sweep: throughput and P99 latency by load"),
        "output tokens/s",
        &[
            line("throughput", BLUE, |st| Some(st.output_tokens_per_s)),
            line("goodput", GREEN, |st| Some(st.goodput_tokens_per_s)),
        ],
        &marks,
    )?;
    axis.panel(
        &lower,
        None,
        "P99 (ms)",
        &[
            line("P99 TTFT", ORANGE, |st| st.p99_ttft_ms),
            line("P99 E2E", RED, |st| st.p99_e2e_ms),
        ],
        &marks,
    )?;
    root.present().map_err(e)
}

/// Two sweeps overlaid (`compare --plots DIR`): throughput above, P99 E2E
/// below, one colour per run, over the union of their loads.
pub(crate) fn sweep_compare(
    dir: &Path,
    a: (&str, &crate::sweep::SweepResult),
    b: (&str, &crate::sweep::SweepResult),
) -> Result<Vec<PathBuf>, String> {
    both(
        dir,
        "sweep_compare",
        |r| overlay_chart(r, a, b),
        |r| overlay_chart(r, a, b),
    )
}

fn overlay_chart<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    a: (&str, &crate::sweep::SweepResult),
    b: (&str, &crate::sweep::SweepResult),
) -> Fallible {
    root.fill(&WHITE).map_err(e)?;
    let (upper, lower) = root.split_vertically(SIZE.1 / 2);
    let mut loads: Vec<f64> = a.1.steps.iter().chain(&b.1.steps).map(|s| s.load).collect();
    loads.sort_by(f64::total_cmp);
    loads.dedup();
    let axis = StepAxis::new(&loads, a.1.kind);
    let lines = |pick: fn(&crate::sweep::Step) -> Option<f64>| {
        [(a, BLUE), (b, ORANGE)]
            .into_iter()
            .map(|((name, s), color)| {
                let points = s
                    .steps
                    .iter()
                    .filter_map(|st| pick(st).map(|v| (axis.at(st.load), v)))
                    .collect();
                (name.to_string(), color, points)
            })
            .collect::<Vec<_>>()
    };
    let caption = format!("Sweeps: {} against {}", a.0, b.0);
    axis.panel(
        &upper,
        Some(&caption),
        "output tokens/s",
        &lines(|st| Some(st.output_tokens_per_s)),
        &[],
    )?;
    axis.panel(
        &lower,
        None,
        "P99 E2E (ms)",
        &lines(|st| st.p99_e2e_ms),
        &[],
    )?;
    root.present().map_err(e)
}

/// The x axis of sweep charts: one position per load, labelled with it.
struct StepAxis<'a> {
    loads: &'a [f64],
    unit: &'static str,
}

type Line = (String, RGBColor, Vec<(f64, f64)>);

impl<'a> StepAxis<'a> {
    fn new(loads: &'a [f64], kind: crate::plan::PhaseKind) -> Self {
        let unit = if kind == crate::plan::PhaseKind::ClosedLoop {
            "concurrency"
        } else {
            "Poisson rate (requests/s)"
        };
        Self { loads, unit }
    }

    /// A load's position (0 when it is not one of the axis's).
    fn at(&self, load: f64) -> f64 {
        self.loads.iter().position(|l| *l == load).unwrap_or(0) as f64
    }

    /// One panel: the lines with a dot at each point, a legend, and the
    /// dashed `marks` at positions; the axis title on the lower panel.
    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        caption: Option<&str>,
        y_desc: &str,
        lines: &[Line],
        marks: &[(f64, RGBColor)],
    ) -> Fallible {
        let n = self.loads.len();
        let top = lines
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y))
            .fold(0.0, f64::max)
            .max(1.0)
            * 1.15;
        let mut builder = ChartBuilder::on(area);
        builder
            .margin(10)
            .x_label_area_size(if caption.is_some() { 30 } else { 40 })
            .y_label_area_size(70);
        if let Some(c) = caption {
            builder.caption(c, ("sans-serif", 20));
        }
        let mut chart = builder
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
            .map_err(e)?;
        let label = |x: &f64| {
            let i = x.round();
            if (x - i).abs() > 1e-6 || i < 0.0 {
                return String::new();
            }
            self.loads
                .get(i as usize)
                .map_or(String::new(), |l| short(*l))
        };
        let mut mesh = chart.configure_mesh();
        mesh.x_labels(n.min(24))
            .x_label_formatter(&label)
            .y_desc(y_desc)
            .light_line_style(TRANSPARENT)
            .label_style(("sans-serif", 13));
        if caption.is_none() {
            mesh.x_desc(self.unit);
        }
        mesh.draw().map_err(e)?;
        for (name, color, points) in lines {
            let color = *color;
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(e)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(e)?;
        }
        for (x, c) in marks {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(*x, 0.0), (*x, top)],
                    6,
                    4,
                    c.stroke_width(1),
                ))
                .map_err(e)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(e)
    }
}
