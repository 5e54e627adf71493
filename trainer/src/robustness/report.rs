//! The robustness report's text table, plots and self-contained HTML page (the PNG
//! plots are embedded as data URIs, so the one file can be mailed or attached to a CI
//! run).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine as _;
use image::{imageops, RgbImage};
use plotters::style::RGBColor;

use super::corrupt::{Corruption, SEVERITIES};
use super::{corrupt_all, Cell, Report};
use crate::data::IMAGE_BYTES;
use crate::plot::{line_chart, Series};

/// Pixels per image side in the examples grid.
const TILE: u32 = 96;

/// The accuracy and drift tables as text.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "clean: {:.2}% accuracy, drift score {:.3}{}\n",
        100.0 * r.clean.accuracy,
        r.clean.drift_score,
        if r.clean.drifting { " (drifting)" } else { "" }
    );
    let _ = writeln!(s, "accuracy % / drift score per severity (* = the drift alarm would be on)");
    let _ = write!(s, "{:<15}", "corruption");
    for sev in 1..=SEVERITIES {
        let _ = write!(s, " {:>14}", format!("severity {sev}"));
    }
    s.push('\n');
    for c in &r.corruptions {
        let _ = write!(s, "{:<15}", c.name);
        for cell in &c.cells {
            let _ = write!(
                s,
                " {:>14}",
                format!(
                    "{:.1} / {:.2}{}",
                    100.0 * cell.accuracy,
                    cell.drift_score,
                    if cell.drifting { "*" } else { " " }
                )
            );
        }
        s.push('\n');
    }
    let _ = writeln!(s, "\nmean accuracy over corruptions and severities: {:.2}%", 100.0 * r.mean_corruption_accuracy);
    for g in &r.gates {
        let _ = writeln!(
            s,
            "gate --{} {}: {:.3} {} ({})",
            g.name,
            g.limit,
            g.value,
            if g.passed { "passed" } else { "FAILED" },
            g.detail
        );
    }
    s
}

/// The first image, clean and at every severity of each corruption: one row per
/// corruption, enlarged.
pub fn examples(pixels: &[u8], corruptions: &[Corruption], seed: u64) -> RgbImage {
    let first = pixels.get(..IMAGE_BYTES).unwrap_or(&[]);
    let cols = 1 + SEVERITIES as u32;
    let mut grid =
        RgbImage::from_pixel(cols * TILE, corruptions.len().max(1) as u32 * TILE, image::Rgb([255, 255, 255]));
    let tile = |px: &[u8]| {
        RgbImage::from_raw(32, 32, px.to_vec()).map(|t| imageops::resize(&t, TILE, TILE, imageops::FilterType::Nearest))
    };
    for (row, &c) in corruptions.iter().enumerate() {
        let y = i64::from(row as u32 * TILE);
        if let Some(t) = tile(first) {
            imageops::replace(&mut grid, &t, 0, y);
        }
        for sev in 1..=SEVERITIES {
            if let Some(t) = tile(&corrupt_all(first, c, sev, seed)) {
                imageops::replace(&mut grid, &t, i64::from(sev as u32 * TILE), y);
            }
        }
    }
    grid
}

/// Ten distinct line colours (matplotlib's "tab10").
const COLOURS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

fn colour(i: usize) -> RGBColor {
    let (r, g, b) = COLOURS[i % COLOURS.len()];
    RGBColor(r, g, b)
}

fn series_of<'a>(r: &'a Report, value: impl Fn(&Cell) -> f64) -> Vec<Series<'a>> {
    r.corruptions
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let pts =
                std::iter::once(&r.clean).chain(&c.cells).map(|cell| (cell.severity as f64, value(cell))).collect();
            (c.name, pts, colour(i))
        })
        .collect()
}

fn data_uri(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Writes `accuracy.png`, `drift.png`, `examples.png` and `report.html` into `dir`.
pub fn write_html(dir: &Path, r: &Report, examples: &RgbImage) -> Result<()> {
    let acc = dir.join("accuracy.png");
    line_chart(
        &acc,
        "Accuracy under corruption",
        "severity (0 = clean)",
        "accuracy %",
        &series_of(r, |c| 100.0 * c.accuracy),
        &[],
    )?;
    let drift = dir.join("drift.png");
    let mut drift_series = series_of(r, |c| c.drift_score);
    let threshold = vec![(0.0, r.drift_threshold), (SEVERITIES as f64, r.drift_threshold)];
    drift_series.push(("alarm threshold", threshold, RGBColor(0, 0, 0)));
    line_chart(
        &drift,
        "Drift score cifar-serve would report",
        "severity (0 = clean)",
        "drift score (largest PSI)",
        &drift_series,
        &[],
    )?;
    let ex = dir.join("examples.png");
    examples.save(&ex).with_context(|| format!("cannot write {}", ex.display()))?;

    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Robustness of {m}</title>\n<style>\
body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}\
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th:first-child,td:first-child{{text-align:left}}\
.fail{{color:#b00;font-weight:bold}}td.what{{text-align:left}}.pass{{color:#070}}img{{max-width:100%;border:1px solid #ddd}}\
</style></head><body>\n<h1>Robustness of {m}</h1>\n<p>{prec}, {n} {split} images of <code>{data}</code> (seed {seed}). \
Clean accuracy <b>{clean:.2}%</b>, clean drift score {cd:.3}; mean accuracy over {k} corruptions &times; {SEVERITIES} \
severities <b>{mean:.2}%</b>. Drift thresholds: score {t}, class divergence {ct} bits.</p>\n",
        m = escape(&r.model),
        prec = escape(&r.precision),
        n = r.images,
        split = escape(&r.split),
        data = escape(&r.data),
        seed = r.seed,
        clean = 100.0 * r.clean.accuracy,
        cd = r.clean.drift_score,
        k = r.corruptions.len(),
        mean = 100.0 * r.mean_corruption_accuracy,
        t = r.drift_threshold,
        ct = r.drift_class_threshold,
    );
    if !r.gates.is_empty() {
        h.push_str(
            "<h2>Gates</h2>\n<table><tr><th>gate</th><th>limit</th><th>value</th><th>result</th><th>what</th></tr>\n",
        );
        for g in &r.gates {
            let (class, word) = if g.passed { ("pass", "passed") } else { ("fail", "FAILED") };
            let _ = writeln!(
                h,
                "<tr><td>--{}</td><td>{}</td><td>{:.3}</td><td class=\"{class}\">{word}</td><td class=\"what\">{}</td></tr>",
                g.name,
                g.limit,
                g.value,
                escape(&g.detail)
            );
        }
        h.push_str("</table>\n");
    }
    let cell_table = |title: &str, value: &dyn Fn(&Cell) -> String, shade: &dyn Fn(&Cell) -> f64| {
        let mut t = format!("<h2>{title}</h2>\n<table><tr><th>corruption</th><th>clean</th>");
        for sev in 1..=SEVERITIES {
            let _ = write!(t, "<th>{sev}</th>");
        }
        t.push_str("</tr>\n");
        for c in &r.corruptions {
            let _ = write!(t, "<tr><td>{}</td>", c.name);
            for cell in std::iter::once(&r.clean).chain(&c.cells) {
                let a = shade(cell).clamp(0.0, 1.0);
                let _ = write!(t, "<td style=\"background:rgba(200,40,40,{a:.2})\">{}</td>", value(cell));
            }
            t.push_str("</tr>\n");
        }
        t + "</table>\n"
    };
    let clean_acc = r.clean.accuracy;
    h += &cell_table("Accuracy (%)", &|c| format!("{:.1}", 100.0 * c.accuracy), &|c| {
        (clean_acc - c.accuracy) / clean_acc.max(1e-9)
    });
    let t = r.drift_threshold;
    h += &cell_table(
        "Drift score (bold: the alarm would be on)",
        &|c| if c.drifting { format!("<b>{:.3}</b>", c.drift_score) } else { format!("{:.3}", c.drift_score) },
        &|c| 0.5 * c.drift_score / t.max(1e-9),
    );
    let _ = write!(
        h,
        "<h2>Plots</h2>\n<img id=\"accuracy-plot\" alt=\"accuracy per severity\" src=\"{}\">\n\
<img id=\"drift-plot\" alt=\"drift score per severity\" src=\"{}\">\n\
<h2>Examples</h2>\n<p>The first image: clean, then severities 1 to 5; one row per corruption, in table order.</p>\n\
<img id=\"examples\" alt=\"corrupted examples\" src=\"{}\">\n</body></html>\n",
        data_uri(&acc)?,
        data_uri(&drift)?,
        data_uri(&ex)?
    );
    cifar_sdk::write_atomic(&dir.join("report.html"), h.as_bytes())?;
    Ok(())
}
