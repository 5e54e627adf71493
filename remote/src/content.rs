//! The content-addressed layout: datasets as an index of hashed files, models named by
//! their hash.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::{cache_dir, is_sha256, sha256_file, split_digest, Remote};

/// `datasets/<digest>.json`: a dataset's files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetIndex {
    /// The dataset's content digest (its manifest's `digest`).
    pub digest: String,
    pub files: Vec<FileEntry>,
}

/// One file of a dataset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// The file's name in the dataset directory (no folders).
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

/// A model URL: `<remote>/models/<sha256>.cifar`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelUrl {
    /// The folder holding the model (`<remote>/models`).
    pub folder: String,
    pub sha256: String,
}

impl ModelUrl {
    /// Parses a model URL, refusing one that does not name the file's hash.
    pub fn parse(url: &str) -> Result<ModelUrl> {
        let (folder, file) = url.rsplit_once('/').unwrap_or(("", url));
        let sha = file.strip_suffix(".cifar").unwrap_or("");
        if folder.is_empty() || !is_sha256(sha) {
            bail!(
                "{url:?} is not a model URL: models in object storage are named by their SHA-256, \
                 `<remote>/models/<sha256>.cifar` (`trainer model push` prints it)"
            );
        }
        Ok(ModelUrl { folder: folder.to_string(), sha256: sha.to_string() })
    }
}

/// Uploads dataset directory `dir` (content digest `digest`): every file to
/// `objects/<sha256>` unless it is there already, then `datasets/<digest>.json`.
/// `say` hears one line per file.
/// With `force`, every file is uploaded even if an object of its name and size is there
/// (the repair for a corrupted object).
pub fn push_dataset(
    remote: &Remote,
    dir: &Path,
    digest: &str,
    force: bool,
    say: &mut dyn FnMut(String),
) -> Result<DatasetIndex> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut files = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let sha256 = sha256_file(&path)?;
        let size = std::fs::metadata(&path)?.len();
        let rel = format!("objects/{sha256}");
        if !force && remote.size(&rel)? == Some(size) {
            say(format!("  {name}: already there ({sha256:.12})"));
        } else {
            say(format!("  {name}: uploading {:.1} MB", size as f64 / 1e6));
            remote.put_file(&rel, &path)?;
        }
        files.push(FileEntry { name, sha256, size });
    }
    let index = DatasetIndex { digest: digest.to_string(), files };
    remote.put(&format!("datasets/{digest}.json"), serde_json::to_vec_pretty(&index)?)?;
    Ok(index)
}

/// The index of dataset `digest`, or of the only dataset under the remote.
pub fn dataset_index(remote: &Remote, digest: Option<&str>) -> Result<DatasetIndex> {
    let digest = match digest {
        Some(d) => d.to_string(),
        None => {
            let found: Vec<String> = remote
                .list("datasets")?
                .into_iter()
                .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
                .filter(|d| is_sha256(d))
                .collect();
            match found.as_slice() {
                [one] => one.clone(),
                [] => bail!("{} holds no dataset (push one with `trainer data push`)", remote.url()),
                many => bail!(
                    "{} holds {} datasets; name one as {0}@<digest>: {}",
                    remote.url(),
                    many.len(),
                    many.join(", ")
                ),
            }
        }
    };
    let rel = format!("datasets/{digest}.json");
    let bytes = remote.get(&rel)?;
    let index: DatasetIndex =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not a dataset index", remote.url_of(&rel)))?;
    if index.digest != digest {
        bail!("{} describes dataset {}, not {digest}", remote.url_of(&rel), index.digest);
    }
    for f in &index.files {
        let plain = !f.name.is_empty() && !f.name.contains(['/', '\\']) && f.name != "." && f.name != "..";
        if !plain || !is_sha256(&f.sha256) {
            bail!("{} lists an invalid file entry {:?}", remote.url_of(&rel), f.name);
        }
    }
    Ok(index)
}

/// Downloads the dataset `digest` (or the only one) into `dest`, a directory this call
/// creates; every file is checked against its hash. On error `dest` is removed. The
/// caller checks the dataset's own content digest before using it.
pub fn pull_dataset_files(
    remote: &Remote,
    digest: Option<&str>,
    dest: &Path,
    say: &mut dyn FnMut(String),
) -> Result<DatasetIndex> {
    let index = dataset_index(remote, digest)?;
    std::fs::create_dir(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let result = index.files.iter().try_for_each(|f| {
        say(format!("  {}: {:.1} MB", f.name, f.size as f64 / 1e6));
        remote.get_verified(&format!("objects/{}", f.sha256), &f.sha256, &dest.join(&f.name)).map(|_| ())
    });
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(dest);
        return Err(e);
    }
    Ok(index)
}

/// Uploads a compiled model as `models/<sha256>.cifar` (skipped when an object of that
/// name and size is there, unless `force`); returns its URL.
pub fn push_model(remote: &Remote, file: &Path, force: bool) -> Result<String> {
    let sha = sha256_file(file)?;
    let rel = format!("models/{sha}.cifar");
    let size = std::fs::metadata(file)?.len();
    if force || remote.size(&rel)? != Some(size) {
        remote.put_file(&rel, file)?;
    }
    Ok(remote.url_of(&rel))
}

/// The local copy of the model at `url` (`<remote>/models/<sha256>.cifar`), fetched into
/// the cache and checked against its hash if it is not there yet.
pub fn fetch_model(url: &str) -> Result<PathBuf> {
    let (url, _) = split_digest(url);
    let m = ModelUrl::parse(url)?;
    let dir = cache_dir().join("models");
    let path = dir.join(format!("{}.cifar", m.sha256));
    if path.exists() && sha256_file(&path)? == m.sha256 {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create the cache {}", dir.display()))?;
    let remote = Remote::open(&m.folder)?;
    crate::remove_stale(&dir, &format!(".{}.", m.sha256));
    let tmp = dir.join(format!(".{}.{}.part", m.sha256, std::process::id()));
    remote.get_verified(&format!("{}.cifar", m.sha256), &m.sha256, &tmp)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole round trip on a `file://` remote, and a corrupted object.
    #[test]
    fn push_pull_and_corruption_on_a_folder_remote() {
        let d1 = "d1".repeat(32);
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("ds");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("manifest.json"), b"{\"digest\": \"d1\"}").unwrap();
        std::fs::write(src.join("train.safetensors"), vec![7u8; 100_000]).unwrap();
        let url = format!("file://{}", tmp.path().join("bucket/team").display());
        let remote = Remote::open(&url).unwrap();
        let mut lines = Vec::new();
        let index = push_dataset(&remote, &src, &d1, false, &mut |l| lines.push(l)).unwrap();
        assert_eq!(index.files.len(), 2);
        // Pushed again: nothing uploads.
        let mut again = Vec::new();
        push_dataset(&remote, &src, &d1, false, &mut |l| again.push(l)).unwrap();
        assert!(again.iter().all(|l| l.contains("already there")), "{again:?}");

        let dest = tmp.path().join("pulled");
        pull_dataset_files(&remote, None, &dest, &mut |_| {}).unwrap();
        assert_eq!(std::fs::read(dest.join("train.safetensors")).unwrap(), vec![7u8; 100_000]);

        // One flipped byte in the stored object: an error naming it, nothing left behind.
        let obj = tmp.path().join("bucket/team/objects").join(&index.files[1].sha256);
        let mut bytes = std::fs::read(&obj).unwrap();
        bytes[500] ^= 1;
        std::fs::write(&obj, bytes).unwrap();
        let dest2 = tmp.path().join("pulled2");
        let e = format!("{:#}", pull_dataset_files(&remote, Some(&d1), &dest2, &mut |_| {}).unwrap_err());
        assert!(e.contains("corrupt") && e.contains(&index.files[1].sha256), "{e}");
        assert!(!dest2.exists());
        let e = format!("{:#}", pull_dataset_files(&remote, Some("nope"), &dest2, &mut |_| {}).unwrap_err());
        assert!(e.contains("datasets/nope.json does not exist"), "{e}");
    }

    #[test]
    fn model_urls_name_their_hash() {
        let sha = "ab".repeat(32);
        let m = ModelUrl::parse(&format!("s3://b/p/models/{sha}.cifar")).unwrap();
        assert_eq!((m.folder.as_str(), m.sha256.as_str()), ("s3://b/p/models", sha.as_str()));
        assert!(ModelUrl::parse("s3://b/p/models/model.cifar").is_err());
    }
}
