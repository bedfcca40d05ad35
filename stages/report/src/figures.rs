//! Figures of a table, as SVG and as PNG: a radar chart per model group with every method (the
//! panels of the paper's Figure 4), one radar across model groups for the table's first method
//! (Figure 4(a), Vanilla in the study), and a bar chart of the clean-minus-perturbed drop per
//! method; for a sweep (layout `sweep`, Figure 5), VQA Overall per model over the sweep's
//! settings with 95% intervals. Text is set in Liberation Sans (SIL OFL 1.1, `fonts/`), embedded in the binary, so a
//! PNG is the same on every machine, with or without system fonts.

use std::fmt::Write as _;

use crate::table::{Group, Table};

/// Colour and dash pattern per series, so eight series stay apart in print and in grey.
const SERIES: &[(&str, &str)] = &[
    ("#1f77b4", "none"),
    ("#ff7f0e", "6,3"),
    ("#2ca02c", "2,2"),
    ("#d62728", "8,3,2,3"),
    ("#9467bd", "none"),
    ("#8c564b", "6,3"),
    ("#e377c2", "2,2"),
    ("#7f7f7f", "8,3,2,3"),
];

/// The embedded face; `FONT_FAMILY` is its family name.
const FONT: &[u8] = include_bytes!("../fonts/LiberationSans-Regular.ttf");
const FONT_FAMILY: &str = "Liberation Sans";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG document being written: a white canvas of `width` x `height` in the embedded font.
struct Svg {
    text: String,
}

impl Svg {
    fn new(width: f64, height: f64) -> Self {
        let mut text = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
             viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"{FONT_FAMILY}, sans-serif\" font-size=\"11\">\n"
        );
        let _ = writeln!(
            text,
            "<rect x=\"0\" y=\"0\" width=\"{width:.0}\" height=\"{height:.0}\" fill=\"white\"/>"
        );
        Svg { text }
    }

    /// Text at (x, y); `anchor` is start, middle or end; `rotate` in degrees about (x, y).
    fn label(&mut self, x: f64, y: f64, anchor: &str, size: f64, rotate: f64, s: &str) {
        let transform = if rotate == 0.0 {
            String::new()
        } else {
            format!(" transform=\"rotate({rotate:.0} {x:.1} {y:.1})\"")
        };
        let _ = writeln!(
            self.text,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\" font-size=\"{size}\"{transform}>{}</text>",
            escape(s)
        );
    }

    fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, width: f64) {
        let _ = writeln!(
            self.text,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{stroke}\" stroke-width=\"{width}\"/>"
        );
    }

    /// A closed polygon; `series` (index, filled) picks colour and dashes, `None` draws a grey
    /// grid ring.
    fn polygon(&mut self, points: &[(f64, f64)], series: Option<(usize, bool)>) {
        let pts: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let style = match series {
            Some((s, filled)) => {
                let (colour, dashes) = SERIES[s % SERIES.len()];
                let opacity = if filled { 0.08 } else { 0.0 };
                format!(
                    "fill=\"{colour}\" fill-opacity=\"{opacity}\" stroke=\"{colour}\" stroke-width=\"1.6\" stroke-dasharray=\"{dashes}\""
                )
            }
            None => "fill=\"none\" stroke=\"#d0d0d0\" stroke-width=\"0.8\"".to_string(),
        };
        let _ = writeln!(self.text, "<polygon points=\"{}\" {style}/>", pts.join(" "));
    }

    /// A legend entry at (x, y): a line sample in the series' style, then its name.
    fn legend(&mut self, x: f64, y: f64, series: usize, name: &str) {
        let (colour, dashes) = SERIES[series % SERIES.len()];
        let _ = writeln!(
            self.text,
            "<line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{colour}\" stroke-width=\"2\" stroke-dasharray=\"{dashes}\"/>",
            x + 22.0
        );
        self.label(x + 28.0, y + 4.0, "start", 11.0, 0.0, name);
    }

    /// A vertical value axis at x = `left` with a tick, a label and a grid line to `right` at
    /// every value of `ticks` (the first at `bottom`, the last at `top`), and `title` along the
    /// left edge; returns the map from a value to its y.
    fn value_axis(
        &mut self,
        (left, right): (f64, f64),
        (top, bottom): (f64, f64),
        ticks: &[f64],
        title: &str,
    ) -> impl Fn(f64) -> f64 {
        let (low, high) = (ticks[0], ticks[ticks.len() - 1]);
        let y = move |v: f64| top + (bottom - top) * (high - v) / (high - low);
        self.line((left, top), (left, bottom), "#333", 1.0);
        for &t in ticks {
            self.line((left - 4.0, y(t)), (left, y(t)), "#333", 1.0);
            self.line((left, y(t)), (right, y(t)), "#e4e4e4", 0.6);
            self.label(left - 7.0, y(t) + 4.0, "end", 10.0, 0.0, &tick_text(t));
        }
        self.label(18.0, (top + bottom) / 2.0, "middle", 11.0, -90.0, title);
        y
    }

    fn rect(&mut self, x: f64, y: f64, width: f64, height: f64, fill: &str) {
        let _ = writeln!(
            self.text,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{height:.1}\" fill=\"{fill}\"/>"
        );
    }

    fn finish(mut self) -> String {
        self.text.push_str("</svg>\n");
        self.text
    }
}

/// The embedded font as the only face, standing in for every generic family.
fn fonts() -> std::sync::Arc<resvg::usvg::fontdb::Database> {
    static FONTS: std::sync::OnceLock<std::sync::Arc<resvg::usvg::fontdb::Database>> =
        std::sync::OnceLock::new();
    FONTS
        .get_or_init(|| {
            let mut db = resvg::usvg::fontdb::Database::new();
            db.load_font_data(FONT.to_vec());
            db.set_sans_serif_family(FONT_FAMILY);
            db.set_serif_family(FONT_FAMILY);
            std::sync::Arc::new(db)
        })
        .clone()
}

/// Rasterises an SVG figure on a white background at twice its nominal size.
fn rasterise(svg: &str) -> Result<resvg::tiny_skia::Pixmap, String> {
    use resvg::{tiny_skia, usvg};
    let options = usvg::Options {
        fontdb: fonts(),
        ..usvg::Options::default()
    };
    let tree = usvg::Tree::from_str(svg, &options).map_err(|e| format!("figure SVG: {e}"))?;
    let scale = 2.0;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(scale)
        .ok_or("empty figure")?;
    let mut pixmap =
        tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("figure too large")?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    Ok(pixmap)
}

/// Rasterises an SVG figure to PNG bytes (see [`rasterise`]).
pub fn to_png(svg: &str) -> Result<Vec<u8>, String> {
    rasterise(svg)?
        .encode_png()
        .map_err(|e| format!("figure PNG: {e}"))
}

/// Every figure of a table: `(file name, SVG text)`.
pub fn render(table: &Table) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if table.sweep {
        out.extend(sweep_lines(table).map(|svg| ("sweep.svg".to_string(), svg)));
        return out;
    }
    let radial = table.columns.len() >= 3;
    for group in &table.groups {
        if radial {
            let series: Vec<(String, Vec<Option<f64>>)> = group
                .rows
                .iter()
                .map(|(method, cells)| {
                    let values = cells.iter().map(|c| c.mean()).collect();
                    (table.name(method).to_string(), values)
                })
                .collect();
            let title = table.name(&group.name).to_string();
            out.push((
                format!("radar-{}.svg", file_safe(&group.name)),
                radar(table, &title, &series),
            ));
        }
        if let Some(svg) = drop_bars(table, group) {
            out.push((format!("drop-{}.svg", file_safe(&group.name)), svg));
        }
    }
    // One radar across the model groups for the first method (the paper's Figure 4(a)).
    if radial && table.groups.len() >= 2 {
        if let Some(method) = table.groups[0].rows.first().map(|(m, _)| m.clone()) {
            let series: Vec<(String, Vec<Option<f64>>)> = table
                .groups
                .iter()
                .filter_map(|group| {
                    let (_, cells) = group.rows.iter().find(|(m, _)| *m == method)?;
                    let values = cells.iter().map(|c| c.mean()).collect();
                    Some((table.name(&group.name).to_string(), values))
                })
                .collect();
            let title = format!("{} across models", table.name(&method));
            out.push((
                format!("radar-models-{}.svg", file_safe(&method)),
                radar(table, &title, &series),
            ));
        }
    }
    out
}

fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A radar on a 0-100% scale: one spoke per column with its label, grid rings at every 20
/// points labelled on the first spoke, one polygon per series (a missing value sits at the
/// centre) and a legend.
fn radar(table: &Table, title: &str, series: &[(String, Vec<Option<f64>>)]) -> String {
    let (cx, cy, radius) = (290.0, 260.0, 170.0);
    let n = table.columns.len();
    let point = |i: usize, r: f64| {
        let angle = std::f64::consts::TAU * i as f64 / n as f64 - std::f64::consts::FRAC_PI_2;
        (cx + r * angle.cos(), cy + r * angle.sin())
    };
    let legend_x = 560.0;
    let mut svg = Svg::new(legend_x + 190.0, 520.0);
    svg.label(20.0, 24.0, "start", 15.0, 0.0, title);
    for step in 1..=5 {
        let ring: Vec<(f64, f64)> = (0..n)
            .map(|i| point(i, radius * step as f64 / 5.0))
            .collect();
        svg.polygon(&ring, None);
    }
    for i in 0..n {
        svg.line((cx, cy), point(i, radius), "#b0b0b0", 0.8);
        let (x, y) = point(i, radius + 16.0);
        let anchor = if (x - cx).abs() < 1.0 {
            "middle"
        } else if x > cx {
            "start"
        } else {
            "end"
        };
        svg.label(
            x,
            y + 4.0,
            anchor,
            11.0,
            0.0,
            &table.column_title(&table.columns[i]),
        );
    }
    for step in 0..=5 {
        let (x, y) = point(0, radius * step as f64 / 5.0);
        svg.label(
            x + 4.0,
            y + 3.0,
            "start",
            9.0,
            0.0,
            &format!("{}", step * 20),
        );
    }
    svg.label(
        cx,
        cy + radius + 50.0,
        "middle",
        11.0,
        0.0,
        "scale: % (0 at the centre)",
    );
    for (s, (name, values)) in series.iter().enumerate() {
        let points: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| point(i, radius * v.unwrap_or(0.0).clamp(0.0, 1.0)))
            .collect();
        // Fills only while they stay readable: overlaid, many fills turn to mud.
        svg.polygon(&points, Some((s, series.len() <= 3)));
        svg.legend(legend_x, 60.0 + 20.0 * s as f64, s, name);
    }
    svg.finish()
}

/// Tick values for an axis from `low` to `high` (both included in the span): a step of 1, 2 or
/// 5 times a power of ten giving at most about six ticks.
fn ticks(low: f64, high: f64) -> Vec<f64> {
    let span = (high - low).max(1e-9);
    let raw = span / 5.0;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power);
    let first = (low / step).floor() as i64;
    let last = (high / step).ceil() as i64;
    // Rounded, so that 3 x 0.2 prints as 0.6.
    (first..=last)
        .map(|k| (k as f64 * step * 1e9).round() / 1e9)
        .collect()
}

/// Mean clean-minus-perturbed accuracy (points) per method, over the datasets that have both:
/// bars from a zero line on a labelled axis, method names below the plot area, slanted.
fn drop_bars(table: &Table, group: &Group) -> Option<String> {
    let clean: Vec<usize> = table
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            c.metric == "accuracy"
                && (c.condition == "none" || c.condition == "rp")
                && c.dataset != "vqa_overall"
        })
        .map(|(i, _)| i)
        .collect();
    let pairs: Vec<(usize, usize)> = clean
        .iter()
        .filter_map(|&i| {
            table
                .columns
                .iter()
                .position(|c| c.dataset == table.columns[i].dataset && c.condition == "perturbed")
                .map(|j| (i, j))
        })
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let drops: Vec<(String, f64)> = group
        .rows
        .iter()
        .map(|(method, cells)| {
            let values: Vec<f64> = pairs
                .iter()
                .filter_map(|&(i, j)| Some(cells[i].mean()? - cells[j].mean()?))
                .collect();
            let mean = if values.is_empty() {
                0.0
            } else {
                values.iter().sum::<f64>() / values.len() as f64
            };
            (table.name(method).to_string(), mean * 100.0)
        })
        .collect();
    let low = drops.iter().map(|d| d.1).fold(0.0, f64::min);
    let high = drops.iter().map(|d| d.1).fold(1.0, f64::max);
    let (left, top, plot_h, slot) = (70.0, 50.0, 220.0, 70.0);
    let width = left + slot * drops.len() as f64 + 20.0;
    let mut svg = Svg::new(width, top + plot_h + 110.0);
    let title = format!(
        "{}: clean minus perturbed accuracy",
        table.name(&group.name)
    );
    svg.label(20.0, 24.0, "start", 15.0, 0.0, &title);
    let y = svg.value_axis(
        (left, width - 20.0),
        (top, top + plot_h),
        &ticks(low, high),
        "drop (points)",
    );
    svg.line((left, y(0.0)), (width - 20.0, y(0.0)), "#333", 1.0);
    for (i, (name, drop)) in drops.iter().enumerate() {
        let x = left + 15.0 + i as f64 * slot;
        let bar = slot - 30.0;
        let (top_y, bottom_y) = (y(drop.max(0.0)), y(drop.min(0.0)));
        svg.rect(x, top_y, bar, bottom_y - top_y, SERIES[i % SERIES.len()].0);
        let value_y = if *drop >= 0.0 {
            top_y - 4.0
        } else {
            bottom_y + 12.0
        };
        svg.label(
            x + bar / 2.0,
            value_y,
            "middle",
            10.0,
            0.0,
            &format!("{drop:.1}"),
        );
        let name_y = top + plot_h + 16.0;
        svg.label(x + bar / 2.0, name_y, "end", 11.0, -35.0, name);
    }
    Some(svg.finish())
}

/// A point of a sweep's line: the mean over seeds and its 95% interval, in percent.
type SweepPoint = (f64, Option<(f64, f64)>);

/// The last column (VQA Overall) of a sweep: one line per model group over the rows (in the
/// table's order, labelled by their names), with each point's 95% interval as a bar.
fn sweep_lines(table: &Table) -> Option<String> {
    let column = table.columns.len().checked_sub(1)?;
    let mut settings: Vec<String> = Vec::new();
    for group in &table.groups {
        for (method, _) in &group.rows {
            if !settings.contains(method) {
                settings.push(method.clone());
            }
        }
    }
    if settings.is_empty() {
        return None;
    }
    // (group name, per setting: mean and interval, in %)
    let series: Vec<(String, Vec<Option<SweepPoint>>)> = table
        .groups
        .iter()
        .map(|group| {
            let points = settings
                .iter()
                .map(|s| {
                    let (_, cells) = group.rows.iter().find(|(m, _)| m == s)?;
                    let cell = &cells[column];
                    let interval = cell.interval().map(|(l, h)| (l * 100.0, h * 100.0));
                    Some((cell.mean()? * 100.0, interval))
                })
                .collect();
            (table.name(&group.name).to_string(), points)
        })
        .collect();
    let (mut low, mut high) = (f64::MAX, f64::MIN);
    for (_, points) in &series {
        for (mean, interval) in points.iter().flatten() {
            let (l, h) = interval.unwrap_or((*mean, *mean));
            (low, high) = (low.min(l.min(*mean)), high.max(h.max(*mean)));
        }
    }
    if low > high {
        return None;
    }
    let (left, top, plot_h, slot) = (70.0, 50.0, 260.0, 90.0);
    let plot_w = slot * settings.len() as f64;
    let legend_x = left + plot_w + 30.0;
    let mut svg = Svg::new(legend_x + 170.0, top + plot_h + 70.0);
    let title = format!(
        "{} accuracy by setting",
        table.column_title(&table.columns[column])
    );
    svg.label(20.0, 24.0, "start", 15.0, 0.0, &title);
    let y = svg.value_axis(
        (left, left + plot_w),
        (top, top + plot_h),
        &ticks(low - 1.0, high + 1.0),
        "accuracy (%)",
    );
    let x = |i: usize| left + slot * (i as f64 + 0.5);
    svg.line(
        (left, top + plot_h),
        (left + plot_w, top + plot_h),
        "#333",
        1.0,
    );
    for (i, setting) in settings.iter().enumerate() {
        svg.line(
            (x(i), top + plot_h),
            (x(i), top + plot_h + 4.0),
            "#333",
            1.0,
        );
        svg.label(
            x(i),
            top + plot_h + 18.0,
            "middle",
            11.0,
            0.0,
            table.name(setting),
        );
    }
    for (s, (name, points)) in series.iter().enumerate() {
        let (colour, dashes) = SERIES[s % SERIES.len()];
        // Points a little apart per series, so that overlapping intervals stay readable.
        let shift = (s as f64 - (series.len() as f64 - 1.0) / 2.0) * 6.0;
        let mut path = Vec::new();
        for (i, point) in points.iter().enumerate() {
            let Some((mean, interval)) = point else {
                continue;
            };
            let px = x(i) + shift;
            if let Some((l, h)) = interval {
                svg.line((px, y(*l)), (px, y(*h)), colour, 1.2);
                svg.line((px - 3.0, y(*l)), (px + 3.0, y(*l)), colour, 1.2);
                svg.line((px - 3.0, y(*h)), (px + 3.0, y(*h)), colour, 1.2);
            }
            let _ = writeln!(
                svg.text,
                "<circle cx=\"{px:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                y(*mean)
            );
            path.push(format!("{px:.1},{:.1}", y(*mean)));
        }
        let _ = writeln!(
            svg.text,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.6\" stroke-dasharray=\"{dashes}\"/>",
            path.join(" ")
        );
        svg.legend(legend_x, top + 10.0 + 20.0 * s as f64, s, name);
    }
    svg.label(
        left,
        top + plot_h + 45.0,
        "start",
        10.0,
        0.0,
        "bars: 95% intervals (bootstrap over items where per-item scores were given)",
    );
    Some(svg.finish())
}

/// One panel of [`training_curves`]: a column of a training log, by step.
pub struct Curve {
    /// The column's name (`loss`, `lr`, `consistency`).
    pub name: String,
    /// `(step, value)` for the steps that have one.
    pub points: Vec<(f64, f64)>,
}

/// Training curves as small multiples: one panel per column, step on the x axis, the column's
/// own y range with ticks (so a consistency term 1e-5 of the loss is still visible), three
/// panels to a row.
pub fn training_curves(title: &str, curves: &[Curve]) -> String {
    let (panel_w, panel_h, per_row) = (250.0, 170.0, 3usize);
    let rows = curves.len().div_ceil(per_row).max(1);
    let mut svg = Svg::new(
        panel_w * per_row as f64 + 20.0,
        40.0 + panel_h * rows as f64,
    );
    svg.label(12.0, 22.0, "start", 14.0, 0.0, title);
    for (i, curve) in curves.iter().enumerate() {
        let (left, top) = (
            10.0 + panel_w * (i % per_row) as f64,
            36.0 + panel_h * (i / per_row) as f64,
        );
        // The plot area inside the panel: room for tick labels left and below.
        let (x0, x1, y0, y1) = (
            left + 58.0,
            left + panel_w - 12.0,
            top + 22.0,
            top + panel_h - 34.0,
        );
        svg.label(
            (x0 + x1) / 2.0,
            top + 12.0,
            "middle",
            12.0,
            0.0,
            &curve.name,
        );
        if curve.points.is_empty() {
            svg.label(
                (x0 + x1) / 2.0,
                (y0 + y1) / 2.0,
                "middle",
                10.0,
                0.0,
                "no values",
            );
            continue;
        }
        let (mut sx0, mut sx1, mut vy0, mut vy1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(s, v) in &curve.points {
            (sx0, sx1, vy0, vy1) = (sx0.min(s), sx1.max(s), vy0.min(v), vy1.max(v));
        }
        if vy1 - vy0 < 1e-12 * vy1.abs().max(1e-300) {
            (vy0, vy1) = (
                vy0 - vy0.abs().max(1e-12) * 0.5,
                vy1 + vy1.abs().max(1e-12) * 0.5,
            );
        }
        let y_ticks = ticks(vy0, vy1);
        let (ty0, ty1) = (y_ticks[0], *y_ticks.last().expect("ticks are never empty"));
        let sx1 = if sx1 > sx0 { sx1 } else { sx0 + 1.0 };
        let x_of = |s: f64| x0 + (s - sx0) / (sx1 - sx0) * (x1 - x0);
        let y_of = |v: f64| y1 - (v - ty0) / (ty1 - ty0) * (y1 - y0);
        svg.line((x0, y1), (x1, y1), "#444", 0.8);
        svg.line((x0, y0), (x0, y1), "#444", 0.8);
        for t in &y_ticks {
            let y = y_of(*t);
            svg.line((x0 - 3.0, y), (x1, y), "#e4e4e4", 0.6);
            svg.label(x0 - 5.0, y + 3.0, "end", 9.0, 0.0, &tick_text(*t));
        }
        for t in ticks(sx0, sx1)
            .into_iter()
            .filter(|t| *t >= sx0 && *t <= sx1)
        {
            let x = x_of(t);
            svg.line((x, y1), (x, y1 + 3.0), "#444", 0.8);
            svg.label(x, y1 + 13.0, "middle", 9.0, 0.0, &tick_text(t));
        }
        svg.label((x0 + x1) / 2.0, y1 + 26.0, "middle", 10.0, 0.0, "step");
        let points: Vec<String> = curve
            .points
            .iter()
            .map(|&(s, v)| format!("{:.1},{:.1}", x_of(s), y_of(v)))
            .collect();
        let (colour, _) = SERIES[0];
        let _ = writeln!(
            svg.text,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.2\"/>",
            points.join(" ")
        );
    }
    svg.finish()
}

/// A tick value in few characters: `0.25`, `1.5e-5`, `1200`.
fn tick_text(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        // Up to three significant digits, so neighbouring ticks (1.05e-4, 1.1e-4) stay apart.
        let text = format!("{v:.2e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        format!("{mantissa}e{exponent}")
    } else {
        let text = format!("{v:.4}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pixels that are not white.
    fn inked(svg: &str) -> usize {
        let pixmap = rasterise(svg).unwrap();
        pixmap
            .pixels()
            .iter()
            .filter(|p| (p.red(), p.green(), p.blue()) != (255, 255, 255))
            .count()
    }

    #[test]
    fn text_is_drawn_with_the_embedded_font_whatever_the_machine_has() {
        // Only the embedded face is loaded: were it missing, text would rasterise to nothing.
        let mut svg = Svg::new(200.0, 40.0);
        svg.label(10.0, 25.0, "start", 14.0, 0.0, "Accuracy (%)");
        let with_text = inked(&svg.finish());
        assert!(with_text > 100, "only {with_text} inked pixels");
        let mut serif = Svg::new(200.0, 40.0);
        let _ = writeln!(
            serif.text,
            "<text x=\"10\" y=\"25\" font-family=\"serif\" font-size=\"14\">Accuracy</text>"
        );
        assert!(
            inked(&serif.finish()) > 100,
            "a generic family falls back to it too"
        );
    }

    #[test]
    fn training_curves_draw_one_line_per_column_on_its_own_scale() {
        let steps = |f: fn(f64) -> f64| -> Vec<(f64, f64)> {
            (0..50).map(|s| (s as f64, f(s as f64))).collect()
        };
        let curves = [
            Curve {
                name: "loss".into(),
                points: steps(|s| 2.0 / (1.0 + s)),
            },
            Curve {
                name: "consistency".into(),
                points: steps(|s| 1e-5 * (1.0 + s / 50.0)),
            },
            Curve {
                name: "adv".into(),
                points: Vec::new(),
            },
        ];
        let svg = training_curves("finetune[method=ours]", &curves);
        assert_eq!(
            svg.matches("<polyline").count(),
            2,
            "no line for an empty column"
        );
        for text in [
            ">loss<",
            ">consistency<",
            ">no values<",
            ">step<",
            ">1e-5<",
            ">2<",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        // The small term fills its panel's height instead of lying flat at zero.
        let line = svg.split("<polyline points=\"").nth(2).unwrap();
        let ys: Vec<f64> = line
            .split('"')
            .next()
            .unwrap()
            .split(' ')
            .map(|p| p.split(',').nth(1).unwrap().parse().unwrap())
            .collect();
        let span = ys.iter().cloned().fold(f64::MIN, f64::max)
            - ys.iter().cloned().fold(f64::MAX, f64::min);
        assert!(span > 40.0, "the consistency curve spans only {span} px");
        assert!(inked(&svg) > 2000);
    }

    #[test]
    fn a_sweep_is_one_line_per_model_over_its_settings_in_order_with_intervals() {
        use crate::table::{build, TableParams};
        use mipipe_stage_schema::MetricRow;
        let row = |family: &str, method: &str, seed: &str, value: f64| MetricRow {
            family: family.into(),
            size: "s".into(),
            method: method.into(),
            seed: seed.into(),
            dataset: "vqa_overall".into(),
            task: "vqa".into(),
            condition: "none".into(),
            metric: "accuracy".into(),
            value,
            n: 400,
            stage: format!("evaluate[{family},{method},{seed}]"),
            ci: None,
        };
        let mut rows = Vec::new();
        for (family, base) in [("llava", 0.30), ("blip", 0.60)] {
            for (k, method) in ["k3", "k1", "k2"].iter().enumerate() {
                for seed in ["0", "1"] {
                    rows.push(row(family, method, seed, base + 0.01 * k as f64));
                }
            }
        }
        let params: TableParams = serde_json::from_value(serde_json::json!({
            "layout": "sweep",
            "methods": ["k1", "k2", "k3"],
            "names": {"k1": "K=1", "k2": "K=2", "k3": "K=3"},
        }))
        .unwrap();
        let table = build(&rows, &params).unwrap();
        assert!(table
            .markdown(&params)
            .contains("| Model | Setting | VQA Overall |"));
        let figures = render(&table);
        let names: Vec<&str> = figures.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sweep.svg"], "a sweep has its line figure only");
        let svg = &figures[0].1;
        assert_eq!(svg.matches("<polyline").count(), 2, "a line per model");
        assert_eq!(svg.matches("<circle").count(), 6, "a point per setting");
        // Settings in the `methods` order along the axis, whatever the rows' order.
        let at = |label: &str| svg.find(&format!(">{label}<")).unwrap();
        assert!(at("K=1") < at("K=2") && at("K=2") < at("K=3"));
        // Two seeds per point: each point has its interval (a bar and two caps).
        let (colour, _) = SERIES[0];
        let bars = format!("stroke=\"{colour}\" stroke-width=\"1.2\"");
        assert_eq!(svg.matches(&bars).count(), 3 * 3, "{svg}");
        assert!(inked(svg) > 2000);
    }

    #[test]
    fn ticks_cover_the_span_in_round_steps() {
        assert_eq!(ticks(0.0, 23.0), [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]);
        assert_eq!(ticks(-3.0, 8.0), [-5.0, 0.0, 5.0, 10.0]);
        assert_eq!(ticks(0.0, 1.0), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
    }
}
