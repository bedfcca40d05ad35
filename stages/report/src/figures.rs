//! Figures: a radar chart per model group (like the paper's Figure 4) and a bar chart of the
//! clean-vs-perturbed drop per method, as SVG and as PNG (rasterised with resvg; text in the
//! system's sans-serif font).

use std::fmt::Write as _;

use crate::table::Table;

const PALETTE: &[&str] = &[
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Rasterises an SVG figure to PNG on a white background, at twice its nominal size.
pub fn to_png(svg: &str) -> Result<Vec<u8>, String> {
    use resvg::{tiny_skia, usvg};
    static FONTS: std::sync::OnceLock<std::sync::Arc<usvg::fontdb::Database>> =
        std::sync::OnceLock::new();
    let fonts = FONTS.get_or_init(|| {
        let mut db = usvg::fontdb::Database::new();
        db.load_system_fonts();
        // fontdb maps `sans-serif` to Arial; use a sans-serif face this machine has.
        let families: Vec<String> = db
            .faces()
            .flat_map(|face| face.families.iter().map(|(name, _)| name.clone()))
            .collect();
        let preferred = [
            "DejaVu Sans",
            "Liberation Sans",
            "Noto Sans",
            "Arial",
            "Helvetica",
        ];
        if let Some(family) = preferred
            .iter()
            .map(|p| p.to_string())
            .find(|p| families.contains(p))
            .or_else(|| families.first().cloned())
        {
            db.set_sans_serif_family(family);
        }
        std::sync::Arc::new(db)
    });
    let options = usvg::Options {
        fontdb: fonts.clone(),
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
    pixmap.encode_png().map_err(|e| format!("figure PNG: {e}"))
}

/// Every figure of a table: `(file name, SVG text)`.
pub fn render(table: &Table) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for group in &table.groups {
        let safe: String = group
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        if table.columns.len() >= 3 {
            out.push((format!("radar-{safe}.svg"), radar(table, group)));
        }
        if let Some(svg) = drop_bars(table, group) {
            out.push((format!("drop-{safe}.svg"), svg));
        }
    }
    out
}

fn radar(table: &Table, group: &crate::table::Group) -> String {
    let (size, cx, cy, radius) = (500.0, 250.0, 220.0, 150.0);
    let n = table.columns.len();
    let point = |i: usize, r: f64| {
        let angle = std::f64::consts::TAU * i as f64 / n as f64 - std::f64::consts::FRAC_PI_2;
        (cx + r * angle.cos(), cy + r * angle.sin())
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n",
        size + 160.0,
        size - 60.0
    );
    let _ = writeln!(
        svg,
        "<text x=\"10\" y=\"18\" font-size=\"14\">{}</text>",
        escape(&group.name)
    );
    for ring in [0.25, 0.5, 0.75, 1.0] {
        let pts: Vec<String> = (0..n)
            .map(|i| point(i, radius * ring))
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            svg,
            "<polygon points=\"{}\" fill=\"none\" stroke=\"#ccc\"/>",
            pts.join(" ")
        );
    }
    for (i, c) in table.columns.iter().enumerate() {
        let (x, y) = point(i, radius + 18.0);
        let label = format!(
            "{} {}",
            table.names.get(&c.dataset).unwrap_or(&c.dataset),
            c.header
        );
        let _ = writeln!(
            svg,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"middle\">{}</text>",
            escape(&label)
        );
    }
    for (m, (method, cells)) in group.rows.iter().enumerate() {
        let color = PALETTE[m % PALETTE.len()];
        let pts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, cell)| point(i, radius * cell.mean().unwrap_or(0.0).clamp(0.0, 1.0)))
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            svg,
            "<polygon points=\"{}\" fill=\"{color}\" fill-opacity=\"0.08\" stroke=\"{color}\" stroke-width=\"1.5\"/>",
            pts.join(" ")
        );
        let _ = writeln!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            size + 10.0,
            40.0 + 16.0 * m as f64,
            size + 26.0,
            49.0 + 16.0 * m as f64,
            escape(table.names.get(method).unwrap_or(method))
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Mean clean-minus-perturbed accuracy (points) per method, over the datasets that have both.
fn drop_bars(table: &Table, group: &crate::table::Group) -> Option<String> {
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
            (method.clone(), mean * 100.0)
        })
        .collect();
    let max = drops.iter().map(|d| d.1.abs()).fold(1.0, f64::max);
    let (width, bar, gap) = (60.0 + 70.0 * drops.len() as f64, 40.0, 30.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"300\" font-family=\"sans-serif\" font-size=\"11\">\n<text x=\"10\" y=\"18\" font-size=\"14\">{}: clean - perturbed accuracy (points)</text>\n<line x1=\"40\" y1=\"250\" x2=\"{}\" y2=\"250\" stroke=\"#333\"/>\n",
        escape(&group.name),
        width - 10.0
    );
    for (i, (method, drop)) in drops.iter().enumerate() {
        let h = 200.0 * drop.abs() / max;
        let x = 50.0 + i as f64 * (bar + gap);
        let y = if *drop >= 0.0 { 250.0 - h } else { 250.0 };
        let color = PALETTE[i % PALETTE.len()];
        let _ = writeln!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar}\" height=\"{h:.1}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{drop:.1}</text><text x=\"{:.1}\" y=\"268\" text-anchor=\"middle\">{}</text>",
            x + bar / 2.0,
            y - 4.0,
            x + bar / 2.0,
            escape(table.names.get(method).unwrap_or(method))
        );
    }
    svg.push_str("</svg>\n");
    Some(svg)
}
