//! `cifar-serve`, the reference HTTP server for compiled `.cifar` classifiers.
//!
//! - [`config`]: the command line.
//! - [`repository`]: the served models (one file or a model repository), loaded,
//!   reloaded and unloaded atomically.
//! - [`batcher`]: the bounded queue and the inference workers (dynamic batching).
//! - [`oip`]: the Open Inference Protocol v2 wire format.
//! - [`infer`] and [`routes`]: the HTTP endpoints; [`grpc`]: the same over gRPC.
//! - [`model_config`] and [`stats`]: model configuration and statistics in Triton's shapes.
//! - [`auth`]: API and admin keys; [`listen`]: the accept loop, plain or TLS.
//! - [`telemetry`] and [`drift`]: Prometheus metrics and input drift monitoring.

pub mod auth;
pub mod batcher;
pub mod config;
pub mod drift;
pub mod error;
pub mod grpc;
pub mod infer;
pub mod listen;
pub mod model_config;
pub mod oip;
pub mod repository;
pub mod routes;
pub mod stats;
pub mod telemetry;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cifar_sdk::ModelOptions;

use crate::batcher::{BatchPolicy, Batcher};
use crate::config::Config;
use crate::drift::DriftConfig;
use crate::repository::{Repository, ServedModel};
use crate::telemetry::Telemetry;

/// What every handler shares.
#[derive(Debug)]
pub struct Shared {
    /// The command line.
    pub config: Config,
    /// The served models.
    pub repository: Repository,
    /// The queue and workers.
    pub batcher: Batcher,
    /// Metrics and drift.
    pub telemetry: Arc<Telemetry>,
    /// API and admin keys.
    pub keys: auth::Keys,
    /// Set once shutdown has begun (readiness turns 503).
    pub shutting_down: AtomicBool,
}

/// The handlers' state.
pub type AppState = Arc<Shared>;

/// Loads or reloads the model `name` and records the outcome (`trigger`: `http`,
/// `grpc`, `sighup` or `poll`).
pub async fn load(state: &AppState, name: &str, trigger: &str) -> Result<Vec<Arc<ServedModel>>, repository::LoadError> {
    match state.repository.load(name).await {
        Ok(loaded) => {
            if loaded.changed {
                after_load(state, trigger, &loaded.versions);
            }
            Ok(loaded.versions)
        }
        Err(e) => {
            state.telemetry.record_reload(false);
            tracing::error!(trigger, model = name, error = %e, "model load rejected; what was served keeps serving");
            Err(e)
        }
    }
}

fn after_load(state: &AppState, trigger: &str, versions: &[Arc<ServedModel>]) {
    state.telemetry.record_reload(true);
    state.telemetry.set_models(&state.repository.all());
    if let Some(latest) = versions.last() {
        state.telemetry.drift_for(latest).reset(latest);
    }
    for m in versions {
        tracing::info!(trigger, model = %m.name, version = m.version, digest = %m.digest, "model loaded");
    }
}

/// Stops serving `name` (repository only) and records it.
pub async fn unload(state: &AppState, name: &str, trigger: &str) -> Result<(), String> {
    state.repository.unload(name).await?;
    state.telemetry.set_models(&state.repository.all());
    tracing::info!(trigger, model = name, "model unloaded; requests already accepted finish");
    Ok(())
}

/// SIGHUP and the repository poll: the `--model` file again, or every model of the
/// repository that changed.
async fn refresh(state: &AppState, trigger: &str) {
    if !state.repository.is_directory() {
        let name = state.config.served_name();
        let _ = load(state, &name, trigger).await;
        return;
    }
    for (name, result) in state.repository.poll().await {
        match result {
            Ok(loaded) => after_load(state, trigger, &loaded.versions),
            Err(e) => {
                state.telemetry.record_reload(false);
                state.telemetry.set_models(&state.repository.all());
                tracing::error!(trigger, model = %name, error = %e, "model not (re)loaded");
            }
        }
    }
}

/// The local file of `--model`: the path itself, or for a URL in object storage
/// (`s3://bucket/prefix/models/<sha256>.cifar`, as `trainer model push` prints it) its copy
/// in the cache, downloaded and checked against its hash first.
async fn local_model(model: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let text = model.to_string_lossy().into_owned();
    if !cifar_remote::is_remote(&text) {
        return Ok(model.to_path_buf());
    }
    tracing::info!(url = %text, cache = %cifar_remote::cache_dir().display(), "fetching the model");
    let path = tokio::task::spawn_blocking(move || cifar_remote::fetch_model(&text))
        .await
        .context("the model download stopped")??;
    tracing::info!(file = %path.display(), "model fetched and its sha256 verified");
    Ok(path)
}

/// The handlers' state for `config` and the models of `repository`: metrics, drift
/// monitors and the inference workers (started here). What [`run`] serves; the fuzz
/// targets (`fuzz/`) drive [`routes::router`] and [`grpc::router`] over it in-process.
pub fn shared_state(config: Config, repository: Repository, keys: auth::Keys) -> anyhow::Result<AppState> {
    let (workers, _) = config.worker_threads();
    let telemetry = Arc::new(Telemetry::new(DriftConfig {
        window: config.drift_window as usize,
        threshold: config.drift_threshold,
        class_threshold: config.drift_class_threshold,
        min_images: config.drift_min_images as usize,
    }));
    telemetry.set_models(&repository.all());
    telemetry.set_queue_capacity(config.max_queue as usize);
    let policy = BatchPolicy {
        max_batch: config.max_batch as usize,
        max_queue_delay: Duration::from_micros(config.max_queue_delay_us),
        max_queue: config.max_queue as usize,
    };
    let batcher = Batcher::start(workers, policy, telemetry.clone()).context("cannot start the inference workers")?;
    Ok(Arc::new(Shared { config, repository, batcher, telemetry, keys, shutting_down: AtomicBool::new(false) }))
}

/// The models `config` names (`--model`, fetched first where it is a URL, or
/// `--model-repository`), opened with its device, threads per worker and batch size.
pub async fn open_repository(config: &Config) -> anyhow::Result<Repository> {
    let (_, threads) = config.worker_threads();
    let options = ModelOptions { device: config.device, threads, max_batch: config.max_batch as usize };
    match (&config.model, &config.model_repository) {
        (Some(file), _) => {
            let file = local_model(file).await?;
            Repository::open_file(file.clone(), config.served_name(), options)
                .with_context(|| format!("cannot serve {}", file.display()))
        }
        (None, Some(dir)) => Repository::open_dir(dir.clone(), options).await,
        (None, None) => anyhow::bail!("give --model FILE or --model-repository DIR"),
    }
}

/// Opens the model, starts the workers, listens, and serves until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let keys = auth::Keys::load(&config)?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(listen::tls_acceptor(cert, key)?),
        _ => None,
    };
    let (workers, threads) = config.worker_threads();
    let repository = open_repository(&config).await?;
    for model in repository.all() {
        tracing::info!(
            model = %model.name,
            version = model.version,
            file = %model.path.display(),
            precision = %model.model.precision(),
            device = %model.model.device(),
            device_reason = %model.model.device_reason(),
            digest = %model.digest,
            classes = model.model.classes(),
            "model loaded"
        );
    }
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    let addr = listener.local_addr().context("cannot read the bound address")?;
    let grpc_listener = match config.grpc_addr {
        Some(a) => {
            Some(tokio::net::TcpListener::bind(a).await.with_context(|| format!("cannot listen on {a} (gRPC)"))?)
        }
        None => None,
    };
    let grpc_addr =
        grpc_listener.as_ref().map(|l| l.local_addr()).transpose().context("cannot read the gRPC address")?;
    let loopback_only = addr.ip().is_loopback() && grpc_addr.is_none_or(|a| a.ip().is_loopback());
    if !keys.has_api_key() && !loopback_only {
        tracing::warn!("listening beyond loopback without --api-key-file: anyone who reaches the port can infer");
    }
    let state = shared_state(config, repository, keys)?;
    spawn_sighup_reloader(state.clone());
    if state.repository.is_directory() && state.config.repository_poll_secs > 0 {
        let (poller, every) = (state.clone(), Duration::from_secs(state.config.repository_poll_secs));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                refresh(&poller, "poll").await;
            }
        });
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, workers, threads, max_batch = state.config.max_batch, "listening on {scheme}://{addr}/");
    if let Some(g) = grpc_addr {
        tracing::info!(addr = %g, tls = tls.is_some(), "gRPC (inference.GRPCInferenceService) on {g}");
    }
    if let Some(path) = &state.config.ready_file {
        let mut text = addr.to_string();
        if let Some(g) = grpc_addr {
            text.push('\n');
            text.push_str(&g.to_string());
        }
        cifar_sdk::write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write the ready file {}", path.display()))?;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal_state = state.clone();
    tokio::spawn(async move {
        wait_for_stop_signal().await;
        signal_state.shutting_down.store(true, Ordering::SeqCst);
        tracing::info!("shutting down: no new connections; finishing the requests in flight");
        let _ = stop_tx.send(true);
    });
    let grace = Duration::from_secs(state.config.shutdown_grace_s);
    let http = listen::serve(listener, routes::router(state.clone()), tls.clone(), stop_rx.clone());
    let grpc_stop = stop_rx.clone();
    let grpc = async {
        if let Some(l) = grpc_listener {
            listen::serve(l, grpc::router(state.clone()), tls.clone(), grpc_stop).await;
        }
    };
    let mut stop_rx = stop_rx;
    tokio::select! {
        _ = async { tokio::join!(http, grpc) } => {},
        _ = async {
            let _ = stop_rx.wait_for(|&stopped| stopped).await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(grace_s = grace.as_secs(), "grace period over; exiting with requests still in flight"),
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_stop_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn spawn_sighup_reloader(state: AppState) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload through POST /v2/repository/models/{{name}}/load");
            return;
        };
        while hup.recv().await.is_some() {
            refresh(&state, "sighup").await;
        }
    });
    #[cfg(not(unix))]
    let _ = state;
}
