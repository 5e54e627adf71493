//! Drift monitoring per served model: the statistics are the SDK's
//! ([`cifar_sdk::drift::DriftWindow`], shared with `trainer drift` and `trainer
//! robustness`); this module keeps one window per model name, following the version the
//! last load made current, and labels the report with that model and version.

use std::sync::Mutex;

use cifar_sdk::drift::{DriftStats, DriftWindow, Observation, Transition};
use serde::Serialize;

pub use cifar_sdk::drift::DriftConfig;

use crate::repository::ServedModel;

/// The answer of `GET /v1/drift`, also the source of the drift gauges.
#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    /// Served model name the window belongs to.
    pub model: String,
    /// Version of that model.
    pub version: u64,
    /// The window's statistics.
    #[serde(flatten)]
    pub stats: DriftStats,
}

#[derive(Debug)]
struct Tracked {
    model: String,
    version: u64,
    /// The digest of the model version the window belongs to (a reload of the same
    /// version number with another file, or a rollback to a lower version, is another
    /// model).
    digest: String,
    window: DriftWindow,
}

impl Tracked {
    fn new(config: DriftConfig, model: &ServedModel) -> Self {
        Self {
            model: model.name.clone(),
            version: model.version,
            digest: model.digest.clone(),
            window: DriftWindow::for_model(config, &model.model),
        }
    }

    fn report(&self) -> DriftReport {
        DriftReport { model: self.model.clone(), version: self.version, stats: self.window.stats() }
    }
}

/// The monitor of one model name; shared by the workers (which observe) and the handlers
/// (which report).
#[derive(Debug)]
pub struct DriftMonitor {
    config: DriftConfig,
    tracked: Mutex<Option<Tracked>>,
}

impl DriftMonitor {
    /// A monitor with an empty window.
    pub fn new(config: DriftConfig) -> Self {
        Self { config, tracked: Mutex::new(None) }
    }

    /// Adds the images of one request; returns the report and any alarm change.
    pub fn observe(&self, model: &ServedModel, observations: &[Observation]) -> (DriftReport, Option<Transition>) {
        let mut guard = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        let t = guard.get_or_insert_with(|| Tracked::new(self.config, model));
        // The window follows the model version the last load made current (`reset`);
        // requests still finishing on another version are not counted.
        let transition =
            if model.version == t.version && model.digest == t.digest { t.window.observe(observations) } else { None };
        (t.report(), transition)
    }

    /// The current report (an empty window for `model` if nothing was observed yet).
    pub fn report(&self, model: &ServedModel) -> DriftReport {
        let mut guard = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        guard.get_or_insert_with(|| Tracked::new(self.config, model)).report()
    }

    /// Starts over with an empty window for `model` (after every load that changed
    /// what is served, including a rollback to a lower version).
    pub fn reset(&self, model: &ServedModel) {
        let mut guard = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        *guard = Some(Tracked::new(self.config, model));
    }
}
