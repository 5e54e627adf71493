//! Import of an ImageFolder tree (`<split>/<class>/*.jpg|png` or `<class>/*.jpg|png`)
//! from a directory, a `.tar` or a `.tar.gz`.
//!
//! Every image is decoded, converted to RGB and, if it is not 32x32, resized. The import
//! refuses (rather than skips) anything that looks like data but is broken: an image file
//! that does not decode, a class folder without images, an unknown layout. Files that are
//! not images (README, .DS_Store) are ignored and counted.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read};
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

/// Every image file of a source (with its bytes), every directory, and how many other
/// files were ignored.
struct Files {
    entries: Vec<Entry>,
    dirs: BTreeSet<Vec<String>>,
    ignored: usize,
}

/// The largest image file an import reads. A CIFAR image is a few kilobytes; the bound
/// keeps one tar header that claims gigabytes from making the import allocate them (the
/// dataset as a whole is held in memory by design).
pub const MAX_IMAGE_FILE_BYTES: u64 = 16 << 20;

/// Reads every image file (and notes every directory) of a directory tree or archive.
fn read_source(src: &Path, progress: &ProgressBar) -> Result<Files> {
    let meta = std::fs::metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
    if !meta.is_dir() {
        let file = std::fs::File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
        return read_archive(file, &src.display().to_string(), progress);
    }
    let mut files = Files { entries: Vec::new(), dirs: BTreeSet::new(), ignored: 0 };
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
                files.dirs.insert(parts);
                stack.push(path);
            } else if is_image(&path.to_string_lossy()) {
                // Read through the bound, not a size asked first: a symlink, a FIFO or a
                // device file reports a size that is not what a read returns.
                let mut bytes = Vec::new();
                std::fs::File::open(&path)
                    .and_then(|f| f.take(MAX_IMAGE_FILE_BYTES + 1).read_to_end(&mut bytes))
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
                    bail!("{}: too large for an image (over {MAX_IMAGE_FILE_BYTES} bytes)", path.display());
                }
                files.entries.push(Entry { parts, bytes });
                progress.inc(1);
            } else {
                files.ignored += 1;
            }
        }
    }
    if files.entries.is_empty() {
        bail!("{} contains no images (looked for {})", src.display(), IMAGE_EXTENSIONS.join(", "));
    }
    Ok(files)
}

/// Reads every image file of a `.tar` or `.tar.gz` stream (told apart by gzip's magic
/// bytes); `label` names the archive in errors.
fn read_archive(reader: impl Read, label: &str, progress: &ProgressBar) -> Result<Files> {
    let mut reader = std::io::BufReader::new(reader);
    let gz = reader.fill_buf().map(|b| b.starts_with(&[0x1f, 0x8b])).unwrap_or(false);
    let reader: Box<dyn Read> = if gz { Box::new(flate2::bufread::GzDecoder::new(reader)) } else { Box::new(reader) };
    let mut archive = tar::Archive::new(reader);
    let what = || format!("{label} is not a readable tar{} archive", if gz { ".gz" } else { "" });
    let mut files = Files { entries: Vec::new(), dirs: BTreeSet::new(), ignored: 0 };
    for item in archive.entries().with_context(what)? {
        let mut item = item.with_context(what)?;
        let path = item.path().with_context(what)?.into_owned();
        let parts = components(&path);
        if parts.is_empty() || hidden(&parts) {
            continue;
        }
        for depth in 1..parts.len() {
            files.dirs.insert(parts[..depth].to_vec());
        }
        match item.header().entry_type() {
            tar::EntryType::Directory => {
                files.dirs.insert(parts);
            }
            tar::EntryType::Regular if is_image(&path.to_string_lossy()) => {
                let size = item.size();
                if size > MAX_IMAGE_FILE_BYTES {
                    bail!(
                        "{label}: {} is {size} bytes, too large for an image (at most {MAX_IMAGE_FILE_BYTES})",
                        path.display()
                    );
                }
                // `size` is the header's claim: bounded above, and the read stops at the
                // entry's real end.
                let mut bytes = Vec::with_capacity(size as usize);
                item.read_to_end(&mut bytes).with_context(|| format!("{label}: cannot read {}", path.display()))?;
                files.entries.push(Entry { parts, bytes });
                progress.inc(1);
            }
            _ => files.ignored += 1,
        }
    }
    if files.entries.is_empty() {
        bail!("{label} contains no images (looked for {})", IMAGE_EXTENSIONS.join(", "));
    }
    Ok(files)
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
fn decode(bytes: &[u8], out: &mut [u8]) -> Result<bool, cifar_sdk::Error> {
    // The SDK's decoder: its size limits hold here too.
    let img = cifar_sdk::image::decode(bytes)?;
    let resized = img.dimensions() != (32, 32);
    let img = if resized { image::imageops::resize(&img, 32, 32, image::imageops::FilterType::Triangle) } else { img };
    out.copy_from_slice(img.as_raw());
    Ok(resized)
}

/// Reads and decodes every image of a directory tree or archive, whatever its layout
/// (`trainer drift`): their paths, sorted, and their 32x32 RGB pixels in that order.
pub fn read_images(src: &Path, quiet: bool) -> Result<(Vec<String>, Vec<u8>)> {
    let reading = reading_progress(quiet);
    let Files { mut entries, .. } = read_source(src, &reading)?;
    reading.finish_and_clear();
    entries.sort_by(|a, b| a.parts.cmp(&b.parts));
    let names: Vec<String> = entries.iter().map(|e| e.parts.join("/")).collect();
    let mut pixels = vec![0u8; entries.len() * IMAGE_BYTES];
    pixels
        .par_chunks_mut(IMAGE_BYTES)
        .zip(entries.par_iter().zip(names.par_iter()))
        .try_for_each(|(dst, (e, name))| decode(&e.bytes, dst).map(|_| ()).with_context(|| name.clone()))?;
    Ok((names, pixels))
}

/// Imports `src` (a directory, `.tar` or `.tar.gz`).
pub fn import(src: &Path, quiet: bool) -> Result<Imported> {
    let reading = reading_progress(quiet);
    let files = read_source(src, &reading)?;
    reading.finish_and_clear();
    assemble(files, &src.display().to_string(), quiet)
}

/// Imports a `.tar` or `.tar.gz` stream; `label` names it in errors.
pub fn import_archive(reader: impl Read, label: &str, quiet: bool) -> Result<Imported> {
    let reading = reading_progress(quiet);
    let files = read_archive(reader, label, &reading)?;
    reading.finish_and_clear();
    assemble(files, label, quiet)
}

fn reading_progress(quiet: bool) -> ProgressBar {
    let reading = if quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    reading.set_style(
        ProgressStyle::with_template("{spinner} reading {pos} images ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    reading
}

/// Checks the layout of what was read, orders the classes and decodes every image.
fn assemble(files: Files, label: &str, quiet: bool) -> Result<Imported> {
    let Files { entries, dirs, ignored: ignored_files } = files;
    let (prefix, with_splits) = detect_layout(&entries)?;
    let class_level = prefix + usize::from(with_splits);
    // Every folder at the class level must hold at least one image.
    let populated: BTreeSet<&[String]> = entries.iter().map(|e| &e.parts[..=class_level]).collect();
    for d in dirs.iter().filter(|d| d.len() == class_level + 1 && d[..prefix] == entries[0].parts[..prefix]) {
        if !populated.contains(d.as_slice()) {
            bail!("class folder {} in {label} has no images", d.join("/"));
        }
    }
    let split_of = |e: &Entry| if with_splits { e.parts[prefix].clone() } else { "train".to_string() };
    let train_classes: BTreeSet<String> =
        entries.iter().filter(|e| split_of(e) == "train").map(|e| e.parts[class_level].clone()).collect();
    if train_classes.is_empty() {
        bail!("{label} has no train split: expected a train/ folder next to test/");
    }
    if let Some(e) = entries.iter().find(|e| !train_classes.contains(&e.parts[class_level])) {
        bail!("{label}: class {:?} appears in the test split but not in train", e.parts[class_level]);
    }
    // Labels are stored as one byte each.
    if train_classes.len() > 256 {
        bail!("{label} has {} class folders; at most 256 are supported", train_classes.len());
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
                let r = decode(&e.bytes, dst).with_context(|| path.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn png() -> Vec<u8> {
        let mut bytes = Vec::new();
        image::RgbImage::from_pixel(2, 2, image::Rgb([9, 8, 7]))
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        bytes
    }

    fn tar_of(paths: impl Iterator<Item = String>) -> Vec<u8> {
        let png = png();
        let mut b = tar::Builder::new(Vec::new());
        for path in paths {
            let mut h = tar::Header::new_gnu();
            h.set_size(png.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, png.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn archives_import_from_a_reader_and_labels_fit_their_byte() {
        let ok = import_archive(tar_of((0..256).map(|i| format!("c{i:03}/x.png"))).as_slice(), "a.tar", true).unwrap();
        assert_eq!(ok.classes.len(), 256);
        assert_eq!(ok.train.labels.iter().map(|&l| usize::from(l)).max(), Some(255));
        let err =
            import_archive(tar_of((0..257).map(|i| format!("c{i:03}/x.png"))).as_slice(), "b.tar", true).err().unwrap();
        assert!(format!("{err:#}").contains("b.tar has 257 class folders; at most 256"), "{err:#}");
    }

    #[test]
    fn a_header_that_claims_gigabytes_is_refused_before_reading() {
        // The fuzz regression input: one entry claiming 8 GiB, 1 KiB of data.
        let bytes = include_bytes!("../../../fuzz/regressions/dataset_tar/header-claims-8-gib.tar");
        let err = import_archive(bytes.as_slice(), "c.tar", true).err().unwrap();
        assert!(
            format!("{err:#}").contains("train/cat/huge.png is 8589934592 bytes, too large for an image"),
            "{err:#}"
        );
    }
}
