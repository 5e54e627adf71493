//! Import of an ImageFolder tree (`<split>/<class>/*.jpg|png` or `<class>/*.jpg|png`)
//! from a directory, a `.tar` or a `.tar.gz`.
//!
//! Every image is decoded, converted to RGB and, if it is not 32x32, resized. The import
//! refuses (rather than skips) anything that looks like data but is broken: an image file
//! that does not decode, a class folder without images, an unknown layout. Files that are
//! not images (README, .DS_Store) are ignored and counted.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use super::{Split, IMAGE_BYTES};

const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "ppm", "pnm"];
const SPLIT_NAMES: [&str; 2] = ["train", "test"];

/// One file read from the source: its path components and bytes.
struct Entry {
    parts: Vec<String>,
    bytes: Vec<u8>,
}

/// What an import produced.
pub struct Imported {
    pub classes: Vec<String>,
    pub train: Split,
    pub test: Option<Split>,
    pub ignored_files: usize,
    pub resized: usize,
}

fn is_image(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    IMAGE_EXTENSIONS.iter().any(|e| lower.ends_with(&format!(".{e}")))
}

fn components(p: &Path) -> Vec<String> {
    p.components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

fn hidden(parts: &[String]) -> bool {
    parts.iter().any(|p| p.starts_with('.') || p == "__MACOSX")
}

/// Reads every image file (and notes every directory) of a directory tree or archive.
fn read_source(src: &Path, progress: &ProgressBar) -> Result<(Vec<Entry>, BTreeSet<Vec<String>>, usize)> {
    let meta = std::fs::metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
    let mut entries = Vec::new();
    let mut dirs = BTreeSet::new();
    let mut ignored = 0;
    if meta.is_dir() {
        let mut stack = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for item in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
                let item = item?;
                let path = item.path();
                let parts = components(path.strip_prefix(src).unwrap_or(&path));
                if hidden(&parts) {
                    continue;
                }
                if item.file_type()?.is_dir() {
                    dirs.insert(parts);
                    stack.push(path);
                } else if is_image(&path.to_string_lossy()) {
                    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
                    entries.push(Entry { parts, bytes });
                    progress.inc(1);
                } else {
                    ignored += 1;
                }
            }
        }
    } else {
        let mut file = std::fs::File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
        let mut magic = [0u8; 2];
        let gz = file.read(&mut magic).map(|n| n == 2 && magic == [0x1f, 0x8b]).unwrap_or(false);
        drop(file);
        let file = std::fs::File::open(src)?;
        let reader: Box<dyn Read> = if gz { Box::new(flate2::read::GzDecoder::new(file)) } else { Box::new(file) };
        let mut archive = tar::Archive::new(reader);
        let what = || format!("{} is not a readable tar{} archive", src.display(), if gz { ".gz" } else { "" });
        for item in archive.entries().with_context(what)? {
            let mut item = item.with_context(what)?;
            let path = item.path().with_context(what)?.into_owned();
            let parts = components(&path);
            if parts.is_empty() || hidden(&parts) {
                continue;
            }
            for depth in 1..parts.len() {
                dirs.insert(parts[..depth].to_vec());
            }
            match item.header().entry_type() {
                tar::EntryType::Directory => {
                    dirs.insert(parts);
                }
                tar::EntryType::Regular if is_image(&path.to_string_lossy()) => {
                    let mut bytes = Vec::with_capacity(item.size() as usize);
                    item.read_to_end(&mut bytes)
                        .with_context(|| format!("{}: cannot read {}", src.display(), path.display()))?;
                    entries.push(Entry { parts, bytes });
                    progress.inc(1);
                }
                _ => ignored += 1,
            }
        }
    }
    if entries.is_empty() {
        bail!("{} contains no images (looked for {})", src.display(), IMAGE_EXTENSIONS.join(", "));
    }
    Ok((entries, dirs, ignored))
}

/// Strips wrapper directories (`cifar10/train/cat/x.jpg` -> `train/cat/x.jpg`) and tells
/// whether the first level names splits.
fn detect_layout(entries: &[Entry]) -> Result<(usize, bool)> {
    let mut prefix = 0;
    loop {
        let first = &entries[0].parts;
        let depth_ok = entries.iter().all(|e| e.parts.len() >= prefix + 3);
        let shared = first.get(prefix).is_some_and(|p| {
            !SPLIT_NAMES.contains(&p.as_str()) && entries.iter().all(|e| e.parts.get(prefix) == Some(p))
        });
        if depth_ok && shared {
            prefix += 1;
        } else {
            break;
        }
    }
    let depths: BTreeSet<usize> = entries.iter().map(|e| e.parts.len() - prefix).collect();
    let with_splits = depths == BTreeSet::from([3]);
    if with_splits {
        if let Some(e) = entries.iter().find(|e| !SPLIT_NAMES.contains(&e.parts[prefix].as_str())) {
            bail!(
                "unexpected split folder {:?} in {}: expected one of {}",
                e.parts[prefix],
                e.parts.join("/"),
                SPLIT_NAMES.join(", ")
            );
        }
    } else if depths != BTreeSet::from([2]) {
        let odd = entries.iter().find(|e| e.parts.len() - prefix != 2).unwrap_or(&entries[0]);
        bail!(
            "unexpected layout at {}: expected <class>/<image> or <split>/<class>/<image> (split = train or test)",
            odd.parts.join("/")
        );
    }
    Ok((prefix, with_splits))
}

/// Orders classes the CIFAR-10 way when they are the CIFAR-10 classes, else by name.
fn class_order(names: BTreeSet<String>) -> Vec<String> {
    let cifar: BTreeSet<String> = cifar_sdk::CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect();
    if names == cifar {
        cifar_sdk::CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        names.into_iter().collect()
    }
}

/// Decodes one image to 32x32 RGB; returns whether it had to be resized.
fn decode(bytes: &[u8], out: &mut [u8]) -> Result<bool, image::ImageError> {
    let img = image::load_from_memory(bytes)?.to_rgb8();
    let resized = img.dimensions() != (32, 32);
    let img = if resized { image::imageops::resize(&img, 32, 32, image::imageops::FilterType::Triangle) } else { img };
    out.copy_from_slice(img.as_raw());
    Ok(resized)
}

/// Reads and decodes every image of a directory tree or archive, whatever its layout
/// (`trainer drift`): their paths, sorted, and their 32x32 RGB pixels in that order.
pub fn read_images(src: &Path, quiet: bool) -> Result<(Vec<String>, Vec<u8>)> {
    let reading = if quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    reading.set_style(
        ProgressStyle::with_template("{spinner} reading {pos} images ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let (mut entries, _, _) = read_source(src, &reading)?;
    reading.finish_and_clear();
    entries.sort_by(|a, b| a.parts.cmp(&b.parts));
    let names: Vec<String> = entries.iter().map(|e| e.parts.join("/")).collect();
    let mut pixels = vec![0u8; entries.len() * IMAGE_BYTES];
    pixels.par_chunks_mut(IMAGE_BYTES).zip(entries.par_iter().zip(names.par_iter())).try_for_each(
        |(dst, (e, name))| decode(&e.bytes, dst).map(|_| ()).with_context(|| format!("{name}: cannot decode image")),
    )?;
    Ok((names, pixels))
}

/// Imports `src` (a directory, `.tar` or `.tar.gz`).
pub fn import(src: &Path, quiet: bool) -> Result<Imported> {
    let reading = if quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    reading.set_style(
        ProgressStyle::with_template("{spinner} reading {pos} images ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let (entries, dirs, ignored_files) = read_source(src, &reading)?;
    reading.finish_and_clear();
    let (prefix, with_splits) = detect_layout(&entries)?;
    let class_level = prefix + usize::from(with_splits);
    // Every folder at the class level must hold at least one image.
    let populated: BTreeSet<&[String]> = entries.iter().map(|e| &e.parts[..=class_level]).collect();
    for d in dirs.iter().filter(|d| d.len() == class_level + 1 && d[..prefix] == entries[0].parts[..prefix]) {
        if !populated.contains(d.as_slice()) {
            bail!("class folder {} in {} has no images", d.join("/"), src.display());
        }
    }
    let split_of = |e: &Entry| if with_splits { e.parts[prefix].clone() } else { "train".to_string() };
    let train_classes: BTreeSet<String> =
        entries.iter().filter(|e| split_of(e) == "train").map(|e| e.parts[class_level].clone()).collect();
    if train_classes.is_empty() {
        bail!("{} has no train split: expected a train/ folder next to test/", src.display());
    }
    if let Some(e) = entries.iter().find(|e| !train_classes.contains(&e.parts[class_level])) {
        bail!("{}: class {:?} appears in the test split but not in train", src.display(), e.parts[class_level]);
    }
    let classes = class_order(train_classes);
    let index: BTreeMap<&str, u8> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as u8)).collect();

    let mut splits: BTreeMap<String, Vec<(u8, String, &Entry)>> = BTreeMap::new();
    for e in &entries {
        let label = index[e.parts[class_level].as_str()];
        splits.entry(split_of(e)).or_default().push((label, e.parts.join("/"), e));
    }
    let decoding = if quiet { ProgressBar::hidden() } else { ProgressBar::new(entries.len() as u64) };
    decoding.set_style(
        ProgressStyle::with_template("decoding {bar:40} {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut out: BTreeMap<String, Split> = BTreeMap::new();
    let mut resized = 0;
    for (name, mut items) in splits {
        items.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut images = vec![0u8; items.len() * IMAGE_BYTES];
        let results: Vec<Result<bool>> = images
            .par_chunks_mut(IMAGE_BYTES)
            .zip(items.par_iter())
            .map(|(dst, (_, path, e))| {
                let r = decode(&e.bytes, dst).with_context(|| format!("{path}: cannot decode image"));
                decoding.inc(1);
                r
            })
            .collect();
        for r in results {
            resized += usize::from(r?);
        }
        let labels = items.iter().map(|(l, _, _)| *l).collect();
        out.insert(name, Split { images, labels });
    }
    decoding.finish_and_clear();
    Ok(Imported {
        classes,
        train: out.remove("train").unwrap_or_default(),
        test: out.remove("test"),
        ignored_files,
        resized,
    })
}
