//! The served models: one file (`--model`), or a model repository in Triton's layout
//! (`--model-repository DIR`: `DIR/<name>/<version>/model.cifar`, with an optional
//! `DIR/<name>/config.toml` for the version policy, labels and batch size).
//!
//! The set of loaded models is one immutable snapshot swapped atomically. Requests take
//! an `Arc` of the model version they were accepted for and finish on it, so a load,
//! reload or unload never fails or mixes a request: new requests see the new snapshot as
//! soon as every version in it is validated, and an old version is freed when its last
//! request is done. Loads and unloads are serialized.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use cifar_sdk::{Model, ModelOptions};
use serde::Deserialize;

/// The file name of a model version inside the repository.
pub const MODEL_FILE: &str = "model.cifar";
/// The optional per-model configuration file inside the repository.
pub const CONFIG_FILE: &str = "config.toml";

/// Which versions of a model are served (Triton's version policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The `n` highest versions.
    Latest(u32),
    /// Every version present.
    All,
    /// These versions.
    Specific(Vec<u64>),
}

/// `DIR/<name>/config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelDirConfig {
    /// `"latest"` (default), `"all"` or `"specific"`.
    #[serde(default)]
    version_policy: Option<String>,
    /// How many versions `latest` serves (default 1).
    #[serde(default)]
    latest: Option<u32>,
    /// The versions `specific` serves.
    #[serde(default)]
    versions: Vec<u64>,
    /// Class names to report instead of the ones in the model file.
    #[serde(default)]
    labels: Option<Vec<String>>,
    /// Most images of this model in one batch (at most `--max-batch`, the default).
    #[serde(default)]
    max_batch: Option<usize>,
}

/// One loaded version of a model.
#[derive(Debug)]
pub struct ServedModel {
    /// Name it is served under.
    pub name: String,
    /// The repository version (`DIR/<name>/<version>/`); with `--model`, the load
    /// generation: 1 at start-up, +1 per successful reload.
    pub version: u64,
    /// The opened model.
    pub model: Arc<Model>,
    /// The file's content checksum (SHA-256).
    pub digest: String,
    /// When it was loaded (seconds since the Unix epoch).
    pub loaded_unix: u64,
    /// Its inference statistics (Triton's `ModelStatistics`).
    pub stats: crate::stats::ModelStats,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// The version policy of its model.
    pub policy: VersionPolicy,
    /// Most images of this model a worker runs as one batch.
    pub max_batch: usize,
    labels: Vec<String>,
    /// The file's [`stamp`] when loaded (a poll reloads on change).
    stamp: Stamp,
}

impl ServedModel {
    /// The version as the protocol spells it.
    pub fn version_string(&self) -> String {
        self.version.to_string()
    }

    /// Input `[channels, height, width]`.
    pub fn input_shape(&self) -> [usize; 3] {
        self.model.input_shape()
    }

    /// The class names (the repository's `labels` when set, else the model file's).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }
}

/// A model name in the snapshot: its loaded versions, or why none is.
#[derive(Debug, Clone)]
struct Entry {
    versions: BTreeMap<u64, Arc<ServedModel>>,
    /// Set when the model is not being served (unloaded, failed to load).
    unavailable: Option<String>,
}

/// One row of the repository index.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IndexEntry {
    /// The model name.
    pub name: String,
    /// The version ("" for a model with no loaded version).
    pub version: String,
    /// `READY` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why it is unavailable.
    pub reason: String,
}

/// Why a model could not be resolved; [`Lookup::message`] says it for the client.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// No such name.
    Unknown(String),
    /// The name exists but is not loaded.
    Unavailable(String),
    /// The name is loaded but not this version.
    NoVersion(String),
}

impl Lookup {
    /// The message for the client.
    pub fn message(&self) -> &str {
        match self {
            Lookup::Unknown(m) | Lookup::Unavailable(m) | Lookup::NoVersion(m) => m,
        }
    }
}

/// Why a load did not happen.
#[derive(Debug, Clone)]
pub enum LoadError {
    /// No such model to load (404).
    Unknown(String),
    /// The model's files were rejected; what was served keeps serving (400).
    Rejected(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Unknown(m) | LoadError::Rejected(m) => f.write_str(m),
        }
    }
}

/// What a load did.
#[derive(Debug)]
pub struct Loaded {
    /// The versions now served.
    pub versions: Vec<Arc<ServedModel>>,
    /// Whether anything changed (a poll that finds nothing new changes nothing).
    pub changed: bool,
}

#[derive(Debug)]
enum Source {
    File { path: PathBuf, name: String },
    Dir { root: PathBuf },
}

/// The served models and their loading.
#[derive(Debug)]
pub struct Repository {
    source: Source,
    options: ModelOptions,
    models: ArcSwap<BTreeMap<String, Entry>>,
    /// `--model`: the last load generation.
    generation: AtomicU64,
    /// Names unloaded through the API: a poll does not bring them back.
    unloaded: Mutex<HashSet<String>>,
    /// Serializes loads and unloads.
    lock: tokio::sync::Mutex<()>,
}

impl Repository {
    /// Opens one model file; failure here stops the server before it listens.
    pub fn open_file(path: PathBuf, name: String, options: ModelOptions) -> cifar_sdk::Result<Self> {
        let first = load_version(&path, &name, 1, &options, VersionPolicy::Latest(1), None)?;
        let entry = Entry { versions: BTreeMap::from([(1, Arc::new(first))]), unavailable: None };
        Ok(Self {
            source: Source::File { path, name: name.clone() },
            options,
            models: ArcSwap::from_pointee(BTreeMap::from([(name, entry)])),
            generation: AtomicU64::new(1),
            unloaded: Mutex::new(HashSet::new()),
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Opens a model repository and loads every model in it. A model that fails to
    /// load is listed as unavailable with the reason; no loadable model at all is an
    /// error.
    pub async fn open_dir(root: PathBuf, options: ModelOptions) -> anyhow::Result<Self> {
        let names = model_names(&root).map_err(anyhow::Error::msg)?;
        let repo = Self {
            source: Source::Dir { root: root.clone() },
            options,
            models: ArcSwap::from_pointee(BTreeMap::new()),
            generation: AtomicU64::new(0),
            unloaded: Mutex::new(HashSet::new()),
            lock: tokio::sync::Mutex::new(()),
        };
        for name in &names {
            if let Err(e) = repo.load(name).await {
                tracing::error!(model = %name, "cannot load: {e}");
                repo.update(|m| {
                    m.insert(name.clone(), Entry { versions: BTreeMap::new(), unavailable: Some(e.to_string()) })
                });
            }
        }
        if repo.all().is_empty() {
            anyhow::bail!(
                "no model in {} could be loaded (expected <name>/<version>/{MODEL_FILE}; found {})",
                root.display(),
                if names.is_empty() { "no model directories".to_string() } else { names.join(", ") }
            );
        }
        Ok(repo)
    }

    /// Whether the models come from a repository directory (not `--model`).
    pub fn is_directory(&self) -> bool {
        matches!(self.source, Source::Dir { .. })
    }

    /// Where the models come from, for messages.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::File { path, .. } => path.display().to_string(),
            Source::Dir { root } => format!("the model repository {}", root.display()),
        }
    }

    /// The model `name` at `version` (the highest served version when `None`).
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<ServedModel>, Lookup> {
        let models = self.models.load();
        let Some(entry) = models.get(name) else {
            let known: Vec<&str> =
                models.iter().filter(|(_, e)| !e.versions.is_empty()).map(|(n, _)| n.as_str()).collect();
            return Err(Lookup::Unknown(format!("unknown model `{name}` (served: {})", known.join(", "))));
        };
        if let Some(reason) = &entry.unavailable {
            return Err(Lookup::Unavailable(format!("model `{name}` is not available: {reason}")));
        }
        let found = match version {
            None => entry.versions.values().next_back(),
            Some(v) => v.parse::<u64>().ok().and_then(|v| entry.versions.get(&v)),
        };
        found.cloned().ok_or_else(|| {
            let served: Vec<String> = entry.versions.keys().map(u64::to_string).collect();
            Lookup::NoVersion(format!(
                "model `{name}` has no version `{}` (served: {})",
                version.unwrap_or(""),
                served.join(", ")
            ))
        })
    }

    /// The model requests that name none go to: the only one, or the first by name.
    pub fn default_model(&self) -> Option<Arc<ServedModel>> {
        self.models.load().values().find_map(|e| e.versions.values().next_back().cloned())
    }

    /// Every loaded version of every model.
    pub fn all(&self) -> Vec<Arc<ServedModel>> {
        self.models.load().values().flat_map(|e| e.versions.values().cloned()).collect()
    }

    /// Every loaded version of `name`.
    pub fn versions(&self, name: &str) -> Vec<Arc<ServedModel>> {
        self.models.load().get(name).map(|e| e.versions.values().cloned().collect()).unwrap_or_default()
    }

    /// The repository index: every loaded version, and every model that is not loaded
    /// (including directories in the repository that were never loaded).
    pub fn index(&self) -> Vec<IndexEntry> {
        let models = self.models.load();
        let mut rows = Vec::new();
        let mut names: Vec<String> = models.keys().cloned().collect();
        if let Source::Dir { root } = &self.source {
            names.extend(model_names(root).unwrap_or_default());
            names.sort();
            names.dedup();
        }
        for name in names {
            match models.get(&name) {
                Some(e) if e.unavailable.is_none() => rows.extend(e.versions.values().map(|m| IndexEntry {
                    name: name.clone(),
                    version: m.version_string(),
                    state: "READY",
                    reason: String::new(),
                })),
                Some(e) => rows.push(IndexEntry {
                    name,
                    version: String::new(),
                    state: "UNAVAILABLE",
                    reason: e.unavailable.clone().unwrap_or_default(),
                }),
                None => rows.push(IndexEntry {
                    name,
                    version: String::new(),
                    state: "UNAVAILABLE",
                    reason: "not loaded".into(),
                }),
            }
        }
        rows
    }

    /// Loads or reloads `name`: with `--model`, the file again (a new generation); in a
    /// repository, the versions its policy selects (unchanged files keep their loaded
    /// version). Every version is validated before the swap; on error the model keeps
    /// serving what it served and the error says why.
    pub async fn load(&self, name: &str) -> Result<Loaded, LoadError> {
        self.load_as(name, false).await
    }

    /// [`Repository::load`]; a poll (`from_poll`) leaves names unloaded through the API
    /// alone, checked under the lock so that an unload between the poll's scan and its
    /// load wins.
    async fn load_as(&self, name: &str, from_poll: bool) -> Result<Loaded, LoadError> {
        let _guard = self.lock.lock().await;
        if let Ok(mut u) = self.unloaded.lock() {
            if from_poll && u.contains(name) {
                return Ok(Loaded { versions: Vec::new(), changed: false });
            }
            u.remove(name);
        }
        let current = self.models.load().get(name).cloned();
        let options = self.options.clone();
        let (versions, changed) = match &self.source {
            Source::File { path, name: served } => {
                if name != served {
                    return Err(LoadError::Unknown(format!(
                        "unknown model `{name}` (this server serves `{served}` from {})",
                        path.display()
                    )));
                }
                let version = self.generation.load(Ordering::SeqCst) + 1;
                let (path, served) = (path.clone(), served.clone());
                let loaded = blocking(move || {
                    load_version(&path, &served, version, &options, VersionPolicy::Latest(1), None)
                        .map_err(|e| e.to_string())
                })
                .await
                .map_err(LoadError::Rejected)?;
                self.generation.store(version, Ordering::SeqCst);
                (BTreeMap::from([(version, Arc::new(loaded))]), true)
            }
            Source::Dir { root } => {
                check_name(name).map_err(LoadError::Unknown)?;
                if !root.join(name).is_dir() {
                    return Err(LoadError::Unknown(format!("no model `{name}` in the repository {}", root.display())));
                }
                let (root, name_owned) = (root.clone(), name.to_string());
                let old = current.as_ref().map(|e| e.versions.clone()).unwrap_or_default();
                blocking(move || load_dir_model(&root, &name_owned, &options, &old))
                    .await
                    .map_err(LoadError::Rejected)?
            }
        };
        let changed = changed || current.as_ref().is_some_and(|e| e.unavailable.is_some());
        let served: Vec<Arc<ServedModel>> = versions.values().cloned().collect();
        self.update(|m| m.insert(name.to_string(), Entry { versions, unavailable: None }));
        Ok(Loaded { versions: served, changed })
    }

    /// Replaces the snapshot of served models with `change` applied to a copy of it
    /// (callers hold `lock`, or run before the server starts).
    fn update<R>(&self, change: impl FnOnce(&mut BTreeMap<String, Entry>) -> R) -> R {
        let mut next = (**self.models.load()).clone();
        let r = change(&mut next);
        self.models.store(Arc::new(next));
        r
    }

    /// Stops serving `name` (repository only). Requests already accepted finish; later
    /// ones are told it is unavailable.
    pub async fn unload(&self, name: &str) -> Result<(), String> {
        let _guard = self.lock.lock().await;
        if !self.is_directory() {
            return Err(format!(
                "cannot unload `{name}`: this server serves one model file (--model); stop the server instead"
            ));
        }
        let known = self.update(|m| match m.get_mut(name) {
            Some(e) => {
                // Unloading what is not loaded is not an error (as in Triton).
                e.versions.clear();
                e.unavailable = Some("unloaded through the repository API".into());
                true
            }
            None => false,
        });
        if !known {
            return Err(format!("unknown model `{name}`"));
        }
        if let Ok(mut u) = self.unloaded.lock() {
            u.insert(name.to_string());
        }
        Ok(())
    }

    /// A repository poll: loads new models and new or changed versions, and marks models
    /// whose directory is gone as unavailable. Names unloaded through the API stay
    /// unloaded. Returns what changed, by name.
    pub async fn poll(&self) -> Vec<(String, Result<Loaded, String>)> {
        let Source::Dir { root } = &self.source else { return Vec::new() };
        // A repository that cannot be read now (permissions, a network file system)
        // says nothing about its models: skip this poll instead of unloading them all.
        let on_disk = match model_names(root) {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!("repository poll skipped: {e}");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for name in &on_disk {
            match self.load_as(name, true).await {
                Ok(l) if !l.changed => {}
                r => out.push((name.clone(), r.map_err(|e| e.to_string()))),
            }
        }
        let _guard = self.lock.lock().await;
        self.update(|m| {
            for (name, e) in m.iter_mut() {
                if !on_disk.contains(name) && e.unavailable.is_none() {
                    e.versions.clear();
                    e.unavailable = Some("removed from the repository".into());
                    out.push((name.clone(), Err("removed from the repository".into())));
                }
            }
        });
        out
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| format!("the loading task failed: {e}"))?
}

/// A model name must be one directory inside the repository: never a path.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a model name (letters, digits, `-`, `_`, `.`; a directory of the repository)"))
    }
}

/// The model directories of the repository, sorted.
fn model_names(root: &Path) -> Result<Vec<String>, String> {
    let entries =
        std::fs::read_dir(root).map_err(|e| format!("cannot read the model repository {}: {e}", root.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|n| check_name(n).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

/// What tells a replaced model file from the loaded one without reading it: its inode
/// (a rename-replacement, as deployments do it, changes it even when size and mtime are
/// kept by `cp -p` or `rsync -a`), size and modification time.
fn stamp(path: &Path) -> Stamp {
    let Ok(m) = std::fs::metadata(path) else { return (0, 0, None) };
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    (inode, m.len(), m.modified().ok())
}

type Stamp = (u64, u64, Option<SystemTime>);

/// Loads the versions of `DIR/<name>` its policy selects; versions whose file did not
/// change since `old` are kept as they are. Returns them and whether the set changed.
fn load_dir_model(
    root: &Path,
    name: &str,
    options: &ModelOptions,
    old: &BTreeMap<u64, Arc<ServedModel>>,
) -> Result<(BTreeMap<u64, Arc<ServedModel>>, bool), String> {
    let dir = root.join(name);
    if !dir.is_dir() {
        return Err(format!("no model `{name}` in the repository {}", root.display()));
    }
    let config_path = dir.join(CONFIG_FILE);
    let config: ModelDirConfig = match std::fs::read_to_string(&config_path) {
        Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", config_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ModelDirConfig::default(),
        Err(e) => return Err(format!("cannot read {}: {e}", config_path.display())),
    };
    let policy = match (config.version_policy.as_deref().unwrap_or("latest"), config.latest) {
        ("latest", n) => VersionPolicy::Latest(n.unwrap_or(1).max(1)),
        ("all", None) => VersionPolicy::All,
        ("specific", None) if !config.versions.is_empty() => VersionPolicy::Specific(config.versions.clone()),
        (p, _) => {
            return Err(format!(
                "{}: version_policy must be \"latest\" (with `latest = N`), \"all\" or \"specific\" (with `versions = [...]`), got {p:?}",
                config_path.display()
            ))
        }
    };
    let mut present: Vec<u64> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()))
        .filter(|v| dir.join(v.to_string()).join(MODEL_FILE).is_file())
        .collect();
    present.sort_unstable();
    let selected: Vec<u64> = match &policy {
        VersionPolicy::Latest(n) => present.iter().rev().take(*n as usize).rev().copied().collect(),
        VersionPolicy::All => present.clone(),
        VersionPolicy::Specific(want) => {
            let missing: Vec<String> = want.iter().filter(|v| !present.contains(v)).map(u64::to_string).collect();
            if !missing.is_empty() {
                return Err(format!("{name}: versions {} have no {MODEL_FILE}", missing.join(", ")));
            }
            want.clone()
        }
    };
    if selected.is_empty() {
        return Err(format!("{name}: no version directory with a {MODEL_FILE} in {}", dir.display()));
    }
    let options = match config.max_batch {
        Some(n) if (1..=options.max_batch).contains(&n) => ModelOptions { max_batch: n, ..options.clone() },
        Some(n) => {
            return Err(format!(
                "{}: max_batch must be in 1..={} (--max-batch), got {n}",
                config_path.display(),
                options.max_batch
            ))
        }
        None => options.clone(),
    };
    let options = &options;
    let mut versions = BTreeMap::new();
    let mut changed = selected.len() != old.len();
    for v in selected {
        let path = dir.join(v.to_string()).join(MODEL_FILE);
        match old.get(&v) {
            Some(m)
                if m.path == path
                    && m.stamp == stamp(&path)
                    && m.policy == policy
                    && m.max_batch == options.max_batch =>
            {
                versions.insert(v, m.clone());
            }
            _ => {
                let loaded = load_version(&path, name, v, options, policy.clone(), config.labels.clone())
                    .map_err(|e| format!("{name} version {v} ({}): {e}", path.display()))?;
                versions.insert(v, Arc::new(loaded));
                changed = true;
            }
        }
    }
    Ok((versions, changed))
}

fn load_version(
    path: &Path,
    name: &str,
    version: u64,
    options: &ModelOptions,
    policy: VersionPolicy,
    labels: Option<Vec<String>>,
) -> cifar_sdk::Result<ServedModel> {
    let stamp = stamp(path);
    let max_batch = options.max_batch;
    let model = Model::open(path, options)?;
    // A session is built once here so that a file whose plan cannot be made (e.g. too
    // large for memory) is rejected before it replaces a working model.
    model.session()?;
    let labels = match labels {
        Some(l) if l.len() == model.classes() => l,
        Some(l) => {
            return Err(cifar_sdk::Error::Options(format!(
                "{CONFIG_FILE} gives {} labels but the model has {} classes",
                l.len(),
                model.classes()
            )))
        }
        None => model.labels().to_vec(),
    };
    let digest = model.artifact().checksum.clone();
    let loaded_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(ServedModel {
        name: name.to_string(),
        version,
        model,
        digest,
        loaded_unix,
        stats: Default::default(),
        path: path.to_path_buf(),
        policy,
        max_batch,
        labels,
        stamp,
    })
}
