//! Datasets in object storage (`cifar_remote`): `trainer data push|pull`, and configs
//! whose `data.path` is a remote URL with the dataset's digest,
//! `s3://bucket/prefix@<digest>`, fetched into the local cache before training.
//!
//! A pulled dataset is checked twice before it is renamed into place: each file against
//! its SHA-256 while it downloads, then the dataset's own content digest (the one its
//! manifest records and runs cite). A failure at either leaves nothing behind.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cifar_remote::Remote;

use super::{tempdir_in, Dataset, RemoveOnDrop};

/// `trainer data push DIR REMOTE`: uploads a dataset; returns `REMOTE@<digest>`. With
/// `force`, files already there are uploaded again (repairs a corrupted object).
pub fn push(dir: &Path, url: &str, force: bool) -> Result<String> {
    let ds = Dataset::load(dir)?;
    ds.verify().with_context(|| format!("{} failed verification; not pushing it", dir.display()))?;
    let (base, digest) = cifar_remote::split_digest(url);
    if digest.is_some() {
        bail!("push to {base:?}, without an @digest: the dataset's digest names it there");
    }
    let remote = Remote::open(base)?;
    errln!("pushing {} ({}) to {}", dir.display(), ds.short_digest(), remote.url());
    cifar_remote::push_dataset(&remote, dir, &ds.manifest.digest, force, &mut |l| errln!("{l}"))?;
    Ok(format!("{}@{}", remote.url(), ds.manifest.digest))
}

/// `trainer data pull REMOTE[@digest] DIR`: downloads and checks a dataset into `dir`.
pub fn pull(url: &str, dir: &Path, force: bool) -> Result<Dataset> {
    if dir.exists() && !force {
        bail!("{} already exists (pass --force to replace it)", dir.display());
    }
    let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(true);
    if dir.exists() && !empty && !dir.join("manifest.json").exists() {
        bail!("{} is not a dataset directory (no manifest.json); not replacing it", dir.display());
    }
    let (base, digest) = cifar_remote::split_digest(url);
    let remote = Remote::open(base)?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = fetch(&remote, digest, parent)?;
    let guard = RemoveOnDrop(Some(tmp.clone()));
    super::replace_dir(&tmp, dir, parent)?;
    std::mem::forget(guard);
    Dataset::load(dir)
}

/// Downloads dataset `digest` of `remote` into a new temporary folder in `parent` and
/// checks it; returns the folder.
fn fetch(remote: &Remote, digest: Option<&str>, parent: &Path) -> Result<PathBuf> {
    cifar_remote::remove_stale(parent, ".dataset-pull-");
    let tmp = tempdir_in(parent, ".dataset-pull")?;
    std::fs::remove_dir(&tmp)?;
    let guard = RemoveOnDrop(Some(tmp.clone()));
    errln!("pulling {}{}", remote.url(), digest.map(|d| format!("@{d}")).unwrap_or_default());
    let index = cifar_remote::pull_dataset_files(remote, digest, &tmp, &mut |l| errln!("{l}"))?;
    let ds = Dataset::load(&tmp).with_context(|| format!("{} holds no valid dataset", remote.url()))?;
    ds.verify().with_context(|| format!("the dataset pulled from {} is not the one pushed", remote.url()))?;
    if ds.manifest.digest != index.digest {
        bail!("{} lists dataset {} but its files hold {}", remote.url(), index.digest, ds.manifest.digest);
    }
    std::mem::forget(guard);
    Ok(tmp)
}

/// The local directory of `data.path`: the path itself, or for a remote URL
/// (`s3://bucket/prefix@<digest>`) its copy in the cache
/// (`cifar_remote::cache_dir()/datasets/<digest>`), fetched and checked the first time.
pub fn local_dir(path: &str) -> Result<PathBuf> {
    if !cifar_remote::is_remote(path) {
        return Ok(PathBuf::from(path));
    }
    let (base, digest) = cifar_remote::split_digest(path);
    let Some(digest) = digest else {
        bail!(
            "data.path {path:?} names no dataset digest: write it as {base}@<digest> (`trainer data push` prints it), \
             so that the run records exactly which data it trained on"
        );
    };
    if !cifar_remote::is_sha256(digest) {
        bail!("data.path {path:?}: {digest:?} is not a dataset digest (64 hex digits)");
    }
    let datasets = cifar_remote::cache_dir().join("datasets");
    let dir = datasets.join(digest);
    if let Ok(ds) = Dataset::load(&dir) {
        if ds.manifest.digest == digest {
            return Ok(dir);
        }
    }
    std::fs::create_dir_all(&datasets).with_context(|| format!("cannot create the cache {}", datasets.display()))?;
    let tmp = fetch(&Remote::open(base)?, Some(digest), &datasets)?;
    let guard = RemoveOnDrop(Some(tmp.clone()));
    if dir.exists() {
        // A broken entry (the checks above failed on it).
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        // Another process filled the entry meanwhile: use its copy (the guard drops ours).
        if Dataset::load(&dir).is_ok_and(|ds| ds.manifest.digest == digest) {
            return Ok(dir);
        }
        return Err(e).with_context(|| format!("cannot rename into {}", dir.display()));
    }
    std::mem::forget(guard);
    errln!("dataset {digest:.12} cached in {}", dir.display());
    Ok(dir)
}
