//! The router: every endpoint, the middleware that counts requests and turns plain-text
//! errors (unknown route, wrong method, timeouts) into `{"error": ...}`, and the
//! non-inference endpoints (health, metadata, metrics, drift, repository, web page).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower_http::timeout::TimeoutLayer;

use crate::auth::Scope;
use crate::error::{ApiError, ApiResult};
use crate::infer::{self, resolve, status_error};
use crate::model_config::ModelConfigView;
use crate::repository::{LoadError, ServedModel};
use crate::{oip, AppState};

/// The page at `/`.
const PAGE: &str = include_str!("page.html");

/// Builds the application.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    // A backstop for requests stuck outside the inference wait (slow uploads): the
    // inference endpoints answer their own timeout first, with a clearer message.
    let backstop = state.config.request_timeout() + Duration::from_secs(5);
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata_version))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready_version))
        .route("/v2/models/{name}/infer", post(infer::infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer::infer_version))
        .route("/v2/models/{name}/config", get(model_config))
        .route("/v2/models/{name}/versions/{version}/config", get(model_config_version))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{name}/stats", get(model_stats))
        .route("/v2/models/{name}/versions/{version}/stats", get(model_stats_version))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{name}/load", post(repository_load))
        .route("/v2/repository/models/{name}/unload", post(repository_unload))
        .route("/v1/classify", post(infer::classify))
        .route("/v1/drift", get(drift))
        .route("/metrics", get(metrics))
        .fallback(|| async { status_error(StatusCode::NOT_FOUND, "no such endpoint (see GET /v2 and the README)") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, backstop))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Which key a route needs ([`crate::auth`]).
fn scope(endpoint: &str) -> Scope {
    match endpoint {
        "/" | "/v2" | "/v2/health/live" | "/v2/health/ready" => Scope::Open,
        "/v2/models/{name}/ready" | "/v2/models/{name}/versions/{version}/ready" => Scope::Open,
        "/metrics" => Scope::Metrics,
        e if e.starts_with("/v2/repository/") => Scope::Admin,
        // Inference, model information, drift, and anything unmatched (a 404 either way,
        // but without a key it says nothing about what exists).
        _ => Scope::Infer,
    }
}

/// Refuses requests without the key their route needs: 401 with `WWW-Authenticate`.
async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let endpoint = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    let value = request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    match state.keys.check(scope(&endpoint), value) {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            let mut r = status_error(StatusCode::UNAUTHORIZED, refused.0);
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

/// Counts every request by endpoint and status, tracks the in-flight gauge, and gives
/// error responses that are not JSON yet (from axum or tower) a JSON body.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let has_body = request.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v != "0")
        || request.headers().contains_key(header::TRANSFER_ENCODING);
    let started = Instant::now();
    state.telemetry.in_flight(true);
    let mut response = next.run(request).await;
    state.telemetry.in_flight(false);
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let reason = match status {
            StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this endpoint".to_string(),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => "the request timed out".to_string(),
            s => s.canonical_reason().unwrap_or("error").to_lowercase(),
        };
        let allow = response.headers().get(header::ALLOW).cloned();
        response = status_error(status, &reason);
        if let Some(a) = allow {
            response.headers_mut().insert(header::ALLOW, a);
        }
    }
    if (status.is_client_error() || status.is_server_error()) && has_body {
        // The body may be unread (too large, rejected early): the connection cannot be
        // reused, and saying so keeps clients from sending their next request on it.
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let elapsed = started.elapsed();
    state.telemetry.record_http(&endpoint, status.as_u16(), elapsed);
    tracing::debug!(%method, %uri, status = status.as_u16(), ms = elapsed.as_secs_f64() * 1e3, "request");
    response
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": oip::SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": oip::EXTENSIONS,
    }))
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.shutting_down.load(Ordering::SeqCst) {
        return ApiError::unavailable("shutting down", 5).into_response();
    }
    Json(json!({ "ready": true })).into_response()
}

async fn model_metadata(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(metadata(&state, &name, None)?))
}

async fn model_metadata_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(metadata(&state, &name, Some(&version))?))
}

async fn model_config(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let model = resolve(&state, &name, None)?;
    Ok(Json(ModelConfigView::new(&model, &state.config).to_json()))
}

async fn model_config_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let model = resolve(&state, &name, Some(&version))?;
    Ok(Json(ModelConfigView::new(&model, &state.config).to_json()))
}

fn stats_json(models: &[std::sync::Arc<ServedModel>]) -> Json<Value> {
    let stats: Vec<_> = models.iter().map(|m| m.stats.snapshot(&m.name, &m.version_string())).collect();
    Json(json!({ "model_stats": stats }))
}

async fn all_stats(State(state): State<AppState>) -> Json<Value> {
    stats_json(&state.repository.all())
}

/// Every served version of the model, as Triton answers a request that names no version.
async fn model_stats(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    resolve(&state, &name, None)?;
    Ok(stats_json(&state.repository.versions(&name)))
}

async fn model_stats_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(stats_json(&[resolve(&state, &name, Some(&version))?]))
}

/// The model metadata, listing every served version of the name.
pub fn metadata(state: &AppState, name: &str, version: Option<&str>) -> ApiResult<Value> {
    let model = resolve(state, name, version)?;
    let versions: Vec<String> = state.repository.versions(name).iter().map(|m| m.version_string()).collect();
    Ok(oip::model_metadata(&model, &versions))
}

async fn model_ready(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    model_ready_response(&state, &name, None)
}

async fn model_ready_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    model_ready_response(&state, &name, Some(&version))
}

fn model_ready_response(state: &AppState, name: &str, version: Option<&str>) -> ApiResult<Response> {
    let model = resolve(state, name, version)?;
    if state.shutting_down.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable("shutting down", 5));
    }
    Ok(Json(json!({ "name": model.name, "version": model.version_string(), "ready": true })).into_response())
}

/// `POST /v2/repository/index`, with an optional `{"ready": true}` body (ready models only).
async fn repository_index(State(state): State<AppState>, body: axum::body::Bytes) -> ApiResult<Json<Value>> {
    let ready_only = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the index request body must be JSON: {e}")))?;
        match v.get("ready") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(ApiError::bad_request(format!("`ready` must be true or false, got {other}"))),
        }
    };
    let rows: Vec<_> = state.repository.index().into_iter().filter(|r| !ready_only || r.state == "READY").collect();
    Ok(Json(json!(rows)))
}

/// Loads or reloads a model: validated first, swapped in atomically; on failure what was
/// served keeps serving and the error says why. Shared by HTTP and gRPC.
pub async fn load_model(state: &AppState, name: &str, trigger: &str) -> ApiResult<Vec<std::sync::Arc<ServedModel>>> {
    crate::load(state, name, trigger).await.map_err(|e| {
        let status = match e {
            LoadError::Unknown(_) => StatusCode::NOT_FOUND,
            LoadError::Rejected(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, format!("`{name}` was not loaded; what was served keeps serving: {e}"))
    })
}

/// Unloads a model (repository only). Shared by HTTP and gRPC.
pub async fn unload_model(state: &AppState, name: &str, trigger: &str) -> ApiResult<()> {
    crate::unload(state, name, trigger).await.map_err(ApiError::bad_request)
}

async fn repository_load(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let loaded = load_model(&state, &name, "http").await?;
    let versions: Vec<Value> =
        loaded.iter().map(|m| json!({ "version": m.version_string(), "digest": m.digest })).collect();
    let latest = loaded.last();
    Ok(Json(json!({
        "name": name,
        "version": latest.map(|m| m.version_string()),
        "digest": latest.map(|m| m.digest.clone()),
        "versions": versions,
    })))
}

async fn repository_unload(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    unload_model(&state, &name, "http").await?;
    Ok(Json(json!({ "name": name, "state": "UNAVAILABLE" })))
}

/// Query of `GET /v1/drift`.
#[derive(Debug, serde::Deserialize)]
struct DriftQuery {
    /// The model (default: the only one, or the first by name).
    #[serde(default)]
    model: Option<String>,
}

async fn drift(State(state): State<AppState>, Query(query): Query<DriftQuery>) -> ApiResult<Json<Value>> {
    let model = infer::default_or_named(&state, query.model.as_deref())?;
    let report = state.telemetry.drift_for(&model).report(&model);
    state.telemetry.set_drift(&report);
    Ok(Json(serde_json::to_value(report).unwrap_or(Value::Null)))
}

/// Query of `GET /metrics`.
#[derive(Debug, serde::Deserialize)]
struct MetricsQuery {
    /// `openmetrics` for the OpenMetrics format; anything else (or nothing): text 0.0.4.
    #[serde(default)]
    format: Option<String>,
}

/// The Prometheus text format 0.0.4 with Triton's names, whatever the Accept header says
/// (Prometheus asks for OpenMetrics first, which would rename Triton's counters);
/// OpenMetrics only with `?format=openmetrics`.
async fn metrics(State(state): State<AppState>, Query(query): Query<MetricsQuery>) -> Response {
    state.telemetry.set_queue_depth(state.batcher.queued());
    let (body, content_type) = if query.format.as_deref() == Some("openmetrics") {
        (state.telemetry.encode_openmetrics(), "application/openmetrics-text; version=1.0.0; charset=utf-8")
    } else {
        (state.telemetry.encode_text(), "text/plain; version=0.0.4; charset=utf-8")
    };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
