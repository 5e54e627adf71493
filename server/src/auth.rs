//! Access control: an API key for inference and model information, an admin key for the
//! repository calls, both sent as `Authorization: Bearer <key>` (HTTP header or gRPC
//! metadata). Keys are read from files (never from the command line, where `ps` shows
//! them), compared in constant time, and never logged or echoed in errors.

use std::path::Path;

use anyhow::{bail, Context};

use crate::config::Config;

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Health, server metadata, the web page: always open.
    Open,
    /// Inference, model metadata, configuration, statistics, drift.
    Infer,
    /// Repository index, load, unload.
    Admin,
    /// `/metrics`: open unless `--auth-metrics`.
    Metrics,
}

/// The configured keys.
#[derive(Clone, Default)]
pub struct Keys {
    api: Option<Vec<u8>>,
    admin: Option<Vec<u8>>,
    metrics: bool,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("Keys")
            .field("api", &self.api.is_some())
            .field("admin", &self.admin.is_some())
            .field("metrics", &self.metrics)
            .finish()
    }
}

/// Why a request was refused (the message names no key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub &'static str);

impl Keys {
    /// Reads the key files named on the command line.
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        let api = config.api_key_file.as_deref().map(read_key).transpose()?;
        let admin = config.admin_key_file.as_deref().map(read_key).transpose()?;
        if config.auth_metrics && api.is_none() {
            bail!("--auth-metrics needs --api-key-file");
        }
        Ok(Self { api, admin, metrics: config.auth_metrics })
    }

    /// Whether inference needs a key.
    pub fn has_api_key(&self) -> bool {
        self.api.is_some()
    }

    /// Checks the `Authorization` value of a request for `scope`.
    pub fn check(&self, scope: Scope, authorization: Option<&[u8]>) -> Result<(), Refused> {
        let needed: Vec<&[u8]> = match scope {
            Scope::Open => return Ok(()),
            Scope::Metrics if !self.metrics => return Ok(()),
            Scope::Infer | Scope::Metrics => match (&self.api, &self.admin) {
                (None, _) => return Ok(()),
                // The admin key may do what the API key may.
                (Some(api), admin) => std::iter::once(api.as_slice()).chain(admin.as_deref()).collect(),
            },
            Scope::Admin => match (&self.admin, &self.api) {
                (Some(admin), _) => vec![admin.as_slice()],
                (None, Some(api)) => vec![api.as_slice()],
                (None, None) => return Ok(()),
            },
        };
        let Some(value) = authorization else {
            return Err(Refused("this call needs a key: send `Authorization: Bearer <key>`"));
        };
        let Some(token) = strip_bearer(value) else {
            return Err(Refused("the Authorization value must be `Bearer <key>`"));
        };
        if needed.iter().any(|k| constant_time_eq(k, token)) {
            Ok(())
        } else if scope == Scope::Admin && self.admin.is_some() {
            Err(Refused("wrong key: repository calls need the admin key"))
        } else {
            Err(Refused("wrong key"))
        }
    }
}

fn read_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the key file {}", path.display()))?;
    let key = text.trim();
    if key.is_empty() {
        bail!("the key file {} is empty", path.display());
    }
    if key.contains(char::is_whitespace) || !key.is_ascii() {
        bail!("the key in {} must be one word of printable ASCII (it goes in an HTTP header)", path.display());
    }
    Ok(key.as_bytes().to_vec())
}

fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
}

/// Equal without an early exit on the first differing byte (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(api: Option<&str>, admin: Option<&str>, metrics: bool) -> Keys {
        Keys { api: api.map(|k| k.as_bytes().to_vec()), admin: admin.map(|k| k.as_bytes().to_vec()), metrics }
    }

    #[test]
    fn scopes_need_the_right_key() {
        let open = keys(None, None, false);
        assert!(open.check(Scope::Infer, None).is_ok());
        assert!(open.check(Scope::Admin, None).is_ok());

        let k = keys(Some("api-1"), Some("admin-2"), false);
        assert!(k.check(Scope::Open, None).is_ok());
        assert!(k.check(Scope::Metrics, None).is_ok());
        assert!(k.check(Scope::Infer, None).is_err());
        assert!(k.check(Scope::Infer, Some(b"Bearer api-1")).is_ok());
        assert!(k.check(Scope::Infer, Some(b"bearer  api-1 ")).is_ok());
        assert!(k.check(Scope::Infer, Some(b"Bearer admin-2")).is_ok());
        assert!(k.check(Scope::Infer, Some(b"Bearer api-2")).is_err());
        assert!(k.check(Scope::Infer, Some(b"api-1")).is_err());
        assert!(k.check(Scope::Admin, Some(b"Bearer api-1")).is_err());
        assert!(k.check(Scope::Admin, Some(b"Bearer admin-2")).is_ok());

        let api_only = keys(Some("api-1"), None, true);
        assert!(api_only.check(Scope::Admin, Some(b"Bearer api-1")).is_ok());
        assert!(api_only.check(Scope::Metrics, None).is_err());
        assert!(api_only.check(Scope::Metrics, Some(b"Bearer api-1")).is_ok());
        // Debug output never holds a key.
        assert!(!format!("{k:?}").contains("api-1"));
    }
}
