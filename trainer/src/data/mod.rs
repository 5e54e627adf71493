//! Datasets: the canonical on-disk layout, its manifest and version digest, and loading.
//!
//! A dataset is a directory:
//!
//! ```text
//! manifest.json        classes, counts, source, content digest, validation split
//! train.safetensors    images u8 [N,32,32,3] (RGB, row-major HWC), labels u8 [N],
//!                      val_indices u32 [V] (the held-out validation images)
//! test.safetensors     (optional) images and labels of an official test split
//! ```
//!
//! The digest is a sha256 over the class names and every split's pixels and labels, in
//! canonical order: the same images give the same digest whatever archive they came
//! from, and any changed pixel gives another. Runs and models record it as the dataset
//! version.

pub mod cifar_bin;
pub mod device_loader;
pub mod image_folder;
pub mod loader;
pub mod remote;
pub mod split;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Pixels per image (32 x 32 x 3).
pub const IMAGE_BYTES: usize = 32 * 32 * 3;
/// Format tag written into every manifest.
pub const DATASET_FORMAT: &str = "cifar-edge-dataset/1";

/// Images and labels of one split, held in memory as bytes.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// `[N, 32, 32, 3]` RGB bytes.
    pub images: Vec<u8>,
    /// Class index of each image.
    pub labels: Vec<u8>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    pub fn per_class_counts(&self, classes: usize) -> Vec<usize> {
        let mut counts = vec![0; classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }
}

/// Where a dataset came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    /// `image-folder` or `cifar10-binary`.
    pub kind: String,
    /// The path or URL it was imported from.
    pub location: String,
    /// sha256 of the source file, when it was a single file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Per-split facts in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitInfo {
    pub count: usize,
    pub per_class: Vec<usize>,
}

/// The validation split: which training images are held out, and how they were chosen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ValidationInfo {
    pub size: usize,
    pub seed: u64,
    pub method: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub classes: Vec<String>,
    pub digest: String,
    pub splits: HashMap<String, SplitInfo>,
    pub validation: ValidationInfo,
    pub source: Source,
    pub image_shape: [usize; 3],
    pub trainer_version: String,
}

/// A dataset in memory.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub manifest: Manifest,
    pub train: Split,
    pub test: Option<Split>,
    /// Indices into `train` held out for validation (sorted).
    pub val_indices: Vec<u32>,
}

/// Computes the content digest of a dataset (see the module docs).
pub fn content_digest(classes: &[String], train: &Split, test: Option<&Split>) -> String {
    let mut h = Sha256::new();
    h.update(DATASET_FORMAT.as_bytes());
    h.update((classes.len() as u64).to_le_bytes());
    for c in classes {
        h.update((c.len() as u64).to_le_bytes());
        h.update(c.as_bytes());
    }
    for (name, split) in [("train", Some(train)), ("test", test)] {
        if let Some(s) = split {
            h.update(name.as_bytes());
            h.update((s.len() as u64).to_le_bytes());
            h.update(&s.images);
            h.update(&s.labels);
        }
    }
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Dataset {
    /// Builds a dataset from imported splits: checks them, chooses the validation split,
    /// and computes the digest.
    pub fn new(
        classes: Vec<String>,
        train: Split,
        test: Option<Split>,
        val_size: usize,
        seed: u64,
        source: Source,
    ) -> Result<Self> {
        ensure!(!classes.is_empty(), "the dataset has no classes");
        ensure!(classes.len() <= 256, "at most 256 classes are supported, found {}", classes.len());
        for (name, s) in [("train", Some(&train)), ("test", test.as_ref())] {
            let Some(s) = s else { continue };
            ensure!(s.images.len() == s.len() * IMAGE_BYTES, "{name}: image bytes do not match the label count");
            if let Some(bad) = s.labels.iter().find(|&&l| l as usize >= classes.len()) {
                bail!("{name}: label {bad} is out of range for {} classes", classes.len());
            }
        }
        ensure!(!train.is_empty(), "the training split has no images");
        let val_indices = split::class_balanced(&train.labels, classes.len(), val_size, seed)?;
        let splits = [("train", Some(&train)), ("test", test.as_ref())]
            .into_iter()
            .filter_map(|(n, s)| {
                s.map(|s| (n.to_string(), SplitInfo { count: s.len(), per_class: s.per_class_counts(classes.len()) }))
            })
            .collect();
        let manifest = Manifest {
            format: DATASET_FORMAT.into(),
            digest: content_digest(&classes, &train, test.as_ref()),
            classes,
            splits,
            validation: ValidationInfo {
                size: val_indices.len(),
                seed,
                method: "class-balanced, seeded shuffle per class".into(),
            },
            source,
            image_shape: [32, 32, 3],
            trainer_version: env!("CARGO_PKG_VERSION").into(),
        };
        Ok(Self { manifest, train, test, val_indices })
    }

    /// Short form of the digest for logs and run names.
    pub fn short_digest(&self) -> &str {
        &self.manifest.digest[..12.min(self.manifest.digest.len())]
    }

    /// Indices of the training images that are not held out for validation.
    pub fn train_indices(&self) -> Vec<u32> {
        let mut held = vec![false; self.train.len()];
        for &i in &self.val_indices {
            held[i as usize] = true;
        }
        (0..self.train.len() as u32).filter(|&i| !held[i as usize]).collect()
    }

    /// Writes the dataset to `dir` atomically: everything goes into a temporary sibling
    /// directory that is renamed into place at the end. An existing `dir` is replaced only
    /// with `overwrite`.
    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<()> {
        if dir.exists() && !overwrite {
            bail!("{} already exists (pass --force to replace it)", dir.display());
        }
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        let tmp = tempdir_in(parent, ".dataset-import")?;
        let guard = RemoveOnDrop(Some(tmp.clone()));
        let mut train_extra =
            vec![("val_indices", Dtype::U32, vec![self.val_indices.len()], u32_bytes(&self.val_indices))];
        write_split(&tmp.join("train.safetensors"), &self.train, &mut train_extra)?;
        if let Some(test) = &self.test {
            write_split(&tmp.join("test.safetensors"), test, &mut Vec::new())?;
        }
        let manifest = serde_json::to_vec_pretty(&self.manifest)?;
        cifar_sdk::write_atomic(&tmp.join("manifest.json"), &manifest)?;
        replace_dir(&tmp, dir, parent)?;
        std::mem::forget(guard);
        Ok(())
    }

    /// Loads and checks a dataset directory (shapes, dtypes, labels, split indices).
    /// The digest is recomputed only by [`Dataset::verify`].
    pub fn load(dir: &Path) -> Result<Self> {
        let mpath = dir.join("manifest.json");
        let text = std::fs::read_to_string(&mpath).with_context(|| {
            format!(
                "{} is not a dataset directory (no readable manifest.json); create one with `trainer data import`",
                dir.display()
            )
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).with_context(|| format!("{}: invalid manifest", mpath.display()))?;
        ensure!(manifest.format == DATASET_FORMAT, "{}: unknown dataset format {:?}", mpath.display(), manifest.format);
        let (train, val) = read_split(&dir.join("train.safetensors"), true)?;
        let test = if dir.join("test.safetensors").exists() {
            Some(read_split(&dir.join("test.safetensors"), false)?.0)
        } else {
            None
        };
        let classes = manifest.classes.len();
        let val_indices = val.unwrap_or_default();
        for (name, s) in [("train", Some(&train)), ("test", test.as_ref())] {
            let Some(s) = s else { continue };
            if let Some(bad) = s.labels.iter().find(|&&l| l as usize >= classes) {
                bail!("{}: {name} label {bad} is out of range for {classes} classes", dir.display());
            }
            let expected = manifest.splits.get(name).map(|i| i.count);
            ensure!(
                expected == Some(s.len()),
                "{}: {name} has {} images, the manifest says {:?}",
                dir.display(),
                s.len(),
                expected
            );
        }
        ensure!(
            val_indices.windows(2).all(|w| w[0] < w[1]) && val_indices.iter().all(|&i| (i as usize) < train.len()),
            "{}: validation indices are not sorted, unique and in range",
            dir.display()
        );
        Ok(Self { manifest, train, test, val_indices })
    }

    /// Recomputes the digest and compares it with the manifest.
    pub fn verify(&self) -> Result<()> {
        let digest = content_digest(&self.manifest.classes, &self.train, self.test.as_ref());
        ensure!(
            digest == self.manifest.digest,
            "content digest mismatch: manifest says {}, the data hashes to {digest}; the files were modified or corrupted",
            self.manifest.digest
        );
        let want = split::class_balanced(
            &self.train.labels,
            self.manifest.classes.len(),
            self.manifest.validation.size,
            self.manifest.validation.seed,
        )?;
        ensure!(want == self.val_indices, "the stored validation split differs from the one its seed produces");
        Ok(())
    }
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

type Extra = (&'static str, Dtype, Vec<usize>, Vec<u8>);

fn write_split(path: &Path, s: &Split, extra: &mut Vec<Extra>) -> Result<()> {
    let n = s.len();
    let mut views = vec![
        ("images".to_string(), TensorView::new(Dtype::U8, vec![n, 32, 32, 3], &s.images)?),
        ("labels".to_string(), TensorView::new(Dtype::U8, vec![n], &s.labels)?),
    ];
    for (name, dt, shape, data) in extra.iter() {
        views.push((name.to_string(), TensorView::new(*dt, shape.clone(), data)?));
    }
    let bytes = safetensors::serialize(views, None)?;
    cifar_sdk::write_atomic(path, &bytes)?;
    Ok(())
}

fn read_split(path: &Path, with_val: bool) -> Result<(Split, Option<Vec<u32>>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
    let get = |name: &str, dtype: Dtype| -> Result<TensorView<'_>> {
        let t = st.tensor(name).with_context(|| format!("{}: missing tensor {name:?}", path.display()))?;
        ensure!(
            t.dtype() == dtype,
            "{}: tensor {name:?} has dtype {:?}, expected {dtype:?}",
            path.display(),
            t.dtype()
        );
        Ok(t)
    };
    let images = get("images", Dtype::U8)?;
    let labels = get("labels", Dtype::U8)?;
    let n = labels.shape().first().copied().unwrap_or(0);
    ensure!(labels.shape() == [n], "{}: labels must be one-dimensional", path.display());
    ensure!(
        images.shape() == [n, 32, 32, 3],
        "{}: images have shape {:?}, expected [{n}, 32, 32, 3]",
        path.display(),
        images.shape()
    );
    let split = Split { images: images.data().to_vec(), labels: labels.data().to_vec() };
    let val = if with_val {
        let v = get("val_indices", Dtype::U32)?;
        Some(v.data().chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    } else {
        None
    };
    Ok((split, val))
}

/// Creates a fresh, uniquely named directory inside `parent`.
pub fn tempdir_in(parent: &Path, prefix: &str) -> Result<PathBuf> {
    for attempt in 0..1000u32 {
        let p = parent.join(format!("{prefix}-{}-{attempt}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", p.display())),
        }
    }
    bail!("cannot create a temporary directory in {}", parent.display())
}

/// Renames the finished directory `tmp` to `dir` (both in `parent`). An existing `dir` is
/// moved aside first and removed after, so a failure never leaves neither copy.
pub fn replace_dir(tmp: &Path, dir: &Path, parent: &Path) -> Result<()> {
    if dir.exists() {
        let old = tempdir_in(parent, ".dataset-old")?;
        std::fs::remove_dir(&old)?;
        std::fs::rename(dir, &old).with_context(|| format!("cannot move {} aside", dir.display()))?;
        std::fs::rename(tmp, dir).with_context(|| format!("cannot rename into {}", dir.display()))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(tmp, dir).with_context(|| format!("cannot rename into {}", dir.display()))?;
    }
    Ok(())
}

/// Removes a directory tree when dropped (unless forgotten): no partial output survives
/// an error.
pub struct RemoveOnDrop(pub Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Per-channel mean and standard deviation of pixel values in [0, 1].
pub fn channel_stats(s: &Split) -> ([f64; 3], [f64; 3]) {
    let mut sum = [0f64; 3];
    let mut sq = [0f64; 3];
    for px in s.images.chunks_exact(3) {
        for c in 0..3 {
            let v = px[c] as f64 / 255.0;
            sum[c] += v;
            sq[c] += v * v;
        }
    }
    let n = (s.images.len() / 3).max(1) as f64;
    let mean = sum.map(|v| v / n);
    let mut std = [0f64; 3];
    for c in 0..3 {
        std[c] = (sq[c] / n - mean[c] * mean[c]).max(0.0).sqrt();
    }
    (mean, std)
}
