//! The drift statistics over a sliding window of served images, shared by `cifar-serve`
//! (one window per served model) and `trainer drift` / `trainer robustness` (one window
//! over a whole folder of images, or one per corruption and severity), so that the score
//! an operator sees offline is the score the server would report for the same traffic.
//!
//! Counts per histogram bin are kept incrementally (add the new image, remove the one
//! that leaves the window), so a report costs O(bins), not O(window). The score is the
//! largest population stability index ([`psi`]) over the input features and the
//! confidence; the class distribution is compared with the Jensen-Shannon divergence
//! ([`jensen_shannon`], base 2, in `[0, 1]`). Both have thresholds. The alarm
//! ([`DriftWindow::observe`]) is raised when one is crossed and clears only when both are
//! back under [`CLEAR_FRACTION`] of their thresholds, so a score hovering at the
//! threshold does not flap.

use std::collections::VecDeque;

use serde::Serialize;

use super::{feature_histogram, image_features, psi, DriftReference, Histogram, FEATURE_NAMES};

const FEATURES: usize = FEATURE_NAMES.len();

/// An alarm clears when the scores fall under this fraction of their thresholds.
pub const CLEAR_FRACTION: f64 = 0.8;

/// Thresholds and window size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftConfig {
    /// Images in the sliding window.
    pub window: usize,
    /// Alarm level of the drift score (largest PSI; 0.25 is the usual "significant
    /// shift" level).
    pub threshold: f64,
    /// Alarm level of the class distribution's Jensen-Shannon divergence (bits).
    pub class_threshold: f64,
    /// Images needed before judging.
    pub min_images: usize,
}

impl Default for DriftConfig {
    /// `cifar-serve`'s defaults: a window of 1,000 images judged from 200, PSI 0.25,
    /// Jensen-Shannon 0.1 bits.
    fn default() -> Self {
        Self { window: 1000, threshold: 0.25, class_threshold: 0.1, min_images: 200 }
    }
}

/// What one classified image contributes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Values in [`FEATURE_NAMES`] order.
    pub features: [f32; FEATURES],
    /// Predicted class.
    pub class: usize,
    /// Top-1 softmax probability.
    pub confidence: f32,
}

impl Observation {
    /// The observation of an interleaved RGB8 image of `width x height` pixels and the
    /// logits the model gave it.
    pub fn of_image(rgb8: &[u8], width: usize, height: usize, logits: &[f32]) -> Self {
        let (class, confidence) = top1(logits);
        Self { features: image_features(rgb8, width, height).values(), class, confidence }
    }
}

/// The arg-max of `logits` and its softmax probability.
pub fn top1(logits: &[f32]) -> (usize, f32) {
    let (mut best, mut max) = (0, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > max {
            (best, max) = (i, l);
        }
    }
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    (best, if sum > 0.0 { 1.0 / sum } else { 0.0 })
}

/// Per-feature part of [`DriftStats`].
#[derive(Debug, Clone, PartialEq, Serialize)]
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

/// The statistics of a window against the model's reference (the body of `cifar-serve`'s
/// `GET /v1/drift`, and of `trainer drift --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftStats {
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
    /// Per feature, in [`FEATURE_NAMES`] order.
    pub features: Vec<FeatureDrift>,
    /// Predicted-class frequencies in the window.
    pub window_classes: Vec<f64>,
    /// Predicted-class frequencies in the reference.
    pub reference_classes: Vec<f64>,
}

/// A change of the alarm state, for logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A threshold was crossed.
    Raised,
    /// Back under the thresholds.
    Cleared,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    bins: [usize; FEATURES],
    values: [f32; FEATURES],
    class: usize,
    confidence_bin: usize,
}

#[derive(Debug, Clone)]
struct Reference {
    profile: DriftReference,
    /// Histograms in [`FEATURE_NAMES`] order.
    features: Vec<Histogram>,
    class_frequencies: Vec<f64>,
}

/// The last `config.window` observations of one model and their histograms.
#[derive(Debug, Clone)]
pub struct DriftWindow {
    config: DriftConfig,
    reference: Option<Reference>,
    samples: VecDeque<Sample>,
    feature_counts: Vec<Vec<u64>>,
    feature_sums: [f64; FEATURES],
    class_counts: Vec<u64>,
    confidence_counts: Vec<u64>,
    alert: bool,
}

impl DriftWindow {
    /// An empty window against `reference` (the model file's profile; `None` when the
    /// file has none: nothing is then judged) for a model of `classes` classes.
    pub fn new(config: DriftConfig, reference: Option<&DriftReference>, classes: usize) -> Self {
        let reference = reference.map(|profile| {
            let features = FEATURE_NAMES
                .iter()
                .map(|n| profile.features.get(*n).cloned().unwrap_or_else(|| feature_histogram(n)))
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
            config,
            reference,
            samples: VecDeque::new(),
            feature_counts,
            feature_sums: [0.0; FEATURES],
            class_counts: vec![0; classes],
            confidence_counts: vec![0; confidence_bins],
            alert: false,
        }
    }

    /// An empty window against `model`'s stored reference.
    pub fn for_model(config: DriftConfig, model: &crate::Model) -> Self {
        Self::new(config, model.metadata().drift.as_ref(), model.classes())
    }

    /// Adds observations (the oldest leave once the window is full) and updates the
    /// alarm; returns its change, if any.
    pub fn observe(&mut self, observations: &[Observation]) -> Option<Transition> {
        for o in observations {
            self.push(o);
        }
        let stats = self.measure();
        let c = &self.config;
        let calm = stats.score < CLEAR_FRACTION * c.threshold && stats.class_js < CLEAR_FRACTION * c.class_threshold;
        let transition = match (self.alert, stats.drifting) {
            (false, true) => Some(Transition::Raised),
            (true, _) if stats.judged && calm => Some(Transition::Cleared),
            _ => None,
        };
        if let Some(t) = transition {
            self.alert = t == Transition::Raised;
        }
        transition
    }

    /// The statistics now, with `drifting` the alarm's state.
    pub fn stats(&self) -> DriftStats {
        let mut stats = self.measure();
        stats.drifting = self.alert;
        stats
    }

    fn push(&mut self, o: &Observation) {
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
        while self.samples.len() > self.config.window.max(1) {
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

    /// The statistics, with `drifting` whether a threshold is crossed right now.
    fn measure(&self) -> DriftStats {
        let config = &self.config;
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
        DriftStats {
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

/// The mean of a histogram's values, from its bin centres.
pub fn histogram_mean(h: &Histogram) -> f64 {
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

    #[test]
    fn top1_is_argmax_with_softmax_probability() {
        let (c, p) = top1(&[0.0, 2.0, 1.0]);
        assert_eq!(c, 1);
        let expect = 2f32.exp() / (1.0 + 2f32.exp() + 1f32.exp());
        assert!((p - expect).abs() < 1e-6);
    }

    /// A reference of mid-grey images, all predicted class 0 with confidence 0.9.
    fn grey_reference() -> DriftReference {
        let mut features = std::collections::BTreeMap::new();
        let grey = Observation::of_image(&[128u8; 32 * 32 * 3], 32, 32, &[3.0, 0.0]);
        for (name, v) in FEATURE_NAMES.iter().zip(grey.features) {
            let mut h = feature_histogram(name);
            for _ in 0..100 {
                h.add(v);
            }
            features.insert(name.to_string(), h);
        }
        let mut confidence = Histogram::uniform(0.0, 1.0, 20);
        for _ in 0..100 {
            confidence.add(grey.confidence);
        }
        DriftReference { images: 100, source: "test".into(), features, predicted_classes: vec![100, 0], confidence }
    }

    #[test]
    fn window_alarm_raises_on_shift_and_clears_with_hysteresis() {
        let config = DriftConfig { window: 20, threshold: 0.25, class_threshold: 0.1, min_images: 10 };
        let reference = grey_reference();
        let mut w = DriftWindow::new(config, Some(&reference), 2);
        let grey = Observation::of_image(&[128u8; 32 * 32 * 3], 32, 32, &[3.0, 0.0]);
        let bright = Observation::of_image(&[250u8; 32 * 32 * 3], 32, 32, &[0.0, 3.0]);
        assert_eq!(w.observe(&[grey; 9]), None, "not judged before min_images");
        assert_eq!(w.observe(&[grey]), None);
        assert!(w.stats().score < 1e-3 && !w.stats().drifting);
        assert_eq!(w.observe(&[bright; 10]), Some(Transition::Raised));
        let s = w.stats();
        assert!(s.drifting && s.score > 0.25 && s.class_js > 0.1, "{s:?}");
        assert_eq!(s.window_images, 20);
        // Sliding back to grey: the alarm stays on until the bright images have left.
        assert_eq!(w.observe(&[grey; 5]), None);
        assert!(w.stats().drifting);
        assert_eq!(w.observe(&[grey; 15]), Some(Transition::Cleared));
        assert_eq!(w.stats().window_images, 20);
        assert!(!w.stats().drifting && w.stats().score < 1e-3);
    }

    #[test]
    fn window_without_reference_never_judges() {
        let mut w = DriftWindow::new(DriftConfig::default(), None, 10);
        let o = Observation::of_image(&[0u8; 12], 2, 2, &[1.0; 10]);
        assert_eq!(w.observe(&vec![o; 500]), None);
        let s = w.stats();
        assert!(!s.has_reference && !s.judged && s.features.is_empty());
        assert_eq!(s.window_images, 500);
    }
}
