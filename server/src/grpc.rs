//! The Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`, the
//! service tritonclient.grpc and KServe clients call), on `--grpc-addr`. Every call goes
//! through the same code as its HTTP twin: model resolution, request validation
//! ([`oip::input_pixels`], [`oip::output_spec`]), the batcher, metrics and drift
//! ([`infer::run_job`]), keys ([`Keys`]). Outputs always travel in
//! `raw_output_contents`, as Triton sends them.
//!
//! Status codes: a request the protobuf decoder cannot parse gets INTERNAL (what gRPC's
//! own status-code table prescribes for an unparseable request, and what tonic answers);
//! a well-formed request with wrong content INVALID_ARGUMENT; an unknown model or version
//! NOT_FOUND; a missing or wrong key UNAUTHENTICATED; a full queue or a timeout
//! UNAVAILABLE. A message over `--max-body-bytes` is refused by tonic before decoding
//! with OUT_OF_RANGE ("decoded message length too large"), where gRPC's table says
//! RESOURCE_EXHAUSTED: tonic's choice, kept rather than rewriting its status frames.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use crate::auth::Scope;
use crate::error::ApiError;
use crate::infer::{resolve, run_job};
use crate::model_config::ModelConfigView;
use crate::oip::{self, InputData, InputTensor};
use crate::repository::VersionPolicy;
use crate::stats::{self, StatisticDuration};
use crate::AppState;

/// The types and service traits generated from `proto/inference.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// The gRPC service over the shared state.
#[derive(Debug, Clone)]
pub struct Service {
    state: AppState,
}

/// The service as an axum router, for [`crate::listen::serve`].
pub fn router(state: AppState) -> axum::Router {
    let limit = state.config.max_body_bytes;
    let server = GrpcInferenceServiceServer::new(Service { state })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    tonic::service::Routes::new(server).into_axum_router()
}

/// The gRPC status for an HTTP-layer error, with its message.
pub fn to_status(e: ApiError) -> Status {
    use tonic::Code;
    let code = match e.status.as_u16() {
        400 | 415 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        408 | 504 => Code::DeadlineExceeded,
        413 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        _ => Code::Internal,
    };
    Status::new(code, e.message)
}

impl Service {
    fn authorize<T>(&self, request: &Request<T>, scope: Scope) -> Result<(), Status> {
        let value = request.metadata().get("authorization").map(|v| v.as_bytes());
        self.state.keys.check(scope, value).map_err(|r| Status::unauthenticated(r.0))
    }

    fn model(&self, name: &str, version: &str) -> Result<std::sync::Arc<crate::repository::ServedModel>, Status> {
        resolve(&self.state, name, (!version.is_empty()).then_some(version)).map_err(to_status)
    }
}

/// gRPC parameters as the JSON map the shared validation reads.
fn parameters_json(params: &HashMap<String, pb::InferParameter>) -> Map<String, Value> {
    use pb::infer_parameter::ParameterChoice as P;
    params
        .iter()
        .map(|(k, v)| {
            let value = match &v.parameter_choice {
                Some(P::BoolParam(b)) => Value::Bool(*b),
                Some(P::Int64Param(i)) => Value::from(*i),
                Some(P::Uint64Param(u)) => Value::from(*u),
                Some(P::DoubleParam(d)) => Value::from(*d),
                Some(P::StringParam(s)) => Value::String(s.clone()),
                None => Value::Null,
            };
            (k.clone(), value)
        })
        .collect()
}

/// Validates a `ModelInferRequest` into the shared request form.
fn decode_infer(
    req: &pb::ModelInferRequest,
    model: &crate::repository::ServedModel,
    max_images: usize,
) -> Result<oip::InferRequest, ApiError> {
    let [input] = req.inputs.as_slice() else {
        return Err(ApiError::bad_request(format!(
            "expected exactly one input tensor ({} UINT8 [N,H,W,3] or {} FP32 [N,3,H,W]), got {}",
            oip::INPUT_UINT8,
            oip::INPUT_FP32,
            req.inputs.len()
        )));
    };
    if req.raw_input_contents.len() > 1 {
        return Err(ApiError::bad_request(format!(
            "raw_input_contents has {} entries for 1 input",
            req.raw_input_contents.len()
        )));
    }
    let typed = input.contents.as_ref().map(|c| {
        let others = !(c.bool_contents.is_empty()
            && c.int_contents.is_empty()
            && c.int64_contents.is_empty()
            && c.uint64_contents.is_empty()
            && c.fp64_contents.is_empty()
            && c.bytes_contents.is_empty());
        (c, others)
    });
    let data = match (req.raw_input_contents.first(), typed) {
        (Some(_), Some((c, others))) if others || !c.uint_contents.is_empty() || !c.fp32_contents.is_empty() => {
            return Err(ApiError::bad_request(format!(
                "input `{}` has both contents and raw_input_contents (send one)",
                input.name
            )))
        }
        (Some(raw), _) => InputData::Raw(raw),
        (None, Some((_, true))) => {
            return Err(ApiError::bad_request(format!(
                "input `{}`: send UINT8 as uint_contents and FP32 as fp32_contents (or raw_input_contents)",
                input.name
            )))
        }
        (None, Some((c, false))) if !c.uint_contents.is_empty() => InputData::Uint(&c.uint_contents),
        (None, Some((c, false))) if !c.fp32_contents.is_empty() => InputData::Fp32(&c.fp32_contents),
        (None, _) => InputData::Missing,
    };
    let tensor = InputTensor { name: &input.name, datatype: &input.datatype, shape: &input.shape, data };
    let (images, pixels) = oip::input_pixels(&tensor, model, max_images)?;
    let outputs = if req.outputs.is_empty() {
        oip::default_outputs(true)
    } else {
        req.outputs
            .iter()
            .map(|o| {
                let mut spec = oip::output_spec(&o.name, &parameters_json(&o.parameters), model, true)?;
                spec.binary = true;
                Ok(spec)
            })
            .collect::<Result<Vec<_>, ApiError>>()?
    };
    Ok(oip::InferRequest { id: (!req.id.is_empty()).then(|| req.id.clone()), pixels, images, outputs })
}

fn duration(d: StatisticDuration) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration { count: d.count, ns: d.ns })
}

fn statistics_proto(s: stats::ModelStatistics) -> pb::ModelStatistics {
    let i = s.inference_stats;
    pb::ModelStatistics {
        name: s.name,
        version: s.version,
        last_inference: s.last_inference,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(i.success),
            fail: duration(i.fail),
            queue: duration(i.queue),
            compute_input: duration(i.compute_input),
            compute_infer: duration(i.compute_infer),
            compute_output: duration(i.compute_output),
        }),
        batch_stats: s
            .batch_stats
            .into_iter()
            .map(|b| pb::InferBatchStatistics {
                batch_size: b.batch_size,
                compute_input: duration(b.compute_input),
                compute_infer: duration(b.compute_infer),
                compute_output: duration(b.compute_output),
            })
            .collect(),
    }
}

fn config_proto(v: &ModelConfigView) -> pb::ModelConfig {
    use pb::model_version_policy::{Latest, PolicyChoice};
    let data_type = |name: &str| pb::DataType::from_str_name(name).unwrap_or(pb::DataType::TypeInvalid) as i32;
    pb::ModelConfig {
        name: v.name.clone(),
        platform: "cifar".into(),
        backend: "cifar".into(),
        version_policy: Some(pb::ModelVersionPolicy {
            policy_choice: Some(match &v.version_policy {
                VersionPolicy::Latest(n) => PolicyChoice::Latest(Latest { num_versions: *n }),
                VersionPolicy::All => PolicyChoice::All(pb::model_version_policy::All {}),
                VersionPolicy::Specific(versions) => PolicyChoice::Specific(pb::model_version_policy::Specific {
                    versions: versions.iter().map(|&x| i64::try_from(x).unwrap_or(i64::MAX)).collect(),
                }),
            }),
        }),
        max_batch_size: v.max_batch_size,
        input: v
            .inputs
            .iter()
            .map(|t| pb::ModelInput {
                name: t.name.into(),
                data_type: data_type(t.data_type),
                format: t
                    .format
                    .and_then(pb::model_input::Format::from_str_name)
                    .unwrap_or(pb::model_input::Format::None) as i32,
                dims: t.dims.clone(),
                optional: t.optional,
            })
            .collect(),
        output: v
            .outputs
            .iter()
            .map(|t| pb::ModelOutput {
                name: t.name.into(),
                data_type: data_type(t.data_type),
                dims: t.dims.clone(),
                label_filename: String::new(),
            })
            .collect(),
        instance_group: vec![pb::ModelInstanceGroup {
            name: v.name.clone(),
            count: v.instances,
            gpus: Vec::new(),
            kind: pb::model_instance_group::Kind::from_str_name(v.kind).unwrap_or(pb::model_instance_group::Kind::Auto)
                as i32,
        }],
        default_model_filename: String::new(),
        dynamic_batching: Some(pb::ModelDynamicBatching {
            preferred_batch_size: Vec::new(),
            max_queue_delay_microseconds: v.max_queue_delay_us,
            default_queue_policy: Some(pb::ModelQueuePolicy {
                default_timeout_microseconds: v.timeout_us,
                max_queue_size: v.max_queue_size,
            }),
        }),
        parameters: v
            .parameters
            .iter()
            .map(|(k, s)| (k.clone(), pb::ModelParameter { string_value: s.clone() }))
            .collect(),
    }
}

/// A tensor's description from the model metadata JSON (one owner: [`oip::model_metadata`]).
fn tensor_metadata(v: &Value) -> Vec<pb::model_metadata_response::TensorMetadata> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|t| pb::model_metadata_response::TensorMetadata {
                    name: t["name"].as_str().unwrap_or_default().into(),
                    datatype: t["datatype"].as_str().unwrap_or_default().into(),
                    shape: t["shape"]
                        .as_array()
                        .map(|s| s.iter().filter_map(Value::as_i64).collect())
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

type GrpcResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> GrpcResult<pb::ServerLiveResponse> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<pb::ServerReadyRequest>) -> GrpcResult<pb::ServerReadyResponse> {
        Ok(Response::new(pb::ServerReadyResponse { ready: !self.state.shutting_down.load(Ordering::SeqCst) }))
    }

    async fn model_ready(&self, request: Request<pb::ModelReadyRequest>) -> GrpcResult<pb::ModelReadyResponse> {
        let r = request.get_ref();
        let known = self.model(&r.name, &r.version).is_ok();
        let ready = known && !self.state.shutting_down.load(Ordering::SeqCst);
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(&self, _: Request<pb::ServerMetadataRequest>) -> GrpcResult<pb::ServerMetadataResponse> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: oip::SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: oip::EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> GrpcResult<pb::ModelMetadataResponse> {
        self.authorize(&request, Scope::Infer)?;
        let r = request.get_ref();
        let meta = crate::routes::metadata(&self.state, &r.name, (!r.version.is_empty()).then_some(r.version.as_str()))
            .map_err(to_status)?;
        Ok(Response::new(pb::ModelMetadataResponse {
            name: meta["name"].as_str().unwrap_or_default().into(),
            versions: meta["versions"]
                .as_array()
                .map(|v| v.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                .unwrap_or_default(),
            platform: meta["platform"].as_str().unwrap_or_default().into(),
            inputs: tensor_metadata(&meta["inputs"]),
            outputs: tensor_metadata(&meta["outputs"]),
        }))
    }

    async fn model_infer(&self, request: Request<pb::ModelInferRequest>) -> GrpcResult<pb::ModelInferResponse> {
        self.authorize(&request, Scope::Infer)?;
        let req = request.into_inner();
        let model = self.model(&req.model_name, &req.model_version)?;
        let max_images = self.state.config.max_images as usize;
        let mut decoded = decode_infer(&req, &model, max_images).map_err(|e| {
            self.state.telemetry.record_failure(&model, crate::telemetry::FailureReason::Rejected);
            to_status(e)
        })?;
        drop(req);
        let pixels = std::mem::replace(&mut decoded.pixels, crate::batcher::Pixels::Rgb8(Vec::new()));
        let out = run_job(&self.state, &model, pixels, decoded.images).await.map_err(to_status)?;
        let tensors = oip::output_tensors(&model, &decoded, &out.logits);
        Ok(Response::new(pb::ModelInferResponse {
            model_name: model.name.clone(),
            model_version: model.version_string(),
            id: decoded.id.clone().unwrap_or_default(),
            parameters: HashMap::new(),
            outputs: tensors
                .iter()
                .map(|t| pb::model_infer_response::InferOutputTensor {
                    name: t.name.into(),
                    datatype: t.datatype().into(),
                    shape: t.shape.iter().map(|&d| d as i64).collect(),
                    parameters: HashMap::new(),
                    contents: None,
                })
                .collect(),
            raw_output_contents: tensors.iter().map(oip::OutputTensor::raw_bytes).collect(),
        }))
    }

    async fn model_config(&self, request: Request<pb::ModelConfigRequest>) -> GrpcResult<pb::ModelConfigResponse> {
        self.authorize(&request, Scope::Infer)?;
        let r = request.get_ref();
        let model = self.model(&r.name, &r.version)?;
        let view = ModelConfigView::new(&model, &self.state.config);
        Ok(Response::new(pb::ModelConfigResponse { config: Some(config_proto(&view)) }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> GrpcResult<pb::ModelStatisticsResponse> {
        self.authorize(&request, Scope::Infer)?;
        let r = request.get_ref();
        let models = match (r.name.is_empty(), r.version.is_empty()) {
            (true, _) => self.state.repository.all(),
            (false, true) => {
                self.model(&r.name, "")?;
                self.state.repository.versions(&r.name)
            }
            (false, false) => vec![self.model(&r.name, &r.version)?],
        };
        Ok(Response::new(pb::ModelStatisticsResponse {
            model_stats: models
                .iter()
                .map(|m| statistics_proto(m.stats.snapshot(&m.name, &m.version_string())))
                .collect(),
        }))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> GrpcResult<pb::RepositoryIndexResponse> {
        self.authorize(&request, Scope::Admin)?;
        let ready_only = request.get_ref().ready;
        Ok(Response::new(pb::RepositoryIndexResponse {
            models: self
                .state
                .repository
                .index()
                .into_iter()
                .filter(|e| !ready_only || e.state == "READY")
                .map(|e| pb::repository_index_response::ModelIndex {
                    name: e.name,
                    version: e.version,
                    state: e.state.into(),
                    reason: e.reason,
                })
                .collect(),
        }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> GrpcResult<pb::RepositoryModelLoadResponse> {
        self.authorize(&request, Scope::Admin)?;
        crate::routes::load_model(&self.state, &request.get_ref().model_name, "grpc").await.map_err(to_status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> GrpcResult<pb::RepositoryModelUnloadResponse> {
        self.authorize(&request, Scope::Admin)?;
        crate::routes::unload_model(&self.state, &request.get_ref().model_name, "grpc")
            .await
            .map_err(|e| Status::failed_precondition(e.message))?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}
