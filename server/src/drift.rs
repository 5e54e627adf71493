//! Drift monitoring: the features of the last `window` images served (per-channel mean
//! and std, brightness, blur, predicted class, confidence) compared with the reference
//! profile the compiler measured on held-out data and stored in the model file.
//!
//! Counts per histogram bin are kept incrementally (add the new image, remove the one
//! that leaves the window), so a report costs O(bins), not O(window). The score is the
//! largest population stability index (PSI) over the input features and the confidence;
//! the class distribution is compared with the Jensen-Shannon divergence (base 2, in
//! `[0, 1]`). Both have thresholds; crossing one logs a warning. The alarm clears (an
//! info line) only when both are back under [`CLEAR_FRACTION`] of their thresholds, so a
//! score hovering at the threshold does not flood the log.

use std::collections::VecDeque;
use std::sync::Mutex;

use cifar_sdk::drift::{psi, DriftReference, Histogram, FEATURE_NAMES};
use serde::Serialize;

use crate::repository::ServedModel;

const FEATURES: usize = FEATURE_NAMES.len();

/// An alarm clears when the scores fall under this fraction of their thresholds.
pub const CLEAR_FRACTION: f64 = 0.8;

/// Thresholds and window size.
#[derive(Debug, Clone, Copy)]
pub struct DriftConfig {
    /// Images in the sliding window.
    pub window: usize,
    /// Alarm level of the drift score (largest PSI).
    pub threshold: f64,
    /// Alarm level of the class distribution's Jensen-Shannon divergence.
    pub class_threshold: f64,
    /// Images needed before judging.
    pub min_images: usize,
}

/// What one served image contributes.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// Values in [`FEATURE_NAMES`] order.
    pub features: [f32; FEATURES],
    /// Predicted class.
    pub class: usize,
    /// Top-1 probability.
    pub confidence: f32,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    bins: [usize; FEATURES],
    values: [f32; FEATURES],
    class: usize,
    confidence_bin: usize,
}

#[derive(Debug)]
struct Reference {
    profile: DriftReference,
    /// Histograms in [`FEATURE_NAMES`] order.
    features: Vec<Histogram>,
    class_frequencies: Vec<f64>,
}

#[derive(Debug, Default)]
struct Window {
    model: String,
    version: u64,
    /// The digest of the model version the window belongs to (a reload of the same
    /// version number with another file, or a rollback to a lower version, is another
    /// model).
    digest: String,
    reference: Option<Reference>,
    samples: VecDeque<Sample>,
    feature_counts: Vec<Vec<u64>>,
    feature_sums: [f64; FEATURES],
    class_counts: Vec<u64>,
    confidence_counts: Vec<u64>,
    alert: bool,
}

/// Per-feature part of a [`DriftReport`].
#[derive(Debug, Clone, Serialize)]
pub struct FeatureDrift {
    /// Feature name.
    pub name: String,
    /// PSI of the window against the reference.
    pub psi: f64,
    /// Mean over the window.
    pub window_mean: f64,
    /// Mean of the reference histogram (from bin centres).
    pub reference_mean: f64,
}

/// The answer of `GET /v1/drift`, also the source of the drift gauges.
#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    /// Served model name and version the window belongs to.
    pub model: String,
    /// Version of that model.
    pub version: u64,
    /// Whether the model file has a reference profile.
    pub has_reference: bool,
    /// Where the reference was measured.
    pub reference_source: String,
    /// Images in the reference.
    pub reference_images: u64,
    /// Images in the window now.
    pub window_images: usize,
    /// Window capacity.
    pub window_capacity: usize,
    /// Images needed before judging.
    pub min_images: usize,
    /// Whether the window is full enough to judge.
    pub judged: bool,
    /// Largest PSI over the features and the confidence.
    pub score: f64,
    /// Alarm level of `score`.
    pub threshold: f64,
    /// Jensen-Shannon divergence (base 2) of the predicted classes.
    pub class_js: f64,
    /// Alarm level of `class_js`.
    pub class_threshold: f64,
    /// PSI of the top-1 probability.
    pub confidence_psi: f64,
    /// Whether the alarm is on: raised when a threshold is crossed (once judged), cleared
    /// when both scores are under [`CLEAR_FRACTION`] of their thresholds.
    pub drifting: bool,
    /// Per feature.
    pub features: Vec<FeatureDrift>,
    /// Predicted-class frequencies in the window.
    pub window_classes: Vec<f64>,
    /// Predicted-class frequencies in the reference.
    pub reference_classes: Vec<f64>,
}

/// The monitor; shared by the workers (which observe) and the handlers (which report).
#[derive(Debug)]
pub struct DriftMonitor {
    config: DriftConfig,
    window: Mutex<Window>,
}

/// A change of the alarm state, for logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A threshold was crossed.
    Raised,
    /// Back under the thresholds.
    Cleared,
}

impl DriftMonitor {
    /// A monitor with an empty window.
    pub fn new(config: DriftConfig) -> Self {
        Self { config, window: Mutex::new(Window::default()) }
    }

    /// Adds the images of one request; returns the report and any alarm change.
    pub fn observe(&self, model: &ServedModel, observations: &[Observation]) -> (DriftReport, Option<Transition>) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        // The window follows the model version the last load made current (`reset`);
        // requests still finishing on another version are not counted.
        if w.model.is_empty() {
            *w = Window::for_model(model);
        }
        if model.version == w.version && model.digest == w.digest {
            for o in observations {
                w.push(o, self.config.window);
            }
        }
        let mut report = w.report(&self.config);
        let c = &self.config;
        let calm = report.score < CLEAR_FRACTION * c.threshold && report.class_js < CLEAR_FRACTION * c.class_threshold;
        let transition = match (w.alert, report.drifting) {
            (false, true) => Some(Transition::Raised),
            (true, _) if report.judged && calm => Some(Transition::Cleared),
            _ => None,
        };
        if let Some(t) = transition {
            w.alert = t == Transition::Raised;
        }
        report.drifting = w.alert;
        (report, transition)
    }

    /// The current report.
    pub fn report(&self) -> DriftReport {
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = w.report(&self.config);
        report.drifting = w.alert;
        report
    }

    /// Starts over with an empty window for `model` (after every load that changed
    /// what is served, including a rollback to a lower version).
    pub fn reset(&self, model: &ServedModel) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        *w = Window::for_model(model);
    }
}

impl Window {
    fn for_model(model: &ServedModel) -> Self {
        let classes = model.model.classes();
        let reference = model.model.metadata().drift.as_ref().map(|profile| {
            let features = FEATURE_NAMES
                .iter()
                .map(|n| profile.features.get(*n).cloned().unwrap_or_else(|| cifar_sdk::drift::feature_histogram(n)))
                .collect();
            let total: u64 = profile.predicted_classes.iter().sum();
            let class_frequencies = (0..classes)
                .map(|c| {
                    let n = profile.predicted_classes.get(c).copied().unwrap_or(0);
                    if total == 0 {
                        1.0 / classes.max(1) as f64
                    } else {
                        n as f64 / total as f64
                    }
                })
                .collect();
            Reference { profile: profile.clone(), features, class_frequencies }
        });
        let feature_counts = match &reference {
            Some(r) => r.features.iter().map(|h| vec![0; h.counts.len()]).collect(),
            None => vec![Vec::new(); FEATURES],
        };
        let confidence_bins = reference.as_ref().map(|r| r.profile.confidence.counts.len()).unwrap_or(0);
        Self {
            model: model.name.clone(),
            version: model.version,
            digest: model.digest.clone(),
            reference,
            samples: VecDeque::new(),
            feature_counts,
            feature_sums: [0.0; FEATURES],
            class_counts: vec![0; classes],
            confidence_counts: vec![0; confidence_bins],
            alert: false,
        }
    }

    fn push(&mut self, o: &Observation, capacity: usize) {
        let mut bins = [0usize; FEATURES];
        if let Some(r) = &self.reference {
            for ((b, h), &v) in bins.iter_mut().zip(&r.features).zip(&o.features) {
                *b = h.bin(v);
            }
        }
        let confidence_bin = self.reference.as_ref().map(|r| r.profile.confidence.bin(o.confidence)).unwrap_or(0);
        let sample = Sample { bins, values: o.features, class: o.class, confidence_bin };
        self.count(&sample, true);
        self.samples.push_back(sample);
        while self.samples.len() > capacity.max(1) {
            if let Some(old) = self.samples.pop_front() {
                self.count(&old, false);
            }
        }
    }

    fn count(&mut self, s: &Sample, add: bool) {
        let bump = |c: &mut u64| *c = if add { *c + 1 } else { c.saturating_sub(1) };
        for ((counts, &b), (sum, &v)) in
            self.feature_counts.iter_mut().zip(&s.bins).zip(self.feature_sums.iter_mut().zip(&s.values))
        {
            if let Some(c) = counts.get_mut(b) {
                bump(c);
            }
            *sum += if add { f64::from(v) } else { -f64::from(v) };
        }
        if let Some(c) = self.class_counts.get_mut(s.class) {
            bump(c);
        }
        if let Some(c) = self.confidence_counts.get_mut(s.confidence_bin) {
            bump(c);
        }
    }

    fn report(&self, config: &DriftConfig) -> DriftReport {
        let n = self.samples.len();
        let (mut features, mut score, mut confidence_psi, mut class_js) = (Vec::new(), 0.0f64, 0.0, 0.0);
        let window_classes = frequencies(&self.class_counts);
        if let Some(r) = &self.reference {
            for ((name, h), (counts, sum)) in
                FEATURE_NAMES.iter().zip(&r.features).zip(self.feature_counts.iter().zip(&self.feature_sums))
            {
                let p = psi(&h.frequencies(), &frequencies(counts));
                score = score.max(p);
                features.push(FeatureDrift {
                    name: name.to_string(),
                    psi: p,
                    window_mean: if n == 0 { 0.0 } else { sum / n as f64 },
                    reference_mean: histogram_mean(h),
                });
            }
            confidence_psi = psi(&r.profile.confidence.frequencies(), &frequencies(&self.confidence_counts));
            score = score.max(confidence_psi);
            class_js = jensen_shannon(&r.class_frequencies, &window_classes);
        }
        let judged = self.reference.is_some() && n >= config.min_images;
        DriftReport {
            model: self.model.clone(),
            version: self.version,
            has_reference: self.reference.is_some(),
            reference_source: self.reference.as_ref().map(|r| r.profile.source.clone()).unwrap_or_default(),
            reference_images: self.reference.as_ref().map(|r| r.profile.images).unwrap_or(0),
            window_images: n,
            window_capacity: config.window,
            min_images: config.min_images,
            judged,
            score,
            threshold: config.threshold,
            class_js,
            class_threshold: config.class_threshold,
            confidence_psi,
            drifting: judged && (score > config.threshold || class_js > config.class_threshold),
            features,
            window_classes,
            reference_classes: self.reference.as_ref().map(|r| r.class_frequencies.clone()).unwrap_or_default(),
        }
    }
}

fn frequencies(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts.iter().map(|&c| if total == 0 { 0.0 } else { c as f64 / total as f64 }).collect()
}

fn histogram_mean(h: &Histogram) -> f64 {
    let total: u64 = h.counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let centres = h.edges.windows(2).map(|e| match e {
        [a, b] => f64::from(a + b) / 2.0,
        _ => 0.0,
    });
    h.counts.iter().zip(centres).map(|(&c, x)| c as f64 * x).sum::<f64>() / total as f64
}

/// Jensen-Shannon divergence in bits (0 for equal distributions, at most 1).
pub fn jensen_shannon(p: &[f64], q: &[f64]) -> f64 {
    let kl = |a: f64, m: f64| if a > 0.0 && m > 0.0 { a * (a / m).log2() } else { 0.0 };
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let m = (a + b) / 2.0;
            0.5 * kl(a, m) + 0.5 * kl(b, m)
        })
        .sum::<f64>()
        .max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jensen_shannon_bounds() {
        assert!(jensen_shannon(&[0.5, 0.5], &[0.5, 0.5]).abs() < 1e-12);
        assert!((jensen_shannon(&[1.0, 0.0], &[0.0, 1.0]) - 1.0).abs() < 1e-12);
        let mid = jensen_shannon(&[0.7, 0.3], &[0.4, 0.6]);
        assert!(mid > 0.0 && mid < 1.0);
    }

    #[test]
    fn histogram_mean_uses_bin_centres() {
        let mut h = Histogram::uniform(0.0, 1.0, 4);
        h.add(0.1);
        h.add(0.9);
        assert!((histogram_mean(&h) - 0.5).abs() < 1e-9);
    }
}
