//! The trainer's parsers: dataset archives, configs with overrides, ONNX models.

use std::path::Path;

use cifar_sdk::artifact::{ModelMetadata, Preprocessing, Provenance, Quality};
use cifar_sdk::Model;
use cifar_trainer::compile::quant::f32_writer;
use cifar_trainer::config::Config;
use cifar_trainer::data::image_folder;
use prost::Message;

/// Target `dataset_tar`: a `.tar` or `.tar.gz` stream imported as an ImageFolder
/// dataset (`trainer data import x.tar.gz`). What imports must be consistent: one label
/// per image, every label a class. Returns whether the archive imported.
pub fn dataset_tar(data: &[u8]) -> bool {
    let Ok(imported) = image_folder::import_archive(data, "fuzz input", true) else { return false };
    let classes = imported.classes.len();
    for split in std::iter::once(&imported.train).chain(imported.test.as_ref()) {
        assert_eq!(split.images.len(), split.labels.len() * cifar_trainer::data::IMAGE_BYTES, "images per label");
        assert!(split.labels.iter().all(|&l| usize::from(l) < classes), "a label outside {classes} classes");
    }
    true
}

/// Target `config`: a TOML config and `--set key=value` overrides (`trainer fit
/// --config x.toml --set ...`). Input: the TOML, a 0 byte, then one override per line.
/// A config that is accepted must save and load back unchanged (a run stores its config
/// and resumes from it). Returns whether the config was accepted.
pub fn config(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    let (toml, overrides) = text.split_once('\0').unwrap_or((text, ""));
    let overrides: Vec<String> = overrides.lines().map(str::to_string).collect();
    let Ok(cfg) = Config::parse(Some((toml, "fuzz")), &overrides) else { return false };
    let saved = cfg.to_toml().unwrap_or_else(|e| panic!("an accepted config cannot be saved: {e:#}"));
    let loaded = Config::parse(Some((&saved, &cfg.name)), &[])
        .unwrap_or_else(|e| panic!("a saved config does not load back: {e:#}\n{saved}"));
    let again = loaded.to_toml().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(saved, again, "a saved config loads back different");
    true
}

/// Target `onnx_import`: an ONNX model (`trainer import-onnx`) decoded and lowered to the
/// SDK's graph; what lowers is written as an f32 `.cifar`, opened and run. External data
/// is looked up in a folder that does not exist, so no input reads a file. Returns
/// whether the model lowered to a file the SDK opens.
pub fn onnx_import(data: &[u8]) -> bool {
    let Ok(model) = candle_onnx::onnx::ModelProto::decode(data) else { return false };
    let Ok(lowered) = cifar_trainer::onnx_import::lower::lower(&model, Path::new("/nonexistent/cifar-fuzz")) else {
        return false;
    };
    let meta = ModelMetadata {
        graph: lowered.model.graph.clone(),
        labels: (0..lowered.classes).map(|i| format!("class {i}")).collect(),
        preprocessing: Preprocessing::default(),
        provenance: Provenance::default(),
        quality: Quality::default(),
        drift: None,
    };
    let Ok(writer) = f32_writer(&lowered.model, meta) else { return false };
    let Ok(bytes) = writer.to_bytes() else { return false };
    let model = Model::from_bytes(&bytes, &crate::sdk::options())
        .unwrap_or_else(|e| panic!("a file that passed to_bytes' validation does not open: {e}"));
    crate::sdk::run_model(&model);
    true
}
