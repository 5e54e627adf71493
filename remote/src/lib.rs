//! Datasets and models in object storage, addressed by content.
//!
//! A remote is a URL: `s3://bucket/prefix`, `gs://bucket/prefix`,
//! `az://container/prefix` (also `abfs://`, `azure://`), or `file:///path`. Under it:
//!
//! ```text
//! objects/<sha256>            every file, named by its SHA-256 (stored once, shared)
//! datasets/<digest>.json      a dataset: its content digest and its files' names and hashes
//! models/<sha256>.cifar       a compiled model, named by its SHA-256
//! ```
//!
//! Everything read back is hashed while it streams to a temporary file and checked
//! against the name it was asked for before it is renamed into place, so a corrupted or
//! truncated object is an error and never a half-written file.
//!
//! Credentials come from the environment, as each cloud's tools read them (for S3
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL` for S3-compatible servers; for GCS `GOOGLE_SERVICE_ACCOUNT`...;
//! for Azure `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`...). They are never
//! printed: errors name the URL and the variables to check, not their values.
//!
//! The calls are blocking (a small runtime inside): the trainer is synchronous, and the
//! server fetches its model before it starts serving.

mod content;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{ClientConfigKey, ObjectStore, PutPayload, RetryConfig};
use sha2::{Digest, Sha256};

pub use content::{fetch_model, pull_dataset_files, push_dataset, push_model, DatasetIndex, FileEntry, ModelUrl};

/// URL schemes this crate opens.
pub const SCHEMES: [&str; 6] = ["s3", "gs", "az", "abfs", "azure", "file"];

/// Whether `s` is a remote URL (rather than a local path).
pub fn is_remote(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| SCHEMES.contains(&scheme))
}

/// Splits `s3://bucket/prefix@<digest>` into the remote and the digest.
pub fn split_digest(url: &str) -> (&str, Option<&str>) {
    match url.rsplit_once('@') {
        // An `@` in the authority (user@host) is not a digest.
        Some((base, digest)) if !digest.contains('/') && !digest.is_empty() => (base, Some(digest)),
        _ => (url, None),
    }
}

/// The local cache of fetched datasets and models: `$CIFAR_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/cifar-edge`, else `~/.cache/cifar-edge`. Entries are named by content
/// (`datasets/<digest>/`, `models/<sha256>.cifar`), so they never go stale.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CIFAR_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("cifar-edge");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/cifar-edge"),
        None => std::env::temp_dir().join("cifar-edge-cache"),
    }
}

/// Removes what a killed download left in `dir`: entries named `<prefix><pid>...` whose
/// process is gone (temporary directories and `.part` files carry their writer's pid).
pub fn remove_stale(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if pid.is_empty() || Path::new("/proc").join(&pid).exists() {
            continue;
        }
        let p = e.path();
        let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
    }
}

/// The SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` looks like a SHA-256 in hex.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// An opened remote: a store and the prefix inside it.
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

impl Remote {
    /// Opens `url` (without an `@digest`). Nothing is contacted yet.
    pub fn open(url: &str) -> Result<Remote> {
        let url = url.trim_end_matches('/').to_string();
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("{url:?} is not a remote URL; use one of {}", SCHEMES.map(|s| format!("{s}://")).join(", "));
        };
        // Timeouts are added to what the builders read from the environment (proxies,
        // AWS_ALLOW_HTTP, ...), not put in its place.
        let mut client = vec![(ClientConfigKey::ConnectTimeout, "5s"), (ClientConfigKey::Timeout, "120s")];
        let endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).unwrap_or_default();
        if endpoint.starts_with("http://") && std::env::var_os("AWS_ALLOW_HTTP").is_none() {
            // An S3-compatible server the user named with http://: they chose plain HTTP.
            client.push((ClientConfigKey::AllowHttp, "true"));
        }
        let retry = RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(20), ..Default::default() };
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match scheme {
            "file" => {
                let root = PathBuf::from(rest);
                std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&root)
                    .with_context(|| format!("cannot open {}", root.display()))?;
                (Arc::new(fs), String::new())
            }
            "s3" => {
                check_s3_credentials()?;
                let (bucket, prefix) = bucket_and_prefix(rest, &url)?;
                let s3 = client
                    .iter()
                    .fold(object_store::aws::AmazonS3Builder::from_env(), |b, (k, v)| {
                        b.with_config(object_store::aws::AmazonS3ConfigKey::Client(*k), *v)
                    })
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .build()
                    .with_context(|| format!("cannot open {url}"))?;
                (Arc::new(s3), prefix)
            }
            "gs" => {
                let (bucket, prefix) = bucket_and_prefix(rest, &url)?;
                let gcs = client
                    .iter()
                    .fold(object_store::gcp::GoogleCloudStorageBuilder::from_env(), |b, (k, v)| {
                        b.with_config(object_store::gcp::GoogleConfigKey::Client(*k), *v)
                    })
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .build()
                    .with_context(|| format!("cannot open {url}"))?;
                (Arc::new(gcs), prefix)
            }
            "az" | "abfs" | "azure" => {
                let (container, prefix) = bucket_and_prefix(rest, &url)?;
                let az = client
                    .iter()
                    .fold(object_store::azure::MicrosoftAzureBuilder::from_env(), |b, (k, v)| {
                        b.with_config(object_store::azure::AzureConfigKey::Client(*k), *v)
                    })
                    .with_container_name(container)
                    .with_retry(retry)
                    .build()
                    .with_context(|| format!("cannot open {url}"))?;
                (Arc::new(az), prefix)
            }
            other => bail!("unknown remote scheme {other:?} in {url:?}; use one of {}", SCHEMES.join(", ")),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the I/O runtime")?;
        Ok(Remote { url, store, prefix, rt })
    }

    /// The URL this remote was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of `rel` under this remote.
    pub fn url_of(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url)
    }

    fn key(&self, rel: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// The size of `rel`, or `None` if it is not there.
    pub fn size(&self, rel: &str) -> Result<Option<u64>> {
        match self.rt.block_on(self.store.head(&self.key(rel))) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.explain(e, rel)),
        }
    }

    /// Writes `bytes` to `rel`.
    pub fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        self.rt.block_on(self.store.put(&self.key(rel), PutPayload::from(bytes))).map_err(|e| self.explain(e, rel))?;
        Ok(())
    }

    /// Uploads the file at `path` to `rel` (in parts, for large files).
    pub fn put_file(&self, rel: &str, path: &Path) -> Result<()> {
        let key = self.key(rel);
        let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        self.rt.block_on(async {
            let upload = self.store.put_multipart(&key).await.map_err(|e| self.explain(e, rel))?;
            let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, 16 << 20);
            let mut buf = vec![0u8; 1 << 20];
            let sent: Result<()> = async {
                loop {
                    let n = std::io::Read::read(&mut f, &mut buf)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    if n == 0 {
                        return Ok(());
                    }
                    w.wait_for_capacity(4).await.map_err(|e| self.explain(e, rel))?;
                    w.write(&buf[..n]);
                }
            }
            .await;
            match sent {
                Ok(()) => w.finish().await.map(|_| ()).map_err(|e| self.explain(e, rel)),
                Err(e) => {
                    // No half-uploaded parts left behind in the bucket.
                    let _ = w.abort().await;
                    Err(e)
                }
            }
        })
    }

    /// Reads `rel` whole (small objects: indexes).
    pub fn get(&self, rel: &str) -> Result<Vec<u8>> {
        self.rt.block_on(async {
            let got = self.store.get(&self.key(rel)).await.map_err(|e| self.explain(e, rel))?;
            Ok(got.bytes().await.map_err(|e| self.explain(e, rel))?.to_vec())
        })
    }

    /// Streams `rel` into a new file `dest`, checking that its SHA-256 is `sha256`. On any
    /// error `dest` is removed.
    pub fn get_verified(&self, rel: &str, sha256: &str, dest: &Path) -> Result<u64> {
        let result = self.rt.block_on(async {
            let got = self.store.get(&self.key(rel)).await.map_err(|e| self.explain(e, rel))?;
            let mut out = std::fs::File::create(dest).with_context(|| format!("cannot write {}", dest.display()))?;
            let mut hash = Sha256::new();
            let mut size = 0u64;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.explain(e, rel))?;
                hash.update(&chunk);
                size += chunk.len() as u64;
                out.write_all(&chunk).with_context(|| format!("cannot write {}", dest.display()))?;
            }
            out.sync_all()?;
            let got = hex(&hash.finalize());
            if got != sha256 {
                bail!(
                    "{} is corrupt: its content hashes to sha256 {got}, but it is stored as {sha256}; \
                     upload the original again with `push --force`",
                    self.url_of(rel)
                );
            }
            Ok(size)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        result
    }

    /// Names (relative to `rel_dir`) of the objects under `rel_dir`.
    pub fn list(&self, rel_dir: &str) -> Result<Vec<String>> {
        let prefix = self.key(rel_dir);
        self.rt.block_on(async {
            let mut names = Vec::new();
            let mut items = self.store.list(Some(&prefix));
            while let Some(item) = items.next().await {
                let meta = item.map_err(|e| self.explain(e, rel_dir))?;
                if let Some(name) = meta.location.filename() {
                    names.push(name.to_string());
                }
            }
            names.sort();
            Ok(names)
        })
    }

    /// An error that says what was asked of which URL, and what to check.
    fn explain(&self, e: object_store::Error, rel: &str) -> anyhow::Error {
        let url = self.url_of(rel);
        if e.to_string().contains("NoSuchBucket") {
            return anyhow!("the bucket of {} does not exist", self.url);
        }
        match e {
            object_store::Error::NotFound { .. } => anyhow!("{url} does not exist"),
            object_store::Error::Unauthenticated { .. } | object_store::Error::PermissionDenied { .. } => anyhow!(
                "access to {url} was refused: check the credentials in the environment ({})",
                credential_hint(&self.url)
            ),
            other => {
                let text = other.to_string();
                if ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403 Forbidden"]
                    .iter()
                    .any(|r| text.contains(r))
                {
                    anyhow!("access to {url} was refused (HTTP 403): check {}", credential_hint(&self.url))
                } else if text.contains("NoSuchBucket") {
                    anyhow!("the bucket of {} does not exist", self.url)
                } else {
                    anyhow!("cannot reach {url}: {}", first_line(&text))
                }
            }
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn credential_hint(url: &str) -> &'static str {
    match url.split_once("://").map(|(s, _)| s) {
        Some("s3") => "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL",
        Some("gs") => "GOOGLE_SERVICE_ACCOUNT or GOOGLE_APPLICATION_CREDENTIALS",
        Some("az" | "abfs" | "azure") => {
            "AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN"
        }
        _ => "the folder's permissions",
    }
}

/// Without any credential source, the S3 client would fall back to the EC2 instance
/// metadata service and wait on it: say what is missing instead.
fn check_s3_credentials() -> Result<()> {
    const SOURCES: [&str; 4] = [
        "AWS_ACCESS_KEY_ID",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ];
    let instance = std::env::var("CIFAR_S3_INSTANCE_CREDENTIALS").is_ok_and(|v| v == "1");
    if instance || SOURCES.iter().any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty())) {
        return Ok(());
    }
    bail!(
        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an \
         S3-compatible server), or CIFAR_S3_INSTANCE_CREDENTIALS=1 to use the instance's role"
    )
}

fn bucket_and_prefix(rest: &str, url: &str) -> Result<(String, String)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        bail!("{url:?} names no bucket");
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == ".." || p == ".") {
        bail!("{url:?}: `.` and `..` are not allowed in an object path");
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        assert!(is_remote("s3://b/p") && is_remote("file:///tmp/x") && !is_remote("data/cifar10"));
        assert!(!is_remote("http://x/y"));
        assert_eq!(split_digest("s3://b/p@abc"), ("s3://b/p", Some("abc")));
        assert_eq!(split_digest("s3://b/p"), ("s3://b/p", None));
        assert_eq!(bucket_and_prefix("b/a/b/", "u").unwrap(), ("b".into(), "a/b".into()));
        assert!(bucket_and_prefix("b/../x", "u").is_err());
        assert!(is_sha256(&"a".repeat(64)) && !is_sha256("abc"));
    }
}
