//! Drawing [`Figure`]s with plotters: SVG text and PNG bytes of the same layout.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::figure::{Figure, Panel, SeriesKind};
use crate::Error;

/// Width of every plot in pixels.
const WIDTH: u32 = 960;
/// Height of one panel in pixels.
const PANEL_HEIGHT: u32 = 320;
/// Height of the figure title.
const TITLE_HEIGHT: u32 = 40;

// The font (one embedded copy, DejaVu Sans), its registration and the palette are the chart
// crate's, which the simulator's curves use too, so every figure kvlab draws looks the same.
use chart::{register_font, PALETTE};

fn size(figure: &Figure) -> (u32, u32) {
    (WIDTH, TITLE_HEIGHT + PANEL_HEIGHT * figure.panels.len().max(1) as u32)
}

/// The figure as an SVG document.
pub(crate) fn svg(figure: &Figure) -> Result<String, Error> {
    register_font();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size(figure)).into_drawing_area();
        draw(&root, figure).map_err(|message| Error::Plot { name: figure.name.clone(), message })?;
        root.present().map_err(|e| Error::Plot { name: figure.name.clone(), message: e.to_string() })?;
    }
    Ok(out)
}

/// The figure as a PNG file (8-bit RGB).
pub(crate) fn png(figure: &Figure) -> Result<Vec<u8>, Error> {
    register_font();
    let (w, h) = size(figure);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        draw(&root, figure).map_err(|message| Error::Plot { name: figure.name.clone(), message })?;
        root.present().map_err(|e| Error::Plot { name: figure.name.clone(), message: e.to_string() })?;
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let plot_err = |e: png::EncodingError| Error::Plot { name: figure.name.clone(), message: e.to_string() };
    let mut writer = encoder.write_header().map_err(plot_err)?;
    writer.write_image_data(&pixels).map_err(plot_err)?;
    writer.finish().map_err(plot_err)?;
    Ok(out)
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, figure: &Figure) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let body = root.titled(&figure.title, ("sans-serif", 22)).map_err(err)?;
    let areas = body.split_evenly((figure.panels.len().max(1), 1));
    let shared = figure.x_range.or_else(|| {
        figure.shared_x.then(|| {
            range(
                figure.panels.iter().flat_map(|p| &p.series).flat_map(|s| s.points.iter().map(|p| p.0)),
                false,
            )
        })
    });
    for (area, panel) in areas.iter().zip(&figure.panels) {
        let legend = if figure.x_range.is_some() {
            SeriesLabelPosition::UpperRight
        } else if panel.series.iter().all(|s| s.kind == SeriesKind::Step) {
            // CDFs rise on the left: their legend goes bottom right.
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperLeft
        };
        draw_panel(area, panel, shared, legend)?;
    }
    Ok(())
}

/// Axis range with 5% padding; a degenerate range is widened around its value.
fn range(values: impl Iterator<Item = f64>, from_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let pad = (hi.abs() * 0.1).max(1.0);
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.05;
    if !from_zero || lo < 0.0 {
        lo -= pad;
    }
    hi += pad;
    (lo, hi)
}

/// A tick label with as many decimals as the axis span needs (none from a span of 20 up).
fn tick_label(v: f64, span: f64) -> String {
    let decimals = if span >= 20.0 {
        0
    } else if span >= 2.0 {
        1
    } else if span >= 0.2 {
        2
    } else {
        3
    };
    format!("{v:.decimals$}")
}

/// Draws one panel; `x_range` overrides its own x range.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    x_range: Option<(f64, f64)>,
    legend_position: SeriesLabelPosition,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let (x0, x1) = x_range
        .unwrap_or_else(|| range(panel.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)), false));
    let (y0, y1) = range(
        panel
            .series
            .iter()
            .filter(|s| s.kind != SeriesKind::Ticks)
            .flat_map(|s| s.points.iter().map(|p| p.1)),
        true,
    );
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .light_line_style(RGBColor(235, 235, 235))
        .label_style(("sans-serif", 13))
        .x_label_formatter(&|v| tick_label(*v, x1 - x0))
        .y_label_formatter(&|v| tick_label(*v, y1 - y0))
        .draw()
        .map_err(err)?;
    for series in &panel.series {
        let color = PALETTE[series.color % PALETTE.len()];
        let line = color.stroke_width(2);
        let points = series.points.iter().copied();
        let anno = match series.kind {
            SeriesKind::Points => chart
                .draw_series(points.map(|p| Circle::new(p, 3, color.mix(0.6).filled())))
                .map_err(err)?
                .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled())),
            SeriesKind::Line => chart
                .draw_series(LineSeries::new(points, line))
                .map_err(err)?
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], line)),
            SeriesKind::Dashed => chart
                .draw_series(DashedLineSeries::new(points, 6, 4, line))
                .map_err(err)?
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], line)),
            SeriesKind::Step => {
                let mut stairs = Vec::with_capacity(series.points.len() * 2);
                let mut prev_y = 0.0;
                for &(x, y) in &series.points {
                    stairs.push((x, prev_y));
                    stairs.push((x, y));
                    prev_y = y;
                }
                chart
                    .draw_series(LineSeries::new(stairs, line))
                    .map_err(err)?
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], line))
            }
            SeriesKind::Ticks => {
                let len = (y1 - y0) * 0.07;
                let ticks = series.points.iter().map(move |&(x, edge)| {
                    let (a, b) = if edge == 0.0 { (y0, y0 + len) } else { (y1 - len, y1) };
                    PathElement::new(vec![(x, a), (x, b)], color.mix(0.8).stroke_width(1))
                });
                chart.draw_series(ticks).map_err(err)?.legend(move |(x, y)| {
                    PathElement::new(vec![(x + 10, y - 5), (x + 10, y + 5)], color.stroke_width(2))
                })
            }
        };
        anno.label(series.label.as_str());
    }
    chart
        .configure_series_labels()
        .position(legend_position)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    Ok(())
}
