//! A small client for MLflow's tracking REST API (`/api/2.0/mlflow/...`) and its artifact
//! proxy (`/api/2.0/mlflow-artifacts/artifacts/...`, what `mlflow server` serves by
//! default): the calls a training run needs, blocking, with short timeouts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// MLflow's limits per `log-batch` call.
pub const MAX_METRICS_PER_BATCH: usize = 1000;
/// Params per `log-batch` call.
pub const MAX_PARAMS_PER_BATCH: usize = 100;

/// One metric point.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Its name.
    pub key: String,
    /// Its value.
    pub value: f64,
    /// The training step it belongs to.
    pub step: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A tracking server.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    auth: Option<String>,
}

impl Client {
    /// A client for `uri` (`http://` or `https://`), with the credentials MLflow's own
    /// clients read from the environment.
    pub fn new(uri: &str) -> Result<Self> {
        let base = uri.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("the tracking URI must be an http:// or https:// MLflow server, got {uri:?}");
        }
        let agent =
            ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(3)).timeout(Duration::from_secs(20)).build();
        let auth = match (
            std::env::var("MLFLOW_TRACKING_TOKEN").ok(),
            std::env::var("MLFLOW_TRACKING_USERNAME").ok(),
            std::env::var("MLFLOW_TRACKING_PASSWORD").ok(),
        ) {
            (Some(t), _, _) => Some(format!("Bearer {t}")),
            (None, Some(u), Some(p)) => Some(format!("Basic {}", base64(format!("{u}:{p}").as_bytes()))),
            _ => None,
        };
        Ok(Self { base, agent, auth })
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let r = self.agent.request(method, &format!("{}{path}", self.base));
        match &self.auth {
            Some(a) => r.set("Authorization", a),
            None => r,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let r = self.request(method, path);
        let response = match body {
            Some(b) => r.set("Content-Type", "application/json").send_string(&b.to_string()),
            None => r.call(),
        };
        match response {
            Ok(resp) => {
                let text = resp.into_string().context("reading the tracking server's answer")?;
                if text.trim().is_empty() {
                    Ok(Value::Null)
                } else {
                    serde_json::from_str(&text).context("the tracking server's answer is not JSON")
                }
            }
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                Err(anyhow!("{method} {path}: HTTP {code}: {}", text.chars().take(300).collect::<String>()))
            }
            Err(e) => Err(anyhow!("cannot reach the tracking server {}: {e}", self.base)),
        }
    }

    /// The experiment's id, creating the experiment if it does not exist.
    pub fn experiment_id(&self, name: &str) -> Result<String> {
        let path = format!("/api/2.0/mlflow/experiments/get-by-name?experiment_name={}", urlencode(name));
        match self.call("GET", &path, None) {
            Ok(v) => v["experiment"]["experiment_id"]
                .as_str()
                .map(String::from)
                .ok_or_else(|| anyhow!("experiments/get-by-name: no experiment_id in {v}")),
            Err(e) if e.to_string().contains("RESOURCE_DOES_NOT_EXIST") => {
                let v = self.call("POST", "/api/2.0/mlflow/experiments/create", Some(json!({ "name": name })))?;
                v["experiment_id"].as_str().map(String::from).ok_or_else(|| anyhow!("experiments/create: {v}"))
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a run; returns `(run_id, artifact_uri)`.
    pub fn create_run(&self, experiment_id: &str, name: &str, tags: &[(String, String)]) -> Result<(String, String)> {
        let tags: Vec<Value> = tags.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect();
        let v = self.call(
            "POST",
            "/api/2.0/mlflow/runs/create",
            Some(json!({ "experiment_id": experiment_id, "run_name": name, "start_time": now_ms(), "tags": tags })),
        )?;
        let info = &v["run"]["info"];
        match (info["run_id"].as_str(), info["artifact_uri"].as_str()) {
            (Some(id), Some(uri)) => Ok((id.to_string(), uri.to_string())),
            _ => bail!("runs/create: no run_id in {v}"),
        }
    }

    /// Logs params, metrics and tags, split into batches within MLflow's limits.
    pub fn log_batch(
        &self,
        run_id: &str,
        params: &[(String, String)],
        metrics: &[Metric],
        tags: &[(String, String)],
    ) -> Result<()> {
        for chunk in tags.chunks(MAX_PARAMS_PER_BATCH) {
            let tags: Vec<Value> = chunk.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect();
            self.call("POST", "/api/2.0/mlflow/runs/log-batch", Some(json!({ "run_id": run_id, "tags": tags })))?;
        }
        for chunk in params.chunks(MAX_PARAMS_PER_BATCH) {
            let params: Vec<Value> = chunk.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect();
            self.call("POST", "/api/2.0/mlflow/runs/log-batch", Some(json!({ "run_id": run_id, "params": params })))?;
        }
        for chunk in metrics.chunks(MAX_METRICS_PER_BATCH) {
            let metrics: Vec<Value> = chunk
                .iter()
                .map(|m| json!({ "key": m.key, "value": m.value, "step": m.step, "timestamp": m.timestamp }))
                .collect();
            self.call("POST", "/api/2.0/mlflow/runs/log-batch", Some(json!({ "run_id": run_id, "metrics": metrics })))?;
        }
        Ok(())
    }

    /// Sets the run's status (`FINISHED`, `FAILED`, `KILLED`) and end time.
    pub fn finish_run(&self, run_id: &str, status: &str) -> Result<()> {
        self.call(
            "POST",
            "/api/2.0/mlflow/runs/update",
            Some(json!({ "run_id": run_id, "status": status, "end_time": now_ms() })),
        )?;
        Ok(())
    }

    /// Uploads one file as an artifact of the run (through the server's artifact proxy).
    pub fn upload_artifact(&self, artifact_uri: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let Some(root) = artifact_uri.strip_prefix("mlflow-artifacts:") else {
            bail!(
                "the run's artifact store is {artifact_uri}: only the server's artifact proxy \
                 (`mlflow server`, which serves mlflow-artifacts:/ by default) is supported"
            );
        };
        let root = root.trim_start_matches('/');
        let path = format!("/api/2.0/mlflow-artifacts/artifacts/{root}/{}", urlencode_path(name));
        match self.request("PUT", &path).set("Content-Type", "application/octet-stream").send_bytes(bytes) {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(code, resp)) => {
                bail!("uploading {name}: HTTP {code}: {}", resp.into_string().unwrap_or_default())
            }
            Err(e) => bail!("uploading {name}: {e}"),
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn urlencode_path(s: &str) -> String {
    s.split('/').map(urlencode).collect::<Vec<_>>().join("/")
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(urlencode("cpu toml/x"), "cpu%20toml%2Fx");
        assert_eq!(urlencode_path("plots/loss curve.png"), "plots/loss%20curve.png");
    }
}
