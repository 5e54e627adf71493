//! Evaluation: batched inference with test-time augmentation, accuracy, per-class
//! accuracy and the confusion matrix.

use std::sync::Arc;

use anyhow::Result;
use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::config::Tta;
use crate::data::loader::{fill, View};
use crate::data::Split;
use crate::model::Network;

/// The views averaged for each TTA level, with their weights (airbench's choice: the
/// untranslated views count twice as much as the translated ones).
pub fn tta_views(tta: Tta) -> Vec<(View, f32)> {
    let plain = View::default();
    let flip = View { flip: true, ..plain };
    match tta {
        Tta::None => vec![(plain, 1.0)],
        Tta::Flip => vec![(plain, 0.5), (flip, 0.5)],
        Tta::FlipTranslate => {
            let mut v = vec![(plain, 0.25), (flip, 0.25)];
            for (dy, dx) in [(1, 1), (-1, -1)] {
                v.push((View { dy, dx, flip: false }, 0.125));
                v.push((View { dy, dx, flip: true }, 0.125));
            }
            v
        }
    }
}

/// Logits `[indices.len() * classes]` (row-major), averaged over the TTA views.
pub fn predict(
    net: &dyn Network,
    split: &Split,
    indices: &[u32],
    tta: Tta,
    batch: usize,
    dev: &Device,
) -> Result<(Vec<f32>, usize)> {
    let norm = cifar_sdk::Normalization::CIFAR10.affine();
    let mut out: Vec<f32> = Vec::new();
    let mut classes = 0;
    for chunk in indices.chunks(batch.max(1)) {
        let mut acc: Option<Vec<f32>> = None;
        for (view, weight) in tta_views(tta) {
            let (x, _) = fill(split, chunk, |_| view, &norm);
            let x = Tensor::from_vec(x, (chunk.len(), 3, 32, 32), dev)?;
            let logits = net.forward(&x, false)?;
            classes = logits.dim(1)?;
            let v = logits.flatten_all()?.to_vec1::<f32>()?;
            match &mut acc {
                Some(a) => a.iter_mut().zip(&v).for_each(|(a, b)| *a += weight * b),
                None => acc = Some(v.iter().map(|b| weight * b).collect()),
            }
        }
        out.extend(acc.unwrap_or_default());
    }
    debug_assert_eq!(out.len(), indices.len() * classes);
    Ok((out, classes))
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0
}

/// Accuracy report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub images: usize,
    pub accuracy: f64,
    pub per_class: Vec<f64>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

pub fn report(logits: &[f32], classes: usize, labels: &[u8]) -> Report {
    let mut confusion = vec![vec![0usize; classes]; classes];
    for (row, &l) in logits.chunks_exact(classes.max(1)).zip(labels) {
        confusion[l as usize][argmax(row)] += 1;
    }
    let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
    let per_class = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let n: usize = row.iter().sum();
            if n == 0 {
                0.0
            } else {
                row[c] as f64 / n as f64
            }
        })
        .collect();
    Report { images: labels.len(), accuracy: correct as f64 / labels.len().max(1) as f64, per_class, confusion }
}

/// Images per SDK call in [`sdk_logits`]: enough for every core to take whole batches
/// (the SDK spreads a call over its threads), few enough to bound the input buffers.
const SDK_CALL_IMAGES: usize = 1024;

/// Logits `[indices.len() * classes]` of a compiled model (through the SDK, on the
/// model's threads), averaged over the TTA views. Without TTA the images go in as RGB8
/// bytes, the SDK's own input path (what `trainer compile` measures); TTA views go in as
/// normalized NCHW.
pub fn sdk_logits(model: &Arc<cifar_sdk::Model>, split: &Split, indices: &[u32], tta: Tta) -> Result<Vec<f32>> {
    let classes = model.classes();
    let norm = model.metadata().preprocessing.normalization.affine();
    let views = tta_views(tta);
    let mut session = model.session()?;
    let mut out = Vec::with_capacity(indices.len() * classes);
    for part in indices.chunks(SDK_CALL_IMAGES) {
        if tta == Tta::None {
            let mut pixels = Vec::with_capacity(part.len() * 3072);
            for &i in part {
                pixels.extend_from_slice(&split.images[i as usize * 3072..(i as usize + 1) * 3072]);
            }
            out.extend(session.logits_rgb8(&pixels, part.len())?);
            continue;
        }
        let mut acc = vec![0f32; part.len() * classes];
        for &(view, weight) in &views {
            let (x, _) = fill(split, part, |_| view, &norm);
            let logits = session.logits_nchw(&x, part.len())?;
            acc.iter_mut().zip(&logits).for_each(|(a, l)| *a += weight * l);
        }
        out.extend(acc);
    }
    Ok(out)
}

/// Evaluates `net` on `indices` of `split`.
pub fn evaluate(
    net: &dyn Network,
    split: &Split,
    indices: &[u32],
    tta: Tta,
    batch: usize,
    dev: &Device,
) -> Result<Report> {
    let (logits, classes) = predict(net, split, indices, tta, batch, dev)?;
    let labels: Vec<u8> = indices.iter().map(|&i| split.labels[i as usize]).collect();
    Ok(report(&logits, classes, &labels))
}

/// The report as text: accuracy, a per-class table and the confusion matrix.
pub fn format_report(r: &Report, names: &[String]) -> String {
    let mut s = format!("accuracy: {:.2}% on {} images\n\n", 100.0 * r.accuracy, r.images);
    s += &format!("{:<12} {:>8}\n", "class", "accuracy");
    for (n, a) in names.iter().zip(&r.per_class) {
        s += &format!("{n:<12} {:>7.2}%\n", 100.0 * a);
    }
    s += "\nconfusion matrix (rows: true class, columns: predicted)\n";
    s += &format!("{:<12}", "");
    for n in names {
        s += &format!(" {:>5}", &n[..n.len().min(5)]);
    }
    s += "\n";
    for (n, row) in names.iter().zip(&r.confusion) {
        s += &format!("{n:<12}");
        for v in row {
            s += &format!(" {v:>5}");
        }
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_and_weights() {
        let logits = [0.9, 0.1, 0.2, 0.8, 0.7, 0.3];
        let r = report(&logits, 2, &[0, 1, 1]);
        assert_eq!(r.confusion, vec![vec![1, 0], vec![1, 1]]);
        assert!((r.accuracy - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.per_class, vec![1.0, 0.5]);
        let w: f32 = tta_views(Tta::FlipTranslate).iter().map(|v| v.1).sum();
        assert!((w - 1.0).abs() < 1e-6);
    }
}
