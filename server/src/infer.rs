//! The two inference endpoints: `POST /v2/models/{name}[/versions/{v}]/infer` (the Open
//! Inference Protocol) and `POST /v1/classify` (image files). Both submit one job to the
//! batcher and wait for it within the request timeout.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::batcher::{Job, JobOutput, Pixels, SubmitError};
use crate::error::{ApiError, ApiResult};
use crate::oip;
use crate::repository::ServedModel;
use crate::telemetry::FailureReason;
use crate::AppState;

/// The `Inference-Header-Content-Length` header of the binary tensor data extension.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The served model `name` at `version` (the newest when `None`), or 404 saying what
/// is served.
pub fn resolve(state: &AppState, name: &str, version: Option<&str>) -> ApiResult<Arc<ServedModel>> {
    state.repository.get(name, version).map_err(|e| ApiError::not_found(e.message()))
}

/// The model a request that names none goes to (`?model=` names one).
pub fn default_or_named(state: &AppState, name: Option<&str>) -> ApiResult<Arc<ServedModel>> {
    match name {
        Some(n) => resolve(state, n, None),
        None => state
            .repository
            .default_model()
            .ok_or_else(|| ApiError::unavailable("no model is loaded (see POST /v2/repository/index)", 5)),
    }
}

/// The body, or the reason it could not be read (too large, aborted) as a JSON error.
pub fn body_or_error(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body too large: {e}"))
        }
        status => ApiError::new(status, format!("cannot read the request body: {e}")),
    })
}

/// Queues the images and waits for the logits; records success or failure.
pub async fn run_job(
    state: &AppState,
    model: &Arc<ServedModel>,
    pixels: Pixels,
    images: usize,
) -> ApiResult<JobOutput> {
    let started = Instant::now();
    let (reply, answer) = oneshot::channel();
    let job = Job { model: model.clone(), pixels, images, enqueued: started, reply };
    let fail = |reason, err: ApiError| {
        state.telemetry.record_failure(model, reason);
        err
    };
    match state.batcher.submit(job) {
        Ok(()) => {}
        Err(SubmitError::Full) => {
            return Err(fail(
                FailureReason::QueueFull,
                ApiError::unavailable(
                    format!("the request queue is full ({} requests); retry shortly", state.config.max_queue),
                    1,
                ),
            ))
        }
        Err(SubmitError::Closed) => {
            return Err(fail(FailureReason::Internal, ApiError::unavailable("the server is shutting down", 5)))
        }
    }
    state.telemetry.set_queue_depth(state.batcher.queued());
    let timeout = state.config.request_timeout().saturating_sub(started.elapsed());
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(Ok(out))) => {
            state.telemetry.record_success(model, images, started.elapsed(), out.queue, out.compute);
            Ok(out)
        }
        Ok(Ok(Err(e))) => Err(fail(FailureReason::Internal, ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))),
        Ok(Err(_)) => Err(fail(
            FailureReason::Internal,
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the inference worker stopped"),
        )),
        Err(_) => Err(fail(
            FailureReason::Timeout,
            ApiError::unavailable(
                format!("inference did not finish within {} ms (server overloaded?)", state.config.request_timeout_ms),
                1,
            ),
        )),
    }
}

/// `POST /v2/models/{name}/infer`.
pub async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    infer_model(state, &name, None, headers, body).await
}

/// `POST /v2/models/{name}/versions/{version}/infer`.
pub async fn infer_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    infer_model(state, &name, Some(&version), headers, body).await
}

async fn infer_model(
    state: AppState,
    name: &str,
    version: Option<&str>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let model = resolve(&state, name, version)?;
    let body = body_or_error(body)?;
    let rejected = |e: ApiError| {
        state.telemetry.record_failure(&model, FailureReason::Rejected);
        e
    };
    let header_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()).ok_or_else(|| {
            rejected(ApiError::bad_request(format!("{HEADER_LENGTH} must be a byte count, got {v:?}")))
        })?),
    };
    let request = oip::decode_request(&body, header_len, &model, state.config.max_images as usize).map_err(rejected)?;
    drop(body);
    let InferRequestParts { images, pixels, request } = split(request);
    let out = run_job(&state, &model, pixels, images).await?;
    let encoded = oip::encode_response(&model, &request, &out.logits);
    let mut response = encoded.body.into_response();
    let h = response.headers_mut();
    match encoded.json_len {
        Some(n) => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            h.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        None => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    Ok(response)
}

struct InferRequestParts {
    images: usize,
    pixels: Pixels,
    request: oip::InferRequest,
}

/// Takes the pixels out of the request (they go to the worker); the rest shapes the answer.
fn split(mut request: oip::InferRequest) -> InferRequestParts {
    let pixels = std::mem::replace(&mut request.pixels, Pixels::Rgb8(Vec::new()));
    InferRequestParts { images: request.images, pixels, request }
}

/// Query of `POST /v1/classify`.
#[derive(Debug, Deserialize)]
pub struct ClassifyQuery {
    /// Classes per image (default 5).
    #[serde(default)]
    top_k: Option<usize>,
    /// The model (default: the only one, or the first by name).
    #[serde(default)]
    model: Option<String>,
}

/// `POST /v1/classify`: image files (PNG, JPEG, PPM; any size) as the raw body or as
/// `multipart/form-data` fields; answers the top-k classes of each.
pub async fn classify(
    State(state): State<AppState>,
    Query(query): Query<ClassifyQuery>,
    request: Request,
) -> ApiResult<Json<Value>> {
    let model = default_or_named(&state, query.model.as_deref())?;
    let classes = model.model.classes();
    let k = query.top_k.unwrap_or(5);
    if k < 1 || k > classes {
        return Err(ApiError::bad_request(format!("top_k must be in 1..={classes}, got {k}")));
    }
    let files = read_files(&state, request).await.inspect_err(|_| {
        state.telemetry.record_failure(&model, FailureReason::Rejected);
    })?;
    let [_, h, w] = model.input_shape();
    let max_images = state.config.max_images as usize;
    if files.is_empty() || files.len() > max_images {
        state.telemetry.record_failure(&model, FailureReason::Rejected);
        return Err(ApiError::bad_request(format!("send 1 to {max_images} image files, got {}", files.len())));
    }
    // Decoding and resizing large photos is CPU work: keep it off the async threads.
    let decoded = tokio::task::spawn_blocking(move || {
        let mut pixels = Vec::with_capacity(files.len() * h * w * 3);
        let mut names = Vec::with_capacity(files.len());
        for (name, bytes) in files {
            let px = cifar_sdk::image::decode_rgb8(&bytes, w, h)
                .map_err(|e| ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("file `{name}`: {e}")))?;
            pixels.extend_from_slice(&px);
            names.push(name);
        }
        Ok::<_, ApiError>((names, pixels))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("decoding task failed: {e}")))?;
    let (names, pixels) = decoded.inspect_err(|_| state.telemetry.record_failure(&model, FailureReason::Rejected))?;
    let images = names.len();
    let out = run_job(&state, &model, Pixels::Rgb8(pixels), images).await?;
    let labels = model.labels();
    let results: Vec<Value> = names
        .iter()
        .zip(out.logits.chunks_exact(classes.max(1)))
        .map(|(name, logits)| {
            let answer = cifar_sdk::classify_logits(logits, k, labels);
            let top: Vec<Value> = answer
                .top
                .iter()
                .map(|p| json!({ "class": p.class, "label": p.label, "probability": p.probability, "logit": p.logit }))
                .collect();
            json!({ "file": name, "top": top })
        })
        .collect();
    Ok(Json(json!({
        "model": model.name,
        "version": model.version_string(),
        "results": results,
        "queue_ms": out.queue.as_secs_f64() * 1e3,
        "compute_ms": out.compute.as_secs_f64() * 1e3,
        "batch_images": out.batch_images,
    })))
}

/// The uploaded files: each multipart field with data, or the raw body as one file.
async fn read_files(state: &AppState, request: Request) -> ApiResult<Vec<(String, Bytes)>> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !is_multipart {
        let body = body_or_error(Bytes::from_request(request, state).await)?;
        if body.is_empty() {
            return Err(ApiError::bad_request("empty body: send an image file (raw or multipart/form-data)"));
        }
        return Ok(vec![("body".to_string(), body)]);
    }
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::new(e.status(), format!("invalid multipart body: {}", e.body_text())))?;
    let mut files = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::new(e.status(), format!("invalid multipart body: {}", e.body_text())))?
    {
        let name = field.file_name().or(field.name()).unwrap_or("file").to_string();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| ApiError::new(e.status(), format!("multipart field `{name}`: {}", e.body_text())))?;
        if !bytes.is_empty() {
            files.push((name, bytes));
        }
    }
    Ok(files)
}

/// A JSON error for a status, used by the fallback route and the error middleware.
pub fn status_error(status: StatusCode, message: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], json!({ "error": message }).to_string()).into_response()
}
