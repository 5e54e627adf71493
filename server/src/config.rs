//! Command-line flags of `cifar-serve`. Every flag can also be set through an environment
//! variable (`CIFAR_SERVE_<FLAG>`), which is how container deployments configure it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cifar_sdk::drift::DriftConfig;
use clap::Parser;

/// cifar-serve: serves a compiled `.cifar` classifier over HTTP and gRPC.
///
/// Endpoints: the Open Inference Protocol v2 (`/v2/...`, with the binary tensor data and
/// classification extensions, model configuration and statistics in Triton's shapes, and
/// the model repository index, load and unload calls), the same over gRPC with `--grpc-addr`,
/// `POST /v1/classify` for image files, a web page at `/`, Prometheus metrics at
/// `/metrics` (text format 0.0.4, Triton's names; `?format=openmetrics` for OpenMetrics)
/// and the input drift report at `/v1/drift`. Access control: `--api-key-file`,
/// `--admin-key-file`; TLS: `--tls-cert`, `--tls-key`.
///
/// Signals: SIGHUP reloads the model file, or rescans the model repository (validated
/// first; a bad file is rejected and the old model keeps serving); SIGTERM and Ctrl-C stop accepting connections and finish the
/// requests in flight before exiting.
#[derive(Debug, Clone, Parser)]
#[command(name = "cifar-serve", version, about, long_about)]
pub struct Config {
    /// The compiled model file (`trainer compile` writes it): one model, version 1,
    /// +1 per reload. Or a model in object storage, `s3://bucket/prefix/models/<sha256>.cifar`
    /// (`trainer model push` prints it; also gs://, az://, file://), downloaded into the
    /// cache and checked against its hash before serving. Or use `--model-repository`.
    #[arg(
        long,
        env = "CIFAR_SERVE_MODEL",
        value_name = "FILE",
        required_unless_present = "model_repository",
        conflicts_with = "model_repository"
    )]
    pub model: Option<PathBuf>,

    /// A model repository in Triton's layout: `DIR/<name>/<version>/model.cifar`, each
    /// model with an optional `DIR/<name>/config.toml` (`version_policy = "latest"` with
    /// `latest = N` (default 1), `"all"`, or `"specific"` with `versions = [..]`;
    /// `labels = [..]` to rename the classes; `max_batch = N` to batch this model in
    /// smaller batches than `--max-batch`). Every model is loaded at start-up; the
    /// repository API loads and unloads them by name.
    #[arg(long, env = "CIFAR_SERVE_MODEL_REPOSITORY", value_name = "DIR")]
    pub model_repository: Option<PathBuf>,

    /// With `--model-repository`: rescan it every this many seconds, loading new models
    /// and new or changed versions (0: only on the repository API or SIGHUP).
    #[arg(long, env = "CIFAR_SERVE_REPOSITORY_POLL_SECS", default_value_t = 0)]
    pub repository_poll_secs: u64,

    /// Name the model is served under (`/v2/models/{name}`), with `--model`. Default:
    /// the file name without its extension.
    #[arg(long, env = "CIFAR_SERVE_MODEL_NAME", value_name = "NAME", conflicts_with = "model_repository")]
    pub model_name: Option<String>,

    /// Address to listen on. Port 0 picks a free port; the chosen address is logged and,
    /// with `--ready-file`, written to that file.
    #[arg(long, env = "CIFAR_SERVE_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Also serve the Open Inference Protocol over gRPC (Triton's `GRPCInferenceService`,
    /// as tritonclient.grpc speaks it) on this address, e.g. `127.0.0.1:8001`. It shares
    /// the queue, batching, limits, metrics, drift monitor, keys and TLS with HTTP.
    #[arg(long, env = "CIFAR_SERVE_GRPC_ADDR", value_name = "ADDR")]
    pub grpc_addr: Option<SocketAddr>,

    /// Once listening, write the bound address (e.g. `127.0.0.1:43117`) to this file
    /// (written atomically), and the gRPC address on a second line when `--grpc-addr` is
    /// set. Lets scripts and tests use port 0.
    #[arg(long, env = "CIFAR_SERVE_READY_FILE", value_name = "FILE")]
    pub ready_file: Option<PathBuf>,

    /// A file holding the API key (one line): inference, model metadata, configuration,
    /// statistics and drift then need `Authorization: Bearer <key>` (gRPC: the
    /// `authorization` metadata), else 401 / UNAUTHENTICATED. Health checks, the server
    /// metadata, the web page and `/metrics` stay open (see `--auth-metrics`).
    #[arg(long, env = "CIFAR_SERVE_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// A file holding the admin key: the repository calls (index, load, unload) then
    /// need it, and the API key does not suffice. Without it, they need the API key.
    #[arg(long, env = "CIFAR_SERVE_ADMIN_KEY_FILE", value_name = "FILE")]
    pub admin_key_file: Option<PathBuf>,

    /// `/metrics` needs the API key too.
    #[arg(long, env = "CIFAR_SERVE_AUTH_METRICS")]
    pub auth_metrics: bool,

    /// TLS certificate chain (PEM): HTTP and gRPC then speak only TLS (HTTPS, and gRPC
    /// over TLS with ALPN h2). Needs `--tls-key`.
    #[arg(long, env = "CIFAR_SERVE_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of `--tls-cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "CIFAR_SERVE_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Device policy: `auto` (GPU when usable, else CPU, saying why), `cpu`, `gpu` (fail
    /// without a usable GPU) or `gpu-or-cpu`.
    #[arg(long, env = "CIFAR_SERVE_DEVICE", default_value = "auto")]
    pub device: cifar_sdk::DevicePolicy,

    /// Inference workers, each with its own session (requests run in parallel on
    /// different workers). 0: the cores divided by --threads.
    #[arg(long, env = "CIFAR_SERVE_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Threads of each worker's session (one batch runs on all of them). 0: the cores
    /// divided by --workers when that is set, else 2 (1 on a single core): workers x
    /// threads = the cores, with two threads per request for latency.
    #[arg(long, env = "CIFAR_SERVE_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Most images a worker runs in one batch. Requests that arrive while the workers
    /// are busy are merged into batches up to this size.
    #[arg(long, env = "CIFAR_SERVE_MAX_BATCH", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_batch: u32,

    /// How long a worker that has fewer than `--max-batch` images waits for more requests
    /// before running, in microseconds. 0 runs at once with whatever is queued: the best
    /// latency on an idle server; batches still form under load.
    #[arg(long, env = "CIFAR_SERVE_MAX_QUEUE_DELAY_US", default_value_t = 0)]
    pub max_queue_delay_us: u64,

    /// Most requests waiting for a worker. Beyond it, requests get 503 with Retry-After.
    #[arg(long, env = "CIFAR_SERVE_MAX_QUEUE", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queue: u32,

    /// Largest request body, in bytes.
    #[arg(long, env = "CIFAR_SERVE_MAX_BODY_BYTES", default_value_t = 32 << 20)]
    pub max_body_bytes: usize,

    /// Most images in one request.
    #[arg(long, env = "CIFAR_SERVE_MAX_IMAGES", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_images: u32,

    /// A request that takes longer than this (queue and compute), in milliseconds, gets
    /// 503 and its work is dropped.
    #[arg(long, env = "CIFAR_SERVE_REQUEST_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,

    /// Images in the sliding window that drift is measured over.
    #[arg(long, env = "CIFAR_SERVE_DRIFT_WINDOW", default_value_t = DriftConfig::default().window as u32, value_parser = clap::value_parser!(u32).range(10..))]
    pub drift_window: u32,

    /// Drift alarm threshold on the drift score (the largest PSI over the input features
    /// and the confidence; 0.25 is the usual "significant shift" level).
    #[arg(long, env = "CIFAR_SERVE_DRIFT_THRESHOLD", default_value_t = DriftConfig::default().threshold)]
    pub drift_threshold: f64,

    /// Drift alarm threshold on the Jensen-Shannon divergence (bits, 0..1) between the
    /// predicted-class distribution of the window and of the reference.
    #[arg(long, env = "CIFAR_SERVE_DRIFT_CLASS_THRESHOLD", default_value_t = DriftConfig::default().class_threshold)]
    pub drift_class_threshold: f64,

    /// Images the window must hold before drift is judged.
    #[arg(long, env = "CIFAR_SERVE_DRIFT_MIN_IMAGES", default_value_t = DriftConfig::default().min_images as u32)]
    pub drift_min_images: u32,

    /// Log format: `text` for people, `json` for log collectors. The level comes from
    /// `RUST_LOG` (default `info`).
    #[arg(long, env = "CIFAR_SERVE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Seconds to wait for in-flight requests on shutdown before exiting anyway.
    #[arg(long, env = "CIFAR_SERVE_SHUTDOWN_GRACE_S", default_value_t = 30)]
    pub shutdown_grace_s: u64,
}

impl Config {
    /// The name the `--model` file is served under.
    pub fn served_name(&self) -> String {
        self.model_name.clone().unwrap_or_else(|| {
            // A model in object storage is named by its hash: serve it as "model".
            if self.model.as_deref().is_some_and(|m| cifar_remote::is_remote(&m.to_string_lossy())) {
                return "model".into();
            }
            self.model
                .as_deref()
                .and_then(|m| m.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        })
    }

    /// `(workers, threads per worker)` after resolving 0s, from the cores this process
    /// may use.
    pub fn worker_threads(&self) -> (usize, usize) {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        match (self.workers, self.threads) {
            (0, 0) => {
                let threads = cores.min(2);
                ((cores / threads).max(1), threads)
            }
            (0, t) => ((cores / t).max(1), t),
            (w, 0) => (w, (cores / w).max(1)),
            (w, t) => (w, t),
        }
    }

    /// `--request-timeout-ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}
