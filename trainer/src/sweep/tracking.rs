//! The sweep in MLflow: a parent run with the sweep's settings, the best metric and the
//! report files; each trial's own run is nested under it (`mlflow.parentRunId`, set by
//! the trial from [`super::PARENT_RUN_ENV`]).

use super::{report, Sweep};
use crate::track::mlflow::{now_ms, Client, Metric};

impl Sweep {
    /// The sweep's parent run in MLflow (best effort: trials are tracked without one if
    /// the server cannot be reached now).
    pub(super) fn start_tracking(&mut self) {
        let Some(uri) = &self.tracking_uri else { return };
        if !self.state.tracking_run_id.is_empty() {
            return;
        }
        let made = Client::new(uri).and_then(|c| {
            let exp = c.experiment_id(&self.base.tracking.experiment)?;
            let tags = vec![
                ("mlflow.source.name".to_string(), "cifar-edge trainer sweep".to_string()),
                ("sweep_dir".to_string(), self.dir.display().to_string()),
            ];
            let (id, artifacts) = c.create_run(&exp, &self.state.name, &tags)?;
            let mut params = vec![
                ("method".to_string(), format!("{:?}", self.spec.method).to_lowercase()),
                ("metric".to_string(), self.spec.metric.name.clone()),
                ("goal".to_string(), format!("{:?}", self.spec.goal()).to_lowercase()),
                ("trials".to_string(), self.state.trials.len().to_string()),
            ];
            for (k, p) in &self.spec.parameters {
                params.push((format!("sweep.{k}"), serde_json::to_string(p).unwrap_or_default()));
            }
            c.log_batch(&id, &params, &[], &[])?;
            Ok((id, artifacts))
        });
        match made {
            Ok((id, artifacts)) => {
                errln!("tracking: the sweep is MLflow run {id}; its trials are nested under it");
                self.state.tracking_run_id = id;
                self.state.tracking_artifact_uri = artifacts;
            }
            Err(e) => errln!("warning: tracking: {e:#}; the trials are tracked without a parent run"),
        }
    }

    pub(super) fn finish_tracking(&self, interrupted: bool) {
        let (Some(uri), false) = (&self.tracking_uri, self.state.tracking_run_id.is_empty()) else { return };
        let id = &self.state.tracking_run_id;
        let done = Client::new(uri).and_then(|c| {
            if let Some(best) = report::best(&self.spec, &self.state) {
                let m = Metric {
                    key: format!("best_{}", self.spec.metric.name),
                    value: best.metric.unwrap_or(f64::NAN),
                    step: 0,
                    timestamp: now_ms(),
                };
                c.log_batch(id, &[], &[m], &[("best_trial".into(), best.id.clone())])?;
            }
            for name in ["trials.md", "best.toml", "sweep.png", "state.json"] {
                if let Ok(bytes) = std::fs::read(self.dir.join(name)) {
                    c.upload_artifact(&self.state.tracking_artifact_uri, name, &bytes)?;
                }
            }
            c.finish_run(id, if interrupted { "KILLED" } else { "FINISHED" })
        });
        if let Err(e) = done {
            errln!("warning: tracking: the sweep's parent run is incomplete: {e:#}");
        }
    }
}
