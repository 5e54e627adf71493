//! The starting corpus of each target, built from the repository's fixtures: the tiny
//! models and every malformed model file, the sample images, the configs, and small
//! valid requests, archives and ONNX graphs made here. `fuzz-seeds DIR` writes them;
//! the regression test runs them too (each must pass its target as it is).

#[cfg(feature = "server")]
mod requests;
#[cfg(feature = "trainer")]
mod trainer;

use crate::fixtures_dir;
use crate::sdk::{header_of, TINY_F32, TINY_INT8};

/// One seed: its target, a file name, its bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// Every seed of every target.
pub fn all() -> anyhow::Result<Vec<Seed>> {
    let mut seeds = Vec::new();
    model_files(&mut seeds)?;
    model_graphs(&mut seeds);
    #[cfg(any(feature = "server", feature = "trainer"))]
    let images = sample_images()?;
    #[cfg(feature = "server")]
    requests::requests(&mut seeds, &images);
    #[cfg(feature = "trainer")]
    {
        trainer::archives(&mut seeds, &images)?;
        trainer::configs(&mut seeds)?;
        trainer::onnx(&mut seeds);
    }
    Ok(seeds)
}

/// The sample images (PNG files of the first validation image of each class).
#[cfg(any(feature = "server", feature = "trainer"))]
fn sample_images() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixtures_dir().join("images"))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        out.push((name, std::fs::read(&path)?));
    }
    out.sort();
    anyhow::ensure!(!out.is_empty(), "no sample images in fixtures/images");
    Ok(out)
}

fn model_files(seeds: &mut Vec<Seed>) -> anyhow::Result<()> {
    seeds.push(("model_file", "tiny-int8.cifar".into(), TINY_INT8.to_vec()));
    seeds.push(("model_file", "tiny-f32.cifar".into(), TINY_F32.to_vec()));
    for dir in ["malformed", "old-format"] {
        for entry in std::fs::read_dir(fixtures_dir().join(dir))? {
            let path = entry?.path();
            let bytes = std::fs::read(&path)?;
            if bytes.len() <= 128 << 10 {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                seeds.push(("model_file", format!("{dir}-{name}"), bytes));
            }
        }
    }
    Ok(())
}

fn model_graphs(seeds: &mut Vec<Seed>) {
    use cifar_sdk::artifact::keys;
    for (base, file, name) in [(0u8, TINY_INT8, "int8"), (1, TINY_F32, "f32")] {
        let header = header_of(file);
        let mut input = vec![base];
        for key in [keys::GRAPH, keys::PREPROCESSING, keys::LABELS] {
            input.extend_from_slice(header.get(key).map(String::as_bytes).unwrap_or_default());
            input.push(0xFF);
        }
        seeds.push(("model_graph", format!("{name}-as-is"), input.clone()));
        if base == 1 {
            // Three weight edits that keep the file valid: the lowest mantissa bit of a
            // float in the first, middle and last tensor.
            input.extend_from_slice(&[0, 0, 0, 0x01, 7, 100, 0, 0x01, 255, 8, 0, 0x01]);
            seeds.push(("model_graph", format!("{name}-edited-weights"), input));
        }
    }
}
