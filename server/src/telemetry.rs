//! Prometheus metrics and the drift monitors, in one place the handlers and the workers
//! share.
//!
//! Names follow Triton's where the meaning is the same (`nv_inference_request_success`,
//! `nv_inference_count`, `nv_inference_exec_count`, `nv_inference_request_duration_us`,
//! `nv_inference_queue_duration_us`, `nv_inference_compute_infer_duration_us`,
//! `nv_inference_pending_request_count`), labelled `model` and `version`, and spelled as
//! Triton spells them: `/metrics` answers the Prometheus text format 0.0.4 where Triton's
//! counters have no `_total` suffix ([`Telemetry::encode_text`]); OpenMetrics (with
//! `_total` on every counter, as that format requires) only when asked for
//! ([`Telemetry::encode_openmetrics`]). Everything Triton has no name for is `cifar_*`: HTTP requests by endpoint and status, latency histograms
//! (request, queue, compute), the batch-size histogram, the in-flight gauge, the model
//! info metric, reloads and the drift gauges.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cifar_sdk::drift::{Observation, Transition, FEATURE_NAMES};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::batcher::Pixels;
use crate::drift::{DriftConfig, DriftMonitor, DriftReport};
use crate::repository::ServedModel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    model: String,
    version: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    endpoint: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    model: String,
    version: String,
    digest: String,
    precision: String,
    device: String,
    classes: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftLabels {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeatureLabels {
    model: String,
    feature: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 50 us .. ~1.6 s.
    Histogram::new(exponential_buckets(50e-6, 2.0, 16))
}

/// Why an inference request failed, for `nv_inference_request_failure`.
#[derive(Debug, Clone, Copy)]
pub enum FailureReason {
    /// Bad input (4xx).
    Rejected,
    /// The queue was full (503).
    QueueFull,
    /// It took longer than the request timeout.
    Timeout,
    /// The engine failed.
    Internal,
}

impl FailureReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::QueueFull => "queue_full",
            Self::Timeout => "timeout",
            Self::Internal => "internal",
        }
    }
}

/// All metrics, the registry that exposes them, and the drift monitor.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    success: Family<ModelLabels, Counter>,
    failure: Family<FailureLabels, Counter>,
    inference_count: Family<ModelLabels, Counter>,
    exec_count: Family<ModelLabels, Counter>,
    request_us: Family<ModelLabels, Counter>,
    queue_us: Family<ModelLabels, Counter>,
    compute_us: Family<ModelLabels, Counter>,
    pending: Gauge,
    queue_capacity: Gauge,
    http_requests: Family<HttpLabels, Counter>,
    request_seconds: HistogramFamily<EndpointLabels>,
    queue_seconds: Histogram,
    compute_seconds: Histogram,
    batch_size: Histogram,
    in_flight: Gauge,
    model_info: Family<InfoLabels, Gauge>,
    reloads: Family<OutcomeLabels, Counter>,
    drift_score: Family<DriftLabels, FloatGauge>,
    drift_psi: Family<FeatureLabels, FloatGauge>,
    drift_class_js: Family<DriftLabels, FloatGauge>,
    drift_window: Family<DriftLabels, Gauge>,
    drift_alert: Family<DriftLabels, Gauge>,
    /// One drift monitor per model name (its window follows the newest version).
    drift: Mutex<BTreeMap<String, Arc<DriftMonitor>>>,
    drift_config: DriftConfig,
}

impl Telemetry {
    /// Registers every metric.
    pub fn new(drift: DriftConfig) -> Self {
        let mut registry = Registry::default();
        let t = Self {
            success: Family::default(),
            failure: Family::default(),
            inference_count: Family::default(),
            exec_count: Family::default(),
            request_us: Family::default(),
            queue_us: Family::default(),
            compute_us: Family::default(),
            pending: Gauge::default(),
            queue_capacity: Gauge::default(),
            http_requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            queue_seconds: latency_histogram(),
            compute_seconds: latency_histogram(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            in_flight: Gauge::default(),
            model_info: Family::default(),
            reloads: Family::default(),
            drift_score: Family::default(),
            drift_psi: Family::default(),
            drift_class_js: Family::default(),
            drift_window: Family::default(),
            drift_alert: Family::default(),
            drift: Mutex::new(BTreeMap::new()),
            drift_config: drift,
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("nv_inference_request_success", "Successful inference requests", t.success.clone());
        r.register("nv_inference_request_failure", "Failed inference requests, by reason", t.failure.clone());
        r.register("nv_inference_count", "Images inferred", t.inference_count.clone());
        r.register("nv_inference_exec_count", "Batches executed", t.exec_count.clone());
        r.register(
            "nv_inference_request_duration_us",
            "Cumulative end-to-end inference request time (us)",
            t.request_us.clone(),
        );
        r.register(
            "nv_inference_queue_duration_us",
            "Cumulative time requests waited in the queue (us)",
            t.queue_us.clone(),
        );
        r.register(
            "nv_inference_compute_infer_duration_us",
            "Cumulative compute time of the batches requests ran in (us)",
            t.compute_us.clone(),
        );
        r.register("nv_inference_pending_request_count", "Requests waiting for a worker", t.pending.clone());
        r.register(
            "cifar_queue_capacity",
            "Requests the queue holds before refusing with 503 (--max-queue)",
            t.queue_capacity.clone(),
        );
        r.register("cifar_http_requests", "HTTP requests by endpoint and status code", t.http_requests.clone());
        r.register("cifar_request_duration_seconds", "HTTP request latency by endpoint", t.request_seconds.clone());
        r.register(
            "cifar_queue_duration_seconds",
            "Time inference requests waited for a worker",
            t.queue_seconds.clone(),
        );
        r.register("cifar_compute_duration_seconds", "Compute time per batch", t.compute_seconds.clone());
        r.register("cifar_batch_size", "Images per executed batch", t.batch_size.clone());
        r.register("cifar_requests_in_flight", "HTTP requests being handled", t.in_flight.clone());
        r.register("cifar_model_info", "The served model (value 1)", t.model_info.clone());
        // Both outcomes exist from the start, so that the first failure is an increase
        // (`increase()` over a series that appears at 1 is 0).
        for outcome in ["success", "failure"] {
            let _ = t.reloads.get_or_create(&OutcomeLabels { outcome: outcome.into() });
        }
        r.register("cifar_model_reloads", "Model reloads by outcome", t.reloads.clone());
        r.register(
            "cifar_drift_score",
            "Largest PSI of the input features and confidence over the window",
            t.drift_score.clone(),
        );
        r.register("cifar_drift_psi", "PSI of each input feature over the window", t.drift_psi.clone());
        r.register(
            "cifar_drift_class_js",
            "Jensen-Shannon divergence (bits) of the predicted classes over the window",
            t.drift_class_js.clone(),
        );
        r.register("cifar_drift_window_images", "Images in the drift window", t.drift_window.clone());
        r.register("cifar_drift_alert", "1 while a drift threshold is crossed", t.drift_alert.clone());
        Self { registry, ..t }
    }

    /// The metrics in the OpenMetrics text format (counters end in `_total`).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The metrics in the Prometheus text format 0.0.4, Triton's names exact.
    pub fn encode_text(&self) -> String {
        openmetrics_to_text(&self.encode_openmetrics())
    }

    /// Marks `models` as the served ones (replacing the previous info series) and makes
    /// sure each model name has its drift gauges.
    pub fn set_models(&self, models: &[Arc<ServedModel>]) {
        self.model_info.clear();
        for model in models {
            let m = &model.model;
            self.model_info
                .get_or_create(&InfoLabels {
                    model: model.name.clone(),
                    version: model.version_string(),
                    digest: model.digest.clone(),
                    precision: m.precision().to_string(),
                    device: m.device().to_string(),
                    classes: m.classes().to_string(),
                })
                .set(1);
            self.set_drift(&self.drift_for(model).report(model));
        }
    }

    /// The drift monitor of `model`'s name, created (for this version) on first use.
    pub fn drift_for(&self, model: &ServedModel) -> Arc<DriftMonitor> {
        let mut monitors = self.drift.lock().unwrap_or_else(|e| e.into_inner());
        monitors
            .entry(model.name.clone())
            .or_insert_with(|| {
                let monitor = DriftMonitor::new(self.drift_config);
                monitor.reset(model);
                Arc::new(monitor)
            })
            .clone()
    }

    /// Counts a reload attempt.
    pub fn record_reload(&self, ok: bool) {
        let outcome = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&OutcomeLabels { outcome: outcome.into() }).inc();
    }

    /// One HTTP request finished.
    pub fn record_http(&self, endpoint: &str, code: u16, elapsed: Duration) {
        self.http_requests.get_or_create(&HttpLabels { endpoint: endpoint.into(), code }).inc();
        self.request_seconds
            .get_or_create(&EndpointLabels { endpoint: endpoint.into() })
            .observe(elapsed.as_secs_f64());
    }

    /// A request started (`true`) or ended (`false`).
    pub fn in_flight(&self, started: bool) {
        if started {
            self.in_flight.inc();
        } else {
            self.in_flight.dec();
        }
    }

    /// The queue's capacity (`--max-queue`), for saturation alerts.
    pub fn set_queue_capacity(&self, capacity: usize) {
        self.queue_capacity.set(i64::try_from(capacity).unwrap_or(i64::MAX));
    }

    /// Jobs waiting in the queue.
    pub fn set_queue_depth(&self, depth: usize) {
        self.pending.set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// A successful inference request of `images` images.
    pub fn record_success(
        &self,
        model: &ServedModel,
        images: usize,
        total: Duration,
        queue: Duration,
        compute: Duration,
    ) {
        model.stats.record_success(images, total, queue, compute);
        let l = labels(model);
        self.success.get_or_create(&l).inc();
        self.inference_count.get_or_create(&l).inc_by(images as u64);
        self.request_us.get_or_create(&l).inc_by(total.as_micros() as u64);
        self.queue_us.get_or_create(&l).inc_by(queue.as_micros() as u64);
        self.compute_us.get_or_create(&l).inc_by(compute.as_micros() as u64);
        self.queue_seconds.observe(queue.as_secs_f64());
    }

    /// A failed inference request.
    pub fn record_failure(&self, model: &ServedModel, reason: FailureReason) {
        model.stats.record_failure();
        self.failure
            .get_or_create(&FailureLabels {
                model: model.name.clone(),
                version: model.version_string(),
                reason: reason.as_str().into(),
            })
            .inc();
    }

    /// A worker ran a batch.
    pub fn record_batch(&self, model: &ServedModel, images: usize, compute: Duration) {
        model.stats.record_batch(images, compute);
        self.exec_count.get_or_create(&labels(model)).inc();
        self.compute_seconds.observe(compute.as_secs_f64());
        self.batch_size.observe(images as f64);
    }

    /// Feeds one job's images and logits to its model's drift monitor and updates the
    /// gauges.
    pub fn observe_outputs(&self, model: &ServedModel, pixels: &Pixels, images: usize, logits: &[f32]) {
        let [channels, h, w] = model.input_shape();
        let classes = model.model.classes().max(1);
        let image_len = channels * h * w;
        let norm = model.model.metadata().preprocessing.normalization;
        let mut observations = Vec::with_capacity(images);
        let mut rgb = vec![0u8; image_len];
        for (i, row) in logits.chunks_exact(classes).enumerate().take(images) {
            let observation = match pixels {
                Pixels::Rgb8(p) => {
                    p.get(i * image_len..(i + 1) * image_len).map(|img| Observation::of_image(img, w, h, row))
                }
                Pixels::Nchw(p) => p.get(i * image_len..(i + 1) * image_len).map(|img| {
                    planar_to_rgb8(img, h * w, &norm, &mut rgb);
                    Observation::of_image(&rgb, w, h, row)
                }),
            };
            observations.extend(observation);
        }
        let (report, transition) = self.drift_for(model).observe(model, &observations);
        self.set_drift(&report);
        match transition {
            Some(Transition::Raised) => tracing::warn!(
                model = %report.model,
                score = report.stats.score,
                threshold = report.stats.threshold,
                class_js = report.stats.class_js,
                window = report.stats.window_images,
                "input drift: a threshold is crossed (GET /v1/drift for the per-feature report)"
            ),
            Some(Transition::Cleared) => {
                tracing::info!(model = %report.model, score = report.stats.score, "input drift: back under the thresholds")
            }
            None => {}
        }
    }

    /// Copies a drift report into the gauges.
    pub fn set_drift(&self, report: &DriftReport) {
        let l = DriftLabels { model: report.model.clone() };
        self.drift_score.get_or_create(&l).set(report.stats.score);
        self.drift_class_js.get_or_create(&l).set(report.stats.class_js);
        self.drift_window.get_or_create(&l).set(i64::try_from(report.stats.window_images).unwrap_or(i64::MAX));
        self.drift_alert.get_or_create(&l).set(i64::from(report.stats.drifting));
        let feature = |name: &str| FeatureLabels { model: report.model.clone(), feature: name.into() };
        for f in &report.stats.features {
            self.drift_psi.get_or_create(&feature(&f.name)).set(f.psi);
        }
        if report.stats.features.is_empty() {
            for name in FEATURE_NAMES {
                self.drift_psi.get_or_create(&feature(name)).set(0.0);
            }
        }
    }
}

/// Rewrites prometheus-client's OpenMetrics exposition as the Prometheus text format
/// 0.0.4. prometheus-client has no 0.0.4 encoder and its OpenMetrics encoder appends
/// `_total` to every counter sample; Triton's counters (`nv_*`) have no suffix, and
/// dashboards made for Triton look for the bare names. The two formats otherwise share
/// their line syntax, so the rewrite is line by line: `nv_*` counter samples lose
/// `_total`; our own counters keep it (as Prometheus names counters) and their `# HELP`
/// and `# TYPE` lines take the same name, as 0.0.4 parsers match them by name; the
/// OpenMetrics-only lines (`# UNIT`, `# EOF`) and `_created` samples go, and any
/// exemplar after ` # ` is dropped.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut bare_counter: Option<String> = None;
    // `# HELP` comes before `# TYPE`: held until the type says what to call the family.
    let mut help: Option<(String, String)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name.to_string(), text.to_string()));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let counter = kind == "counter";
            bare_counter = (counter && name.starts_with("nv_")).then(|| name.to_string());
            let family = if counter && !name.starts_with("nv_") { format!("{name}_total") } else { name.to_string() };
            if let Some((h, text)) = help.take() {
                let h = if h == name { family.clone() } else { h };
                out.push_str(&format!("# HELP {h} {text}\n"));
            }
            out.push_str(&format!("# TYPE {family} {kind}\n"));
            continue;
        }
        if line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let sample = line.split(" # ").next().unwrap_or(line);
        let name_end = sample.find(['{', ' ']).unwrap_or(sample.len());
        let (name, rest) = sample.split_at(name_end);
        if name.ends_with("_created") {
            continue;
        }
        match &bare_counter {
            Some(family) if name == format!("{family}_total") => {
                out.push_str(family);
                out.push_str(rest);
            }
            _ => out.push_str(sample),
        }
        out.push('\n');
    }
    out
}

fn labels(model: &ServedModel) -> ModelLabels {
    ModelLabels { model: model.name.clone(), version: model.version_string() }
}

/// Index and softmax probability of the largest logit.
/// Normalized planar f32 back to interleaved RGB8, for the drift features of FP32 inputs.
fn planar_to_rgb8(img: &[f32], hw: usize, norm: &cifar_sdk::Normalization, out: &mut [u8]) {
    for (c, plane) in img.chunks_exact(hw.max(1)).enumerate().take(3) {
        let (mean, std) = (norm.mean.get(c).copied().unwrap_or(0.0), norm.std.get(c).copied().unwrap_or(1.0));
        for (p, &v) in plane.iter().enumerate() {
            if let Some(o) = out.get_mut(p * 3 + c) {
                *o = ((v * std + mean) * 255.0).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planar_round_trips_rgb8() {
        let norm = cifar_sdk::Normalization::CIFAR10;
        let rgb: Vec<u8> = (0..12).map(|i| (i * 21) as u8).collect();
        let mut planar = vec![0f32; 12];
        for p in 0..4 {
            for c in 0..3 {
                planar[c * 4 + p] = (f32::from(rgb[p * 3 + c]) / 255.0 - norm.mean[c]) / norm.std[c];
            }
        }
        let mut back = vec![0u8; 12];
        planar_to_rgb8(&planar, 4, &norm, &mut back);
        assert_eq!(back, rgb);
    }

    #[test]
    fn text_format_has_triton_names_and_no_openmetrics_lines() {
        let t = Telemetry::new(DriftConfig { window: 10, threshold: 0.25, class_threshold: 0.1, min_images: 5 });
        t.success.get_or_create(&ModelLabels { model: "m".into(), version: "1".into() }).inc_by(3);
        t.http_requests.get_or_create(&HttpLabels { endpoint: "/v1/classify".into(), code: 200 }).inc();
        t.batch_size.observe(4.0);
        let open = t.encode_openmetrics();
        assert!(open.contains("nv_inference_request_success_total{model=\"m\",version=\"1\"} 3"), "{open}");
        let text = t.encode_text();
        assert!(text.contains("\nnv_inference_request_success{model=\"m\",version=\"1\"} 3\n"), "{text}");
        assert!(!text.contains("nv_inference_request_success_total"), "{text}");
        assert!(text.contains("# TYPE nv_inference_request_success counter"), "{text}");
        assert!(text.contains("# HELP nv_inference_request_success Successful inference requests"), "{text}");
        // Our counters: the family name in HELP and TYPE is the sample name.
        assert!(text.contains("# TYPE cifar_http_requests_total counter"), "{text}");
        assert!(text.contains("# HELP cifar_http_requests_total "), "{text}");
        assert!(text.contains("cifar_http_requests_total{endpoint=\"/v1/classify\",code=\"200\"} 1"), "{text}");
        assert!(text.contains("cifar_batch_size_bucket{le=\"4.0\"} 1"), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.rsplit(' ').next().map(|v| v.parse::<f64>().is_ok()), Some(true), "{line}");
        }
    }
}
