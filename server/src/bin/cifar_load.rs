//! `cifar-load`: a closed-loop load generator for cifar-serve. `--concurrency` clients
//! each send a request, wait for the answer and send the next, until `--requests` are
//! done; it prints requests/s and latency percentiles, and counts every non-2xx answer
//! and transport error (exit status 1 if there were any, unless `--allow-errors`).
//!
//!   cifar-load --url http://127.0.0.1:8080 --model tiny --endpoint infer-binary \
//!       --image fixtures/images/*.png --requests 20000 --concurrency 64

#![deny(clippy::print_stdout, clippy::print_stderr)]

use cifar_cli_io::outln;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Endpoint {
    /// `POST /v2/models/{model}/infer`, one UINT8 image as binary tensor data,
    /// classification output (top-1) in binary.
    InferBinary,
    /// The same request with JSON tensor data.
    InferJson,
    /// `POST /v1/classify` with the encoded image file as the body.
    Classify,
}

/// Closed-loop HTTP load generator for cifar-serve.
#[derive(Debug, Parser)]
#[command(name = "cifar-load", version, about)]
struct Args {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Model name (for the /v2 endpoints).
    #[arg(long, default_value = "model")]
    model: String,
    /// Which request to send.
    #[arg(long, value_enum, default_value = "infer-binary")]
    endpoint: Endpoint,
    /// Image files to send, in turn (PNG, JPEG, PPM; resized to 32x32 for /infer).
    #[arg(long, required = true, num_args = 1..)]
    image: Vec<PathBuf>,
    /// Requests in total.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Clients sending at the same time.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Requests sent first and not measured.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Print the table row without its header (for scripts that print many rows).
    #[arg(long)]
    no_header: bool,
    /// Exit 0 even when some requests failed.
    #[arg(long)]
    allow_errors: bool,
}

#[derive(Default)]
struct ClientStats {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, usize>,
}

fn main() -> std::process::ExitCode {
    cifar_cli_io::exit_status(run())
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.concurrency == 0 || args.requests == 0 {
        bail!("--concurrency and --requests must be at least 1");
    }
    let mut bodies = Vec::new();
    for path in &args.image {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        bodies.push(request_body(args.endpoint, &bytes).with_context(|| format!("{}", path.display()))?);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let url = match args.endpoint {
        Endpoint::Classify => format!("{}/v1/classify?top_k=1", args.url.trim_end_matches('/')),
        _ => format!("{}/v2/models/{}/infer", args.url.trim_end_matches('/'), args.model),
    };
    let bodies = Arc::new(bodies);
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    if args.warmup > 0 {
        runtime.block_on(drive(&client, &url, args.endpoint, &bodies, args.warmup, args.concurrency));
    }
    let started = Instant::now();
    let stats = runtime.block_on(drive(&client, &url, args.endpoint, &bodies, args.requests, args.concurrency));
    let elapsed = started.elapsed();
    let mut latencies: Vec<Duration> = stats.iter().flat_map(|s| s.latencies.iter().copied()).collect();
    latencies.sort();
    let mut errors = BTreeMap::new();
    for s in &stats {
        for (k, v) in &s.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
    }
    let failed: usize = errors.values().sum();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(i).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
    };
    let rps = args.requests as f64 / elapsed.as_secs_f64();
    if args.json {
        let report = serde_json::json!({
            "endpoint": format!("{:?}", args.endpoint), "requests": args.requests, "concurrency": args.concurrency,
            "ok": latencies.len(), "failed": failed, "errors": errors, "seconds": elapsed.as_secs_f64(),
            "requests_per_s": rps, "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99), "max_ms": pct(1.0),
        });
        outln!("{report}")?;
    } else {
        if !args.no_header {
            print_header()?;
        }
        outln!(
            "{:<14} {:>5} {:>8} {:>7} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            format!("{:?}", args.endpoint),
            args.concurrency,
            args.requests,
            failed,
            rps,
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(1.0)
        )?;
        for (k, v) in &errors {
            outln!("  {v} x {k}")?;
        }
    }
    if failed > 0 && !args.allow_errors {
        anyhow::bail!("{failed} of {} requests failed (pass --allow-errors to exit 0 anyway)", args.requests);
    }
    Ok(())
}

fn print_header() -> std::io::Result<()> {
    outln!(
        "{:<14} {:>5} {:>8} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "endpoint",
        "conc",
        "requests",
        "failed",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms"
    )
}

/// A prepared request body.
struct Body {
    bytes: Vec<u8>,
    /// `Inference-Header-Content-Length` (binary tensor data).
    json_len: Option<usize>,
}

/// The request body for one image.
fn request_body(endpoint: Endpoint, file: &[u8]) -> anyhow::Result<Body> {
    if endpoint == Endpoint::Classify {
        return Ok(Body { bytes: file.to_vec(), json_len: None });
    }
    let px = cifar_sdk::image::decode_rgb8(file, 32, 32)?;
    let outputs = serde_json::json!([{ "name": "logits", "parameters": { "classification": 1 } }]);
    Ok(match endpoint {
        Endpoint::InferJson => Body {
            bytes: serde_json::to_vec(&serde_json::json!({
                "inputs": [{ "name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": px }],
                "outputs": outputs,
            }))?,
            json_len: None,
        },
        _ => {
            let header = serde_json::to_vec(&serde_json::json!({
                "inputs": [{ "name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3],
                             "parameters": { "binary_data_size": px.len() } }],
                "outputs": [{ "name": "logits", "parameters": { "classification": 1, "binary_data": true } }],
            }))?;
            let json_len = header.len();
            let mut bytes = header;
            bytes.extend_from_slice(&px);
            Body { bytes, json_len: Some(json_len) }
        }
    })
}

async fn drive(
    client: &reqwest::Client,
    url: &str,
    endpoint: Endpoint,
    bodies: &Arc<Vec<Body>>,
    total: usize,
    concurrency: usize,
) -> Vec<ClientStats> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.min(total) {
        let (client, url, bodies, next) = (client.clone(), url.to_string(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut stats = ClientStats::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = &bodies[i % bodies.len()];
                let started = Instant::now();
                match send(&client, &url, endpoint, body).await {
                    Ok(()) => stats.latencies.push(started.elapsed()),
                    Err(e) => *stats.errors.entry(e).or_insert(0) += 1,
                }
            }
            stats
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            out.push(s);
        }
    }
    out
}

async fn send(client: &reqwest::Client, url: &str, endpoint: Endpoint, body: &Body) -> Result<(), String> {
    let content_type = if endpoint == Endpoint::InferJson { "application/json" } else { "application/octet-stream" };
    let mut request = client.post(url).header("Content-Type", content_type).body(body.bytes.clone());
    if let Some(n) = body.json_len {
        request = request.header("Inference-Header-Content-Length", n);
    }
    let response = request.send().await.map_err(|e| format!("transport: {e}"))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| format!("reading the answer: {e}"))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes);
        return Err(format!("HTTP {}: {}", status.as_u16(), text.chars().take(200).collect::<String>()));
    }
    Ok(())
}
