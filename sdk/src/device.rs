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
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cpu")
    }
}

const NO_GPU: &str = "this build of cifar-sdk has no GPU support (compiled without the `cuda` feature)";

/// Resolves a policy to a device and the reason for the choice.
pub fn resolve(policy: DevicePolicy) -> Result<(Device, String)> {
    match policy {
        DevicePolicy::Cpu => Ok((Device::Cpu, "device policy `cpu`".into())),
        DevicePolicy::Gpu => Err(Error::Device(format!("device policy `gpu`: {NO_GPU}"))),
        DevicePolicy::Auto | DevicePolicy::GpuOrCpu => Ok((Device::Cpu, format!("fell back to the CPU: {NO_GPU}"))),
    }
}
