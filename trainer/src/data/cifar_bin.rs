//! The official CIFAR-10 binary release (`cifar-10-binary.tar.gz`): five training batch
//! files and one test batch of 10,000 records each, a record being one label byte and
//! 3,072 pixel bytes (the R plane, then G, then B, each 32x32 row-major).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};

use super::{Split, IMAGE_BYTES};

/// Where the official archive is published.
pub const OFFICIAL_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// Its file name.
pub const OFFICIAL_NAME: &str = "cifar-10-binary.tar.gz";
/// The md5 published for it.
pub const OFFICIAL_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";

const RECORD: usize = 1 + IMAGE_BYTES;

/// Parsed content of the archive.
pub struct CifarBinary {
    pub classes: Vec<String>,
    pub train: Split,
    pub test: Option<Split>,
}

/// md5 of a file, hex.
pub fn file_md5(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Md5::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(super::hex(&h.finalize()))
}

/// Checks the published md5 when `path` is (named as) the official archive or
/// `expected` is given. Returns whether a check was made.
pub fn verify_checksum(path: &Path, expected: Option<&str>) -> Result<bool> {
    let official = path.file_name().is_some_and(|n| n == OFFICIAL_NAME);
    let Some(want) = expected.or(official.then_some(OFFICIAL_MD5)) else {
        return Ok(false);
    };
    let got = file_md5(path)?;
    ensure!(
        got.eq_ignore_ascii_case(want),
        "{}: md5 is {got}, expected {want}; the download is corrupt or not the official archive",
        path.display()
    );
    Ok(true)
}

/// Downloads `url` into `dir` (atomically), with a progress bar; returns the file path.
pub fn download(url: &str, dir: &Path, quiet: bool) -> Result<PathBuf> {
    let name = url.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or(OFFICIAL_NAME);
    let dest = dir.join(name);
    let resp = ureq::get(url).call().with_context(|| format!("cannot download {url}"))?;
    let total = resp.header("content-length").and_then(|v| v.parse::<u64>().ok());
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(total.unwrap_or(0)) };
    bar.set_style(
        ProgressStyle::with_template("downloading {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut reader = resp.into_reader();
    cifar_sdk::fsutil::write_atomic_with(&dest, |file| {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])?;
            bar.inc(n as u64);
        }
        Ok(())
    })
    .with_context(|| format!("download of {url} failed"))?;
    bar.finish_and_clear();
    Ok(dest)
}

fn parse_records(name: &str, bytes: &[u8], split: &mut Split) -> Result<()> {
    ensure!(
        !bytes.is_empty() && bytes.len().is_multiple_of(RECORD),
        "{name}: {} bytes is not a whole number of {RECORD}-byte records",
        bytes.len()
    );
    for rec in bytes.chunks_exact(RECORD) {
        let label = rec[0];
        ensure!(label < 10, "{name}: label {label} is out of range (CIFAR-10 has 10 classes)");
        split.labels.push(label);
        let planes = &rec[1..];
        for p in 0..1024 {
            split.images.extend_from_slice(&[planes[p], planes[1024 + p], planes[2048 + p]]);
        }
    }
    Ok(())
}

/// Reads a `cifar-10-binary.tar.gz` (or an uncompressed tar of the same tree).
pub fn read_archive(path: &Path) -> Result<CifarBinary> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let what = || format!("{} is not a readable .tar.gz archive", path.display());
    let mut batches: Vec<(String, Vec<u8>)> = Vec::new();
    let mut meta: Option<String> = None;
    for item in archive.entries().with_context(what)? {
        let mut item = item.with_context(what)?;
        let name =
            item.path().with_context(what)?.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut bytes = Vec::new();
        if name.ends_with(".bin") || name == "batches.meta.txt" {
            item.read_to_end(&mut bytes).with_context(|| format!("{}: cannot read {name}", path.display()))?;
        }
        if name == "batches.meta.txt" {
            meta = Some(String::from_utf8_lossy(&bytes).into_owned());
        } else if name.ends_with(".bin") {
            batches.push((name, bytes));
        }
    }
    batches.sort();
    let mut train = Split::default();
    let mut test = Split::default();
    let mut train_files = 0;
    for (name, bytes) in &batches {
        if name.starts_with("data_batch_") {
            parse_records(name, bytes, &mut train)?;
            train_files += 1;
        } else if name == "test_batch.bin" {
            parse_records(name, bytes, &mut test)?;
        }
    }
    if train_files == 0 {
        bail!("{}: no data_batch_*.bin files: not a CIFAR-10 binary archive (cifar-10-batches-bin/)", path.display());
    }
    let classes: Vec<String> = match meta {
        Some(m) => m.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect(),
        None => cifar_sdk::CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    ensure!(classes.len() == 10, "{}: batches.meta.txt lists {} classes, expected 10", path.display(), classes.len());
    Ok(CifarBinary { classes, train, test: (!test.is_empty()).then_some(test) })
}
