//! Device policy: which processor runs a model, decided when the model is opened and
//! never changed silently. A fallback is always reported with its reason.

use std::str::FromStr;

use crate::{Error, Result};

/// What the caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevicePolicy {
    /// The GPU when one is usable, else the CPU (reported). Same as `GpuOrCpu`.
    #[default]
    Auto,
    /// The CPU only.
    Cpu,
    /// The GPU only; an error where none is usable.
    Gpu,
    /// The GPU when usable, else the CPU (reported).
    GpuOrCpu,
}

impl FromStr for DevicePolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            "gpu-or-cpu" => Ok(Self::GpuOrCpu),
            other => Err(Error::Options(format!("unknown device policy {other:?} (auto, cpu, gpu, gpu-or-cpu)"))),
        }
    }
}

/// The processor that runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The host CPU.
    Cpu,
    /// A CUDA GPU, by ordinal (only in builds with the `cuda` feature).
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Opens GPU 0, or says why none is usable.
#[cfg(feature = "cuda")]
fn open_gpu() -> std::result::Result<(Device, candle_core::Device), String> {
    match candle_core::Device::new_cuda(0) {
        Ok(d) => Ok((Device::Cuda(0), d)),
        Err(e) => Err(format!("no usable CUDA GPU ({})", first_line(&e))),
    }
}

/// The first line of an error (candle appends a backtrace when one was captured).
#[cfg(feature = "cuda")]
fn first_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

#[cfg(not(feature = "cuda"))]
fn open_gpu() -> std::result::Result<(Device, ()), String> {
    Err("this build of cifar-sdk has no GPU support (compiled without the `cuda` feature)".into())
}

/// The device a policy chose: which one, why, and (GPU builds) the opened GPU.
pub(crate) struct Resolved {
    pub device: Device,
    pub reason: String,
    #[cfg(feature = "cuda")]
    pub gpu: Option<candle_core::Device>,
}

/// Resolves a policy to a device and the reason for the choice. A GPU is opened here,
/// once per model: `gpu` fails when none is usable, `auto`/`gpu-or-cpu` fall back to the
/// CPU and say why.
pub(crate) fn resolve(policy: DevicePolicy) -> Result<Resolved> {
    let cpu = |reason: String| Resolved {
        device: Device::Cpu,
        reason,
        #[cfg(feature = "cuda")]
        gpu: None,
    };
    if policy == DevicePolicy::Cpu {
        return Ok(cpu("device policy `cpu`".into()));
    }
    match open_gpu() {
        #[allow(unused_variables)]
        Ok((device, handle)) => Ok(Resolved {
            device,
            reason: format!("device policy `{}`: a CUDA GPU is available", policy_name(policy)),
            #[cfg(feature = "cuda")]
            gpu: Some(handle),
        }),
        Err(why) if policy == DevicePolicy::Gpu => Err(Error::Device(format!("device policy `gpu`: {why}"))),
        Err(why) => Ok(cpu(format!("fell back to the CPU: {why}"))),
    }
}

fn policy_name(p: DevicePolicy) -> &'static str {
    match p {
        DevicePolicy::Auto => "auto",
        DevicePolicy::Cpu => "cpu",
        DevicePolicy::Gpu => "gpu",
        DevicePolicy::GpuOrCpu => "gpu-or-cpu",
    }
}
