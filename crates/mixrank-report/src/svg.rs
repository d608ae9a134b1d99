//! Inline SVG charts: a line chart with axes, ticks and a legend, and a heatmap. Plain
//! strings, fixed sizes (the page scales them with CSS), all text escaped.

use std::fmt::Write as _;

/// Series colours (colour-blind-safe Okabe–Ito order).
const PALETTE: [&str; 8] = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"];

/// Escapes text for an XML text node or attribute.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Draw a marker at every point (for sparse series such as validation).
    pub markers: bool,
}

/// A line chart's labels and options.
#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Fixed `(x_min, x_max, y_min, y_max)`; otherwise the data's range.
    pub range: Option<(f64, f64, f64, f64)>,
    /// Draw the dashed line y = x (reliability diagrams).
    pub diagonal: bool,
}

const W: f64 = 600.0;
const H: f64 = 320.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 44.0;

/// Round tick positions covering `[lo, hi]`: steps of 1, 2 or 5 × 10^k.
pub fn ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A tick label with as many decimals as the tick spacing `step` needs (so adjacent
/// ticks never print the same text).
fn fmt_tick(v: f64, step: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e7).contains(&a) {
        return format!("{v:.2e}");
    }
    let decimals = if step > 0.0 { (-step.log10().floor()).clamp(0.0, 6.0) as usize } else { 4 };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn spacing(t: &[f64]) -> f64 {
    if t.len() > 1 {
        t[1] - t[0]
    } else {
        0.0
    }
}

fn data_range(series: &[Series]) -> (f64, f64, f64, f64) {
    let pts = series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |lo: f64, hi: f64| if hi > lo { ((hi - lo) * 0.05, (hi - lo) * 0.05) } else { (0.5, 0.5) };
    let (px, _) = pad(x0, x1);
    let (py, _) = pad(y0, y1);
    (if x1 > x0 { x0 } else { x0 - px }, if x1 > x0 { x1 } else { x1 + px }, y0 - py, y1 + py)
}

/// A line chart of `series` as an `<svg>` element.
pub fn line_chart(chart: &Chart, series: &[Series]) -> String {
    let (x0, x1, y0, y1) = chart.range.unwrap_or_else(|| data_range(series));
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP + ph - (y - y0) / (y1 - y0) * ph;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" class="chart" role="img"><title>{t}</title><text x="{tx}" y="18" class="ct">{t}</text>"#,
        t = escape(&chart.title),
        tx = LEFT
    );
    let yt = ticks(y0, y1, 5);
    let ys = spacing(&yt);
    for t in yt {
        let y = sy(t);
        let _ = write!(
            o,
            r##"<line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{tx}" y="{ty:.1}" class="tk" text-anchor="end">{v}</text>"##,
            x2 = LEFT + pw,
            tx = LEFT - 6.0,
            ty = y + 4.0,
            v = fmt_tick(t, ys)
        );
    }
    let xt = ticks(x0, x1, 6);
    let xs = spacing(&xt);
    for t in xt {
        let x = sx(t);
        let _ = write!(
            o,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{yb}" stroke="#f0f0f0"/><text x="{x:.1}" y="{ty}" class="tk" text-anchor="middle">{v}</text>"##,
            yb = TOP + ph,
            ty = TOP + ph + 16.0,
            v = fmt_tick(t, xs)
        );
    }
    let _ = write!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#888"/><text x="{xl}" y="{yl}" class="al" text-anchor="middle">{xt}</text><text transform="translate(14 {ym}) rotate(-90)" class="al" text-anchor="middle">{yt}</text>"##,
        xl = LEFT + pw / 2.0,
        yl = H - 6.0,
        ym = TOP + ph / 2.0,
        xt = escape(&chart.x_label),
        yt = escape(&chart.y_label)
    );
    if chart.diagonal {
        let (a, b) = (x0.max(y0), x1.min(y1));
        if b > a {
            let _ = write!(
                o,
                r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="4 3"/>"##,
                sx(a),
                sy(a),
                sx(b),
                sy(b)
            );
        }
    }
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        if pts.len() > 1 {
            let _ =
                write!(o, r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#, pts.join(" "));
        }
        if s.markers || pts.len() == 1 {
            for p in &pts {
                let (x, y) = p.split_once(',').expect("formatted as x,y");
                let _ = write!(o, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
            }
        }
        let ly = TOP + 10.0 + 16.0 * i as f64;
        let lx = LEFT + pw + 10.0;
        let _ = write!(
            o,
            r#"<line x1="{lx}" x2="{lx2}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2.5"/><text x="{tx}" y="{ty}" class="lg">{n}</text>"#,
            lx2 = lx + 16.0,
            tx = lx + 20.0,
            ty = ly + 4.0,
            n = escape(&s.name)
        );
    }
    o.push_str("</svg>");
    o
}

/// Cell colour for a value in [0, 1]: white → deep blue.
fn heat(v: f64) -> String {
    let t = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    format!("#{:02x}{:02x}{:02x}", lerp(255.0, 8.0), lerp(255.0, 48.0), lerp(255.0, 107.0))
}

/// A heatmap of `values[row][col]` (each in [0, 1]) with the value printed in each cell.
pub fn heatmap(title: &str, rows: &[String], cols: &[String], values: &[Vec<f64>]) -> String {
    // Cells wide enough for the longest column label (11 px text, ~6.2 px a character).
    let longest = cols.iter().map(|c| c.chars().count()).max().unwrap_or(0) as f64;
    let (cw, ch, lw, th) = ((6.2 * longest + 10.0).max(74.0), 26.0, 150.0, 44.0);
    let w = lw + cw * cols.len() as f64 + 10.0;
    let h = th + ch * rows.len() as f64 + 10.0;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" class="heat" role="img"><title>{t}</title><text x="0" y="16" class="ct">{t}</text>"#,
        t = escape(title)
    );
    for (j, c) in cols.iter().enumerate() {
        let _ = write!(
            o,
            r#"<text x="{x}" y="{y}" class="tk" text-anchor="middle">{c}</text>"#,
            x = lw + cw * (j as f64 + 0.5),
            y = th - 8.0,
            c = escape(c)
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let y = th + ch * i as f64;
        let _ = write!(
            o,
            r#"<text x="{x}" y="{ty}" class="tk" text-anchor="end">{r}</text>"#,
            x = lw - 8.0,
            ty = y + ch / 2.0 + 4.0,
            r = escape(r)
        );
        for (j, &v) in values[i].iter().enumerate() {
            let x = lw + cw * j as f64;
            let ink = if v > 0.55 { "#fff" } else { "#222" };
            let _ = write!(
                o,
                r##"<rect x="{x}" y="{y}" width="{cw}" height="{ch}" fill="{f}" stroke="#fff"/><text x="{tx}" y="{ty}" class="cv" fill="{ink}" text-anchor="middle">{v:.3}</text>"##,
                f = heat(v),
                tx = x + cw / 2.0,
                ty = y + ch / 2.0 + 4.0
            );
        }
    }
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(ticks(0.0, 1.0, 5), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        let t = ticks(0.63, 0.71, 5);
        assert!(t.iter().all(|&v| (0.63..=0.71).contains(&v)) && t.len() >= 3, "{t:?}");
        assert_eq!(ticks(3.0, 3.0, 5), vec![3.0]);
        // Adjacent ticks never print the same label.
        let t = ticks(7843.6, 7845.1, 5);
        let labels: Vec<String> = t.iter().map(|&v| fmt_tick(v, spacing(&t))).collect();
        assert_eq!(labels, ["7844", "7844.5", "7845"]);
        assert_eq!(fmt_tick(0.2, 0.2), "0.2");
        assert_eq!(fmt_tick(1500.0, 500.0), "1500");
    }

    #[test]
    fn text_is_escaped_and_series_drawn() {
        let s = [
            Series { name: "a<b>".into(), points: vec![(0.0, 1.0), (1.0, 2.0)], markers: false },
            Series { name: "v".into(), points: vec![(0.5, f64::NAN), (0.7, 1.5)], markers: true },
        ];
        let svg = line_chart(&Chart { title: "t&t".into(), ..Chart::default() }, &s);
        assert!(svg.contains("a&lt;b&gt;") && svg.contains("t&amp;t") && !svg.contains("a<b>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 1, "the NaN point is dropped");
    }

    #[test]
    fn heat_scale_ends() {
        assert_eq!(heat(0.0), "#ffffff");
        assert_eq!(heat(1.0), "#08306b");
        assert_eq!(heat(7.0), "#08306b");
        let svg = heatmap("g", &["click".into()], &["0:dcnv2".into(), "1:mlp".into()], &[vec![0.25, 0.75]]);
        assert!(svg.contains(">0.250<") && svg.contains(">0.750<"));
    }
}
