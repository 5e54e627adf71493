//! PNG plots with plotters: training curves and the confusion matrix.
//!
//! Text needs a TrueType font; plotters' `ab_glyph` backend is given the first of a few
//! common system fonts. Without one, the plots are drawn without labels.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::run::RunDir;

const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a system font once; returns whether text can be drawn.
pub(crate) fn have_font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        for p in FONT_CANDIDATES {
            if let Ok(bytes) = std::fs::read(p) {
                let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

pub(crate) fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

/// One named line of a chart.
pub type Series<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);

/// A line chart of `(x, y)` series, with `marks` (a dot and a text at a point).
pub fn line_chart(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[Series],
    marks: &[(f64, f64, String)],
) -> Result<()> {
    let text = have_font();
    let pts: Vec<&(f64, f64)> = series.iter().flat_map(|s| s.1.iter()).collect();
    if pts.is_empty() {
        return Ok(());
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &&(x, y) in &pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if !marks.is_empty() {
        // Room for the marks' labels, which are written to the right of their points.
        let span = x1 - x0;
        x0 -= 0.03 * span;
        x1 += 0.25 * span;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15).x_label_area_size(if text { 40 } else { 5 }).y_label_area_size(if text { 60 } else { 5 });
    if text {
        builder.caption(title, ("sans-serif", 22));
    }
    let mut chart = builder.build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad)).map_err(plot_err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc(xlabel).y_desc(ylabel);
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(plot_err)?;
    for (name, data, color) in series {
        let s = chart.draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2))).map_err(plot_err)?;
        if text {
            let c = *color;
            s.label(*name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        }
    }
    for (x, y, label) in marks {
        chart.draw_series(std::iter::once(Circle::new((*x, *y), 4, BLACK.filled()))).map_err(plot_err)?;
        if text {
            let at = chart.backend_coord(&(*x, *y));
            root.draw(&Text::new(label.clone(), (at.0 + 6, at.1 - 18), ("sans-serif", 14))).map_err(plot_err)?;
        }
    }
    if text && series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// `loss.png` (per-step loss and its moving average) and `accuracy.png` (validation
/// accuracy per epoch) from `metrics.jsonl`.
pub fn training_curves(run: &RunDir) -> Result<()> {
    let records = run.records()?;
    let get = |r: &serde_json::Value, k: &str| r.get(k).and_then(|v| v.as_f64());
    let kind = |r: &serde_json::Value| r.get("kind").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let steps: Vec<(f64, f64)> =
        records.iter().filter(|r| kind(r) == "step").filter_map(|r| Some((get(r, "step")?, get(r, "loss")?))).collect();
    let window = (steps.len() / 50).max(1);
    let smooth: Vec<(f64, f64)> = steps
        .iter()
        .enumerate()
        .map(|(i, &(x, _))| {
            let lo = i.saturating_sub(window - 1);
            let n = (i - lo + 1) as f64;
            (x, steps[lo..=i].iter().map(|p| p.1).sum::<f64>() / n)
        })
        .collect();
    line_chart(
        &run.file("loss.png"),
        "training loss",
        "step",
        "loss",
        &[("loss", steps, RGBColor(170, 190, 230)), (&format!("mean of {window}"), smooth, BLUE)],
        &[],
    )?;
    let acc: Vec<(f64, f64)> = records
        .iter()
        .filter(|r| kind(r) == "epoch")
        .filter_map(|r| Some((get(r, "epoch")?, 100.0 * get(r, "val_acc")?)))
        .collect();
    let mut series = vec![("validation accuracy (%)", acc, RGBColor(200, 60, 40))];
    if let Some(f) = records.iter().rev().find(|r| kind(r) == "final") {
        let last_epoch =
            records.iter().filter(|r| kind(r) == "epoch").filter_map(|r| get(r, "epoch")).fold(0.0, f64::max);
        if let (Some(a), Some(b)) = (get(f, "val_acc"), get(f, "val_acc_tta")) {
            series[0].1.push((last_epoch, 100.0 * a));
            series.push((
                "final, with TTA (%)",
                vec![(last_epoch, 100.0 * b), (last_epoch, 100.0 * b)],
                RGBColor(40, 140, 60),
            ));
        }
    }
    line_chart(&run.file("accuracy.png"), "validation accuracy", "epoch", "accuracy (%)", &series, &[])
}

/// A confusion-matrix heat map with counts.
pub fn confusion_matrix(path: &Path, names: &[String], m: &[Vec<usize>]) -> Result<()> {
    let text = have_font();
    let n = names.len().max(1);
    let cell = 56u32;
    let (left, top) = (if text { 110 } else { 10 }, if text { 40 } else { 10 });
    let size = (left + cell * n as u32 + 20, top + cell * n as u32 + if text { 110 } else { 10 });
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let max = m.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    for (i, row) in m.iter().enumerate() {
        let total: usize = row.iter().sum::<usize>().max(1);
        for (j, &v) in row.iter().enumerate() {
            let x = (left + j as u32 * cell) as i32;
            let y = (top + i as u32 * cell) as i32;
            let frac = v as f64 / max;
            let shade = (255.0 * (1.0 - frac)) as u8;
            let color =
                if i == j { RGBColor(shade, 255 - (frac * 90.0) as u8, shade) } else { RGBColor(255, shade, shade) };
            root.draw(&Rectangle::new([(x, y), (x + cell as i32, y + cell as i32)], color.filled()))
                .map_err(plot_err)?;
            root.draw(&Rectangle::new([(x, y), (x + cell as i32, y + cell as i32)], BLACK.mix(0.2)))
                .map_err(plot_err)?;
            if text {
                let pct = 100.0 * v as f64 / total as f64;
                let fg = if frac > 0.6 { WHITE } else { BLACK };
                root.draw(&Text::new(format!("{v}"), (x + 6, y + 10), ("sans-serif", 14).into_font().color(&fg)))
                    .map_err(plot_err)?;
                root.draw(&Text::new(format!("{pct:.0}%"), (x + 6, y + 30), ("sans-serif", 12).into_font().color(&fg)))
                    .map_err(plot_err)?;
            }
        }
    }
    if text {
        let below = (top + cell * n as u32 + 8) as i32;
        for (i, name) in names.iter().enumerate() {
            let y = (top + i as u32 * cell + cell / 2 - 7) as i32;
            root.draw(&Text::new(name.clone(), (8, y), ("sans-serif", 14))).map_err(plot_err)?;
            let x = (left + i as u32 * cell + cell / 2) as i32;
            let style = ("sans-serif", 14).into_font().transform(FontTransform::Rotate90);
            root.draw(&Text::new(name.clone(), (x + 7, below), style)).map_err(plot_err)?;
        }
        root.draw(&Text::new("rows: true class, columns: predicted", (left as i32, 12), ("sans-serif", 16)))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}
