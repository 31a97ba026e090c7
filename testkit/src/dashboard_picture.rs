//! Pictures of a Grafana dashboard drawn from real data: every panel's
//! queries run as range queries on a Prometheus, each panel drawn as a
//! line chart with its title, unit and legend, two panels to a row, in the
//! dashboard's order. Grafana servers do not install on these machines;
//! this is what the README shows of each dashboard.

use std::path::Path;

use plotters::{
    prelude::*,
    style::{FontStyle, register_font},
};
use serde_json::Value;

use crate::prometheus::Prometheus;

static FONT: &[u8] = include_bytes!("../../loadgen/assets/DejaVuSans.ttf");
const PANEL: (u32, u32) = (800, 300);
const HEADER: u32 = 60;
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// One series of a panel: its legend and (seconds since start, value).
struct Series {
    legend: String,
    points: Vec<(f64, f64)>,
}

/// What a panel drew: its title and how many series had data.
pub struct Drawn {
    pub title: String,
    pub series: usize,
}

/// A panel's data, fetched before drawing.
struct PanelData {
    title: String,
    unit: String,
    series: Vec<Series>,
    note: String,
}

/// Draws `dashboard` from `prom` over [start, end] (Unix seconds) into
/// `path` (PNG, or SVG when it ends in `.svg`), with Grafana's variables
/// replaced by `substitute`. Panels whose queries return nothing say
/// `empty_note` instead of a chart.
pub fn draw(
    dashboard: &Value,
    prom: &Prometheus,
    (start, end): (f64, f64),
    substitute: &dyn Fn(&str) -> String,
    empty_note: &dyn Fn(&Value) -> String,
    path: &Path,
) -> Result<Vec<Drawn>, String> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"] != "row")
        .collect();
    let step = ((end - start) / 200.0).max(1.0);
    let mut data = Vec::new();
    for panel in panels {
        let mut series = Vec::new();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = substitute(target["expr"].as_str().unwrap_or(""));
            let r = prom.query_range(&expr, start, end, step);
            for s in r["data"]["result"].as_array().into_iter().flatten() {
                let points: Vec<(f64, f64)> = s["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| {
                        let t = v[0].as_f64()?;
                        let y: f64 = v[1].as_str()?.parse().ok()?;
                        y.is_finite().then_some((t - start, y))
                    })
                    .collect();
                if !points.is_empty() {
                    series.push(Series {
                        legend: legend(target["legendFormat"].as_str().unwrap_or(""), &s["metric"]),
                        points,
                    });
                }
            }
        }
        data.push(PanelData {
            title: panel["title"].as_str().unwrap_or("").to_string(),
            unit: panel["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            series,
            note: empty_note(panel),
        });
    }
    let rows = data.len().div_ceil(2) as u32;
    let size = (PANEL.0 * 2, HEADER + rows * PANEL.1);
    let title = dashboard["title"].as_str().unwrap_or("");
    let span = end - start;
    if path.extension().is_some_and(|x| x == "svg") {
        draw_all(
            SVGBackend::new(path, size).into_drawing_area(),
            title,
            &data,
            span,
        )?;
    } else {
        draw_all(
            BitMapBackend::new(path, size).into_drawing_area(),
            title,
            &data,
            span,
        )?;
    }
    Ok(data
        .iter()
        .map(|p| Drawn {
            title: p.title.clone(),
            series: p.series.len(),
        })
        .collect())
}

fn draw_all<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    panels: &[PanelData],
    span: f64,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(e)?;
    let (header, body) = root.split_vertically(HEADER);
    header
        .draw_text(
            title,
            &("sans-serif", 30).into_font().color(&BLACK),
            (20, 15),
        )
        .map_err(e)?;
    let areas = body.split_evenly((panels.len().div_ceil(2), 2));
    for (p, area) in panels.iter().zip(areas) {
        draw_panel(&area, &p.title, &p.unit, &p.series, span, &p.note)?;
    }
    root.present().map_err(e)
}

fn e<E: std::fmt::Debug>(err: E) -> String {
    format!("{err:?}")
}

/// Grafana's `{{label}}` legend format.
fn legend(format: &str, metric: &Value) -> String {
    let mut out = format.to_string();
    if let Some(labels) = metric.as_object() {
        for (k, v) in labels {
            out = out.replace(&format!("{{{{{k}}}}}"), v.as_str().unwrap_or(""));
        }
    }
    if out.is_empty() {
        metric.to_string()
    } else {
        out
    }
}

/// Scale and suffix for a Grafana unit, chosen from the largest value.
fn scale(unit: &str, max: f64) -> (f64, String) {
    let si = |base: &str| {
        for (factor, prefix) in [(1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")] {
            if max >= factor {
                return (factor, format!("{prefix}{base}"));
            }
        }
        (1.0, base.to_string())
    };
    match unit {
        "percentunit" => (0.01, "%".into()),
        "s" => {
            for (factor, name) in [(1.0, "s"), (1e-3, "ms"), (1e-6, "µs")] {
                if max >= factor {
                    return (factor, name.into());
                }
            }
            (1e-9, "ns".into())
        }
        "bytes" => si("B"),
        "Bps" => si("B/s"),
        "ops" => si("/s"),
        "watt" => (1.0, "W".into()),
        "hertz" => si("Hz"),
        "celsius" => (1.0, "°C".into()),
        _ => si(""),
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    series: &[Series],
    span: f64,
    empty_note: &str,
) -> Result<(), String> {
    let area = area.margin(8, 8, 8, 8);
    if series.is_empty() {
        area.draw_text(
            title,
            &("sans-serif", 18).into_font().color(&BLACK),
            (10, 5),
        )
        .map_err(e)?;
        area.draw_text(
            empty_note,
            &("sans-serif", 15)
                .into_font()
                .color(&RGBColor(120, 120, 120)),
            (10, 130),
        )
        .map_err(e)?;
        return Ok(());
    }
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let min = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::min);
    let (factor, suffix) = scale(unit, max.abs().max(min.abs()));
    let top = if max > 0.0 { max / factor * 1.1 } else { 1.0 };
    let bottom = min / factor * 1.1;
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 18))
        .x_label_area_size(28)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..span.max(1.0), bottom..top)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_label_formatter(&|v| format!("{v:.3} {suffix}"))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(e)?;
    for (i, s) in series.iter().take(8).enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let mut legend = s.legend.clone();
        if legend.len() > 48 {
            legend.truncate(45);
            legend.push_str("...");
        }
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|(t, v)| (*t, v / factor)),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(legend)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(RGBColor(200, 200, 200))
        .label_font(("sans-serif", 12))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legends_and_units() {
        let m = serde_json::json!({"service": "stack", "device": "0"});
        assert_eq!(legend("{{service}} GPU {{device}}", &m), "stack GPU 0");
        assert_eq!(scale("s", 0.004).1, "ms");
        assert_eq!(scale("percentunit", 0.5), (0.01, "%".into()));
        assert_eq!(scale("Bps", 3e6).1, "MB/s");
    }
}
