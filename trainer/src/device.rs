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

/// `trainer gpu-check` arguments.
#[derive(clap::Args)]
pub struct GpuCheckArgs {
    /// The device to check: cuda, cuda:N, or cpu (checks the op wiring only).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
}

/// `trainer gpu-check`: the device's convolutions against the CPU kernels.
pub fn gpu_check(args: GpuCheckArgs) -> Result<()> {
    let (dev, why) = select(&args.device)?;
    outln!("device: {why}")?;
    let n = args.batch.max(1);
    // The airbench94 layers (widths 64/256/256) and the 2x2 whitening conv.
    let shapes = [
        (n, 3, 32, 24, 2),
        (n, 24, 31, 64, 3),
        (n, 64, 15, 64, 3),
        (n, 64, 15, 256, 3),
        (n, 256, 7, 256, 3),
        (n, 256, 3, 256, 3),
    ];
    let rows = crate::ops::device_conv::compare_with_cpu(&dev, &shapes)?;
    outln!("| conv | forward | input grad | weight grad |\n| --- | --- | --- | --- |")?;
    let mut worst = 0f32;
    for (label, f, dx, dw) in &rows {
        outln!("| {label} | {f:.2e} | {dx:.2e} | {dw:.2e} |")?;
        worst = worst.max(*f).max(*dx).max(*dw);
    }
    outln!("largest relative error: {worst:.2e} (limit 1e-3)")?;
    if worst.is_nan() || worst >= 1e-3 {
        bail!("the device's convolutions differ from the CPU kernels by {worst:.2e} (limit 1e-3)");
    }
    Ok(())
}
