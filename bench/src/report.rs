//! The latency benchmark's HTML report: one self-contained page (inline CSS and
//! SVG, no scripts, no external resources, since benchmark machines are often
//! offline) with the summary table, a TTFT and an OTPS histogram per group, and
//! box plots comparing groups.

use std::fmt::Write as _;

use crate::latency::{CallRecord, GroupSummary, LatencyRun};
use crate::stats::Distribution;
use crate::table::num;

/// Escapes text for HTML and SVG.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const WIDTH: f64 = 440.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 30.0;
const TOP: f64 = 24.0;

/// A compact number for axis labels.
fn tick(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A histogram of `values`; an empty placeholder when there are none.
pub fn histogram_svg(values: &[f64], title: &str) -> String {
    let values: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"><title>{t}</title><text x="{x}" y="16" class="title">{t}</text>"#,
        t = escape(title),
        x = WIDTH / 2.0,
    );
    if values.is_empty() {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" class="empty">no successful calls</text></svg>"#,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        return svg;
    }
    let (mut lo, mut hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if hi - lo < 1e-9 {
        lo -= 0.5;
        hi += 0.5;
    }
    // About sqrt(n) bins, between 5 and 30, so small runs are not all gaps.
    let bins = ((values.len() as f64).sqrt().ceil() as usize).clamp(5, 30);
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    for v in &values {
        let i = (((v - lo) / width) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let peak = counts.iter().copied().max().unwrap_or(1).max(1);
    let plot_w = WIDTH - LEFT - 10.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let bar_w = plot_w / bins as f64;
    for (i, &c) in counts.iter().enumerate() {
        let h = plot_h * c as f64 / peak as f64;
        let x = LEFT + i as f64 * bar_w;
        let y = TOP + plot_h - h;
        let from = lo + i as f64 * width;
        let _ = write!(
            svg,
            r#"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}"><title>{a} to {b}: {c}</title></rect>"#,
            w = (bar_w - 1.0).max(0.5),
            a = tick(from),
            b = tick(from + width),
        );
    }
    let base = TOP + plot_h;
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{LEFT}" y1="{base}" x2="{x2}" y2="{base}"/><line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}"/><text x="{LEFT}" y="{ly}" class="lab">{lo}</text><text x="{mx}" y="{ly}" class="lab mid">{mid}</text><text x="{x2}" y="{ly}" class="lab end">{hi}</text><text x="{yx}" y="{ty}" class="lab end">{peak}</text><text x="{yx}" y="{base}" class="lab end">0</text></svg>"#,
        x2 = LEFT + plot_w,
        ly = base + 16.0,
        mx = LEFT + plot_w / 2.0,
        lo = tick(lo),
        mid = tick((lo + hi) / 2.0),
        hi = tick(hi),
        yx = LEFT - 4.0,
        ty = TOP + 8.0,
    );
    svg
}

/// Horizontal box plots, one row per labelled distribution: whiskers from min
/// to max, box from p25 to p75, a line at the median and a dot at the mean.
pub fn boxplot_svg(rows: &[(String, Option<Distribution>)], title: &str) -> String {
    let label_w = 360.0;
    let plot_w = 420.0;
    let row_h = 30.0;
    let width = label_w + plot_w + 20.0;
    let height = TOP + row_h * rows.len().max(1) as f64 + BOTTOM;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img"><title>{t}</title><text x="{x}" y="16" class="title">{t}</text>"#,
        t = escape(title),
        x = width / 2.0,
    );
    let present: Vec<&Distribution> = rows.iter().filter_map(|(_, d)| d.as_ref()).collect();
    let lo = present.iter().map(|d| d.min).fold(f64::INFINITY, f64::min);
    let hi = present
        .iter()
        .map(|d| d.max)
        .fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if !lo.is_finite() || !hi.is_finite() {
        (0.0, 1.0)
    } else if hi - lo < 1e-9 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    };
    let x = |v: f64| label_w + (v - lo) / (hi - lo) * plot_w;
    for (i, (label, d)) in rows.iter().enumerate() {
        let cy = TOP + row_h * i as f64 + row_h / 2.0;
        let _ = write!(
            svg,
            r#"<text x="{lx}" y="{ty}" class="lab end">{l}</text>"#,
            lx = label_w - 8.0,
            ty = cy + 4.0,
            l = escape(label),
        );
        let Some(d) = d else {
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" class="lab">no data</text>"#,
                label_w,
                cy + 4.0
            );
            continue;
        };
        let _ = write!(
            svg,
            concat!(
                r#"<g><title>min {min}, p25 {p25}, p50 {p50}, p75 {p75}, max {max}, mean {mean}</title>"#,
                r#"<line class="whisker" x1="{xmin:.1}" y1="{cy}" x2="{xmax:.1}" y2="{cy}"/>"#,
                r#"<line class="whisker" x1="{xmin:.1}" y1="{t1}" x2="{xmin:.1}" y2="{b1}"/>"#,
                r#"<line class="whisker" x1="{xmax:.1}" y1="{t1}" x2="{xmax:.1}" y2="{b1}"/>"#,
                r#"<rect class="box" x="{x25:.1}" y="{t2}" width="{bw:.1}" height="{bh}"/>"#,
                r#"<line class="median" x1="{x50:.1}" y1="{t2}" x2="{x50:.1}" y2="{b2}"/>"#,
                r#"<circle class="mean" cx="{xmean:.1}" cy="{cy}" r="2.5"/></g>"#
            ),
            min = tick(d.min),
            p25 = tick(d.p25),
            p50 = tick(d.p50),
            p75 = tick(d.p75),
            max = tick(d.max),
            mean = tick(d.mean),
            xmin = x(d.min),
            xmax = x(d.max),
            x25 = x(d.p25),
            bw = (x(d.p75) - x(d.p25)).max(1.0),
            x50 = x(d.p50),
            xmean = x(d.mean),
            t1 = cy - 6.0,
            b1 = cy + 6.0,
            t2 = cy - 10.0,
            b2 = cy + 10.0,
            bh = 20.0,
            cy = cy,
        );
    }
    let base = height - BOTTOM + 4.0;
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{label_w}" y1="{base}" x2="{x2}" y2="{base}"/><text x="{label_w}" y="{ly}" class="lab">{lo}</text><text x="{mx}" y="{ly}" class="lab mid">{mid}</text><text x="{x2}" y="{ly}" class="lab end">{hi}</text></svg>"#,
        x2 = label_w + plot_w,
        ly = base + 16.0,
        mx = label_w + plot_w / 2.0,
        lo = tick(lo),
        mid = tick((lo + hi) / 2.0),
        hi = tick(hi),
    );
    svg
}

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
svg { background: #fafafa; border: 1px solid #eee; }
svg .title { font-size: 13px; text-anchor: middle; font-weight: 600; }
svg .lab { font-size: 11px; fill: #555; } svg .mid { text-anchor: middle; } svg .end { text-anchor: end; }
svg .empty { font-size: 12px; text-anchor: middle; fill: #999; }
svg .bar { fill: #4a7fb5; } svg .axis { stroke: #888; }
svg .box { fill: #cfe0f1; stroke: #4a7fb5; } svg .median { stroke: #1d3d5e; stroke-width: 2; }
svg .whisker { stroke: #4a7fb5; } svg .mean { fill: #d9534f; }
"#;

fn group_label(g: &GroupSummary) -> String {
    format!("{} ({})", g.model_id, g.inference_profile.name())
}

fn in_group<'a>(
    calls: &'a [CallRecord],
    g: &'a GroupSummary,
) -> impl Iterator<Item = &'a CallRecord> {
    calls.iter().filter(move |c| {
        c.error.is_none() && c.model_id == g.model_id && c.inference_profile == g.inference_profile
    })
}

/// The whole report page.
pub fn latency_html(run: &LatencyRun) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Bedrock latency benchmark</title><style>{STYLE}</style></head><body><h1>Bedrock latency benchmark</h1><p>Endpoint {}: {} calls in {:.1} s, {} errors.</p>",
        escape(&run.endpoint),
        run.calls_total,
        run.elapsed_s,
        run.errors_total
    );
    h.push_str("<table><tr><th>model</th><th>profile</th><th>calls</th><th>errors</th><th>served optimized</th><th>TTFT mean</th><th>TTFT p50</th><th>TTFT p90</th><th>TTFT p99</th><th>TTFT std</th><th>OTPS mean</th><th>OTPS p50</th><th>OTPS p90</th><th>OTPS p99</th><th>total p50 ms</th><th>total p99 ms</th></tr>");
    for g in &run.groups {
        let d = |d: Option<Distribution>, f: fn(&Distribution) -> f64| num(d.as_ref().map(f), 1);
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&g.model_id),
            g.inference_profile.name(),
            g.count,
            g.errors,
            g.served.get("optimized").copied().unwrap_or(0),
            d(g.ttft_ms, |d| d.mean),
            d(g.ttft_ms, |d| d.p50),
            d(g.ttft_ms, |d| d.p90),
            d(g.ttft_ms, |d| d.p99),
            d(g.ttft_ms, |d| d.std),
            d(g.otps, |d| d.mean),
            d(g.otps, |d| d.p50),
            d(g.otps, |d| d.p90),
            d(g.otps, |d| d.p99),
            d(g.total_ms, |d| d.p50),
            d(g.total_ms, |d| d.p99),
        );
    }
    h.push_str("</table>");
    if !run.errors_by_code.is_empty() {
        h.push_str("<h2>Errors by code</h2><table><tr><th>code</th><th>calls</th></tr>");
        for (code, n) in &run.errors_by_code {
            let _ = write!(h, "<tr><td>{}</td><td>{n}</td></tr>", escape(code));
        }
        h.push_str("</table>");
    }

    h.push_str("<h2>Groups compared</h2><div class=\"charts\">");
    for (title, pick) in [
        (
            "TTFT (ms)",
            (|g: &GroupSummary| g.ttft_ms) as fn(&GroupSummary) -> Option<Distribution>,
        ),
        ("OTPS (tokens/s)", |g: &GroupSummary| g.otps),
        ("Total latency (ms)", |g: &GroupSummary| g.total_ms),
    ] {
        let rows: Vec<(String, Option<Distribution>)> = run
            .groups
            .iter()
            .map(|g| (group_label(g), pick(g)))
            .collect();
        h.push_str(&boxplot_svg(&rows, title));
    }
    h.push_str("</div>");

    for g in &run.groups {
        let _ = write!(
            h,
            "<h2>{}</h2><div class=\"charts\">",
            escape(&group_label(g))
        );
        let ttft: Vec<f64> = in_group(&run.calls, g).filter_map(|c| c.ttft_ms).collect();
        let otps: Vec<f64> = in_group(&run.calls, g).filter_map(|c| c.otps).collect();
        h.push_str(&histogram_svg(&ttft, "TTFT (ms)"));
        h.push_str(&histogram_svg(&otps, "OTPS (tokens/s)"));
        h.push_str("</div>");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_inline_svg_without_scripts() {
        let svg = histogram_svg(&[1.0, 2.0, 2.0, 3.0, 10.0], "TTFT <ms>");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("TTFT &lt;ms&gt;"));
        assert_eq!(svg.matches("<rect").count(), 5);
        assert!(histogram_svg(&[], "x").contains("no successful calls"));
        let d = Distribution::of([1.0, 2.0, 3.0]);
        let bp = boxplot_svg(&[("a".into(), d), ("b".into(), None)], "t");
        assert!(bp.contains("class=\"box\"") && bp.contains("no data"));
        assert!(!bp.contains("<script"));
    }
}
