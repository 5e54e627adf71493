//! `cifar-serve`'s request parsers, reached the way a client reaches them: the real HTTP
//! and gRPC routers (auth, body limits, routing, decoding, the batcher, inference,
//! encoding) driven in-process over the tiny int8 fixture model.
//!
//! Findings: a panic anywhere (a handler, the batcher's worker), a 5xx answer to any
//! request, or a 4xx whose body is not `{"error": "..."}` (every refusal must say what is
//! wrong).

use std::sync::OnceLock;

use axum::body::{Body, Bytes};
use axum::http::{header, Request, StatusCode};
use clap::Parser;
use tower::ServiceExt;

use crate::sdk::TINY_INT8;

/// The name the fixture model is served under (its file's stem).
pub const MODEL: &str = "tiny-int8";
/// The multipart boundary of [`classify_body`]'s multipart mode.
pub const BOUNDARY: &str = "cifar-fuzz-boundary";
/// The largest response body read back.
const MAX_RESPONSE: usize = 64 << 20;

struct Server {
    runtime: tokio::runtime::Runtime,
    http: axum::Router,
    grpc: axum::Router,
}

/// The server, started once per process.
fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start a tokio runtime: {e}"));
        let dir = std::env::temp_dir().join(format!("cifar-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let file = dir.join(format!("{MODEL}.cifar"));
        std::fs::write(&file, TINY_INT8).unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
        // Every setting comes from here, none from the environment (an API key there
        // would make every request a 401).
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CIFAR_SERVE_") {
                std::env::remove_var(key);
            }
        }
        // A request gets 5 s (libFuzzer calls an input over 10 s a hang).
        let args = ["cifar-serve", "--device", "cpu", "--workers", "1", "--threads", "1", "--max-batch", "4"];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend(["--request-timeout-ms".into(), "5000".into()]);
        args.extend(["--max-queue-delay-us".into(), "0".into(), "--model".into(), file.display().to_string()]);
        let config = cifar_server::config::Config::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"));
        let repository = runtime
            .block_on(cifar_server::open_repository(&config))
            .unwrap_or_else(|e| panic!("cannot serve the fixture: {e:#}"));
        // The model is mapped: its file is no longer needed (nothing reloads it here).
        let _ = std::fs::remove_dir_all(&dir);
        let keys = cifar_server::auth::Keys::load(&config).unwrap_or_else(|e| panic!("{e}"));
        let state = runtime.block_on(async { cifar_server::shared_state(config, repository, keys) });
        let state = state.unwrap_or_else(|e| panic!("{e:#}"));
        Server { http: cifar_server::routes::router(state.clone()), grpc: cifar_server::grpc::router(state), runtime }
    })
}

/// The gRPC status and message of an answer that carries them in its headers (a
/// trailers-only answer: a refusal).
type GrpcStatus = Option<(String, String)>;

/// Sends one request through `router` and reads the whole answer: its status, its gRPC
/// status where the headers carry one, and its body.
fn send(grpc: bool, request: Request<Body>) -> (StatusCode, GrpcStatus, Bytes) {
    let s = server();
    let router = if grpc { s.grpc.clone() } else { s.http.clone() };
    s.runtime.block_on(async move {
        let response = match router.oneshot(request).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let status = response.status();
        let header =
            |name: &str| response.headers().get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let grpc_status = header("grpc-status").map(|code| (code, header("grpc-message").unwrap_or_default()));
        let body = axum::body::to_bytes(response.into_body(), MAX_RESPONSE)
            .await
            .unwrap_or_else(|e| panic!("cannot read the answer's body: {e}"));
        (status, grpc_status, body)
    })
}

/// The checks every HTTP answer must pass; returns whether the request was served.
fn check(status: StatusCode, body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    assert!(!status.is_server_error(), "answered {status} to a client's bytes: {text}");
    if status.is_client_error() {
        let json: serde_json::Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{status} with a body that is not JSON ({e}): {text}"));
        let message = json.get("error").and_then(|m| m.as_str()).unwrap_or_default();
        assert!(!message.is_empty(), "{status} without an error message: {text}");
    }
    status.is_success()
}

/// Target `oip_json`: the body of `POST /v2/models/tiny-int8/infer` (JSON tensors).
pub fn oip_json(data: &[u8]) -> bool {
    let request = Request::builder()
        .method("POST")
        .uri(format!("/v2/models/{MODEL}/infer"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(data.to_vec()));
    let Ok(request) = request else { return false };
    let (status, _, body) = send(false, request);
    check(status, &body)
}

/// Target `oip_binary`: the binary tensor extension. Input: the
/// `Inference-Header-Content-Length` value (u16 LE), then the body (JSON header and
/// binary tensor data).
pub fn oip_binary(data: &[u8]) -> bool {
    let [a, b, body @ ..] = data else { return false };
    let header_len = u16::from_le_bytes([*a, *b]);
    let request = Request::builder()
        .method("POST")
        .uri(format!("/v2/models/{MODEL}/infer"))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(cifar_server::infer::HEADER_LENGTH, header_len.to_string())
        .body(Body::from(body.to_vec()));
    let Ok(request) = request else { return false };
    let (status, _, body) = send(false, request);
    check(status, &body)
}

/// Target `classify_body`: `POST /v1/classify`. Input: a mode byte, then the body. Bit 0
/// of the mode: multipart/form-data (boundary [`BOUNDARY`]) or a raw image; bits 1-2:
/// no query, `top_k=3`, `top_k=0`, `top_k=100000`.
pub fn classify_body(data: &[u8]) -> bool {
    let Some((&mode, body)) = data.split_first() else { return false };
    let query = ["", "?top_k=3", "?top_k=0", "?top_k=100000"][usize::from(mode >> 1) & 3];
    let content_type = if mode & 1 == 1 {
        format!("multipart/form-data; boundary={BOUNDARY}")
    } else {
        "application/octet-stream".to_string()
    };
    let request = Request::builder()
        .method("POST")
        .uri(format!("/v1/classify{query}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body.to_vec()));
    let Ok(request) = request else { return false };
    let (status, _, body) = send(false, request);
    check(status, &body)
}

/// Target `grpc_infer`: a protobuf `ModelInferRequest` as the message of the gRPC call
/// `inference.GRPCInferenceService/ModelInfer` (framed as gRPC frames it). A refusal
/// (INVALID_ARGUMENT, NOT_FOUND ...) is fine; a panic, a hang, or INTERNAL/UNKNOWN for a
/// message that decoded (the gRPC twin of a 5xx) is a finding.
/// Returns whether the call succeeded (a refusal is a trailers-only answer, whose
/// `grpc-status` is in the headers).
pub fn grpc_infer(data: &[u8]) -> bool {
    let Ok(len) = u32::try_from(data.len()) else { return false };
    let mut frame = Vec::with_capacity(5 + data.len());
    frame.push(0);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(data);
    let request = Request::builder()
        .method("POST")
        .uri("/inference.GRPCInferenceService/ModelInfer")
        .header(header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Body::from(frame));
    let Ok(request) = request else { return false };
    let (status, grpc_status, _) = send(true, request);
    assert_eq!(status, StatusCode::OK, "gRPC answers travel with HTTP 200");
    match grpc_status {
        None => true,
        // INTERNAL is what tonic answers a message it cannot decode (server/src/grpc.rs);
        // any other INTERNAL or UNKNOWN is the server failing on a client's bytes.
        Some((code, message)) if code == "13" || code == "2" => {
            assert!(message.contains("decode"), "gRPC status {code} on a client's message: {message}");
            false
        }
        Some((code, _)) => code == "0",
    }
}
