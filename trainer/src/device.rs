//! Choosing the compute device: `auto` takes CUDA when this build has it and a GPU
//! answers, the CPU otherwise, and always says which and why.

use anyhow::{bail, Result};
use candle_core::Device;

/// The chosen device and a sentence explaining the choice.
pub fn select(spec: &str) -> Result<(Device, String)> {
    let spec = spec.trim().to_ascii_lowercase();
    match spec.as_str() {
        "cpu" => Ok((Device::Cpu, "cpu (requested)".into())),
        "auto" => Ok(match cuda(0) {
            Ok(d) => (d, "cuda:0 (auto: a GPU is available)".into()),
            Err(why) => (Device::Cpu, format!("cpu (auto: {why})")),
        }),
        s if s == "cuda" || s == "gpu" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("device {s:?}: expected cuda:N with N a GPU number"))?,
                None => 0,
            };
            match cuda(ordinal) {
                Ok(d) => Ok((d, format!("cuda:{ordinal} (requested)"))),
                Err(why) => bail!("device {s:?} was requested but {why}"),
            }
        }
        other => bail!("unknown device {other:?}: use auto, cpu, cuda or cuda:N"),
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> std::result::Result<Device, String> {
    Device::new_cuda(ordinal).map_err(|e| {
        let e = e.to_string();
        format!("CUDA device {ordinal} could not be opened: {}", e.lines().next().unwrap_or_default())
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> std::result::Result<Device, String> {
    Err("this trainer was built without the `cuda` feature".into())
}

/// Sets the number of CPU threads used by the kernels (0 = all cores). Call once,
/// before any parallel work.
pub fn set_threads(threads: usize) -> usize {
    let n = if threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { threads };
    // An error means the pool was already built (tests, or a second call): keep it.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    rayon::current_num_threads()
}
