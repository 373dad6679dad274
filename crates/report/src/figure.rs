//! The data of a plot, independent of how it is drawn: a figure of stacked panels, each with
//! named series. [`crate::plots`] builds figures from runs; the renderer draws them.

/// One plot file (`plots/<name>.svg` and `.png`): panels stacked vertically, sharing nothing but
/// the title.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// File stem: `[a-z0-9_-]`.
    pub name: String,
    /// Says "emulated" when any of its runs is emulated.
    pub title: String,
    pub panels: Vec<Panel>,
    /// All panels share one x range (timelines on the run's clock).
    pub shared_x: bool,
    /// A fixed x range for every panel, for categories on x (runs numbered 1..n): room is left on
    /// the right for the legend, which goes there.
    pub x_range: Option<(f64, f64)>,
}

/// One chart: axes, series and a legend.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// A named sequence of points, drawn as [`SeriesKind`]. Its label appears once in the legend.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub kind: SeriesKind,
    /// The colour slot: series of the same run share it.
    pub color: usize,
    pub points: Vec<(f64, f64)>,
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesKind {
    /// Filled circles.
    Points,
    /// A polyline through the points, in order.
    Line,
    /// A dashed polyline (a second quantity of the same run).
    Dashed,
    /// A staircase (CDFs).
    Step,
    /// Short vertical ticks at each x (events such as arrivals): along the bottom edge of the
    /// panel where y is 0, along the top edge otherwise.
    Ticks,
}

impl Figure {
    /// Series over all panels.
    pub fn series_count(&self) -> usize {
        self.panels.iter().map(|p| p.series.len()).sum()
    }
}
