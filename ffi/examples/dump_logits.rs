//! Writes the Rust SDK's logits for every fixture image under both fixture models, as
//! exact bit patterns, for the C, C++ and Python tests to compare with bit for bit:
//! one line per (model, image): `<model> <image> <hex bits of each logit>`.
//!
//! `cargo run --release -p cifar-ffi --example dump_logits -- fixtures OUT.txt`

use std::io::Write;

use cifar_sdk::{DevicePolicy, Model, ModelOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (dir, out) = match (args.next(), args.next()) {
        (Some(d), Some(o)) => (std::path::PathBuf::from(d), o),
        _ => return Err("usage: dump_logits FIXTURES_DIR OUT.txt".into()),
    };
    let mut images: Vec<_> = std::fs::read_dir(dir.join("images"))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    images.sort();
    let mut file = std::io::BufWriter::new(std::fs::File::create(&out)?);
    for name in ["tiny-f32.cifar", "tiny-int8.cifar"] {
        let path = dir.join("models").join(name);
        let model = Model::open(&path, &ModelOptions { device: DevicePolicy::Cpu, threads: 1, max_batch: 64 })?;
        let mut session = model.session()?;
        for img in &images {
            let answer = session.classify_image(&std::fs::read(img)?, 1)?;
            let bits: Vec<String> = answer.logits.iter().map(|v| format!("{:08x}", v.to_bits())).collect();
            writeln!(file, "{} {} {}", name, img.file_name().and_then(|n| n.to_str()).unwrap_or(""), bits.join(" "))?;
        }
    }
    file.flush()?;
    Ok(())
}
