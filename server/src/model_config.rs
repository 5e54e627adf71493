//! A served model's configuration in Triton's shape (`GET /v2/models/{m}/config`, gRPC
//! `ModelConfig`): what tritonclient's `get_model_config` returns and perf_analyzer reads
//! (`max_batch_size`, inputs and outputs with `TYPE_*` datatypes and per-item `dims`).
//! One owner of these facts: [`ModelConfigView`] is built once per request from the
//! model and the command line; HTTP renders it as JSON, gRPC as the protobuf message.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::config::Config;
use crate::oip::{INPUT_FP32, INPUT_UINT8, OUTPUTS};
use crate::repository::{ServedModel, VersionPolicy};

/// One input or output in the configuration.
#[derive(Debug, Clone)]
pub struct TensorConfig {
    /// Its name.
    pub name: &'static str,
    /// Triton's datatype name (`TYPE_UINT8`, `TYPE_FP32`).
    pub data_type: &'static str,
    /// `FORMAT_NHWC`, `FORMAT_NCHW`, or `None` (outputs).
    pub format: Option<&'static str>,
    /// Dimensions of one item (the batch dimension is implied by `max_batch_size`).
    pub dims: Vec<i64>,
    /// Inputs: either may be sent, so each is optional.
    pub optional: bool,
}

/// The configuration of a served model.
#[derive(Debug, Clone)]
pub struct ModelConfigView {
    /// The served name.
    pub name: String,
    /// Most images a worker runs as one batch (the model's `max_batch`, at most
    /// `--max-batch`).
    pub max_batch_size: i32,
    /// The two inputs (send exactly one).
    pub inputs: Vec<TensorConfig>,
    /// `logits` and `probabilities`.
    pub outputs: Vec<TensorConfig>,
    /// `--max-queue-delay-us`.
    pub max_queue_delay_us: u64,
    /// `--max-queue`.
    pub max_queue_size: u32,
    /// `--request-timeout-ms` in microseconds.
    pub timeout_us: u64,
    /// Inference workers, each with its own session.
    pub instances: i32,
    /// `KIND_CPU` or `KIND_GPU`.
    pub kind: &'static str,
    /// String facts: precision, device, digest, labels.
    pub parameters: BTreeMap<String, String>,
    /// Which versions are served.
    pub version_policy: VersionPolicy,
}

impl ModelConfigView {
    /// The configuration of `model` as served with `config`.
    pub fn new(model: &ServedModel, config: &Config) -> Self {
        let [c, h, w] = model.input_shape();
        let classes = model.model.classes() as i64;
        let (c, h, w) = (c as i64, h as i64, w as i64);
        let input = |name, data_type, format, dims| TensorConfig {
            name,
            data_type,
            format: Some(format),
            dims,
            optional: true,
        };
        let (workers, _) = config.worker_threads();
        let device = model.model.device();
        let parameters = BTreeMap::from([
            ("precision".to_string(), model.model.precision().to_string()),
            ("device".to_string(), device.to_string()),
            ("digest".to_string(), model.digest.clone()),
            ("labels".to_string(), model.labels().join(",")),
        ]);
        Self {
            name: model.name.clone(),
            // What a client may send in one request and have batched whole.
            max_batch_size: i32::try_from(
                model.max_batch.min(config.max_batch as usize).min(config.max_images as usize),
            )
            .unwrap_or(i32::MAX),
            inputs: vec![
                input(INPUT_UINT8, "TYPE_UINT8", "FORMAT_NHWC", vec![h, w, c]),
                input(INPUT_FP32, "TYPE_FP32", "FORMAT_NCHW", vec![c, h, w]),
            ],
            outputs: OUTPUTS
                .iter()
                .map(|&name| TensorConfig {
                    name,
                    data_type: "TYPE_FP32",
                    format: None,
                    dims: vec![classes],
                    optional: false,
                })
                .collect(),
            max_queue_delay_us: config.max_queue_delay_us,
            max_queue_size: config.max_queue,
            timeout_us: config.request_timeout_ms.saturating_mul(1000),
            instances: i32::try_from(workers).unwrap_or(i32::MAX),
            kind: if matches!(device, cifar_sdk::Device::Cpu) { "KIND_CPU" } else { "KIND_GPU" },
            parameters,
            version_policy: model.policy.clone(),
        }
    }

    /// The version policy in Triton's JSON form.
    pub fn version_policy_json(&self) -> Value {
        match &self.version_policy {
            VersionPolicy::Latest(n) => json!({ "latest": { "num_versions": n } }),
            VersionPolicy::All => json!({ "all": {} }),
            VersionPolicy::Specific(v) => json!({ "specific": { "versions": v } }),
        }
    }

    /// Triton's JSON form (the protobuf message in its JSON mapping).
    pub fn to_json(&self) -> Value {
        let tensor = |t: &TensorConfig| {
            let mut v = json!({ "name": t.name, "data_type": t.data_type, "dims": t.dims });
            if let Some(f) = t.format {
                v["format"] = json!(f);
            }
            if t.optional {
                v["optional"] = json!(true);
            }
            v
        };
        json!({
            "name": self.name,
            "platform": "cifar",
            "backend": "cifar",
            "version_policy": self.version_policy_json(),
            "max_batch_size": self.max_batch_size,
            "input": self.inputs.iter().map(tensor).collect::<Vec<_>>(),
            "output": self.outputs.iter().map(tensor).collect::<Vec<_>>(),
            "instance_group": [{ "name": self.name, "kind": self.kind, "count": self.instances }],
            "dynamic_batching": {
                "max_queue_delay_microseconds": self.max_queue_delay_us,
                "default_queue_policy": {
                    "default_timeout_microseconds": self.timeout_us,
                    "max_queue_size": self.max_queue_size,
                },
            },
            "parameters": self.parameters.iter().map(|(k, v)| (k.clone(), json!({ "string_value": v }))).collect::<serde_json::Map<_, _>>(),
        })
    }
}
