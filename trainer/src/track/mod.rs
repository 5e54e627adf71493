//! Experiment tracking: a run mirrored into an MLflow tracking server.
//!
//! The run directory stays the source of truth. Every record `fit` appends to
//! `metrics.jsonl` is also handed to a background thread ([`Mirror`]), which creates the
//! MLflow run (the resolved config as params), sends the metrics in batches, and at the
//! end uploads the artifacts and sets the run's status. A server that is down or slow
//! never stops or slows training: the thread buffers and retries, warns once, and leaves
//! `tracking.json` saying how far it got; `trainer track sync RUN` uploads the rest later
//! from the run directory ([`sync`]), which is also how a compiled `.cifar` joins the run.

pub mod mlflow;

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cifar_cli_io::errln;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::run::RunDir;
use mlflow::{now_ms, Client, Metric};

/// `tracking.json`: where the run is mirrored and how far the mirror got.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrackingState {
    /// The tracking server.
    pub uri: String,
    /// The MLflow experiment id.
    pub experiment_id: String,
    /// The MLflow run id (empty: not created yet).
    pub run_id: String,
    /// Where the run's artifacts go.
    pub artifact_uri: String,
    /// Whether the params are logged.
    pub params_logged: bool,
    /// How many records of `metrics.jsonl` are logged, in order.
    pub records_logged: usize,
    /// Whether the run is complete in MLflow (metrics, artifacts, final status).
    pub complete: bool,
}

const STATE_FILE: &str = "tracking.json";

impl TrackingState {
    fn load(run: &RunDir, uri: &str) -> Self {
        match run.read_json::<TrackingState>(STATE_FILE) {
            // Another server: a new MLflow run there.
            Ok(s) if s.uri == uri => s,
            _ => TrackingState { uri: uri.to_string(), ..Default::default() },
        }
    }
}

/// The tracking URI for `cfg`: `[tracking] uri`, else `MLFLOW_TRACKING_URI`.
pub fn tracking_uri(cfg: &Config) -> Option<String> {
    let uri = if cfg.tracking.uri.is_empty() {
        std::env::var("MLFLOW_TRACKING_URI").unwrap_or_default()
    } else {
        cfg.tracking.uri.clone()
    };
    (!uri.trim().is_empty()).then(|| uri.trim().to_string())
}

/// Refuses a tracking URI that cannot be an MLflow server, before any work.
pub fn check(cfg: &Config) -> Result<()> {
    if let Some(uri) = tracking_uri(cfg) {
        Client::new(&uri)?;
    }
    Ok(())
}

/// The MLflow metrics of one `metrics.jsonl` record (the one place that maps them).
pub fn record_metrics(record: &Value, timestamp: u64) -> Vec<Metric> {
    let keys: &[(&str, &str)] = match record["kind"].as_str() {
        Some("step") => &[("loss", "loss"), ("lr", "lr"), ("images_per_sec", "images_per_sec"), ("step_ms", "step_ms")],
        Some("epoch") => &[("train_loss", "epoch_train_loss"), ("val_acc", "val_acc"), ("epoch_secs", "epoch_secs")],
        Some("final") => {
            &[("val_acc", "final_val_acc"), ("val_acc_tta", "final_val_acc_tta"), ("train_secs", "train_secs")]
        }
        _ => &[],
    };
    let step = record["step"].as_u64().unwrap_or(0);
    keys.iter()
        .filter_map(|(field, key)| {
            let value = record[*field].as_f64().filter(|v| v.is_finite())?;
            Some(Metric { key: key.to_string(), value, step, timestamp })
        })
        .collect()
}

/// The resolved config as flat `section.key` params (tracking settings left out).
pub fn params(cfg: &Config) -> Result<Vec<(String, String)>> {
    let table: toml::Table = toml::from_str(&cfg.to_toml()?).context("the config as TOML")?;
    let mut out = Vec::new();
    flatten("", &toml::Value::Table(table), &mut out);
    out.retain(|(k, _)| !k.starts_with("tracking."));
    Ok(out)
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        toml::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// Tags that say where the run came from.
fn tags(cfg: &Config, run: &RunDir) -> Vec<(String, String)> {
    let mut tags = vec![
        ("mlflow.source.name".to_string(), "cifar-edge trainer".to_string()),
        ("config_name".to_string(), cfg.name.clone()),
        ("run_dir".to_string(), run.path.display().to_string()),
    ];
    if let Ok(d) = run.read_json::<crate::run::DatasetRef>("dataset.json") {
        tags.push(("dataset_digest".into(), d.digest));
        tags.push(("dataset_path".into(), d.path));
    }
    let revision = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(r) = revision {
        tags.push(("mlflow.source.git.commit".into(), r));
    }
    // A sweep's trial: nested under the sweep's run.
    if let Ok(parent) = std::env::var(crate::sweep::PARENT_RUN_ENV) {
        if !parent.is_empty() {
            tags.push(("mlflow.parentRunId".into(), parent));
        }
    }
    tags
}

/// The MLflow run for `state`, created (with its params) if needed.
fn ensure_run(client: &Client, cfg: &Config, run: &RunDir, state: &mut TrackingState) -> Result<()> {
    if state.run_id.is_empty() {
        state.experiment_id = client.experiment_id(experiment_name(cfg))?;
        let name = run.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| cfg.name.clone());
        let (id, uri) = client.create_run(&state.experiment_id, &name, &tags(cfg, run))?;
        state.run_id = id;
        state.artifact_uri = uri;
        run.write_json(STATE_FILE, state)?;
    }
    if !state.params_logged {
        client.log_batch(&state.run_id, &params(cfg)?, &[], &[])?;
        state.params_logged = true;
        run.write_json(STATE_FILE, state)?;
    }
    Ok(())
}

/// Uploads the run's files an MLflow user looks for: config, summary, dataset reference,
/// evaluation reports, plots and compiled models. Returns how many.
fn upload_artifacts(client: &Client, run: &RunDir, state: &TrackingState) -> Result<usize> {
    let mut names: Vec<String> = std::fs::read_dir(&run.path)
        .with_context(|| format!("cannot read {}", run.path.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|n| {
            n.ends_with(".png")
                || n.ends_with(".cifar")
                || (n.ends_with(".json") && n != STATE_FILE)
                || n == "config.toml"
                || n == "metrics.jsonl"
        })
        .collect();
    names.sort();
    for name in &names {
        let bytes = std::fs::read(run.file(name)).with_context(|| format!("cannot read {name}"))?;
        client.upload_artifact(&state.artifact_uri, name, &bytes)?;
    }
    Ok(names.len())
}

/// What the background thread is told.
pub enum Message {
    /// A record `RunDir::log` wrote.
    Record(Value),
    /// The run ended with this MLflow status.
    Finish(&'static str),
}

/// The hand-off point `RunDir::log` sends records to.
pub type Sink = mpsc::Sender<Message>;

/// A run being mirrored by a background thread.
pub struct Mirror {
    tx: Sink,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long the end of a run may wait for the tracking server.
const FINISH_BUDGET: Duration = Duration::from_secs(15);
/// How often buffered metrics are sent.
const FLUSH_EVERY: Duration = Duration::from_secs(2);

impl Mirror {
    /// Starts mirroring `run` when a tracking URI is configured: from now on every record
    /// `run.log` writes also goes to the tracker.
    pub fn start(cfg: &Config, run: &RunDir) -> Result<Option<Mirror>> {
        let Some(uri) = tracking_uri(cfg) else { return Ok(None) };
        let client = Client::new(&uri)?;
        let (tx, rx) = mpsc::channel::<Message>();
        let (cfg, own_run) = (cfg.clone(), RunDir::open(&run.path)?);
        errln!("tracking: mirroring this run to {uri} (experiment {:?})", experiment_name(&cfg));
        let thread = std::thread::Builder::new()
            .name("track".into())
            .spawn(move || mirror_loop(&client, &cfg, &own_run, &uri, &rx))
            .context("cannot start the tracking thread")?;
        run.set_sink(Some(tx.clone()));
        Ok(Some(Mirror { tx, thread: Some(thread) }))
    }

    /// Ends the mirror with the run's outcome; waits at most about [`FINISH_BUDGET`].
    pub fn finish<T>(mut self, run: &RunDir, outcome: &Result<T>) {
        run.set_sink(None);
        let status = match outcome {
            Ok(_) => "FINISHED",
            Err(e) if e.to_string().starts_with("interrupted") => "KILLED",
            Err(_) => "FAILED",
        };
        let _ = self.tx.send(Message::Finish(status));
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

fn experiment_name(cfg: &Config) -> &str {
    if cfg.tracking.experiment.is_empty() {
        &cfg.name
    } else {
        &cfg.tracking.experiment
    }
}

/// The background thread: buffer, send every [`FLUSH_EVERY`], retry after failures,
/// finish within [`FINISH_BUDGET`].
fn mirror_loop(client: &Client, cfg: &Config, run: &RunDir, uri: &str, rx: &mpsc::Receiver<Message>) {
    let mut state = TrackingState::load(run, uri);
    // A resumed run's records after its checkpoint were dropped and come again.
    let on_disk = run.records().map(|r| r.len()).unwrap_or(0);
    state.records_logged = state.records_logged.min(on_disk);
    state.complete = false;
    let mut pending: Vec<Metric> = Vec::new();
    let mut pending_records = 0usize;
    let mut last_try = Instant::now() - FLUSH_EVERY;
    let warned = std::cell::Cell::new(false);
    let try_flush = |state: &mut TrackingState, pending: &mut Vec<Metric>, pending_records: &mut usize| {
        let result =
            ensure_run(client, cfg, run, state).and_then(|()| client.log_batch(&state.run_id, &[], pending, &[]));
        match result {
            Ok(()) => {
                state.records_logged += *pending_records;
                *pending_records = 0;
                pending.clear();
                let _ = run.write_json(STATE_FILE, state);
                if warned.replace(false) {
                    errln!("tracking: the server answers again; buffered metrics sent");
                }
                true
            }
            Err(e) => {
                if !warned.replace(true) {
                    errln!("warning: tracking: {e:#}; training goes on, metrics are buffered and retried");
                }
                false
            }
        }
    };
    let status = loop {
        match rx.recv_timeout(FLUSH_EVERY) {
            Ok(Message::Record(v)) => {
                pending.extend(record_metrics(&v, now_ms()));
                pending_records += 1;
            }
            Ok(Message::Finish(status)) => break status,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break "KILLED",
        }
        // After a failure, wait a little longer before knocking again.
        let wait = if warned.get() { FLUSH_EVERY * 3 } else { FLUSH_EVERY };
        if (pending.len() >= mlflow::MAX_METRICS_PER_BATCH || last_try.elapsed() >= wait) && pending_records > 0 {
            last_try = Instant::now();
            try_flush(&mut state, &mut pending, &mut pending_records);
        }
    };
    let deadline = Instant::now() + FINISH_BUDGET;
    let mut sent = try_flush(&mut state, &mut pending, &mut pending_records);
    while !sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        sent = try_flush(&mut state, &mut pending, &mut pending_records);
    }
    let done = sent
        && upload_artifacts(client, run, &state)
            .and_then(|_| client.log_batch(&state.run_id, &[], &[], &tags(cfg, run)))
            .and_then(|()| client.finish_run(&state.run_id, status))
            .map_err(|e| errln!("warning: tracking: {e:#}"))
            .is_ok();
    state.complete = done && status == "FINISHED";
    let _ = run.write_json(STATE_FILE, &state);
    if !done {
        errln!(
            "warning: tracking: the MLflow record of this run is incomplete; `trainer track sync {}` completes it",
            run.path.display()
        );
    }
}

/// `trainer track sync RUN`: uploads what the mirror did not (metrics, params, artifacts,
/// final status) from the run directory. Safe to repeat.
pub fn sync(dir: &Path, uri_override: Option<&str>) -> Result<()> {
    let run = RunDir::open(dir)?;
    let cfg = Config::resolve(Some(&run.file("config.toml")), &[])?;
    let recorded = run.read_json::<TrackingState>(STATE_FILE).ok().map(|s| s.uri).filter(|u| !u.is_empty());
    let uri = match uri_override.map(String::from).or_else(|| tracking_uri(&cfg)).or(recorded) {
        Some(u) => u,
        None => bail!(
            "no tracking server for {}: pass --tracking-uri, set MLFLOW_TRACKING_URI or [tracking] uri",
            run.path.display()
        ),
    };
    let client = Client::new(&uri)?;
    let mut state = TrackingState::load(&run, &uri);
    ensure_run(&client, &cfg, &run, &mut state)?;
    let records = run.records()?;
    let from = state.records_logged.min(records.len());
    let now = now_ms();
    let metrics: Vec<Metric> = records.get(from..).unwrap_or(&[]).iter().flat_map(|r| record_metrics(r, now)).collect();
    client.log_batch(&state.run_id, &[], &metrics, &tags(&cfg, &run))?;
    state.records_logged = records.len();
    run.write_json(STATE_FILE, &state)?;
    let artifacts = upload_artifacts(&client, &run, &state)?;
    let finished = run.file("summary.json").exists();
    if finished {
        client.finish_run(&state.run_id, "FINISHED")?;
    }
    state.complete = finished;
    run.write_json(STATE_FILE, &state)?;
    cifar_cli_io::outln!(
        "synced {} to {uri}: run {} in experiment {}, {} new metric points from {} records, {} artifacts{}",
        run.path.display(),
        state.run_id,
        state.experiment_id,
        metrics.len(),
        records.len() - from,
        artifacts,
        if finished { ", status FINISHED" } else { " (the run has not finished: status left as it is)" }
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_map_to_metrics_at_their_step() {
        let step = json!({"kind": "step", "step": 7, "loss": 1.5, "lr": 0.1, "images_per_sec": 900.0, "step_ms": 3.0});
        let m = record_metrics(&step, 1);
        assert_eq!(m.len(), 4);
        assert!(m.iter().all(|m| m.step == 7));
        let epoch = json!({"kind": "epoch", "step": 18, "train_loss": 1.2, "val_acc": null, "epoch_secs": 4.0});
        let keys: Vec<String> = record_metrics(&epoch, 1).into_iter().map(|m| m.key).collect();
        assert_eq!(keys, vec!["epoch_train_loss", "epoch_secs"]);
        assert!(record_metrics(&json!({"kind": "other"}), 1).is_empty());
    }

    #[test]
    fn params_are_the_flat_config_without_tracking() {
        let mut cfg = Config::default();
        cfg.tracking.uri = "http://127.0.0.1:1".into();
        let p = params(&cfg).unwrap();
        assert!(p.iter().any(|(k, v)| k == "train.epochs" && !v.is_empty()), "{p:?}");
        assert!(p.iter().any(|(k, _)| k == "model.widths"));
        assert!(!p.iter().any(|(k, _)| k.starts_with("tracking")));
    }
}
