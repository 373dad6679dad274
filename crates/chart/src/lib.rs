//! Line charts as SVG, drawn with plotters over an embedded font, for the crates that plot
//! without the report (the simulator's hit-ratio curves). Pure: returns the SVG text.
//!
//! Text is measured with DejaVu Sans embedded in the binary (as the report does), so the
//! layout needs no system font and the same chart gives the same SVG everywhere.

use std::sync::Once;

use plotters::coord::combinators::LogCoord;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

/// DejaVu Sans (Bitstream Vera license, see `fonts/LICENSE-DejaVu.txt`).
pub static FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// Colour-blind-friendly categorical palette (Tableau 10), as the report's.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Registers [`FONT`] as plotters' `sans-serif` (once per process).
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is valid; should it ever fail, text measurement reports the error.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// How a line is stroked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stroke {
    #[default]
    Solid,
    Dashed,
}

/// One series of a [`LineChart`]: points joined in the given order, with a marker on each.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub stroke: Stroke,
}

/// The x axis's scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scale {
    #[default]
    Linear,
    /// Logarithmic (x values must be positive).
    Log,
}

/// How an axis's ticks are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ticks {
    /// [`number`].
    #[default]
    Number,
    /// A ratio as a whole percentage (0.25 is `25%`).
    Percent,
    /// Whole numbers only (counts): ticks between them are left unlabelled.
    Whole,
}

impl Ticks {
    pub fn format(self, v: f64) -> String {
        match self {
            Ticks::Number => number(v),
            Ticks::Percent => format!("{:.0}%", v * 100.0),
            Ticks::Whole if v.fract().abs() < 1e-9 => format!("{v:.0}"),
            Ticks::Whole => String::new(),
        }
    }
}

/// A chart of lines against one x and one y axis, with a legend in the upper left corner (where
/// rising curves, such as hit ratios against capacity, leave room).
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    /// How x ticks are written.
    pub x_ticks: Ticks,
    /// The y axis's range; `None`: from the data.
    pub y_range: Option<(f64, f64)>,
    /// How y ticks are written.
    pub y_ticks: Ticks,
    /// Pixels.
    pub size: (u32, u32),
    /// Each line's colour is [`PALETTE`] at its index.
    pub lines: Vec<Line>,
}

/// `{v}` with no decimals from 20 up, more below.
pub fn number(v: f64) -> String {
    let a = v.abs();
    let decimals = if a >= 20.0 || a == 0.0 {
        0
    } else if a >= 2.0 {
        1
    } else {
        2
    };
    format!("{v:.decimals$}")
}

impl LineChart {
    /// The chart as an SVG document; `Err` carries plotters' message.
    pub fn svg(&self) -> Result<String, String> {
        register_font();
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, self.size).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(|e| e.to_string())?;
        }
        Ok(out)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let xs = self.lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
        let (mut x0, mut x1) =
            xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if !(x0.is_finite() && x1.is_finite()) {
            (x0, x1) = (1.0, 10.0);
        }
        let (y0, y1) = self.y_range.unwrap_or_else(|| {
            let ys = self.lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
            let (lo, hi) = ys.fold((0.0f64, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
            if hi > lo {
                (lo, hi * 1.05)
            } else {
                (lo, lo + 1.0)
            }
        });
        match self.x_scale {
            Scale::Log => {
                // A 5% margin either side, in log space.
                let pad = (x1 / x0).max(1.0).powf(0.05).max(1.05);
                self.plot::<_, LogCoord<f64>>(root, (x0 / pad..x1 * pad).log_scale().into(), y0..y1)
            }
            Scale::Linear => {
                let pad = if x1 > x0 { (x1 - x0) * 0.05 } else { x0.abs().max(1.0) * 0.1 };
                self.plot::<_, RangedCoordf64>(root, (x0 - pad..x1 + pad).into(), y0..y1)
            }
        }
    }

    fn plot<DB, X>(&self, root: &DrawingArea<DB, Shift>, x: X, y: std::ops::Range<f64>) -> Result<(), String>
    where
        DB: DrawingBackend,
        X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let y: RangedCoordf64 = y.into();
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(x, y)
            .map_err(err)?;
        let (x_ticks, y_ticks) = (self.x_ticks, self.y_ticks);
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .light_line_style(RGBColor(235, 235, 235))
            .max_light_lines(2)
            .label_style(("sans-serif", 13))
            .x_label_formatter(&|v| x_ticks.format(*v))
            .y_label_formatter(&|v| y_ticks.format(*v))
            .draw()
            .map_err(err)?;
        for (i, line) in self.lines.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let style = color.stroke_width(2);
            let points = line.points.iter().copied();
            let anno = match line.stroke {
                Stroke::Solid => chart
                    .draw_series(LineSeries::new(points, style))
                    .map_err(err)?
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style)),
                Stroke::Dashed => chart
                    .draw_series(DashedLineSeries::new(points, 6, 4, style))
                    .map_err(err)?
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], style)),
            };
            anno.label(line.label.as_str());
            chart.draw_series(line.points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        Ok(())
    }
}
